//! [`ComposioAuthLayer`], its builder, and the validated configuration they share.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tower_layer::Layer;

use crate::adapters::tower::service::ComposioAuth;
use crate::verifier::cache::{CachePolicy, CachedVerdicts, VerdictCache};
use crate::verifier::credential::{AcceptedHeaders, CredentialHeader};
use crate::verifier::fleet::Fleet;
#[cfg(feature = "redis")]
use crate::verifier::fleet::{FleetSettings, RedisCache};
use crate::verifier::instruments::Instruments;
use crate::verifier::policy::{Policy, Predicate};
use crate::verifier::rejection::Rejection;
use crate::verifier::session::SessionInfo;
use crate::verifier::state::LayerState;
use crate::verifier::upstream::Upstream;
use crate::verifier::verification::Verifications;
use crate::{Error, TRACING_TARGET};

/// Composio's production API, used when neither [`ComposioAuthBuilder::base_url`] nor
/// `COMPOSIO_BASE_URL` says otherwise.
pub const DEFAULT_BASE_URL: &str = "https://backend.composio.dev";
/// The session endpoint's path.
pub const DEFAULT_SESSION_PATH: &str = "/api/v3/auth/session/info";
/// The environment variable that overrides the base URL (as in Composio's SDKs).
pub const BASE_URL_ENV: &str = "COMPOSIO_BASE_URL";

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A tower [`Layer`] that lets a request through only with a Composio API key that
/// Composio vouches for, and hands its [`SessionInfo`] to the inner service.
///
/// Clones share one cache, one HTTP client and one set of verification slots, so
/// build it once and clone it wherever it is needed.
///
/// ```no_run
/// use axum::{routing::get, Extension, Router};
/// use composio_auth::{ComposioAuthLayer, SessionInfo};
///
/// async fn me(Extension(session): Extension<SessionInfo>) -> String {
///     session.org_member.email.clone()
/// }
///
/// let app: Router = Router::new().route("/me", get(me)).layer(ComposioAuthLayer::new());
/// ```
#[derive(Clone)]
pub struct ComposioAuthLayer {
    pub(crate) state: Arc<LayerState>,
    /// What this layer requires of a valid session; [`require`](Self::require)
    /// makes layers that share `state` and require more.
    pub(crate) policy: Arc<Policy>,
}

impl ComposioAuthLayer {
    /// A layer with the documented defaults (see [`ComposioAuthBuilder`]), against
    /// `COMPOSIO_BASE_URL` if set, else [`DEFAULT_BASE_URL`].
    ///
    /// Never touches the network. If `COMPOSIO_BASE_URL` is unusable, the error is
    /// logged and every request with a key is answered 503 (fail closed); use
    /// [`ComposioAuthLayer::builder`] and [`ComposioAuthBuilder::build`] to get that
    /// error at start-up instead.
    #[must_use]
    pub fn new() -> Self {
        let builder = ComposioAuthBuilder::new();
        match builder.clone().build() {
            Ok(layer) => layer,
            Err(error) => {
                tracing::error!(target: TRACING_TARGET, %error, "composio-auth is misconfigured; every key will get 503");
                builder.into_state(
                    DEFAULT_BASE_URL.to_owned(),
                    Upstream::Misconfigured(error.to_string()),
                )
            }
        }
    }

    /// A builder to configure the layer.
    pub fn builder() -> ComposioAuthBuilder {
        ComposioAuthBuilder::new()
    }

