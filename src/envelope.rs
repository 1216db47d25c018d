//! Composio's error envelope, and how a rejection renders for HTTP and gRPC clients.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde::{Deserialize, Serialize};

/// Composio's error envelope: `{"error": {...}}`.
///
/// Every rejection of the layer has this body (for HTTP clients), in Composio's own
/// words where Composio decided, so clients of a protected service handle one shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// The inside of an [`ErrorEnvelope`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Human-readable message.
    pub message: String,
    /// Composio's numeric error code (e.g. `801` for an invalid API key).
    pub code: i64,
    /// Composio's error slug (e.g. `APIKey_InvalidAPIKey`); missing in some revisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// The HTTP status of the response that carries the envelope.
    pub status: u16,
    /// Id of the request that failed, for support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// What the caller can do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggested_fix: Option<String>,
    /// Further details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
}

/// Seconds a client is told to wait after a 503 when the upstream gave no hint.
pub(crate) const DEFAULT_RETRY_AFTER_SECS: u64 = 5;
/// Longest `Retry-After` passed on to clients (Composio's clients ignore hints of 60 s or more).
pub(crate) const MAX_RETRY_AFTER_SECS: u64 = 60;

/// What a client receives instead of the inner service's answer: a status and an
/// envelope, rendered as JSON for HTTP clients and as `grpc-status` for gRPC clients.
#[derive(Clone, Debug)]
pub(crate) struct Rejection {
    status: StatusCode,
    body: ErrorBody,
    /// Made by this crate (not passed through from Composio): carries the inbound
    /// `x-request-id` as `request_id`.
    local: bool,
    retry_after_secs: Option<u64>,
}

impl Rejection {
    fn local(status: StatusCode, code: i64, slug: &str, message: &str, fix: &str) -> Self {
        Self {
            status,
            body: ErrorBody {
                message: message.to_owned(),
                code,
                slug: Some(slug.to_owned()),
                status: status.as_u16(),
                request_id: None,
                suggested_fix: Some(fix.to_owned()),
                errors: None,
            },
            local: true,
            retry_after_secs: None,
        }
    }

    /// No credential header at all.
    pub(crate) fn no_credential(header: &str) -> Self {
        Self::local(
            StatusCode::UNAUTHORIZED,
            906,
            "Auth_NoAuthProvided",
            "No API key provided",
            &format!("Send your Composio API key in the {header} header."),
        )
    }

    /// A Composio credential header this service does not accept.
    pub(crate) fn header_not_accepted(sent: &str, accepted: &str) -> Self {
        Self::local(
            StatusCode::UNAUTHORIZED,
            906,
            "Auth_NoAuthProvided",
            &format!("The {sent} header is not accepted by this service"),
            &format!("Send your Composio API key in the {accepted} header."),
        )
    }

    /// A key that cannot be a Composio key (empty, too long, invisible characters).
    pub(crate) fn malformed(header: &str) -> Self {
        Self::local(
            StatusCode::UNAUTHORIZED,
            801,
            "APIKey_InvalidAPIKey",
            "Invalid API key: not a well-formed key",
            &format!(
                "Send the API key exactly as Composio issued it in the {header} header: 1 to 256 visible ASCII characters."
            ),
        )
    }

    /// Several values or several credential headers.
    pub(crate) fn ambiguous() -> Self {
        Self::local(
            StatusCode::UNAUTHORIZED,
            10401,
            "HTTP_Unauthorized",
            "Multiple authentication modes were provided. Provide exactly one authentication mode per request.",
            "Send exactly one of x-api-key, x-user-api-key or x-org-api-key, once.",
        )
    }

    /// Composio answered 200, but marks the key or its project as deleted.
    pub(crate) fn deleted() -> Self {
        Self::local(
            StatusCode::UNAUTHORIZED,
            801,
            "APIKey_InvalidAPIKey",
            "Invalid API key: the key or its project has been deleted",
            "Create a new API key in the Composio dashboard.",
        )
    }

    /// The service's `authorize` predicate refused the session.
    pub(crate) fn forbidden() -> Self {
        Self::local(
            StatusCode::FORBIDDEN,
            10403,
            "HTTP_Forbidden",
            "This API key is not allowed to use this service",
            "Use a key of a project or member that this service accepts.",
        )
    }

    /// Nobody could decide: Composio unreachable, slow, failing or answering nonsense.
    pub(crate) fn unavailable(reason: impl Into<String>, retry_after_secs: Option<u64>) -> Self {
        let mut rejection = Self::local(
            StatusCode::SERVICE_UNAVAILABLE,
            10503,
            "HTTP_ServiceUnavailable",
            "The API key could not be verified right now",
            "Retry after the number of seconds in the Retry-After header.",
        );
        rejection.body.errors = Some(vec![reason.into()]);
        rejection.retry_after_secs = Some(
            retry_after_secs
                .unwrap_or(DEFAULT_RETRY_AFTER_SECS)
                .clamp(1, MAX_RETRY_AFTER_SECS),
        );
        rejection
    }

    /// Composio's own verdict, passed through with the status this layer answers.
    pub(crate) fn upstream(status: StatusCode, mut body: ErrorBody) -> Self {
        body.status = status.as_u16();
        Self {
            status,
            body,
            local: false,
            retry_after_secs: None,
        }
    }

    /// The HTTP status this rejection answers with.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The envelope's body.
    pub(crate) fn body(&self) -> &ErrorBody {
        &self.body
    }

    /// The `grpc-status` code for this rejection.
    pub(crate) fn grpc_code(&self) -> u16 {
        match self.status {
            StatusCode::UNAUTHORIZED => 16, // UNAUTHENTICATED
            StatusCode::FORBIDDEN => 7,     // PERMISSION_DENIED
            _ => 14,                        // UNAVAILABLE
        }
    }

