//! [`ResponseFuture`]: the future of [`ComposioAuth`](crate::ComposioAuth)'s `call`.
//!
//! A named enum rather than a boxed future: on a cache hit it is just the inner
//! service's future; only a miss waits for a verification first.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::cache::Verification;
use crate::service::Pending;

pin_project! {
    /// The response future of [`ComposioAuth`](crate::ComposioAuth).
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        // The inner service is running.
        Called { #[pin] future: S::Future },
        // Waiting for the key's verification.
        // (boxed: the miss path allocates anyway, and the hit path's future stays small)
        Verifying { verification: Verification, pending: Option<Box<Pending<S, ReqBody>>> },
        // Answered by the layer.
        Rejected { response: Option<Response<Bytes>> },
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn called(future: S::Future) -> Self {
        Self {
            state: State::Called { future },
        }
    }

    pub(crate) fn verifying(verification: Verification, pending: Pending<S, ReqBody>) -> Self {
        Self {
            state: State::Verifying {
                verification,
                pending: Some(Box::new(pending)),
            },
        }
    }

    pub(crate) fn rejected(response: Response<Bytes>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Called { future } => {
                    return future
                        .poll(cx)
                        .map_ok(|response| response.map(ResponseBody::inner));
                }
                StateProj::Rejected { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response.map(ResponseBody::rejection)));
                }
                StateProj::Verifying {
                    verification,
                    pending,
                } => {
                    let verdict = ready!(verification.poll_unpin(cx));
                    let pending = pending
                        .take()
                        .expect("ResponseFuture polled after completion");
                    pending.resume(verdict)
                }
            };
            self.as_mut().project().state.set(next.state);
        }
    }
}