    /// Forgets what this layer knows about `api_key` (under every accepted header),
    /// e.g. right after revoking it, so that its next request is verified again.
    ///
    /// When the returned future completes, on every thread of the process: no
    /// request is admitted on a verdict about `api_key` obtained before the call
    /// (cached, in a per-thread front, or from a verification in flight, which
    /// requests arriving afterwards no longer join and which caches nothing), and
    /// `stale_if_error` never serves such a verdict. Requests already waiting for a
    /// verification in flight get its answer. Other keys are untouched: their
    /// entries and verifications stay.
    ///
    /// With a fleet (`ComposioAuthBuilder::shared_cache`), when it returns
    /// `Ok`: the key's verdict is gone from Redis, no verification in flight on any
    /// replica can record it again, and the invalidation is on the fleet's stream.
    /// Every replica that is subscribed drops the key as soon as it reads the
    /// message (milliseconds; see BENCHMARKS.md, "Fleet"), and a replica that is
    /// not subscribed right now does so when it reconnects (or drops every local
    /// verdict, if the stream no longer reaches back that far). It does not wait
    /// for the other replicas to confirm.
    ///
    /// # Errors
    ///
    /// Only with a fleet, when Redis cannot be reached within its time limit (or
    /// its circuit breaker is open): the key is then forgotten on this replica only,
    /// as above, and the other replicas keep their verdicts until their TTL. Call
    /// again to reach them.
    pub async fn invalidate(&self, api_key: &str) -> Result<(), Error> {
        let state = &self.state;
        let digests: Vec<_> = state
            .accepted
            .verified_as()
            .map(|h| (h, state.cache.digest(h, api_key.as_bytes())))
            .collect();
        if state
            .verifications
            .invalidate_everywhere(api_key.as_bytes(), &digests)
            .await
        {
            Ok(())
        } else {
            Err(Error::unreachable(
                "the key was forgotten on this replica only",
            ))
        }
    }

    /// As [`invalidate`](Self::invalidate), for every key: when the returned future
    /// completes, no request is admitted on a verdict obtained before the call, and
    /// every cached session has been released. With a fleet, `Ok` means that
    /// no replica reads a verdict recorded in Redis before the call, and that every
    /// replica drops its local verdicts when it reads the message (as for
    /// `invalidate`).
    ///
    /// # Errors
    ///
    /// As [`invalidate`](Self::invalidate): Redis could not be reached, and only
    /// this replica forgot its verdicts.
    pub async fn invalidate_all(&self) -> Result<(), Error> {
        if self.state.verifications.invalidate_all_everywhere().await {
            Ok(())
        } else {
            Err(Error::unreachable(
                "every key was forgotten on this replica only",
            ))
        }
    }

    /// A layer that shares everything with this one (both cache tiers, the
    /// per-thread fronts, verifications in flight, the HTTP clients and the
    /// verification slots, the fleet, the metrics) and admits only sessions
    /// that this layer admits **and** for which `predicate` holds; other valid
    /// sessions get 403 with the envelope of [`require`](ComposioAuthBuilder::require)
    /// (code 10403), and stay cached. `a.require(p).require(q)` needs both;
    /// `invalidate` and `invalidate_all` on any of them act on all of them.
    ///
    /// ```no_run
    /// use axum::{routing::get, Router};
    /// use composio_auth::{ComposioAuthLayer, SessionInfo};
    ///
    /// async fn me(session: SessionInfo) -> String { session.org_member.email.clone() }
    /// async fn admin(session: SessionInfo) -> String { format!("hello, {}", session.org_member.name) }
    ///
    /// let auth = ComposioAuthLayer::builder().build()?;
    /// let app: Router = Router::new()
    ///     .route("/admin", get(admin))
    ///     .route_layer(auth.require(|s| s.org_member.role == "admin"))
    ///     .route("/me", get(me))
    ///     .route_layer(auth.clone());
    /// # Ok::<(), composio_auth::Error>(())
    /// ```
    #[must_use]
    pub fn require<F>(&self, predicate: F) -> Self
    where
        F: Fn(&SessionInfo) -> bool + Send + Sync + 'static,
    {
        Self {
            state: Arc::clone(&self.state),
            policy: Arc::new(self.policy.requiring(Arc::new(predicate))),
        }
    }