    /// Renders the rejection for a request with these headers: a `grpc-status` for a
    /// gRPC request, else the JSON envelope (carrying the request's `x-request-id`
    /// when the layer made the envelope).
    pub(crate) fn render_for(&self, headers: &HeaderMap) -> Response<Bytes> {
        self.render(is_grpc(headers), headers.get("x-request-id"))
    }

    /// Renders the rejection for one request.
    pub(crate) fn render(&self, grpc: bool, request_id: Option<&HeaderValue>) -> Response<Bytes> {
        if grpc {
            return self.render_grpc();
        }
        let request_id = request_id
            .filter(|_| self.local)
            .and_then(|v| v.to_str().ok());
        let bytes = match request_id {
            Some(id) => {
                let mut body = self.body.clone();
                body.request_id = Some(id.to_owned());
                envelope_json(body)
            }
            None => envelope_json(self.body.clone()),
        };
        let mut response = Response::new(bytes);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"ApiKey realm="composio", header="x-api-key""#),
            );
        }
        if let Some(secs) = self.retry_after_secs {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }

    /// A trailers-only gRPC response: HTTP 200, status in the headers, no body.
    fn render_grpc(&self) -> Response<Bytes> {
        let mut response = Response::new(Bytes::new());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(self.grpc_code()));
        let message = utf8_percent_encode(&self.body.message, GRPC_MESSAGE).to_string();
        if let Ok(value) = HeaderValue::from_str(&message) {
            headers.insert("grpc-message", value);
        }
        if let Some(secs) = self.retry_after_secs {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Whether the request is gRPC (its rejection is then a `grpc-status`).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Bytes the gRPC spec requires percent-encoded in `grpc-message` (and `%` itself).
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

fn envelope_json(error: ErrorBody) -> Bytes {
    // Serialising plain strings and numbers cannot fail.
    serde_json::to_vec(&ErrorEnvelope { error })
        .map(Bytes::from)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(response: &Response<Bytes>) -> ErrorEnvelope {
        serde_json::from_slice(response.body()).unwrap()
    }

    #[test]
    fn no_credential_speaks_composio() {
        let response = Rejection::no_credential("x-api-key").render(false, None);
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert!(response.headers().contains_key(WWW_AUTHENTICATE));
        let envelope = parse(&response);
        assert_eq!(envelope.error.code, 906);
        assert_eq!(envelope.error.slug.as_deref(), Some("Auth_NoAuthProvided"));
        assert_eq!(envelope.error.status, 401);
        assert_eq!(envelope.error.message, "No API key provided");
        assert_eq!(envelope.error.request_id, None);
    }

    #[test]
    fn local_rejections_carry_the_inbound_request_id() {
        let id = HeaderValue::from_static("req-123");
        let envelope = parse(&Rejection::forbidden().render(false, Some(&id)));
        assert_eq!(envelope.error.request_id.as_deref(), Some("req-123"));
        assert_eq!(envelope.error.status, 403);
    }

    #[test]
    fn upstream_rejections_keep_their_own_request_id_and_take_the_answered_status() {
        let body = ErrorBody {
            message: "Invalid API key: ak_**ESjq".into(),
            code: 801,
            slug: Some("APIKey_InvalidAPIKey".into()),
            status: 404,
            request_id: Some("upstream-1".into()),
            suggested_fix: Some("Check the key".into()),
            errors: Some(vec!["detail".into()]),
        };
        let rejection = Rejection::upstream(StatusCode::UNAUTHORIZED, body.clone());
        let id = HeaderValue::from_static("inbound");
        let envelope = parse(&rejection.render(false, Some(&id)));
        assert_eq!(envelope.error.status, 401);
        assert_eq!(envelope.error.request_id.as_deref(), Some("upstream-1"));
        assert_eq!(envelope.error.message, body.message);
        assert_eq!(envelope.error.errors, body.errors);
    }

    #[test]
    fn unavailable_has_a_bounded_retry_after() {
        let response = Rejection::unavailable("upstream answered 502", None).render(false, None);
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[RETRY_AFTER], "5");
        assert!(!response.headers().contains_key(WWW_AUTHENTICATE));
        let response = Rejection::unavailable("429", Some(3600)).render(false, None);
        assert_eq!(response.headers()[RETRY_AFTER], "60");
        let response = Rejection::unavailable("429", Some(0)).render(false, None);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        assert_eq!(parse(&response).error.errors, Some(vec!["429".to_owned()]));
    }

    #[test]
    fn grpc_rejections_are_trailers_only() {
        for (rejection, code) in [
            (Rejection::no_credential("x-api-key"), "16"),
            (Rejection::forbidden(), "7"),
            (Rejection::unavailable("down", None), "14"),
        ] {
            let response = rejection.render(true, None);
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
            assert_eq!(response.headers()["grpc-status"], code);
            assert!(response.body().is_empty());
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        let body = ErrorBody {
            message: "100% bad\nkey ü".into(),
            code: 1,
            slug: None,
            status: 401,
            request_id: None,
            suggested_fix: None,
            errors: None,
        };
        let response = Rejection::upstream(StatusCode::UNAUTHORIZED, body).render(true, None);
        assert_eq!(
            response.headers()["grpc-message"],
            "100%25 bad%0Akey %C3%BC"
        );
    }

    #[test]
    fn envelope_without_slug_parses() {
        let envelope: ErrorEnvelope =
            serde_json::from_str(r#"{"error":{"message":"m","code":801,"status":401}}"#).unwrap();
        assert_eq!(envelope.error.slug, None);
    }
}
