//! `SessionInfo` as an axum extractor (feature `axum`).
//!
//! `SessionInfo` refuses the request with 401 when the layer did not run (it is
//! missing from the route); `Option<SessionInfo>` never refuses.

use std::convert::Infallible;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;

use crate::envelope::{challenge, Refusal};
use crate::session::SessionInfo;
use crate::TRACING_TARGET;

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

/// The rejection of the `SessionInfo` extractor on a request the layer did not
/// verify (the route is not behind [`ComposioAuthLayer`](crate::ComposioAuthLayer)).
/// Answers 401 with the "no API key" envelope: it fails closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingSession;

impl IntoResponse for MissingSession {
    fn into_response(self) -> Response {
        tracing::error!(
            target: TRACING_TARGET,
            "SessionInfo extracted on a route without ComposioAuthLayer; answering 401"
        );
        Refusal::no_credential("x-api-key")
            .render_http(None, &challenge(["x-api-key"]))
            .map(axum_core::body::Body::from)
    }
}
