//! [`ComposioAuth`]: the middleware service. `call` runs the request's path
//! (credential, then the verifier's step: cache, verification on a miss), then the
//! response future admits or rejects.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::adapters::tower::future::ResponseFuture;
use crate::body::RejectionBody;
use crate::verifier::credential;
use crate::verifier::decision::Step;
use crate::{ComposioAuthLayer, TRACING_TARGET};

/// The service made by [`ComposioAuthLayer`](crate::ComposioAuthLayer): verifies the
/// request's key, then calls the inner service with
/// [`SessionInfo`](crate::SessionInfo) in the request's extensions, or answers with a
/// rejection (never an error of its own). It answers in the inner service's body type
/// (a [`RejectionBody`]): an admitted request gets the inner
/// response as it is.
#[derive(Clone)]
pub struct ComposioAuth<S> {
    inner: S,
    /// Behind one `Arc`: routers clone the service for every request, and one
    /// reference count to move is cheaper than the layer's two.
    layer: Arc<ComposioAuthLayer>,
}

impl<S> ComposioAuth<S> {
    pub(crate) fn new(inner: S, layer: Arc<ComposioAuthLayer>) -> Self {
        Self { inner, layer }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for ComposioAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComposioAuth")
            .field("inner", &self.inner)
            .field("base_url", &self.layer.state.base_url)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ComposioAuth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ReqBody: http_body::Body,
    ResBody: RejectionBody,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let state = &*self.layer.state;
        let policy = &self.layer.policy;
        let (header, digest, scoped) =
            match credential::extract(request.headers_mut(), state.accepted) {
                Ok(credential) => (
                    credential.header,
                    state.cache.digest_of(&credential),
                    credential.scope.is_some(),
                ),
                Err(error) => {
                    tracing::debug!(target: TRACING_TARGET, ?error, "no usable credential");
                    return ResponseFuture::reject(policy, &error.refusal(state.accepted), request);
                }
            };
        match state.step(header, digest, scoped, request.headers()) {
            Step::Admit(session) => {
                if state.hide_credential {
                    request.headers_mut().remove(header.header_name());
                }
                // Called right away: the service polled ready is the one called.
                ResponseFuture::admit(policy, &mut self.inner, request, session)
            }
            Step::Refuse(refused) => ResponseFuture::reject(policy, &refused, request),
            Step::Wait {
                verification,
                stale,
            } => {
                if state.hide_credential {
                    request.headers_mut().remove(header.header_name());
                }
                // The call waits for the verification: the service polled ready
                // goes with it, a clone stays for the next `poll_ready`.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::verifying(verification, inner, request, Arc::clone(policy), stale)
            }
        }
    }
}
