//! Composio's error envelope, and how a rejection renders for HTTP and gRPC clients.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde::{Deserialize, Serialize};

use crate::verifier::headers::RequestHeaders;

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
pub(crate) struct Refusal {
    status: StatusCode,
    body: ErrorBody,
    /// Made by this crate (not passed through from Composio): carries the inbound
    /// `x-request-id` as `request_id`.
    local: bool,
    /// Composio refused the key itself (its 401 or 403), not only the scope a user
    /// key's selectors chose (its 400 or 404, or a deleted project).
    refuses_key: bool,
    retry_after_secs: Option<u64>,
}

impl Refusal {
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
            refuses_key: false,
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

    /// A user key whose selectors choose no scope (one without the other, one sent
    /// twice, or a value that cannot be an id): answered here, asking nobody.
    pub(crate) fn bad_scope(message: &str) -> Self {
        Self::local(
            StatusCode::BAD_REQUEST,
            10400,
            "HTTP_BadRequest",
            message,
            "Send both x-org-id and x-project-id (Composio's ids, such as org_... and proj_...) or neither.",
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

    /// The `require` predicate refused the session.
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

    /// Composio's own verdict, passed through with the status this layer answers;
    /// `refuses_key` when it refused the key itself, not only a scope.
    pub(crate) fn upstream(status: StatusCode, mut body: ErrorBody, refuses_key: bool) -> Self {
        body.status = status.as_u16();
        Self {
            status,
            body,
            local: false,
            refuses_key,
            retry_after_secs: None,
        }
    }

    /// Whether Composio refused the key itself (so every scope of a user key), not
    /// only the scope it was asked about.
    pub(crate) fn refuses_key(&self) -> bool {
        self.refuses_key
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
            StatusCode::BAD_REQUEST => 3,   // INVALID_ARGUMENT
            _ => 14,                        // UNAVAILABLE
        }
    }

    /// Renders the rejection for a request with these headers: a trailers-only
    /// `grpc-status` for a gRPC or gRPC-web request, else the JSON envelope
    /// (carrying the request's `x-request-id` when the layer made the envelope, and
    /// `challenge` as `WWW-Authenticate` on a 401).
    pub(crate) fn render_for(
        &self,
        headers: &HeaderMap,
        challenge: &HeaderValue,
    ) -> Response<Bytes> {
        match grpc_content_type(headers) {
            Some(content_type) => self.render_grpc(content_type),
            None => self.render_http(request_id(headers), challenge),
        }
    }

    /// The JSON envelope; `request_id` goes into envelopes the layer made.
    pub(crate) fn render_http(
        &self,
        request_id: Option<&str>,
        challenge: &HeaderValue,
    ) -> Response<Bytes> {
        self.render_envelope(&self.envelope(request_id), challenge)
    }

    /// The envelope a client reads; `request_id` goes into envelopes the layer made.
    pub(crate) fn envelope(&self, request_id: Option<&str>) -> ErrorEnvelope {
        let mut error = self.body.clone();
        if let Some(id) = request_id.filter(|_| self.local) {
            error.request_id = Some(id.to_owned());
        }
        ErrorEnvelope { error }
    }

    /// `envelope` as this rejection's HTTP answer: its status, `Content-Type`,
    /// `WWW-Authenticate` (`challenge`) on a 401, `Retry-After` on a 503.
    pub(crate) fn render_envelope(
        &self,
        envelope: &ErrorEnvelope,
        challenge: &HeaderValue,
    ) -> Response<Bytes> {
        // Serialising plain strings and numbers cannot fail.
        let bytes = serde_json::to_vec(envelope)
            .map(Bytes::from)
            .unwrap_or_default();
        let mut response = Response::new(bytes);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(WWW_AUTHENTICATE, challenge.clone());
        }
        if let Some(secs) = self.retry_after_secs {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }

    /// A trailers-only gRPC response: HTTP 200, status in the headers, no body, and
    /// the request's own content type (gRPC-web clients check its family).
    fn render_grpc(&self, content_type: HeaderValue) -> Response<Bytes> {
        let mut response = Response::new(Bytes::new());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, content_type);
        headers.insert("grpc-status", HeaderValue::from(self.grpc_code()));
        let message = bounded(&self.body.message, MAX_GRPC_MESSAGE_BYTES);
        let message = utf8_percent_encode(message, GRPC_MESSAGE).to_string();
        if let Ok(value) = HeaderValue::from_str(&message) {
            headers.insert("grpc-message", value);
        }
        if let Some(secs) = self.retry_after_secs {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Longest `grpc-message`, in bytes before percent-encoding (at most three times
/// that after): gRPC clients refuse header blocks past a few KiB (grpcio's default
/// limit is 8 KiB, and tonic reports an h2 protocol error) instead of reading the
/// status. Longer messages are cut on a character boundary.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 512;

/// Longest inbound `x-request-id` echoed in an envelope; a longer one, an empty one,
/// or one with bytes outside visible ASCII is not echoed (the envelope then has no
/// `request_id`).
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// The `WWW-Authenticate` challenge of a 401: one `ApiKey` challenge per header the
/// layer accepts (RFC 9110, section 11.6.1), so a client that follows it sends the
/// key where it is accepted.
pub(crate) fn challenge<'a>(headers: impl IntoIterator<Item = &'a str>) -> HeaderValue {
    let challenges: Vec<String> = headers
        .into_iter()
        .map(|header| match header {
            "authorization" => r#"Bearer realm="composio""#.to_owned(),
            header => format!(r#"ApiKey realm="composio", header="{header}""#),
        })
        .collect();
    // Header names are lowercase ASCII: always a valid value.
    HeaderValue::from_str(&challenges.join(", "))
        .unwrap_or_else(|_| HeaderValue::from_static(r#"ApiKey realm="composio""#))
}

/// The inbound `x-request-id`, if it is fit to echo.
pub(crate) fn request_id(headers: &impl RequestHeaders) -> Option<&str> {
    let bytes = headers.first("x-request-id")?;
    let fit = (1..=MAX_REQUEST_ID_BYTES).contains(&bytes.len())
        && bytes.iter().all(|b| (0x21..=0x7E).contains(b));
    fit.then(|| std::str::from_utf8(bytes).ok()).flatten()
}

/// For a gRPC request (`application/grpc`, optionally followed by `+`, `-` or `;`,
/// in any case), the content type to answer with: the request's own media type,
/// lowercased (`application/grpc`, `application/grpc+proto`,
/// `application/grpc-web+proto`, `application/grpc-web-text`, ...).
fn grpc_content_type(headers: &HeaderMap) -> Option<HeaderValue> {
    const GRPC: &[u8] = b"application/grpc";
    let value = headers.get(CONTENT_TYPE)?.as_bytes();
    let media = value.split(|b| *b == b';').next()?.trim_ascii();
    let rest = media.get(GRPC.len()..)?;
    if !media[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        || !matches!(rest.first(), None | Some(b'+' | b'-'))
    {
        return None;
    }
    HeaderValue::from_bytes(&media.to_ascii_lowercase()).ok()
}

/// `message` cut to at most `max` bytes, on a character boundary.
fn bounded(message: &str, max: usize) -> &str {
    let mut end = message.len().min(max);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Bytes the gRPC spec requires percent-encoded in `grpc-message` (and `%` itself).
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(response: &Response<Bytes>) -> ErrorEnvelope {
        serde_json::from_slice(response.body()).unwrap()
    }

    #[test]
    fn no_credential_speaks_composio() {
        let response =
            Refusal::no_credential("x-api-key").render_http(None, &challenge(["x-api-key"]));
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
        let envelope =
            parse(&Refusal::forbidden().render_http(Some("req-123"), &challenge(["x-api-key"])));
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
        let rejection = Refusal::upstream(StatusCode::UNAUTHORIZED, body.clone(), true);
        let envelope = parse(&rejection.render_http(Some("inbound"), &challenge(["x-api-key"])));
        assert_eq!(envelope.error.status, 401);
        assert_eq!(envelope.error.request_id.as_deref(), Some("upstream-1"));
        assert_eq!(envelope.error.message, body.message);
        assert_eq!(envelope.error.errors, body.errors);
    }

    #[test]
    fn unavailable_has_a_bounded_retry_after() {
        let response = Refusal::unavailable("upstream answered 502", None)
            .render_http(None, &challenge(["x-api-key"]));
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[RETRY_AFTER], "5");
        assert!(!response.headers().contains_key(WWW_AUTHENTICATE));
        let response =
            Refusal::unavailable("429", Some(3600)).render_http(None, &challenge(["x-api-key"]));
        assert_eq!(response.headers()[RETRY_AFTER], "60");
        let response =
            Refusal::unavailable("429", Some(0)).render_http(None, &challenge(["x-api-key"]));
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        assert_eq!(parse(&response).error.errors, Some(vec!["429".to_owned()]));
    }

    #[test]
    fn grpc_rejections_are_trailers_only() {
        for (rejection, code) in [
            (Refusal::no_credential("x-api-key"), "16"),
            (Refusal::forbidden(), "7"),
            (Refusal::bad_scope("lone"), "3"),
            (Refusal::unavailable("down", None), "14"),
        ] {
            let response = rejection.render_grpc(HeaderValue::from_static("application/grpc"));
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
            assert_eq!(response.headers()["grpc-status"], code);
            assert!(response.body().is_empty());
        }
    }

    /// A gRPC rejection carrying Composio's `message`.
    fn grpc_rejection(message: String) -> Response<Bytes> {
        let body = ErrorBody {
            message,
            code: 1,
            slug: None,
            status: 401,
            request_id: None,
            suggested_fix: None,
            errors: None,
        };
        Refusal::upstream(StatusCode::UNAUTHORIZED, body, true)
            .render_grpc(HeaderValue::from_static("application/grpc"))
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        let response = grpc_rejection("100% bad\nkey ü".into());
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

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn grpc_is_recognised_in_any_case_and_only_as_a_whole_media_type() {
        let kind = |ct: &[u8]| grpc_content_type(&headers(&[("content-type", ct)]));
        for (sent, answered) in [
            (&b"application/grpc"[..], "application/grpc"),
            (b"Application/gRPC", "application/grpc"),
            (b"application/grpc+proto", "application/grpc+proto"),
            (b"application/grpc; charset=utf-8", "application/grpc"),
            (b"application/grpc-web", "application/grpc-web"),
            (b"application/GRPC-Web+proto", "application/grpc-web+proto"),
            (b"application/grpc-web-text", "application/grpc-web-text"),
        ] {
            assert_eq!(kind(sent).unwrap(), answered, "{sent:?}");
        }
        for not_grpc in [
            &b"application/grpcx"[..],
            b"application/json",
            b"text/grpc",
            b"application/grp",
        ] {
            assert!(kind(not_grpc).is_none(), "{not_grpc:?}");
        }
        assert!(grpc_content_type(&HeaderMap::new()).is_none());
    }

    #[test]
    fn grpc_web_rejections_answer_in_the_requests_content_type() {
        let request = headers(&[("content-type", b"application/grpc-web-text")]);
        let response =
            Refusal::no_credential("x-api-key").render_for(&request, &challenge(["x-api-key"]));
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "application/grpc-web-text"
        );
        assert_eq!(response.headers()["grpc-status"], "16");
    }

    #[test]
    fn grpc_message_is_bounded_on_a_character_boundary() {
        let response = grpc_rejection("é".repeat(6_000));
        let message = response.headers()["grpc-message"].to_str().unwrap();
        assert_eq!(message, "%C3%A9".repeat(MAX_GRPC_MESSAGE_BYTES / 2));
        assert_eq!(bounded("aé", 2), "a");
        assert_eq!(bounded("short", 512), "short");
    }

    #[test]
    fn only_a_bounded_visible_request_id_is_echoed() {
        let id = |value: &[u8]| request_id(&headers(&[("x-request-id", value)])).map(str::to_owned);
        assert_eq!(id(b"req-1").as_deref(), Some("req-1"));
        let longest = "r".repeat(MAX_REQUEST_ID_BYTES);
        assert_eq!(id(longest.as_bytes()), Some(longest.clone()));
        assert_eq!(id(format!("{longest}r").as_bytes()), None);
        assert_eq!(id(b"with space"), None);
        assert_eq!(id("caf\u{e9}".as_bytes()), None);
        assert_eq!(id(b""), None);
    }

    #[test]
    fn the_challenge_names_every_accepted_header() {
        assert_eq!(
            challenge(["x-user-api-key"]),
            r#"ApiKey realm="composio", header="x-user-api-key""#
        );
        assert_eq!(
            challenge(["x-api-key", "x-org-api-key"]),
            r#"ApiKey realm="composio", header="x-api-key", ApiKey realm="composio", header="x-org-api-key""#
        );
    }
}
