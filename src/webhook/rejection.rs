//! [`WebhookRejection`]: the answer to a delivery that is refused, with the reason
//! it names in metrics and logs.

use std::fmt;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::verifier::envelope::{ErrorBody, ErrorEnvelope};

/// Why a delivery was refused, in the order the checks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Anything but `POST`: 405.
    Method,
    /// `webhook-id`, `webhook-timestamp` or `webhook-signature` missing, empty or
    /// malformed: 401.
    Headers,
    /// `webhook-timestamp` outside the tolerance: 401.
    Timestamp,
    /// A body over the limit: 413.
    TooLarge,
    /// A body that broke off while it was read: 400.
    Unreadable,
    /// No entry of `webhook-signature` matches: 401.
    Signature,
    /// A signed body that is not JSON, or no payload version Composio sends: 400.
    Payload,
}

impl Reason {
    /// The reason's name in metrics and logs.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Headers => "headers",
            Self::Timestamp => "timestamp",
            Self::TooLarge => "too_large",
            Self::Unreadable => "unreadable",
            Self::Signature => "signature",
            Self::Payload => "payload",
        }
    }

    /// Every reason, for metrics registered up front.
    #[cfg_attr(not(any(test, feature = "metrics")), allow(dead_code))]
    pub(crate) const ALL: [Self; 7] = [
        Self::Method,
        Self::Headers,
        Self::Timestamp,
        Self::TooLarge,
        Self::Unreadable,
        Self::Signature,
        Self::Payload,
    ];

    /// Status, code, slug, message and fix.
    const fn answer(self) -> (StatusCode, i64, &'static str, &'static str, &'static str) {
        match self {
            Self::Method => (
                StatusCode::METHOD_NOT_ALLOWED,
                10405,
                "Webhook_MethodNotAllowed",
                "Composio delivers webhooks with POST",
                "Send the delivery with POST.",
            ),
            Self::Headers => (
                StatusCode::UNAUTHORIZED,
                10421,
                "Webhook_MissingHeaders",
                "The delivery lacks a well-formed webhook-id, webhook-timestamp or webhook-signature header",
                "Deliveries come from Composio with all three headers; point the webhook subscription at this URL.",
            ),
            Self::Timestamp => (
                StatusCode::UNAUTHORIZED,
                10422,
                "Webhook_TimestampOutsideTolerance",
                "The delivery's webhook-timestamp is too far from this server's clock",
                "Check this server's clock; a delivery replayed later than the tolerance is refused.",
            ),
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                10413,
                "Webhook_PayloadTooLarge",
                "The delivery's body is over this service's limit",
                "Raise max_body_bytes if the trigger's payloads are this large.",
            ),
            Self::Unreadable => (
                StatusCode::BAD_REQUEST,
                10400,
                "Webhook_BodyUnreadable",
                "The delivery's body broke off while it was read",
                "Send the delivery again.",
            ),
            Self::Signature => (
                StatusCode::UNAUTHORIZED,
                10423,
                "Webhook_InvalidSignature",
                "No webhook-signature entry matches the delivery",
                "Configure the webhook secret of this project's webhook subscription.",
            ),
            Self::Payload => (
                StatusCode::BAD_REQUEST,
                10424,
                "Webhook_InvalidPayload",
                "The signed body is not a Composio event payload (V1, V2 or V3)",
                "Deliveries come from Composio's webhook subscriptions.",
            ),
        }
    }
}

/// A refused webhook delivery: its status, JSON envelope and headers, exactly as
/// [`ComposioWebhookLayer`](crate::ComposioWebhookLayer) answers it (and
/// [`verify`](crate::ComposioWebhookLayer::verify) returns it).
///
/// | status | code | slug | when |
/// |---|---|---|---|
/// | 405 (`Allow: POST`) | 10405 | `Webhook_MethodNotAllowed` | any method but `POST` |
/// | 401 | 10421 | `Webhook_MissingHeaders` | `webhook-id`, `webhook-timestamp` or `webhook-signature` missing, empty or malformed (a non-numeric timestamp too) |
/// | 401 | 10422 | `Webhook_TimestampOutsideTolerance` | the timestamp further from now than the tolerance, either way |
/// | 413 | 10413 | `Webhook_PayloadTooLarge` | a body over `max_body_bytes` |
/// | 400 | 10400 | `Webhook_BodyUnreadable` | a body that broke off |
/// | 401 | 10423 | `Webhook_InvalidSignature` | no `v1` entry of `webhook-signature` matches |
/// | 400 | 10424 | `Webhook_InvalidPayload` | a signed body that is not JSON or no payload version |
///
/// The checks run in that order: a delivery is refused for the first that fails.
/// Nothing in a rejection, its `Debug` or its `Display` holds a secret or the body.
#[derive(Clone)]
pub struct WebhookRejection {
    reason: Reason,
    /// Boxed: a `Result<WebhookEvent, WebhookRejection>` stays small.
    envelope: Box<ErrorEnvelope>,
}

impl WebhookRejection {
    pub(crate) fn new(reason: Reason) -> Self {
        let (status, code, slug, message, fix) = reason.answer();
        let envelope = Box::new(ErrorEnvelope {
            error: ErrorBody {
                message: message.to_owned(),
                code,
                slug: Some(slug.to_owned()),
                status: status.as_u16(),
                request_id: None,
                suggested_fix: Some(fix.to_owned()),
                errors: None,
            },
        });
        Self { reason, envelope }
    }

    pub(crate) fn reason(&self) -> Reason {
        self.reason
    }

    /// The HTTP status: 400, 401, 405 or 413.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.reason.answer().0
    }

    /// The JSON envelope of the answer.
    #[must_use]
    pub fn envelope(&self) -> &ErrorEnvelope {
        &self.envelope
    }

    /// The whole HTTP answer, byte for byte what the layer sends: the status,
    /// `Content-Type: application/json` (and `Allow: POST` on a 405), and the
    /// envelope.
    #[must_use]
    pub fn into_http_response(self) -> Response<Full<Bytes>> {
        self.into_bytes_response().map(Full::new)
    }

    /// As [`into_http_response`](Self::into_http_response), with the body as bytes.
    pub(crate) fn into_bytes_response(self) -> Response<Bytes> {
        let body = serde_json::to_vec(&self.envelope).unwrap_or_default();
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.reason == Reason::Method {
            headers.insert(ALLOW, HeaderValue::from_static("POST"));
        }
        response
    }
}

impl fmt::Debug for WebhookRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookRejection")
            .field("status", &self.status())
            .field("reason", &self.reason.as_str())
            .finish()
    }
}

impl fmt::Display for WebhookRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.status().as_u16(),
            self.envelope.error.message
        )
    }
}

impl std::error::Error for WebhookRejection {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_status_code_and_slug() {
        let mut codes = std::collections::HashSet::new();
        for reason in Reason::ALL {
            let rejection = WebhookRejection::new(reason);
            let error = &rejection.envelope().error;
            assert_eq!(error.status, rejection.status().as_u16());
            assert!(codes.insert(error.code), "{reason:?}");
            let response = rejection.clone().into_http_response();
            assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
            assert_eq!(
                response.headers().contains_key(ALLOW),
                reason == Reason::Method
            );
            assert!(format!("{rejection:?}").contains(reason.as_str()));
        }
    }
}
