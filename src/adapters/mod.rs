//! The framework adapters, each a thin layer over the verifier (`crate::verifier`):
//! they take a request's headers to it and turn its outcome into their framework's
//! answer.
//!
//! - `tower/`: the tower `Layer`'s service, its response future, and what a
//!   rejection does with a body still arriving.
//! - `axum.rs` (feature `axum`): `SessionInfo` and `Option<SessionInfo>` as axum
//!   extractors.

#[cfg(feature = "axum")]
pub(crate) mod axum;
pub(crate) mod tower;
