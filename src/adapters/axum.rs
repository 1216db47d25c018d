//! `SessionInfo` as an axum extractor, and `Rejection` as an axum response
//! (feature `axum`).
//!
//! `SessionInfo` refuses the request with 401 when the layer did not run (it is
//! missing from the route); `Option<SessionInfo>` never refuses.

use std::convert::Infallible;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;

use crate::adapters::MissingSession;
use crate::verifier::rejection::Rejection;
use crate::verifier::session::SessionInfo;

impl<S: Send + Sync> FromRequestParts<S> for SessionInfo {
    type Rejection = MissingSession;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<SessionInfo>()
            .cloned()
            .ok_or(MissingSession)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for SessionInfo {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Infallible> {
        Ok(parts.extensions.get::<SessionInfo>().cloned())
    }
}

impl IntoResponse for MissingSession {
    fn into_response(self) -> Response {
        self.response().map(axum_core::body::Body::from)
    }
}

impl IntoResponse for Rejection {
    /// The layer's answer, byte for byte, in axum's body type.
    fn into_response(self) -> Response {
        self.into_bytes_response().map(axum_core::body::Body::from)
    }
}

/// `WebhookEvent` as an axum extractor, behind `ComposioWebhookLayer`; on a route
/// without the layer it refuses (401, as a delivery without its headers): it fails
/// closed.
#[cfg(feature = "webhook")]
impl<S: Send + Sync> FromRequestParts<S> for crate::webhook::event::WebhookEvent {
    type Rejection = crate::webhook::rejection::WebhookRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Self>().cloned().ok_or_else(|| {
            tracing::error!(
                target: crate::TRACING_TARGET,
                "WebhookEvent extracted on a route without ComposioWebhookLayer; answering 401"
            );
            crate::webhook::rejection::WebhookRejection::new(
                crate::webhook::rejection::Reason::Headers,
            )
        })
    }
}

#[cfg(feature = "webhook")]
impl IntoResponse for crate::webhook::rejection::WebhookRejection {
    /// The webhook layer's answer, byte for byte, in axum's body type.
    fn into_response(self) -> Response {
        self.into_bytes_response().map(axum_core::body::Body::from)
    }
}