    /// The layer's whole path for one request's headers, without a request or a
    /// tower service: the same credential rules, cache, coalescing, fleet,
    /// policy and metrics, and the same verdicts. `Ok` with the session where the
    /// layer would admit the request; else the [`Rejection`] it would answer with
    /// (for HTTP).
    ///
    /// For code that is not a request handler: a WebSocket upgrade checked by hand,
    /// a job that checks a stored key, a forward-auth server. The headers are read
    /// (and a verification joined or started) when `verify` is called, so the
    /// future borrows nothing; call and await it on a Tokio runtime, as the layer's
    /// requests run (see [`ComposioAuthBuilder`], "Runtime"): outside one, it
    /// answers 503 as the layer does.
    ///
    /// ```no_run
    /// # async fn run() {
    /// let auth = composio_auth::ComposioAuthLayer::new();
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("x-api-key", "ak_...".parse().unwrap());
    /// match auth.verify(&headers).await {
    ///     Ok(session) => println!("{} may go on", session.org_member.email),
    ///     Err(rejection) => println!("refused: {rejection}"),
    /// }
    /// # }
    /// ```
    pub fn verify(
        &self,
        headers: &http::HeaderMap,
    ) -> impl std::future::Future<Output = Result<SessionInfo, Rejection>> + Send + 'static {
        crate::verifier::decision::verify(&self.state, &self.policy, headers)
    }

    /// How many sessions and rejections are cached, after pending maintenance.
    #[must_use]
    pub fn cached(&self) -> CachedVerdicts {
        self.state.cache.entry_counts()
    }

    /// The base URL this layer verifies keys against.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }
}

impl Default for ComposioAuthLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ComposioAuthLayer {
    type Service = ComposioAuth<S>;

    fn layer(&self, inner: S) -> ComposioAuth<S> {
        ComposioAuth::new(inner, Arc::new(self.clone()))
    }
}

impl fmt::Debug for ComposioAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComposioAuthLayer")
            .field("base_url", &self.state.base_url)
            .field("accepted", &self.state.accepted.names())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Configures a [`ComposioAuthLayer`]. Every setting and its default:
/// [`guide::configuration`](crate::guide::configuration).
///
/// # Runtime
///
/// The layer serves requests on a Tokio runtime with its I/O and time drivers
/// (`Builder::enable_all`, as `#[tokio::main]` and every axum and tonic server
/// have): verifications are bounded by Tokio timers, and so is reading a rejected
/// request's body. A request served outside any Tokio runtime is answered 503.
/// On a runtime built without its time driver, Tokio panics the first time the
/// layer needs a timer: in the verification's own task (the request then gets
/// 503), or in the request's task for a rejected HTTP/1.x body still arriving; under
/// `panic = "abort"` either aborts the process. Tokio offers no way to ask whether
/// timers are enabled, so the layer cannot answer 503 there instead.
#[derive(Clone)]
#[must_use]
pub struct ComposioAuthBuilder {
    base_url: Option<String>,
    session_path: String,
    /// Per-header overrides of `session_path` (indexed by `CredentialHeader as usize`).
    session_paths: [Option<String>; 3],
    ttl: Duration,
    negative_ttl: Duration,
    stale_if_error: Duration,
    timeout: Duration,
    max_capacity: u64,
    negative_max_capacity: u64,
    max_concurrent_verifications: usize,
    refresh_ahead: bool,
    hide_credential: bool,
    accepted: AcceptedHeaders,
    /// Every predicate given to `require`, in order; all must hold.
    require: Vec<Predicate>,
    #[cfg(feature = "redis")]
    shared_cache: Option<RedisCache>,
}

impl Default for ComposioAuthBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ComposioAuthBuilder {
    /// A builder with the defaults of [`guide::configuration`](crate::guide::configuration).
    pub fn new() -> Self {
        Self {
            base_url: None,
            session_path: DEFAULT_SESSION_PATH.to_owned(),
            session_paths: [None, None, None],
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            stale_if_error: Duration::ZERO,
            timeout: Duration::from_secs(5),
            max_capacity: 10_000,
            negative_max_capacity: 10_000,
            max_concurrent_verifications: 64,
            refresh_ahead: true,
            hide_credential: false,
            accepted: AcceptedHeaders::DEFAULT,
            require: Vec::new(),
            #[cfg(feature = "redis")]
            shared_cache: None,
        }
    }

    /// Shares verdicts and invalidations with the other replicas of this service
    /// through Redis (feature `redis`): one upstream call per key per TTL for the
    /// whole fleet, and [`invalidate`](ComposioAuthLayer::invalidate) reaches every
    /// replica. See [`RedisCache`] and [`guide::replicas`](crate::guide::replicas).
    /// Replicas sharing a Redis should share their TTL settings too.
    #[cfg(feature = "redis")]
    pub fn shared_cache(mut self, cache: RedisCache) -> Self {
        self.shared_cache = Some(cache);
        self
    }

