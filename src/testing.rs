//! A loopback stand-in of Composio's session endpoint (feature `test-util`), to test
//! services behind [`ComposioAuthLayer`](crate::ComposioAuthLayer) without the
//! network.
//!
//! It is a real HTTP server on `127.0.0.1`, serving the documented shapes: the
//! reference's session document for keys you add, Composio's 401 envelopes for the
//! rest, and whatever [`Reply`] you set to rehearse failures. It counts calls, so
//! tests can prove what the cache saves.
//!
//! ```
//! use axum::{body::Body, http::Request, routing::get, Router};
//! use composio_auth::testing::StandIn;
//! use composio_auth::{ComposioAuthLayer, SessionInfo};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let composio = StandIn::start().await?;
//! composio.add_session("ak_test_alice", StandIn::example_document());
//!
//! let layer = ComposioAuthLayer::builder().base_url(composio.base_url()).build()?;
//! let app = Router::new()
//!     .route("/me", get(|session: SessionInfo| async move { session.org_member.email.clone() }))
//!     .layer(layer);
//!
//! let request = Request::get("/me").header("x-api-key", "ak_test_alice").body(Body::empty())?;
//! let response = app.clone().oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//!
//! let request = Request::get("/me").header("x-api-key", "ak_unknown").body(Body::empty())?;
//! assert_eq!(app.oneshot(request).await?.status(), 401);
//! assert_eq!(composio.calls(), 2);
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::verifier::credential::CredentialHeader;

/// Pause points: named places in the layer where a test can hold a thread, or count
/// how often a request got there.
///
/// Each is the value of the `pause_point` field of the `tracing` event (target
/// `composio_auth`) emitted at that place: a test's subscriber matches that field,
/// never the event's message, which may be reworded.
///
/// ```
/// use composio_auth::testing::pause_point;
/// use tracing::field::{Field, Visit};
///
/// /// An event's pause point: in a `tracing_subscriber::Layer`'s `on_event`,
/// /// `event.record(&mut point)`, then compare it with a constant.
/// #[derive(Default)]
/// struct Point(Option<String>);
///
/// impl Visit for Point {
///     fn record_str(&mut self, field: &Field, value: &str) {
///         if field.name() == "pause_point" {
///             self.0 = Some(value.to_owned());
///         }
///     }
///     fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
/// }
///
/// fn is_cache_miss(point: &Point) -> bool {
///     point.0.as_deref() == Some(pause_point::CACHE_MISS)
/// }
/// assert!(!is_cache_miss(&Point::default()));
/// ```
pub mod pause_point {
    pub use crate::verifier::pause_point::*;
}

/// What the stand-in answers for a key.
#[derive(Clone)]
#[non_exhaustive]
pub enum Reply {
    /// `200` with this session document.
    Session(Value),
    /// Composio's error envelope with this status, code, slug and message.
    Envelope {
        /// HTTP status (and the envelope's `status`).
        status: u16,
        /// Composio's numeric code.
        code: i64,
        /// Composio's slug.
        slug: String,
        /// Message.
        message: String,
    },
    /// Any answer: status, extra headers, body (a proxy's HTML page, a 429, a 5xx).
    Raw {
        /// HTTP status.
        status: u16,
        /// Headers to add.
        headers: Vec<(String, String)>,
        /// Body.
        body: Bytes,
    },
}

impl Reply {
    /// Composio's answer for an unknown or revoked key: 401, code 801.
    #[must_use]
    pub fn invalid_key(key: &str) -> Self {
        Self::envelope(
            401,
            801,
            "APIKey_InvalidAPIKey",
            &format!("Invalid API key: {}", mask(key)),
        )
    }

    /// Composio's error envelope.
    #[must_use]
    pub fn envelope(status: u16, code: i64, slug: &str, message: &str) -> Self {
        Self::Envelope {
            status,
            code,
            slug: slug.to_owned(),
            message: message.to_owned(),
        }
    }

