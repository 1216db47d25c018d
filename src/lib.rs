//! A tower [`Layer`](tower_layer::Layer) that lets a request through only with a
//! Composio API key that Composio vouches for.
//!
//! On every request [`ComposioAuthLayer`] finds the key (`x-api-key` by default),
//! looks its verdict up in a TTL cache, asks Composio's
//! `GET /api/v3/auth/session/info` on a miss (one call per key, however many requests
//! wait for it), and either calls the inner service with the key's [`SessionInfo`] in
//! the request's extensions, or answers itself: 401/403 with Composio's error
//! envelope, 503 when Composio cannot decide, or the matching `grpc-status` for gRPC
//! requests.
//!
//! ```
//! use axum::{body::Body, http::Request, routing::get, Router};
//! use composio_auth::{ComposioAuthLayer, SessionInfo};
//! use tower::ServiceExt;
//!
//! async fn me(session: SessionInfo) -> String {
//!     format!("hello {}", session.org_member.email)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let composio = composio_auth::testing::StandIn::start().await?;
//! # composio.add_session("ak_example", composio_auth::testing::StandIn::example_document());
//! # std::env::set_var("COMPOSIO_BASE_URL", composio.base_url());
//! // Verifies keys against Composio (here a local stand-in, via COMPOSIO_BASE_URL).
//! let app = Router::new().route("/me", get(me)).layer(ComposioAuthLayer::new());
//!
//! let request = Request::get("/me").header("x-api-key", "ak_example").body(Body::empty())?;
//! assert_eq!(app.clone().oneshot(request).await?.status(), 200);
//!
//! let request = Request::get("/me").body(Body::empty())?; // no key: 401
//! assert_eq!(app.oneshot(request).await?.status(), 401);
//! # Ok(())
//! # }
//! ```
//!
//! In a server: `axum::serve(listener, app).await`.
//!
//! The same layer protects a tonic server (feature `tonic`):
//! `tonic::transport::Server::builder().layer(ComposioAuthLayer::new())`; handlers
//! read `request.extensions().get::<SessionInfo>()`. And an actix-web app (feature
//! `actix-web`): `App::new().wrap(layer.clone())`, with `SessionInfo` as an
//! extractor; build the layer outside `HttpServer::new`'s closure, so every worker
//! shares it.
//!
//! The layer answers in the inner service's own response body type (a
//! [`RejectionBody`]: axum's, tonic's, hyper's usual ones), so a request it lets
//! through gets the inner response untouched. Between this layer and a body type it
//! does not know (another layer's, e.g. `CompressionLayer` inside it in one
//! `ServiceBuilder`), put `MapResponseBodyLayer::new(ResponseBody::new)`; the
//! compiler's message says so.
//!
//! Configuration lives on [`ComposioAuthBuilder`]; the [`testing`] module (feature
//! `test-util`) has a loopback stand-in of Composio for tests.
//!
//! # Composition with tower-http
//!
//! In axum a layer added later wraps the ones added before it. Where this layer goes
//! among the layers an app already has (each point is a test in
//! `tests/composition.rs`):
//!
//! - **`CorsLayer` outside.** Browsers send CORS preflights without credentials: with
//!   CORS inside this layer every preflight is refused with 401. Outside, preflights
//!   are answered by CORS, and this layer's rejections still get the CORS headers the
//!   page needs to read them.
//! - **`SetRequestIdLayer` outside**, so the envelopes this layer makes carry the
//!   generated `x-request-id` as `request_id`; `PropagateRequestIdLayer` returns it
//!   to the client.
//! - **`TraceLayer` outside.** Each upstream verification runs in a
//!   `composio_auth.verification` span, a child of the request's span, and rejections
//!   are traced like any response.
//! - **`CompressionLayer` outside** compresses rejections too.
//! - **`TimeoutLayer` outside, longer than [`ComposioAuthBuilder::timeout`]**: the
//!   layer answers 503 within its own budget, and the outer timeout stays a backstop
//!   for the handlers. (The layer answers in the inner body type, axum's `Body`,
//!   which is `Default`: the empty body `TimeoutLayer` answers 408 with.)
//! - **`Router::route_layer`** protects only the routes added before it and leaves
//!   unknown paths 404; **`Router::layer`** protects every path, unknown ones
//!   included (401 without a key).
//! - **HTTP/2** (h2c with prior knowledge through `axum::serve`) is answered exactly
//!   as HTTP/1.1.
//! - **A per-client rate limiter outside** (e.g. `tower_governor`'s `GovernorLayer`,
//!   keyed by peer IP): a client spraying random keys is stopped after its burst
//!   before it spends the upstream budget everyone shares.
//! - **tonic-web: `GrpcWebLayer` outside** (with `accept_http1(true)`), so this layer
//!   sees plain gRPC and tonic-web encodes the status for the browser; inside,
//!   gRPC-web requests still get a trailers-only answer in their own content type.
//! - [`ComposioAuthBuilder::hide_credential`] removes the key's header before
//!   anything inside the layer sees the request.
//!
//! ```
//! use axum::{routing::get, Router};
//! use composio_auth::ComposioAuthLayer;
//! use tower_http::cors::CorsLayer;
//! use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
//! use tower_http::trace::TraceLayer;
//!
//! # fn build() -> Result<Router, composio_auth::Error> {
//! let app: Router = Router::new()
//!     .route("/me", get(|| async { "me" }))
//!     .route_layer(ComposioAuthLayer::builder().build()?)
//!     .route("/health", get(|| async { "ok" }))
//!     .layer(CorsLayer::permissive())
//!     .layer(PropagateRequestIdLayer::x_request_id())
//!     .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
//!     .layer(TraceLayer::new_for_http());
//! # Ok(app)
//! # }
//! ```
//!
//! # Features
//!
//! - `axum` (default): [`SessionInfo`] and `Option<SessionInfo>` as axum extractors.
//! - `tonic`: rejections written in `tonic::body::Body`, so the layer fits tonic
//!   servers (see [`RejectionBody`]).
//! - `actix-web`: the same [`ComposioAuthLayer`] as actix-web middleware
//!   (`App::new().wrap(layer.clone())`), and [`SessionInfo`] and
//!   `Option<SessionInfo>` as actix-web extractors (see the README's actix-web
//!   section).
//! - `test-util`: the [`testing`] module.
//! - `metrics`: counters, gauges and a histogram through the `metrics` facade (see
//!   the README's Metrics section); install the recorder before building the layer.
//! - `redis`: `RedisCache`, for `ComposioAuthBuilder::shared_cache`: the replicas of
//!   a service share verdicts (one upstream call per key per TTL for the fleet) and
//!   invalidations (`invalidate` on one replica reaches all of them) through Redis or
//!   Valkey. See the README's "Running several replicas".
//!
//! # Logs
//!
//! Events go to the `composio_auth` target: cache hits (`trace`), misses, upstream
//! status and latency, and verdicts (`debug`), upstream failures (`warn`). Each
//! upstream verification runs in a `composio_auth.verification` span (`debug`) with
//! the fields `header`, `outcome`, `upstream_status` and `latency_ms`, a child of
//! the span of the request that started it (e.g. tower-http's `TraceLayer`). No
//! event or span ever contains a key.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod adapters;
mod body;
mod error;
mod layer;
#[cfg(feature = "test-util")]
pub mod testing;
mod verifier;