    /// Composio's API origin, e.g. `https://backend.composio.dev` (a path prefix is
    /// kept). Must be `https`, except loopback, which may be `http`: `localhost`
    /// (always connected to `127.0.0.1` or `[::1]`, never resolved), `127.0.0.0/8`
    /// and `[::1]`. Other names, `*.localhost` included, need `https`: a resolver
    /// may answer any address for them.
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = Some(base_url.into());
        self
    }

    /// Path of the session endpoint under the base URL, for every credential header
    /// without a path of its own (see [`session_path_for`](Self::session_path_for)).
    pub fn session_path(mut self, path: impl Into<String>) -> Self {
        self.session_path = path.into();
        self
    }

    /// Path of the session endpoint for keys sent in `header`
    /// ([`CredentialHeader::Bearer`] shares `x-api-key`'s). Composio serves the
    /// session document for user keys at `/api/v3.1/auth/session/info`:
    ///
    /// ```
    /// # use composio_auth::{ComposioAuthLayer, CredentialHeader};
    /// let layer = ComposioAuthLayer::builder()
    ///     .credential_headers([CredentialHeader::ApiKey, CredentialHeader::UserApiKey])
    ///     .session_path_for(CredentialHeader::UserApiKey, "/api/v3.1/auth/session/info")
    ///     .build()?;
    /// # Ok::<(), composio_auth::Error>(())
    /// ```
    pub fn session_path_for(mut self, header: CredentialHeader, path: impl Into<String>) -> Self {
        self.session_paths[header.verified_as() as usize] = Some(path.into());
        self
    }

    /// How long a valid session is served from the cache: the longest a revoked key
    /// keeps working (unless [`ComposioAuthLayer::invalidate`] is called).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a rejection is served from the cache; zero caches no rejection.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// When Composio cannot decide (down, slow, 5xx, 429), serve a session that
    /// expired less than this long ago instead of answering 503. Off by default:
    /// turning it on trades revocation latency for availability.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
        self
    }

    /// Budget of one verification: waiting for a verification slot, connecting and
    /// reading Composio's answer. Past it the request gets 503. A slot obtained with
    /// less than a tenth of the budget left is not used (503 at once), so that queued
    /// verifications do not each start an upstream call they cannot wait for.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Most valid sessions cached at once.
    pub fn max_capacity(mut self, sessions: u64) -> Self {
        self.max_capacity = sessions;
        self
    }

    /// Most rejections cached at once (a capacity separate from valid sessions, so a
    /// flood of bad keys never evicts a good one).
    pub fn negative_max_capacity(mut self, rejections: u64) -> Self {
        self.negative_max_capacity = rejections;
        self
    }

    /// Most upstream calls in flight at once; further verifications wait for a slot
    /// within their [`timeout`](Self::timeout).
    pub fn max_concurrent_verifications(mut self, calls: usize) -> Self {
        self.max_concurrent_verifications = calls;
        self
    }

    /// Whether a hit on a session past 80% of its TTL starts one background
    /// re-verification (on by default), so that a key in steady use never waits for
    /// Composio when its entry expires. It costs a steadily used key one upstream
    /// call per 0.8 TTL instead of one per TTL; off, the first request after expiry
    /// waits for the upstream call.
    pub fn refresh_ahead(mut self, enabled: bool) -> Self {
        self.refresh_ahead = enabled;
        self
    }

    /// Which credential headers are accepted (default: only `x-api-key`). A request
    /// carrying any other of Composio's credential headers, or two of them, is
    /// refused with 401 either way.
    ///
    /// [`CredentialHeader::Bearer`] accepts `Authorization: Bearer <key>` too, for
    /// clients that can send nothing else; a bearer token together with any other
    /// credential is refused (10401), and another `Authorization` scheme is no
    /// credential (906). Without it, `Authorization` is left alone:
    ///
    /// ```
    /// # use composio_auth::{ComposioAuthLayer, CredentialHeader};
    /// let layer = ComposioAuthLayer::builder()
    ///     .credential_headers([CredentialHeader::ApiKey, CredentialHeader::Bearer])
    ///     .build()?;
    /// # Ok::<(), composio_auth::Error>(())
    /// ```
    pub fn credential_headers(
        mut self,
        headers: impl IntoIterator<Item = CredentialHeader>,
    ) -> Self {
        self.accepted = AcceptedHeaders::from_headers(headers);
        self
    }

    /// Whether to remove the credential header from an admitted request before the
    /// inner service sees it (off by default, like Kong's `hide_credentials`), so
    /// that no handler, log or downstream proxy can read or forward the key. Leave
    /// it off when handlers call Composio on their user's behalf with that key.
    pub fn hide_credential(mut self, hide: bool) -> Self {
        self.hide_credential = hide;
        self
    }

    /// A predicate every valid session must pass, checked on every request (cached
    /// or not); a session it refuses gets 403. Predicates add up, as with
    /// [`ComposioAuthLayer::require`]: `require(p).require(q)` needs both.
    ///
    /// ```
    /// # use composio_auth::ComposioAuthLayer;
    /// let layer = ComposioAuthLayer::builder()
    ///     .require(|session| session.org_member.role == "admin")
    ///     .build()?;
    /// # Ok::<(), composio_auth::Error>(())
    /// ```
    pub fn require<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&SessionInfo) -> bool + Send + Sync + 'static,
    {
        self.require.push(Arc::new(predicate));
        self
    }

    /// Validates the configuration and makes the layer. Touches no network.
    ///
    /// # Errors
    ///
    /// When the base URL (or `COMPOSIO_BASE_URL`) is not a URL, is not `https` and
    /// not loopback, or carries credentials, a query or a fragment; when a session
    /// path does not start with `/`; when `ttl` or `timeout` is zero; when a duration
    /// exceeds a year; when a capacity or `max_concurrent_verifications` is zero;
    /// when no credential header is accepted; when the HTTP client cannot be built;
    /// or, with a fleet (feature `redis`), when its prefix, budget,
    /// `lease_wait` or root certificate is unusable. The message says which setting
    /// to fix.
    pub fn build(self) -> Result<ComposioAuthLayer, Error> {
        let base_url = match &self.base_url {
            Some(url) => url.clone(),
            None => std::env::var(BASE_URL_ENV).unwrap_or_else(|_| DEFAULT_BASE_URL.to_owned()),
        };
        let (base, loopback) = origin(&base_url)?;
        let [api_key, user_api_key, org_api_key] = CredentialHeader::ALL.map(|header| {
            let path = self.session_paths[header as usize].as_deref();
            endpoint(&base, path.unwrap_or(&self.session_path))
        });
        let urls = [api_key?, user_api_key?, org_api_key?];
        self.validate()?;
        let connect_timeout = self.timeout.min(MAX_CONNECT_TIMEOUT);
        let upstream = Upstream::new(urls, loopback, connect_timeout).map_err(Error::new)?;
        let base_url = base_url.trim_end_matches('/').to_owned();
        Ok(self.into_state(base_url, upstream))
    }

    fn validate(&self) -> Result<(), Error> {
        let durations = [
            ("ttl", self.ttl),
            ("negative_ttl", self.negative_ttl),
            ("stale_if_error", self.stale_if_error),
            ("timeout", self.timeout),
        ];
        for (name, value) in durations {
            if value > YEAR {
                return Err(Error::new(format!(
                    "{name} is {value:?}; it must be at most a year"
                )));
            }
        }
        if self.ttl.is_zero() {
            return Err(Error::new("ttl must be greater than zero"));
        }
        if self.timeout.is_zero() {
            return Err(Error::new("timeout must be greater than zero"));
        }
        if self.max_capacity == 0 || self.negative_max_capacity == 0 {
            return Err(Error::new(
                "max_capacity and negative_max_capacity must be at least 1",
            ));
        }
        if !(1..=Semaphore::MAX_PERMITS).contains(&self.max_concurrent_verifications) {
            return Err(Error::new(format!(
                "max_concurrent_verifications must be between 1 and {}",
                Semaphore::MAX_PERMITS
            )));
        }
        if self.accepted.is_empty() {
            return Err(Error::new(
                "credential_headers must name at least one header",
            ));
        }
        #[cfg(feature = "redis")]
        if let Some(cache) = &self.shared_cache {
            cache.validate()?;
        }
        Ok(())
    }

    fn into_state(self, base_url: String, upstream: Upstream) -> ComposioAuthLayer {
        let policy = CachePolicy {
            ttl: self.ttl,
            negative_ttl: self.negative_ttl,
            stale_if_error: self.stale_if_error,
            max_capacity: self.max_capacity,
            negative_max_capacity: self.negative_max_capacity,
            refresh_ahead: self.refresh_ahead,
        };
        let fleet = self.fleet(&base_url, policy);
        let secret = fleet.as_ref().map(|fleet| fleet.local_digest_secret());
        let cache = Arc::new(VerdictCache::keyed(policy, &base_url, secret));
        let instruments = fleet.as_ref().map_or_else(
            || Arc::new(Instruments::new(false)),
            |fleet| fleet.instruments(),
        );
        let verifications = Verifications::new(
            Arc::clone(&cache),
            upstream,
            self.timeout,
            self.max_concurrent_verifications,
            Arc::clone(&instruments),
            fleet,
        );
        let policy = Policy::new(self.require, self.accepted, Arc::clone(&instruments));
        ComposioAuthLayer {
            state: Arc::new(LayerState {
                accepted: self.accepted,
                hide_credential: self.hide_credential,
                base_url,
                cache,
                verifications,
                instruments,
            }),
            policy: Arc::new(policy),
        }
    }
}

