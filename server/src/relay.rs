//! `--webhook-forward`: Composio's webhook deliveries, verified and deduplicated by
//! the library's `ComposioWebhookLayer`, forwarded to the app with their headers
//! and body; the app's answer goes back to Composio. An app that cannot be reached
//! (502) or does not answer in time (504) is a non-2xx answer: the layer does not
//! acknowledge the delivery, and Composio's retry is forwarded again.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use composio_auth::limits::{DRAIN_IDLE_TIME, DRAIN_TIME, MAX_DRAINING};
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
    /// The layer's body limit.
    pub max_body_bytes: usize,
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
    let oversized = Arc::new(Oversized {
        limit: webhooks.max_body_bytes,
        body: OnceLock::new(),
    });
    let handler = any(forward)
        .with_state(relay)
        .layer(webhooks.layer)
        .layer(middleware::from_fn_with_state(oversized, linger));
    Ok(router.route(&webhooks.path, handler))
}

/// What [`linger`] hands the layer for a body over its limit.
struct Oversized {
    limit: usize,
    /// `limit + 1` bytes, made the first time one is needed.
    body: OnceLock<Bytes>,
}

/// Deliveries being drained now.
static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// A POST whose `Content-Length` is over the layer's limit: the layer answers 413
/// without reading it, and a connection closed with a body still arriving is a
/// reset that a proxy in front (nginx, Caddy) turns into its own 502. So its body
/// is read and discarded first, as nginx's lingering close does (at most the
/// library's `DRAIN_TIME`, `DRAIN_IDLE_TIME` between bytes, `MAX_DRAINING` at
/// once), and the layer is handed `limit + 1` bytes instead: its own 413, or the
/// 401 of headers it refuses first. Anything else goes to the layer untouched.
async fn linger(State(oversized): State<Arc<Oversized>>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
    let over = declared.is_some_and(|length| length > oversized.limit as u64);
    // A client that asked `Expect: 100-continue` sends nothing until answered.
    let expects = request.headers().contains_key(header::EXPECT);
    if !over || expects || request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(place) = Lingering::enter() else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    discard(body).await;
    drop(place);
    let stand_in = oversized
        .body
        .get_or_init(|| Bytes::from(vec![b' '; oversized.limit + 1]))
        .clone();
    next.run(Request::from_parts(parts, Body::from(stand_in)))
        .await
}

/// A place among the `MAX_DRAINING` deliveries drained at once, given back when
/// dropped (a delivery cancelled while it is drained too).
struct Lingering;

impl Lingering {
    fn enter() -> Option<Self> {
        let before = LINGERING.fetch_add(1, Ordering::SeqCst);
        let place = Self;
        (before < MAX_DRAINING).then_some(place)
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        LINGERING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads `body` to its end and drops it, within the library's drain limits.
async fn discard(mut body: Body) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        let idle = tokio::time::Instant::now() + DRAIN_IDLE_TIME;
        match tokio::time::timeout_at(deadline.min(idle), frame).await {
            Ok(Some(Ok(_))) => {}
            _ => return,
        }
    }
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
    let exchange = relay.exchange(&parts.method, &parts.headers, body);
    match tokio::time::timeout(relay.timeout, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(failure)) => failure.answer(&id),
        Err(_) => Undelivered::Timeout.answer(&id),
    }
}

impl Relay {
    /// The delivery sent to the app, and its whole answer.
    async fn exchange(
        &self,
        method: &axum::http::Method,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, Undelivered> {
        let mut answer = self
            .client
            .request(method.clone(), self.forward.clone())
            .headers(end_to_end(headers))
            .body(body)
            .send()
            .await
            .map_err(|error| Undelivered::BadGateway(described(error)))?;
        let status = answer.status();
        let headers = end_to_end(answer.headers());
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
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
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
