//! [`ComposioAuth`]: the middleware service. `call` runs the request's path:
//! credential, cache, verification (on a miss), policy, then the inner service or a
//! rejection.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Request, Response};
use tower_service::Service;

use crate::body::ResponseBody;
use crate::cache::{Lookup, Verification};
use crate::credential::{self, CredentialHeader};
use crate::digest::Digest;
use crate::envelope::Rejection;
use crate::future::ResponseFuture;
use crate::layer::LayerState;
use crate::session::SessionInfo;
use crate::verify::Verdict;
use crate::TRACING_TARGET;

/// The service made by [`ComposioAuthLayer`](crate::ComposioAuthLayer): verifies the
/// request's key, then calls the inner service with [`SessionInfo`] in the request's
/// extensions, or answers with a rejection (never an error of its own).
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

impl<S: Clone> Clone for ComposioAuth<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            state: Arc::clone(&self.state),
        }
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
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let state = &self.state;

        let (header, digest) = match credential::extract(request.headers_mut(), state.accepted) {
            Ok((header, key)) => (header, state.cache.digest(header, key.as_bytes())),
            Err(error) => {
                tracing::debug!(target: TRACING_TARGET, ?error, "no usable credential");
                return reject(&error.rejection(state.accepted), &request);
            }
        };
        match state.cache.lookup(&digest) {
            Lookup::Fresh { session, refresh } => {
                tracing::trace!(target: TRACING_TARGET, "cache hit");
                if refresh {
                    refresh_ahead(state, digest, header, request.headers());
                }
                // Called right away: the service polled ready is the one called.
                admit(state, &mut self.inner, request, session)
            }
            Lookup::Rejected(rejection) => {
                tracing::trace!(target: TRACING_TARGET, status = rejection.status().as_u16(), "cached rejection");
                reject(&rejection, &request)
            }
            Lookup::Miss { stale } => {
                tracing::debug!(target: TRACING_TARGET, stale = stale.is_some(), "cache miss");
                match verification(state, digest, header, request.headers(), true) {
                    Ok(verification) => {
                        // The call waits for the verification: the service polled
                        // ready goes with it, a clone stays for the next `poll_ready`.
                        let clone = self.inner.clone();
                        let inner = std::mem::replace(&mut self.inner, clone);
                        let pending = Pending {
                            inner,
                            request,
                            state: Arc::clone(state),
                            stale,
                        };
                        ResponseFuture::verifying(verification, pending)
                    }
                    Err(Lookup::Fresh { session, refresh }) => {
                        if refresh {
                            refresh_ahead(state, digest, header, request.headers());
                        }
                        admit(state, &mut self.inner, request, session)
                    }
                    Err(Lookup::Rejected(rejection)) => reject(&rejection, &request),
                    Err(Lookup::Miss { .. }) => reject(
                        &Rejection::unavailable("composio-auth needs a Tokio runtime", None),
                        &request,
                    ),
                }
            }
        }
    }
}

/// A request waiting for its key's verification.
pub(crate) struct Pending<S, ReqBody> {
    inner: S,
    request: Request<ReqBody>,
    state: Arc<LayerState>,
    /// A session past its TTL, served if the verification is undecided and it is
    /// still inside the `stale_if_error` window.
    stale: Option<SessionInfo>,
}

impl<S, ReqBody, ResBody> Pending<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    /// Continues the request with the verification's verdict.
    pub(crate) fn resume(self, verdict: Verdict) -> ResponseFuture<S, ReqBody> {
        let Self {
            mut inner,
            request,
            state,
            stale,
        } = self;
        match verdict {
            Verdict::Allowed(session) => admit(&state, &mut inner, request, session),
            Verdict::Rejected(rejection) => reject(&rejection, &request),
            Verdict::Undecided(rejection) => match stale.filter(|s| state.cache.usable_stale(s)) {
                Some(session) => {
                    tracing::warn!(
                        target: TRACING_TARGET,
                        age_ms = crate::cache::age_ms(&session),
                        reason = ?rejection.body().errors,
                        "Composio undecided; serving a stale session"
                    );
                    admit(&state, &mut inner, request, session)
                }
                None => reject(&rejection, &request),
            },
        }
    }
}

/// Checks the `authorize` predicate, then calls the inner service with the session.
fn admit<S, ReqBody, ResBody>(
    state: &LayerState,
    inner: &mut S,
    mut request: Request<ReqBody>,
    session: SessionInfo,
) -> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    if let Some(authorize) = &state.authorize {
        if !authorize(&session) {
            tracing::debug!(target: TRACING_TARGET, "authorize predicate refused the session");
            return reject(&state.forbidden, &request);
        }
    }
    request.extensions_mut().insert(session);
    ResponseFuture::called(inner.call(request))
}

