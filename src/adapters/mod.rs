//! The framework adapters, each a thin layer over the verifier (`crate::verifier`):
//! they take a request's headers to it and turn its outcome into their framework's
//! answer.
//!
//! - `tower/`: the tower `Layer`'s service, its response future, and what a
//!   rejection does with a body still arriving.
//! - `axum.rs` (feature `axum`): `SessionInfo` and `Option<SessionInfo>` as axum
//!   extractors.
//! - `actix.rs` (feature `actix-web`): the layer as actix-web middleware, and
//!   `SessionInfo` as an actix-web extractor.
//! - `missing_session.rs`: what both extractors answer on a route the layer does
//!   not protect.

#[cfg(feature = "actix-web")]
pub(crate) mod actix;
#[cfg(feature = "axum")]
pub(crate) mod axum;
#[cfg(any(feature = "axum", feature = "actix-web"))]
mod missing_session;
pub(crate) mod tower;

#[cfg(any(feature = "axum", feature = "actix-web"))]
pub use missing_session::MissingSession;
