//! [`ResponseFuture`]: the future of [`ComposioAuth`](crate::ComposioAuth)'s `call`,
//! and the request's last steps, as its constructors: admit (the `require` policy,
//! then the inner service with the session), reject (render the envelope), or wait
//! for a verification and then do one of those.
//!
//! A named enum rather than a boxed future: on a cache hit it is just the inner
//! service's future; only a miss waits for a verification first.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::CONNECTION;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::adapters::tower::drain::{Drain, Unread};
use crate::adapters::tower::extensions::make_room;
use crate::body::RejectionBody;
use crate::verifier::cache::Stale;
use crate::verifier::decision::Resolution;
use crate::verifier::envelope::Refusal;
use crate::verifier::instruments::Outcome;
use crate::verifier::policy::Policy;
use crate::verifier::session::SessionInfo;
use crate::verifier::upstream::Verdict;
use crate::verifier::verification::Verification;

pin_project! {
    /// The response future of [`ComposioAuth`](crate::ComposioAuth).
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        stage: Stage<S, ReqBody>,
    }
}

pin_project! {
    /// Where the response future stands.
    #[project = StageProj]
    enum Stage<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        // The inner service is running.
        Called { #[pin] future: S::Future },
        // Waiting for the key's verification.
        // (boxed: the miss path allocates anyway, and the hit path's future stays small)
        Verifying { verification: Verification, pending: Option<Box<Pending<S, ReqBody>>> },
        // Answered by the layer, once the rest of an HTTP/1.x request body has been
        // read (see `drain.rs`).
        Rejected { response: Option<Response<Bytes>>, #[pin] drain: Option<Drain<ReqBody>> },
    }
}

/// A request waiting for its key's verification.
struct Pending<S, ReqBody> {
    /// The service polled ready for this request.
    inner: S,
    request: Request<ReqBody>,
    policy: Arc<Policy>,
    /// Served if the verification is undecided, and only if still usable then.
    stale: Option<Stale>,
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: http_body::Body,
{
    /// Admits the request with `session` if the policy allows it: the inner service
    /// is called at once with the session in the request's extensions.
    #[inline]
    pub(crate) fn admit(
        policy: &Policy,
        inner: &mut S,
        request: Request<ReqBody>,
        session: SessionInfo,
    ) -> Self {
        Self::admit_as(Outcome::Allowed, policy, inner, request, session)
    }

    #[inline]
    fn admit_as(
        outcome: Outcome,
        policy: &Policy,
        inner: &mut S,
        mut request: Request<ReqBody>,
        session: SessionInfo,
    ) -> Self {
        if let Some(refusal) = policy.admits(&session, outcome) {
            return Self::reject(policy, refusal, request);
        }
        make_room(request.extensions_mut());
        request.extensions_mut().insert(session);
        Self {
            stage: Stage::Called {
                future: inner.call(request),
            },
        }
    }

    /// Answers `request` with `refusal`, rendered for it (HTTP or gRPC), after
    /// draining what is left of an HTTP/1.x request body within the drain limits.
    pub(crate) fn reject(policy: &Policy, refusal: &Refusal, request: Request<ReqBody>) -> Self {
        policy.refused(refusal);
        let mut response = refusal.render_for(request.headers(), policy.challenge());
        let drain = match Unread::of(request) {
            Unread::Nothing => None,
            Unread::Drain(drain) => Some(drain),
            Unread::Close => {
                closing(&mut response);
                None
            }
        };
        Self {
            stage: Stage::Rejected {
                response: Some(response),
                drain,
            },
        }
    }

    /// Waits for `verification`, then admits or rejects `request` with `inner`, the
    /// service polled ready for it.
    pub(crate) fn verifying(
        verification: Verification,
        inner: S,
        request: Request<ReqBody>,
        policy: Arc<Policy>,
        stale: Option<Stale>,
    ) -> Self {
        let pending = Pending {
            inner,
            request,
            policy,
            stale,
        };
        Self {
            stage: Stage::Verifying {
                verification,
                pending: Some(Box::new(pending)),
            },
        }
    }

    /// Continues a pending request with its verification's verdict.
    fn resume(pending: Pending<S, ReqBody>, verdict: Verdict) -> Self {
        let Pending {
            mut inner,
            request,
            policy,
            stale,
        } = pending;
        match Resolution::of(verdict, stale) {
            Resolution::Admit(session, outcome) => {
                Self::admit_as(outcome, &policy, &mut inner, request, session)
            }
            Resolution::Refuse(refused) => Self::reject(&policy, &refused, request),
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: http_body::Body,
    ResBody: RejectionBody,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().stage.project() {
                // The inner response as it is: nothing to wrap or copy.
                StageProj::Called { future } => return future.poll(cx),
                StageProj::Rejected { response, drain } => {
                    let drained = match drain.as_pin_mut() {
                        Some(drain) => ready!(drain.poll_drain(cx)),
                        None => true,
                    };
                    let mut response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    if !drained {
                        closing(&mut response);
                    }
                    return Poll::Ready(Ok(response.map(ResBody::rejection)));
                }
                StageProj::Verifying {
                    verification,
                    pending,
                } => {
                    let verdict = ready!(verification.poll_unpin(cx));
                    let pending = pending
                        .take()
                        .expect("ResponseFuture polled after completion");
                    Self::resume(*pending, verdict)
                }
            };
            self.as_mut().project().stage.set(next.stage);
        }
    }
}

/// Says that the connection closes after `response`: the server will not read the
/// rest of the request's body, so it cannot carry another request (RFC 9110,
/// section 10.1.1, for a client that sent `Expect: 100-continue`).
fn closing<B>(response: &mut Response<B>) {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
}