    /// Composio's documented 429: `Retry-After` and a body that is not the envelope.
    #[must_use]
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::Raw {
            status: 429,
            headers: vec![("retry-after".into(), retry_after_secs.to_string())],
            body: Bytes::from_static(
                br#"{"message": "Rate limit exceeded. Please try again later."}"#,
            ),
        }
    }

    /// A status with an HTML body, as a proxy in between would answer.
    #[must_use]
    pub fn html(status: u16) -> Self {
        Self::Raw {
            status,
            headers: vec![("content-type".into(), "text/html".into())],
            body: Bytes::from(format!("<html><body><h1>{status}</h1></body></html>")),
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let (status, headers, body) = match self {
            Self::Session(document) => (200, Vec::new(), Bytes::from(document.to_string())),
            Self::Envelope {
                status,
                code,
                slug,
                message,
            } => (
                status,
                Vec::new(),
                Bytes::from(
                    json!({"error": {
                        "message": message, "code": code, "slug": slug, "status": status,
                        "request_id": "standin-request",
                        "suggested_fix": "Check your API key in the Composio dashboard.",
                        "errors": []
                    }})
                    .to_string(),
                ),
            ),
            Self::Raw {
                status,
                headers,
                body,
            } => (status, headers, body),
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

impl fmt::Debug for Reply {
    // Session documents hold secrets: only their kind is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Session(_) => f.write_str("Reply::Session(..)"),
            Self::Envelope {
                status, code, slug, ..
            } => f
                .debug_struct("Reply::Envelope")
                .field("status", status)
                .field("code", code)
                .field("slug", slug)
                .finish_non_exhaustive(),
            Self::Raw { status, body, .. } => f
                .debug_struct("Reply::Raw")
                .field("status", status)
                .field("body_len", &body.len())
                .finish_non_exhaustive(),
        }
    }
}

/// Composio's way of naming a key in messages: `ak_**ESjq`.
fn mask(key: &str) -> String {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let head: String = key.chars().take(3).collect();
    if key.chars().count() > 8 {
        format!("{head}**{tail}")
    } else {
        "**".to_owned()
    }
}

#[derive(Default)]
struct Script {
    replies: HashMap<String, Reply>,
    /// Keys answered as invalid whatever the default reply.
    revoked: HashSet<String>,
    /// Answers every key while set (an outage).
    outage: Option<Reply>,
    /// Answers keys without a reply of their own.
    default_reply: Option<Reply>,
    latency: Duration,
    calls_by_key: HashMap<String, u64>,
    calls_by_path: HashMap<String, u64>,
    last_headers: Option<HeaderMap>,
    /// Calls being answered now, and the most there ever were at once.
    in_progress: u64,
    peak: u64,
}

struct Shared {
    script: Mutex<Script>,
    calls: watch::Sender<u64>,
    /// While `true`, answers wait.
    held: watch::Sender<bool>,
}

impl Shared {
    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A loopback HTTP server that answers like Composio's session endpoint. Stops when
/// dropped.
pub struct StandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl StandIn {
    /// Starts a stand-in on `127.0.0.1` (a free port), on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start() -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script: Mutex::new(Script::default()),
            calls: watch::Sender::new(0),
            held: watch::Sender::new(false),
        });
        let server = tokio::spawn(serve(listener, Arc::clone(&shared)));
        Ok(Self {
            addr,
            shared,
            server,
        })
    }

    /// The base URL to give [`ComposioAuthBuilder::base_url`](crate::ComposioAuthBuilder::base_url).
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the stand-in listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `key` with `200` and `document` (see [`StandIn::example_document`]).
    pub fn add_session(&self, key: &str, document: Value) {
        self.set_reply(key, Reply::Session(document));
    }

    /// Answers `key` with `reply`.
    pub fn set_reply(&self, key: &str, reply: Reply) {
        let mut script = self.shared.script();
        script.revoked.remove(key);
        script.replies.insert(key.to_owned(), reply);
    }

    /// Revokes `key`: it is answered as an invalid key (401, code 801) from now on,
    /// whatever [`StandIn::set_default_reply`] says, until it is added again. (An
    /// outage set by [`StandIn::fail_with`] still answers every key.)
    pub fn revoke(&self, key: &str) {
        let mut script = self.shared.script();
        script.replies.remove(key);
        script.revoked.insert(key.to_owned());
    }

    /// Answers keys that have no reply of their own with `reply` (by default they
    /// get Composio's invalid-key 401), e.g. to accept any key.
    pub fn set_default_reply(&self, reply: Option<Reply>) {
        self.shared.script().default_reply = reply;
    }

    /// Answers every key with `reply` until [`StandIn::recover`].
    pub fn fail_with(&self, reply: Reply) {
        self.shared.script().outage = Some(reply);
    }

    /// Ends [`StandIn::fail_with`].
    pub fn recover(&self) {
        self.shared.script().outage = None;
    }

    /// Delays every answer by `latency` (decided when the call arrives).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.script().latency = latency;
    }

    /// Holds every answer until [`StandIn::release`]: requests are counted as they
    /// arrive and their answer is decided then (as Composio decides when the call
    /// arrives); holding delays its delivery, so a key revoked meanwhile is still
    /// answered as it was when the held call arrived.
    pub fn hold(&self) {
        self.shared.held.send_replace(true);
    }

    /// Lets held and future answers go.
    pub fn release(&self) {
        self.shared.held.send_replace(false);
    }

    /// Calls received so far (requests carrying one credential).
    #[must_use]
    pub fn calls(&self) -> u64 {
        *self.shared.calls.borrow()
    }

    /// Calls received so far for `key`.
    #[must_use]
    pub fn calls_for(&self, key: &str) -> u64 {
        self.shared
            .script()
            .calls_by_key
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Calls received so far on `path` (`/api/v3/auth/session/info` or
    /// `/api/v3.1/auth/session/info`).
    #[must_use]
    pub fn calls_on(&self, path: &str) -> u64 {
        self.shared
            .script()
            .calls_by_path
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// The most calls that were being answered at once.
    #[must_use]
    pub fn peak_concurrency(&self) -> u64 {
        self.shared.script().peak
    }

    /// Waits until at least `n` calls have arrived.
    pub async fn wait_for_calls(&self, n: u64) {
        let mut calls = self.shared.calls.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = calls.wait_for(|calls| *calls >= n).await;
    }

    /// The headers of the last call, to check what the layer sends upstream.
    #[must_use]
    pub fn last_request_headers(&self) -> Option<HeaderMap> {
        self.shared.script().last_headers.clone()
    }

    /// The session document of Composio's API reference, for any key.
    #[must_use]
    pub fn example_document() -> Value {
        // A constant of this crate: it always parses.
        serde_json::from_str(crate::verifier::session::REFERENCE_DOCUMENT).unwrap_or_default()
    }

    /// [`StandIn::example_document`] for another member: its email, name and role.
    #[must_use]
    pub fn document_for(email: &str, name: &str, role: &str) -> Value {
        let mut document = Self::example_document();
        document["org_member"]["email"] = json!(email);
        document["org_member"]["name"] = json!(name);
        document["org_member"]["role"] = json!(role);
        document
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl fmt::Debug for StandIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandIn")
            .field("addr", &self.addr)
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(Arc::clone(&shared), request));
            // A client that goes away mid-answer is not the stand-in's problem.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    if path != crate::DEFAULT_SESSION_PATH && path != "/api/v3.1/auth/session/info" {
        return Ok(Reply::envelope(404, 404, "HTTP_NotFound", "Not found").into_response());
    }
    if request.method() != Method::GET {
        return Ok(
            Reply::envelope(405, 405, "HTTP_MethodNotAllowed", "Method not allowed")
                .into_response(),
        );
    }
    let mut keys = CredentialHeader::ALL
        .into_iter()
        .flat_map(|h| request.headers().get_all(h.header_name()).iter());
    let key = match (keys.next(), keys.next()) {
        (None, _) => {
            return Ok(Reply::envelope(401, 906, "Auth_NoAuthProvided", "No API key provided").into_response())
        }
        (Some(_), Some(_)) => {
            return Ok(Reply::envelope(
                401,
                10401,
                "HTTP_Unauthorized",
                "Multiple authentication modes were provided. Provide exactly one authentication mode per request.",
            )
            .into_response())
        }
        (Some(key), None) => String::from_utf8_lossy(key.as_bytes()).into_owned(),
    };
    let latency = {
        let mut script = shared.script();
        *script.calls_by_key.entry(key.clone()).or_default() += 1;
        *script.calls_by_path.entry(path.to_owned()).or_default() += 1;
        script.last_headers = Some(request.headers().clone());
        script.in_progress += 1;
        script.peak = script.peak.max(script.in_progress);
        script.latency
    };
    // Counts the call as answered however it ends (the client may go away).
    struct Answering(Arc<Shared>);
    impl Drop for Answering {
        fn drop(&mut self) {
            self.0.script().in_progress -= 1;
        }
    }
    let _answering = Answering(Arc::clone(&shared));
    // Decided as the call arrives; delivered after any hold and latency.
    let reply = {
        let script = shared.script();
        script
            .outage
            .clone()
            .or_else(|| script.replies.get(&key).cloned())
            .or_else(|| {
                (!script.revoked.contains(&key))
                    .then(|| script.default_reply.clone())
                    .flatten()
            })
            .unwrap_or_else(|| Reply::invalid_key(&key))
    };
    shared.calls.send_modify(|calls| *calls += 1);
    let mut held = shared.held.subscribe();
    let _ = held.wait_for(|held| !held).await;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    Ok(reply.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_like_composio() {
        assert_eq!(mask("ak_1234567890abcdESjq"), "ak_**ESjq");
        assert_eq!(mask("short"), "**");
    }

    #[test]
    fn debug_of_a_session_reply_hides_the_document() {
        let debug = format!("{:?}", Reply::Session(StandIn::example_document()));
        assert!(!debug.contains("whsec_"), "{debug}");
    }
}
