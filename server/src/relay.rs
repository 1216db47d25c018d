//! `--webhook-forward`: Composio's webhook deliveries, verified and deduplicated by
//! the library's `ComposioWebhookLayer`, forwarded to the app with their headers
//! and body; the app's answer goes back to Composio. An app that cannot be reached
//! (502) or does not answer in time (504) is a non-2xx answer: the layer does not
//! acknowledge the delivery, and Composio's retry is forwarded again.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use composio_auth::{ComposioWebhookLayer, ErrorBody, ErrorEnvelope};

/// The largest answer of the app passed back to Composio (which reads no more
/// than an acknowledgement): a larger one is a 502.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// What `--webhook-*` configure.
pub struct Webhooks {
    /// Where deliveries arrive on the public listener.
    pub path: String,
    /// The app's URL (never logged: it may hold credentials).
    pub forward: reqwest::Url,
    /// How long the app has to answer, its whole body included.
    pub timeout: Duration,
    /// Verification and once-delivery.
    pub layer: ComposioWebhookLayer,
}

/// The forwarding handler's state.
struct Relay {
    client: reqwest::Client,
    forward: reqwest::Url,
    timeout: Duration,
}

/// `router` with the webhook path routed to the relay, behind the layer (any
/// method: the layer answers 405 to all but POST).
///
/// # Errors
///
/// When the HTTP client cannot be made (one line).
pub fn route(router: Router, webhooks: Webhooks) -> Result<Router, String> {
    let client = reqwest::Client::builder()
        // The app's own answer, redirects included, goes back as it is.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|error| format!("cannot make the webhook relay's HTTP client: {error}"))?;
    let relay = Arc::new(Relay {
        client,
        forward: webhooks.forward,
        timeout: webhooks.timeout,
    });
    // The layer refuses what it must (an oversized body too, read to its end
    // within the library's drain limits first, so a proxy in front sees the answer
    // and not a reset).
    let handler = any(forward).with_state(relay).layer(webhooks.layer);
    Ok(router.route(&webhooks.path, handler))
}

/// Why a delivery was not passed on (or its answer not passed back).
#[derive(Debug)]
enum Undelivered {
    /// Connection refused or reset, not HTTP, or an answer over the limit: 502.
    BadGateway(String),
    /// No whole answer within `--webhook-timeout`: 504.
    Timeout,
}

