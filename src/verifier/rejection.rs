//! [`Rejection`]: the layer's answer for a request it refuses, as a value, for code
//! that verifies with [`ComposioAuthLayer::verify`](crate::ComposioAuthLayer::verify)
//! instead of a tower service.

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::verifier::envelope::{request_id, ErrorEnvelope, Refusal};
use crate::verifier::headers::RequestHeaders;

/// Why [`ComposioAuthLayer::verify`](crate::ComposioAuthLayer::verify) refused a
/// request's headers: 401, 403 or 503, with exactly the status, headers
/// (`Content-Type`, `WWW-Authenticate` on a 401, `Retry-After` on a 503) and JSON
/// envelope that the layer answers an HTTP request with for the same headers.
///
/// ```no_run
/// use bytes::Bytes;
/// use http_body_util::Full;
///
/// # async fn handle(headers: http::HeaderMap) -> http::Response<Full<Bytes>> {
/// let auth = composio_auth::ComposioAuthLayer::new();
/// match auth.verify(&headers).await {
///     Ok(session) => http::Response::new(Full::from(session.org_member.email.clone())),
///     Err(rejection) => rejection.into_http_response(),
/// }
/// # }
/// ```
///
/// In axum, a `Rejection` is also an `IntoResponse` (feature `axum`), and in
/// actix-web a `ResponseError` (feature `actix-web`): both give the same answer.
#[derive(Clone)]
pub struct Rejection(Box<Rendered>);

/// A rejection's parts, boxed: a `Result<SessionInfo, Rejection>` stays small,
/// and only a refusal pays for the allocation.
#[derive(Clone)]
struct Rendered {
    envelope: ErrorEnvelope,
    response: Response<Bytes>,
}

impl Rejection {
    /// `refusal` as the layer renders it for a request with `headers`.
    pub(crate) fn new(refusal: &Refusal, headers: &RequestId, challenge: &HeaderValue) -> Self {
        let envelope = refusal.envelope(headers.0.as_deref());
        let response = refusal.render_envelope(&envelope, challenge);
        Self(Box::new(Rendered { envelope, response }))
    }

    /// The HTTP status: 401, 403 or 503.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.0.response.status()
    }

    /// The JSON envelope of the answer (Composio's own where Composio decided).
    #[must_use]
    pub fn envelope(&self) -> &ErrorEnvelope {
        &self.0.envelope
    }

    /// The answer's headers: `Content-Type`, and `WWW-Authenticate` on a 401 or
    /// `Retry-After` on a 503.
    #[must_use]
    pub fn headers(&self) -> &HeaderMap {
        self.0.response.headers()
    }

    /// The whole HTTP answer, byte for byte what the layer sends. (axum's
    /// `IntoResponse` and actix-web's `ResponseError` give the same answer in their
    /// own types.)
    #[must_use]
    pub fn into_http_response(self) -> Response<Full<Bytes>> {
        self.0.response.map(Full::new)
    }

    /// The whole HTTP answer with its body still as bytes, for an adapter to put in
    /// its framework's body type.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn into_bytes_response(self) -> Response<Bytes> {
        self.0.response
    }

    /// The whole HTTP answer, for an adapter to copy into its framework's type.
    #[cfg_attr(not(feature = "actix-web"), allow(dead_code))]
    pub(crate) fn response(&self) -> &Response<Bytes> {
        &self.0.response
    }
}

/// The inbound `x-request-id` a rejection may echo, taken from the headers so the
/// future of `verify` borrows nothing.
pub(crate) struct RequestId(Option<String>);

impl RequestId {
    pub(crate) fn of(headers: &impl RequestHeaders) -> Self {
        Self(request_id(headers).map(str::to_owned))
    }
}

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejection")
            .field("status", &self.status())
            .field("envelope", &self.0.envelope)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.status().as_u16(),
            self.0.envelope.error.message
        )
    }
}

impl std::error::Error for Rejection {}
