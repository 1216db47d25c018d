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
//! In a server: `axum::serve(listener, app).await`. The same layer protects tonic
//! servers and actix-web apps (see the features below), and
//! [`ComposioAuthLayer::verify`] checks a request's headers without any framework.
//! Configuration lives on [`ComposioAuthBuilder`]; the [`testing`] module (feature
//! `test-util`) has a loopback stand-in of Composio for tests.
//!
//! # Guides
//!
//! - [`guide::composition`]: where the layer goes among tower-http's layers, in
//!   tonic and in actix-web.
//! - [`guide::configuration`]: every setting and its default, in one table.
//! - [`guide::verdicts`]: what each request gets: statuses, envelopes, headers,
//!   gRPC codes.
//! - [`guide::promises`]: what the layer guarantees about revocation, upstream calls
//!   and memory, and how it behaves when Composio fails.
//! - [`guide::replicas`]: a fleet of replicas sharing verdicts through Redis, what
//!   Redis sees, the threat model, the ACL.
//! - [`guide::metrics`]: the metrics and their labels.
//! - [`guide::logs`]: the `tracing` events and span.
//! - [`guide::security`]: what is kept secret, what goes where.
//!
//! # Features
//!
//! - `axum` (default): [`SessionInfo`] and `Option<SessionInfo>` as axum extractors.
//! - `tonic`: rejections written in `tonic::body::Body`, so the layer fits tonic
//!   servers (see [`RejectionBody`]).
//! - `actix-web`: the same [`ComposioAuthLayer`] as actix-web middleware
//!   (`App::new().wrap(layer.clone())`), and [`SessionInfo`] and
//!   `Option<SessionInfo>` as actix-web extractors.
//! - `metrics`: counters, gauges and a histogram through the `metrics` facade
//!   ([`guide::metrics`]).
//! - `redis`: `RedisCache`, for a fleet of replicas that share verdicts and
//!   invalidations through Redis or Valkey ([`guide::replicas`]).
//! - `webhook`: [`ComposioWebhookLayer`], which verifies Composio's signed webhook
//!   deliveries and hands each to the handler once ([`guide::webhooks`]).
//! - `test-util`: the [`testing`] module.
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
#[cfg(feature = "webhook")]
mod webhook;
#[cfg(feature = "webhook")]
mod webhook_layer;

#[cfg(feature = "actix-web")]
#[cfg_attr(docsrs, doc(cfg(feature = "actix-web")))]
pub use adapters::actix::{ActixResponseFuture, ComposioAuthMiddleware};
#[cfg(all(feature = "actix-web", feature = "webhook"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "actix-web", feature = "webhook"))))]
pub use adapters::actix_webhook::{ActixWebhookFuture, ComposioWebhookMiddleware};
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
#[cfg(feature = "webhook")]
#[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
pub use {
    adapters::tower::webhook::{ComposioWebhook, WebhookFuture},
    webhook::event::WebhookEvent,
    webhook::rejection::WebhookRejection,
    webhook_layer::{
        ComposioWebhookBuilder, ComposioWebhookLayer, DEFAULT_MAX_BODY_BYTES, DEFAULT_TOLERANCE,
        WEBHOOK_SECRET_ENV,
    },
};

/// The limits the layer enforces on what it reads, keeps and waits for.
pub mod limits {
    pub use crate::adapters::tower::drain::{DRAIN_IDLE_TIME, DRAIN_TIME, MAX_DRAINING};
    pub use crate::verifier::credential::{MAX_KEY_LEN, MAX_SELECTOR_LEN};
    pub use crate::verifier::envelope::{MAX_GRPC_MESSAGE_BYTES, MAX_REQUEST_ID_BYTES};
    pub use crate::verifier::scopes::MAX_SCOPES_PER_KEY;
    pub use crate::verifier::upstream::MAX_UPSTREAM_BODY_BYTES;
    /// How long a replica's claim on a webhook delivery holds in Redis (features
    /// `webhook` and `redis`): a handler that takes longer may see the delivery
    /// handled again on another replica.
    #[cfg(all(feature = "webhook", feature = "redis"))]
    #[cfg_attr(docsrs, doc(cfg(all(feature = "webhook", feature = "redis"))))]
    pub use crate::webhook::fleet::LEASE as WEBHOOK_CLAIM_LEASE;
    #[cfg(feature = "webhook")]
    #[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
    pub use crate::webhook::{
        check::MAX_WEBHOOK_ID_LEN,
        deliveries::{MAX_ACKNOWLEDGED, RETENTION_WITHOUT_TOLERANCE},
    };
}

/// Guides and reference, one topic each (the crate-level docs list them).
pub mod guide {
    #[doc = include_str!("docs/composition.md")]
    pub mod composition {}
    #[doc = include_str!("docs/configuration.md")]
    pub mod configuration {}
    #[doc = include_str!("docs/verdicts.md")]
    pub mod verdicts {}
    #[doc = include_str!("docs/promises.md")]
    pub mod promises {}
    #[doc = include_str!("docs/replicas.md")]
    pub mod replicas {}
    #[doc = include_str!("docs/metrics.md")]
    pub mod metrics {}
    #[doc = include_str!("docs/logs.md")]
    pub mod logs {}
    #[doc = include_str!("docs/security.md")]
    pub mod security {}
    #[doc = include_str!("docs/webhooks.md")]
    pub mod webhooks {}
}

/// The README's complete program, compiled with the doctests; its fragments are
/// marked `ignore` (each is a whole example in `examples/` or a guide).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

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