/// A verified delivery that no copy has had acknowledged: forwarded, answered
/// with the app's answer or an [`Undelivered`]'s.
async fn forward(State(relay): State<Arc<Relay>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let id = parts
        .headers
        .get("webhook-id")
        .and_then(|id| id.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // The layer rebuilt the body from the bytes it verified: one chunk, in memory.
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(error) => return Undelivered::BadGateway(error.to_string()).answer(&id),
    };
    let deadline = tokio::time::Instant::now() + relay.timeout;
    let sent = relay.send(&parts.method, &parts.headers, body);
    let answer = match tokio::time::timeout_at(deadline, sent).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(failure)) => return failure.answer(&id),
        Err(_) => return Undelivered::Timeout.answer(&id),
    };
    let status = answer.status();
    let headers = end_to_end(answer.headers());
    let body = match tokio::time::timeout_at(deadline, read_answer(answer)).await {
        Ok(Ok(bytes)) => bytes,
        // The app handled the delivery (its status says so) but its body could
        // not be passed back: its status goes back, so the delivery is
        // acknowledged and not handled again on Composio's retry.
        _ if status.is_success() => {
            tracing::warn!(status = status.as_u16(), "the app's answer to a webhook delivery could not be read whole; its status is passed back without its body");
            Vec::new()
        }
        Ok(Err(failure)) => return failure.answer(&id),
        Err(_) => return Undelivered::Timeout.answer(&id),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

impl Relay {
    /// The delivery sent to the app (without any `x-composio-*` identity header a
    /// sender added: the signature does not cover headers), up to the app's
    /// status line and headers.
    async fn send(
        &self,
        method: &axum::http::Method,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<reqwest::Response, Undelivered> {
        let mut headers = end_to_end(headers);
        let identity: Vec<HeaderName> = headers
            .keys()
            .filter(|name| {
                let name = name.as_str();
                name.starts_with("x-composio-")
                    && !matches!(
                        name,
                        "x-composio-webhook-version" | "x-composio-delivery-attempt"
                    )
            })
            .cloned()
            .collect();
        for name in identity {
            headers.remove(name);
        }
        self.client
            .request(method.clone(), self.forward.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|error| Undelivered::BadGateway(described(error)))
    }
}

/// The app's whole answer body, up to [`MAX_ANSWER_BYTES`].
async fn read_answer(mut answer: reqwest::Response) -> Result<Vec<u8>, Undelivered> {
    let mut bytes = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|error| Undelivered::BadGateway(described(error)))?
    {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(Undelivered::BadGateway(format!(
                "the app's answer is over {MAX_ANSWER_BYTES} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// A client error without the URL (it may hold credentials), with its causes
/// ("connection refused").
fn described(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Headers meant for one connection only: never forwarded, either way. `host` is
/// the app's, `content-length` is set again for the bytes sent, and `expect`
/// asked for a body the relay already holds.
const HOP_BY_HOP: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "expect",
];

/// `headers` without the hop-by-hop ones (those `Connection` names included) and
/// `content-length`.
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !HOP_BY_HOP.contains(&name)
                && name != header::CONTENT_LENGTH.as_str()
                && !named.iter().any(|n| n == name)
        })
        .map(|(name, value)| (HeaderName::clone(name), HeaderValue::clone(value)))
        .collect()
}

impl Undelivered {
    /// The envelope's status, code, slug, message and fix.
    fn parts(&self) -> (StatusCode, i64, &'static str, &'static str, &'static str) {
        match self {
            Self::BadGateway(_) => (
                StatusCode::BAD_GATEWAY,
                10502,
                "Webhook_AppUnreachable",
                "The app behind the webhook relay could not be reached, or its answer could not be read",
                "Check that the app listens at --webhook-forward; the delivery was not acknowledged and Composio retries it.",
            ),
            Self::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                10504,
                "Webhook_AppTimeout",
                "The app behind the webhook relay did not answer within --webhook-timeout",
                "Answer deliveries sooner (queue the work), or raise --webhook-timeout; the delivery was not acknowledged and Composio retries it.",
            ),
        }
    }

    /// Logged (the delivery's id and why, never its body or a secret), and
    /// answered with the envelope.
    fn answer(self, id: &str) -> Response {
        match &self {
            Self::BadGateway(why) => {
                tracing::warn!(webhook_id = id, "webhook delivery not passed on: {why}")
            }
            Self::Timeout => tracing::warn!(
                webhook_id = id,
                "webhook delivery not passed on: the app did not answer in time"
            ),
        }
        let (status, code, slug, message, fix) = self.parts();
        let envelope = ErrorEnvelope {
            error: ErrorBody {
                message: message.to_owned(),
                code,
                slug: Some(slug.to_owned()),
                status: status.as_u16(),
                request_id: None,
                suggested_fix: Some(fix.to_owned()),
                errors: None,
            },
        };
        let body = serde_json::to_vec(&envelope).unwrap_or_default();
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_host_stay_behind() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", "relay.example"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("content-length", "12"),
            ("webhook-id", "msg_1"),
            ("x-composio-webhook-version", "V3"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        headers.append("webhook-signature", HeaderValue::from_static("v1,a"));
        headers.append("webhook-signature", HeaderValue::from_static("v1,b"));
        let kept = end_to_end(&headers);
        let names: Vec<&str> = kept.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "webhook-id",
                "x-composio-webhook-version",
                "webhook-signature"
            ]
        );
        assert_eq!(kept.get_all("webhook-signature").iter().count(), 2);
    }

    #[test]
    fn failures_answer_with_the_envelope() {
        for (failure, status, code) in [
            (Undelivered::BadGateway("refused".into()), 502, 10502),
            (Undelivered::Timeout, 504, 10504),
        ] {
            let (s, c, slug, ..) = failure.parts();
            assert_eq!((s.as_u16(), c), (status, code));
            assert!(slug.starts_with("Webhook_App"));
        }
    }
}
