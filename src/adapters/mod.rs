//! The framework adapters (tower, axum, actix-web), each a thin layer over the
//! verifier (`crate::verifier`): they take a request's headers to it and turn its
//! verdict into their framework's response. Which file does what: ARCHITECTURE.md.

#[cfg(feature = "actix-web")]
pub(crate) mod actix;
#[cfg(all(feature = "actix-web", feature = "webhook"))]
pub(crate) mod actix_webhook;
#[cfg(feature = "axum")]
pub(crate) mod axum;
#[cfg(any(feature = "axum", feature = "actix-web"))]
mod missing_session;
pub(crate) mod tower;

#[cfg(any(feature = "axum", feature = "actix-web"))]
pub use missing_session::MissingSession;