#[cfg(feature = "actix-web")]
#[cfg_attr(docsrs, doc(cfg(feature = "actix-web")))]
pub use adapters::actix::{ActixResponseFuture, ComposioAuthMiddleware};
pub use adapters::tower::future::ResponseFuture;
pub use adapters::tower::service::ComposioAuth;
#[cfg(any(feature = "axum", feature = "actix-web"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "axum", feature = "actix-web"))))]
pub use adapters::MissingSession;
pub use body::{RejectionBody, ResponseBody};
pub use error::Error;
pub use layer::{
    ComposioAuthBuilder, ComposioAuthLayer, BASE_URL_ENV, DEFAULT_BASE_URL, DEFAULT_SESSION_PATH,
};
pub use verifier::cache::CachedVerdicts;
pub use verifier::credential::CredentialHeader;
pub use verifier::envelope::{ErrorBody, ErrorEnvelope};
#[cfg(feature = "redis")]
pub use verifier::fleet::RedisCache;
pub use verifier::rejection::Rejection;
pub use verifier::session::{
    ApiKey, Org, OrgMember, Project, SessionDocument, SessionInfo, WebhookVersion,
};

/// The limits the layer enforces on what it reads, keeps and waits for.
pub mod limits {
    pub use crate::adapters::tower::drain::{DRAIN_IDLE_TIME, DRAIN_TIME, MAX_DRAINING};
    pub use crate::verifier::credential::MAX_KEY_LEN;
    pub use crate::verifier::envelope::{MAX_GRPC_MESSAGE_BYTES, MAX_REQUEST_ID_BYTES};
    pub use crate::verifier::upstream::MAX_UPSTREAM_BODY_BYTES;
}

/// Entry points for `cargo fuzz` (`fuzz/`), built only with `--cfg fuzzing`.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// The status the layer answers for an upstream answer: 200 (a session),
    /// 401/403 (a refusal) or 503 (undecided).
    pub fn classify(status: u16, body: &[u8]) -> u16 {
        let Ok(status) = http::StatusCode::from_u16(status) else {
            return 503;
        };
        let sent_at = std::time::Instant::now();
        match crate::verifier::upstream::classify(status, None, body, sent_at) {
            crate::verifier::upstream::Verdict::Allowed(_) => 200,
            crate::verifier::upstream::Verdict::Rejected(r)
            | crate::verifier::upstream::Verdict::Undecided(r) => r.status().as_u16(),
        }
    }
}

/// The `tracing` target of every event this crate emits.
pub(crate) const TRACING_TARGET: &str = "composio_auth";