impl ComposioAuthBuilder {
    #[cfg(feature = "redis")]
    fn fleet(&self, base_url: &str, lives: CachePolicy) -> Option<Arc<Fleet>> {
        let cache = self.shared_cache.as_ref()?;
        // The fleet's handles are the layer's, with the fleet's own registered.
        let instruments = Arc::new(Instruments::new(true));
        Some(Arc::new(Fleet::new(FleetSettings {
            instruments,
            servers: cache.servers.clone(),
            pepper: cache.pepper.as_ref().into(),
            prefix: cache.prefix.clone(),
            time_limit: cache.time_limit,
            wait: cache.wait.unwrap_or(self.timeout / 2).min(self.timeout),
            base_url: base_url.to_owned(),
            lives,
            lease: self.timeout,
        })))
    }

    #[cfg(not(feature = "redis"))]
    #[allow(clippy::unused_self)]
    fn fleet(&self, _: &str, _: CachePolicy) -> Option<Arc<Fleet>> {
        None
    }
}

impl fmt::Debug for ComposioAuthBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ComposioAuthBuilder");
        debug
            .field("base_url", &self.base_url)
            .field("session_path", &self.session_path)
            .field("session_paths", &self.session_paths)
            .field("ttl", &self.ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("stale_if_error", &self.stale_if_error)
            .field("timeout", &self.timeout)
            .field("max_capacity", &self.max_capacity)
            .field("negative_max_capacity", &self.negative_max_capacity)
            .field(
                "max_concurrent_verifications",
                &self.max_concurrent_verifications,
            )
            .field("credential_headers", &self.accepted.names())
            .field("hide_credential", &self.hide_credential)
            .field(
                "require",
                &format_args!("[Fn(&SessionInfo) -> bool; {}]", self.require.len()),
            );
        #[cfg(feature = "redis")]
        debug.field("shared_cache", &self.shared_cache);
        debug.finish()
    }
}

