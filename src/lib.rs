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
//! The same layer protects a tonic server:
//! `tonic::transport::Server::builder().layer(ComposioAuthLayer::new())`; handlers
//! read `request.extensions().get::<SessionInfo>()`.
//!
//! Configuration lives on [`ComposioAuthBuilder`]; the [`testing`] module (feature
//! `test-util`) has a loopback stand-in of Composio for tests.
//!
//! # Features
//!
//! - `axum` (default): [`SessionInfo`] and `Option<SessionInfo>` as axum extractors.
//! - `test-util`: the [`testing`] module.
//!
//! # Logs
//!
//! Events go to the `composio_auth` target: cache hits (`trace`), misses, upstream
//! status and latency, and verdicts (`debug`), upstream failures (`warn`). No event
//! ever contains a key.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod cache;
mod credential;
mod digest;
mod drain;
mod envelope;
mod error;
#[cfg(feature = "axum")]
mod extract;
mod front;
mod future;
mod layer;
mod policy;
mod service;
mod session;
#[cfg(feature = "test-util")]
pub mod testing;
mod upstream;
mod verification;

pub use body::ResponseBody;
pub use cache::CachedVerdicts;
pub use credential::{CredentialHeader, MAX_KEY_LEN};
pub use drain::{DRAIN_TIME, MAX_DRAINED_BYTES};
pub use envelope::{ErrorBody, ErrorEnvelope, MAX_GRPC_MESSAGE_BYTES, MAX_REQUEST_ID_BYTES};
pub use error::Error;
#[cfg(feature = "axum")]
pub use extract::MissingSession;
pub use future::ResponseFuture;
pub use layer::{
    ComposioAuthBuilder, ComposioAuthLayer, BASE_URL_ENV, DEFAULT_BASE_URL, DEFAULT_SESSION_PATH,
};
pub use service::ComposioAuth;
pub use session::{ApiKey, Org, OrgMember, Project, SessionDocument, SessionInfo, WebhookVersion};
pub use upstream::MAX_UPSTREAM_BODY_BYTES;

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
        match crate::upstream::classify(status, None, body, sent_at) {
            crate::upstream::Verdict::Allowed(_) => 200,
            crate::upstream::Verdict::Rejected(r) | crate::upstream::Verdict::Undecided(r) => {
                r.status().as_u16()
            }
        }
    }
}

/// The `tracing` target of every event this crate emits.
pub(crate) const TRACING_TARGET: &str = "composio_auth";