fn reject<S, ReqBody>(
    rejection: &Rejection,
    request: &Request<ReqBody>,
) -> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    let headers = request.headers();
    tracing::debug!(target: TRACING_TARGET, status = rejection.status().as_u16(), slug = ?rejection.body().slug, "rejected");
    ResponseFuture::rejected(rejection.render(is_grpc(headers), headers.get("x-request-id")))
}

/// Whether the request is gRPC (its rejection is then a `grpc-status`).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The key of a request whose credential was already extracted.
fn key_of(headers: &HeaderMap, header: CredentialHeader) -> Option<HeaderValue> {
    headers.get(header.header_name()).cloned()
}

/// Joins the verification in flight for `digest`, or starts one.
///
/// `Err` carries a verdict cached since the caller's lookup (when `recheck`), or
/// `Lookup::Miss` when no verification can run here (no Tokio runtime).
fn verification(
    state: &Arc<LayerState>,
    digest: Digest,
    header: CredentialHeader,
    headers: &HeaderMap,
    recheck: bool,
) -> Result<Verification, Lookup> {
    let (Ok(runtime), Some(key)) = (
        tokio::runtime::Handle::try_current(),
        key_of(headers, header),
    ) else {
        tracing::error!(target: TRACING_TARGET, "composio-auth needs a Tokio runtime to verify keys");
        return Err(Lookup::Miss { stale: None });
    };
    state.cache.join_or_start(&digest, recheck, |generation| {
        let task = verify_and_settle(Arc::clone(state), digest, header, key, generation);
        let join = runtime.spawn(task);
        let verdict: std::pin::Pin<Box<dyn std::future::Future<Output = Verdict> + Send>> =
            Box::pin(async move {
                join.await
                    .unwrap_or_else(|_| Verdict::undecided("the verification task failed", None))
            });
        futures_util::FutureExt::shared(verdict)
    })
}

/// Starts one background re-verification of a key whose entry nears its TTL; the
/// request itself goes on with the cached session.
fn refresh_ahead(
    state: &Arc<LayerState>,
    digest: Digest,
    header: CredentialHeader,
    headers: &HeaderMap,
) {
    tracing::debug!(target: TRACING_TARGET, "refreshing a session ahead of its expiry");
    // The verification runs as its own task; nobody needs to wait for it.
    let _ = verification(state, digest, header, headers, false);
}

/// Waits for a verification slot, then asks Composio, all within `timeout`.
///
/// A slot obtained with less than a tenth of the budget left is given back unused:
/// under overload, queued verifications would otherwise each start an upstream call
/// (spending the key owner's rate limit) only to abandon it a moment later.
async fn call_within_budget(
    state: &LayerState,
    header: CredentialHeader,
    key: HeaderValue,
) -> Verdict {
    let budget = state.timeout;
    let deadline = tokio::time::Instant::now() + budget;
    let no_slot = || {
        tracing::warn!(target: TRACING_TARGET, ?budget, "no verification slot free in time");
        Verdict::undecided(
            format!(
                "no verification slot free in time ({} upstream calls in flight)",
                state.max_concurrent_verifications
            ),
            None,
        )
    };
    let permit = match tokio::time::timeout_at(deadline, state.permits.acquire()).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(_)) => return Verdict::undecided("verification slots closed", None),
        Err(_) => return no_slot(),
    };
    if deadline.saturating_duration_since(tokio::time::Instant::now()) < budget / 10 {
        return no_slot();
    }
    let verdict = match tokio::time::timeout_at(deadline, state.upstream.verify(header, key)).await
    {
        Ok(verdict) => verdict,
        Err(_) => {
            tracing::warn!(target: TRACING_TARGET, ?budget, "verification timed out");
            Verdict::undecided(format!("verification timed out after {budget:?}"), None)
        }
    };
    drop(permit);
    verdict
}

/// The body of a verification task: one upstream call within the budget, then the
/// verdict goes into the cache before the task leaves the in-flight map.
async fn verify_and_settle(
    state: Arc<LayerState>,
    digest: Digest,
    header: CredentialHeader,
    key: HeaderValue,
    generation: u64,
) -> Verdict {
    let in_flight = state.cache.in_flight(digest);
    let verdict = call_within_budget(&state, header, key).await;
    state.cache.settle(&digest, &verdict, generation);
    // Only now leave the in-flight map: a request arriving meanwhile finds the verdict.
    drop(in_flight);
    verdict
}