/// The validated base URL, and whether it is loopback (where `http` is allowed).
fn origin(base_url: &str) -> Result<(reqwest::Url, bool), Error> {
    // A URL with credentials in it is never echoed back.
    let shown = if base_url.contains('@') {
        "(hidden: it contains '@')"
    } else {
        base_url
    };
    let base = reqwest::Url::parse(base_url)
        .map_err(|e| Error::new(format!("base_url {shown} is not a URL: {e}")))?;
    if !base.username().is_empty() || base.password().is_some() {
        return Err(Error::new(
            "base_url must not carry a user name or password",
        ));
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(Error::new(format!(
            "base_url {shown} must not have a query or fragment"
        )));
    }
    // Only names that never reach a resolver: `localhost` is pinned to loopback
    // addresses by the HTTP client (see `upstream.rs`).
    let loopback = match base.host() {
        Some(url::Host::Domain(domain)) => domain == "localhost",
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    };
    match base.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(Error::new(format!(
            "base_url {shown} must use https: API keys are sent over plain http only to localhost, 127.0.0.0/8 or [::1]"
        )))
        }
        other => {
            return Err(Error::new(format!(
                "base_url {shown} has scheme {other}; use https"
            )))
        }
    }
    Ok((base, loopback))
}

/// The session endpoint's URL under a validated base.
fn endpoint(base: &reqwest::Url, session_path: &str) -> Result<reqwest::Url, Error> {
    if !session_path.starts_with('/') || session_path.contains(['?', '#']) {
        return Err(Error::new(format!(
            "session_path {session_path:?} must be a path starting with '/'"
        )));
    }
    let joined = format!("{}{session_path}", base.as_str().trim_end_matches('/'));
    reqwest::Url::parse(&joined).map_err(|e| {
        Error::new(format!(
            "session_path {session_path:?} does not form a URL: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(base: &str) -> Result<(String, bool), String> {
        origin(base)
            .and_then(|(base, loopback)| Ok((endpoint(&base, DEFAULT_SESSION_PATH)?, loopback)))
            .map(|(u, l)| (u.to_string(), l))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn https_anywhere_http_only_on_loopback() {
        assert_eq!(
            url("https://backend.composio.dev").unwrap(),
            (
                "https://backend.composio.dev/api/v3/auth/session/info".into(),
                false
            )
        );
        assert_eq!(
            url("https://gw.example/composio/").unwrap().0,
            "https://gw.example/composio/api/v3/auth/session/info"
        );
        for ok in [
            "http://localhost:1",
            "http://LOCALHOST:1",
            "http://127.0.0.1:9",
            "http://127.8.9.10",
            "http://[::1]:80",
        ] {
            assert!(url(ok).unwrap().1, "{ok}");
        }
        for bad in [
            "http://backend.composio.dev",
            "http://10.0.0.1",
            "http://localhost.evil.com",
            // A resolver may answer any address for these names.
            "http://api.localhost",
            "http://localhost.",
            "http://[::2]",
            "ftp://x",
        ] {
            let error = url(bad).unwrap_err();
            assert!(error.contains("https"), "{bad}: {error}");
        }
    }

    #[test]
    fn malformed_base_urls_are_explained_without_secrets() {
        assert!(url("not a url").unwrap_err().contains("not a URL"));
        let error = url("https://user:hunter2@backend.composio.dev").unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(url("https://x.dev/?a=1").unwrap_err().contains("query"));
        let (base, _) = origin("https://x.dev").unwrap();
        let error = endpoint(&base, "api/v3").unwrap_err().to_string();
        assert!(error.contains("session_path"), "{error}");
    }

    #[test]
    fn settings_are_validated() {
        let b = || ComposioAuthLayer::builder().base_url("https://backend.composio.dev");
        let error = |b: ComposioAuthBuilder| b.build().unwrap_err().to_string();
        assert!(error(b().ttl(Duration::ZERO)).contains("ttl"));
        assert!(error(b().timeout(Duration::ZERO)).contains("timeout"));
        assert!(error(b().negative_ttl(YEAR * 2)).contains("negative_ttl"));
        assert!(error(b().max_capacity(0)).contains("max_capacity"));
        assert!(error(b().max_concurrent_verifications(0)).contains("max_concurrent_verifications"));
        assert!(error(b().credential_headers([])).contains("credential_headers"));
        assert!(b().negative_ttl(Duration::ZERO).build().is_ok());
    }

    #[test]
    fn debug_shows_the_configuration() {
        let layer = ComposioAuthLayer::builder()
            .base_url("https://backend.composio.dev/")
            .require(|_| true)
            .build()
            .unwrap();
        assert_eq!(layer.base_url(), "https://backend.composio.dev");
        assert!(format!("{layer:?}").contains("backend.composio.dev"));
        let builder = format!("{:?}", ComposioAuthLayer::builder().require(|_| true));
        assert!(builder.contains("Fn(&SessionInfo) -> bool"), "{builder}");
    }
}
