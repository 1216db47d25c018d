//! [`ComposioAuth`]: the middleware service, and the state its clones share.
//! `call` runs the request's path: credential, cache, verification (on a miss), then
//! the response future admits or rejects.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::body::RejectionBody;
use crate::cache::{Known, Lookup, VerdictCache};
use crate::credential::{self, AcceptedHeaders, CredentialError};
use crate::future::ResponseFuture;
use crate::instruments::{self, Instruments};
use crate::policy::Policy;
use crate::verification::{Joined, Verifications};
use crate::TRACING_TARGET;

/// What every service made by one layer shares.
pub(crate) struct LayerState {
    pub(crate) accepted: AcceptedHeaders,
    /// Remove the credential header before the inner service sees the request.
    pub(crate) hide_credential: bool,
    pub(crate) base_url: String,
    pub(crate) cache: Arc<VerdictCache>,
    pub(crate) verifications: Verifications,
    pub(crate) policy: Arc<Policy>,
    pub(crate) instruments: Arc<Instruments>,
}

/// The service made by [`ComposioAuthLayer`](crate::ComposioAuthLayer): verifies the
/// request's key, then calls the inner service with
/// [`SessionInfo`](crate::SessionInfo) in the request's extensions, or answers with a
/// rejection (never an error of its own). It answers in the inner service's body type
/// (a [`RejectionBody`](crate::RejectionBody)): an admitted request gets the inner
/// response as it is.
#[derive(Clone)]
pub struct ComposioAuth<S> {
    inner: S,
    state: Arc<LayerState>,
}

impl<S> ComposioAuth<S> {
    pub(crate) fn new(inner: S, state: Arc<LayerState>) -> Self {
        Self { inner, state }
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
            .field("base_url", &self.state.base_url)
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
        let state = &*self.state;

        let (header, digest) = match credential::extract(request.headers_mut(), state.accepted) {
            Ok((header, key)) => (header, state.cache.digest(header, key.as_bytes())),
            Err(error) => {
                tracing::debug!(target: TRACING_TARGET, ?error, "no usable credential");
                return ResponseFuture::reject(
                    &state.policy,
                    &error.rejection(state.accepted),
                    request,
                );
            }
        };
        let known = match state.cache.lookup(&digest) {
            Lookup::Known(known) => {
                state.instruments.looked_up(match known {
                    Known::Fresh { .. } => instruments::Lookup::Hit,
                    Known::Rejected(_) => instruments::Lookup::NegativeHit,
                });
                known
            }
            Lookup::Miss { stale } => {
                tracing::debug!(target: TRACING_TARGET, stale = stale.is_some(), "cache miss");
                state.instruments.looked_up(instruments::Lookup::Miss);
                // Read again only on a miss: the hit path borrows nothing past the digest.
                let Some(key) = request.headers().get(header.header_name()) else {
                    let missing = CredentialError::Missing.rejection(state.accepted);
                    return ResponseFuture::reject(&state.policy, &missing, request);
                };
                match state.verifications.join_or_start(digest, header, key) {
                    Joined::Waiting(verification) => {
                        if state.hide_credential {
                            request.headers_mut().remove(header.header_name());
                        }
                        // The call waits for the verification: the service polled
                        // ready goes with it, a clone stays for the next `poll_ready`.
                        let clone = self.inner.clone();
                        let inner = std::mem::replace(&mut self.inner, clone);
                        let policy = Arc::clone(&state.policy);
                        return ResponseFuture::verifying(
                            verification,
                            inner,
                            request,
                            policy,
                            stale,
                        );
                    }
                    Joined::Known(known) => known,
                    Joined::CannotRun(rejection) => {
                        return ResponseFuture::reject(&state.policy, &rejection, request)
                    }
                }
            }
        };
        match known {
            Known::Fresh { session, refresh } => {
                tracing::trace!(target: TRACING_TARGET, "cache hit");
                if refresh {
                    if let Some(key) = request.headers().get(header.header_name()) {
                        state
                            .verifications
                            .refresh(digest, header, key, session.verified());
                    }
                }
                if state.hide_credential {
                    request.headers_mut().remove(header.header_name());
                }
                // Called right away: the service polled ready is the one called.
                ResponseFuture::admit(&state.policy, &mut self.inner, request, session)
            }
            Known::Rejected(rejection) => {
                tracing::trace!(target: TRACING_TARGET, status = rejection.status().as_u16(), "cached rejection");
                ResponseFuture::reject(&state.policy, &rejection, request)
            }
        }
    }
}
