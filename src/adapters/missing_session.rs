//! [`MissingSession`]: what the `SessionInfo` extractor of every framework answers
//! on a route the layer does not protect.

use bytes::Bytes;
use http::Response;

use crate::verifier::envelope::{challenge, Refusal};
use crate::TRACING_TARGET;

/// The rejection of the `SessionInfo` extractor (axum's and actix-web's) on a
/// request the layer did not verify (the route is not behind
/// [`ComposioAuthLayer`](crate::ComposioAuthLayer)). Answers 401 with the "no API
/// key" envelope: it fails closed. `Option<SessionInfo>` never refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingSession;

impl MissingSession {
    /// The answer, logged as the configuration error it is.
    pub(crate) fn response(self) -> Response<Bytes> {
        tracing::error!(
            target: TRACING_TARGET,
            "SessionInfo extracted on a route without ComposioAuthLayer; answering 401"
        );
        Refusal::no_credential("x-api-key").render_http(None, &challenge(["x-api-key"]))
    }
}

impl std::fmt::Display for MissingSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no SessionInfo: the route is not behind ComposioAuthLayer")
    }
}

impl std::error::Error for MissingSession {}
