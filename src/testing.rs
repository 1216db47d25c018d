//! A loopback stand-in of Composio's session endpoint (feature `test-util`), to test
//! services behind [`ComposioAuthLayer`](crate::ComposioAuthLayer) without the
//! network.
//!
//! It is a real HTTP server on `127.0.0.1`, serving the documented shapes: the
//! reference's session document for keys you add, Composio's 401 envelopes for the
//! rest, and whatever [`Reply`] you set to rehearse failures. It counts calls, so
//! tests can prove what the cache saves. A user key (`x-user-api-key`) may also
//! have scopes, sessions chosen by its `x-org-id` and `x-project-id` selectors
//! ([`StandIn::add_scoped_session`]), answered with Composio's 400 and 404 envelopes
//! when the selectors are malformed or name no scope of the key.
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

/// The selector header choosing a user key's organization.
const ORG_ID: &str = "x-org-id";
/// The selector header choosing a user key's project.
const PROJECT_ID: &str = "x-project-id";

/// The headers of a webhook delivery of `body` signed as Composio signs it (feature
/// `webhook`): `webhook-id: id`, `webhook-timestamp: timestamp` (Unix seconds),
/// `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body under the
/// secret's bytes>`, and `content-type: application/json`. Send `body` with them,
/// unchanged, for a delivery that [`ComposioWebhookLayer`](crate::ComposioWebhookLayer)
/// accepts.
///
/// ```
/// # fn main() -> Result<(), composio_auth::Error> {
/// use std::time::{SystemTime, UNIX_EPOCH};
/// use composio_auth::{testing, ComposioWebhookLayer};
///
/// let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
/// let body = br#"{"trigger_name":"GITHUB_PUSH_EVENT","payload":{}}"#;
/// let headers = testing::sign_delivery("whsec_test", "msg_1", body, now);
/// let layer = ComposioWebhookLayer::builder().secret("whsec_test").build()?;
/// let event = layer.verify(&headers, body).expect("signed as Composio signs");
/// assert_eq!(event.trigger_slug(), Some("GITHUB_PUSH_EVENT"));
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "webhook")]
#[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
#[must_use]
pub fn sign_delivery(secret: &str, id: &str, body: &[u8], timestamp: u64) -> HeaderMap {
    let timestamp = timestamp.to_string();
    let signature = crate::webhook::signature::sign(secret, id, &timestamp, body);
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("webhook-id", id),
        ("webhook-timestamp", timestamp.as_str()),
        ("webhook-signature", signature.as_str()),
        ("content-type", "application/json"),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    headers
}

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

/// A key and the selectors of one of its scopes: `(key, org id, project id)`.
fn scope_of(key: &str, org_id: &str, project_id: &str) -> (String, String, String) {
    (key.to_owned(), org_id.to_owned(), project_id.to_owned())
}

/// Whether `id` is a UUID (8-4-4-4-12 hex digits), not the nano id Composio wants.
fn is_uuid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The value of a selector header, if the request has one (the first if several).
fn selector(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// The request's one credential and its header, or Composio's 401 when it has none
/// or several.
fn credential(headers: &HeaderMap) -> Result<(CredentialHeader, String), Reply> {
    let mut keys = CredentialHeader::ALL.into_iter().flat_map(|header| {
        headers
            .get_all(header.header_name())
            .iter()
            .map(move |value| (header, value))
    });
    match (keys.next(), keys.next()) {
        (None, _) => Err(Reply::envelope(401, 906, "Auth_NoAuthProvided", "No API key provided")),
        (Some(_), Some(_)) => Err(Reply::envelope(
            401,
            10401,
            "HTTP_Unauthorized",
            "Multiple authentication modes were provided. Provide exactly one authentication mode per request.",
        )),
        (Some((header, key)), None) => {
            Ok((header, String::from_utf8_lossy(key.as_bytes()).into_owned()))
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
    /// Sessions of a user key's scopes, by `(key, org id, project id)`.
    scoped_sessions: HashMap<(String, String, String), Value>,
    /// Answers of a user key's scopes, before their sessions.
    scoped_replies: HashMap<(String, String, String), Reply>,
    calls_by_key: HashMap<String, u64>,
    calls_by_scope: HashMap<(String, String, String), u64>,
    calls_by_path: HashMap<String, u64>,
    /// Requests that carried `x-org-id` or `x-project-id`.
    calls_with_selectors: u64,
    last_headers: Option<HeaderMap>,
    /// Calls being answered now, and the most there ever were at once.
    in_progress: u64,
    peak: u64,
}

impl Script {
    /// The answer by the key alone, as for a key without selectors: its reply, else
    /// the default reply (unless revoked), else Composio's invalid-key 401.
    fn key_reply(&self, key: &str) -> Reply {
        self.replies
            .get(key)
            .cloned()
            .or_else(|| {
                (!self.revoked.contains(key))
                    .then(|| self.default_reply.clone())
                    .flatten()
            })
            .unwrap_or_else(|| Reply::invalid_key(key))
    }

    /// Whether `key` has a scope of its own (a scoped session or reply).
    fn has_scopes(&self, key: &str) -> bool {
        self.scoped_sessions
            .keys()
            .chain(self.scoped_replies.keys())
            .any(|(scoped, _, _)| scoped == key)
    }

    /// The answer for a user key and its selectors: the selectors' shape first, then
    /// the key (a refusal of the key comes before its scope), then the scope.
    fn user_reply(&self, key: &str, org_id: Option<&str>, project_id: Option<&str>) -> Reply {
        let (org_id, project_id) = match (org_id, project_id) {
            (None, None) => return self.key_reply(key),
            (Some(org_id), Some(project_id)) => (org_id, project_id),
            _ => {
                return Reply::envelope(
                    400,
                    10400,
                    "HTTP_BadRequest",
                    "x-org-id and x-project-id must be sent together",
                )
            }
        };
        let uuid = [(ORG_ID, org_id), (PROJECT_ID, project_id)]
            .into_iter()
            .find(|(_, id)| is_uuid(id));
        if let Some((name, _)) = uuid {
            let message =
                format!("{name} must be a nano id (such as org_... or pr_...), not a UUID");
            return Reply::envelope(400, 10400, "HTTP_BadRequest", &message);
        }
        match self.replies.get(key) {
            _ if self.revoked.contains(key) => return Reply::invalid_key(key),
            // The key's default session: the selectors choose another one.
            Some(Reply::Session(_)) => {}
            Some(reply) => return reply.clone(),
            None if !self.has_scopes(key) => return self.key_reply(key),
            None => {}
        }
        let scope = scope_of(key, org_id, project_id);
        self.scoped_replies
            .get(&scope)
            .cloned()
            .or_else(|| {
                self.scoped_sessions
                    .get(&scope)
                    .cloned()
                    .map(Reply::Session)
            })
            .unwrap_or_else(|| {
                Reply::envelope(
                    404,
                    10404,
                    "HTTP_NotFound",
                    "Organization or project not found or not accessible",
                )
            })
    }
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

    /// Answers the user key `key` sent (in `x-user-api-key`) with the selectors
    /// `x-org-id: org_id` and `x-project-id: project_id` with `200` and `document`.
    ///
    /// A key with scoped sessions is a known key even without a session of its own
    /// ([`StandIn::add_session`], the one its calls without selectors get, and they
    /// still do): its calls with selectors that name none of its scopes are answered
    /// `404` (code 10404, `HTTP_NotFound`, "Organization or project not found or not
    /// accessible"). Selectors are checked before the key: only one of them, or a
    /// UUID instead of a nano id, is answered `400` (code 10400, `HTTP_BadRequest`).
    /// The key's own refusals come before its scopes: a revoked key, or a key whose
    /// [`StandIn::set_reply`] is not a session, is answered so whatever the scope.
    /// Adding a scoped session adds a revoked key again.
    pub fn add_scoped_session(&self, key: &str, org_id: &str, project_id: &str, document: Value) {
        let mut script = self.shared.script();
        script.revoked.remove(key);
        script
            .scoped_sessions
            .insert(scope_of(key, org_id, project_id), document);
    }

    /// Answers the user key `key` with the selectors `org_id` and `project_id` with
    /// `reply` (e.g. a 403 envelope), before any session of that scope (see
    /// [`StandIn::add_scoped_session`]). A revoked key stays revoked.
    pub fn set_scoped_reply(&self, key: &str, org_id: &str, project_id: &str, reply: Reply) {
        self.shared
            .script()
            .scoped_replies
            .insert(scope_of(key, org_id, project_id), reply);
    }

    /// Revokes `key`: it is answered as an invalid key (401, code 801) from now on,
    /// whatever [`StandIn::set_default_reply`] says and whatever the selectors, until
    /// it is added again; its scoped sessions and replies are forgotten. (An outage
    /// set by [`StandIn::fail_with`] still answers every key.)
    pub fn revoke(&self, key: &str) {
        let mut script = self.shared.script();
        script.replies.remove(key);
        script
            .scoped_sessions
            .retain(|(scoped, _, _), _| scoped != key);
        script
            .scoped_replies
            .retain(|(scoped, _, _), _| scoped != key);
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

    /// Calls received so far for `key`, with selectors or without.
    #[must_use]
    pub fn calls_for(&self, key: &str) -> u64 {
        self.shared
            .script()
            .calls_by_key
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Calls received so far for `key` with exactly the selectors `x-org-id: org_id`
    /// and `x-project-id: project_id` (whatever the credential header).
    #[must_use]
    pub fn calls_for_scope(&self, key: &str, org_id: &str, project_id: &str) -> u64 {
        self.shared
            .script()
            .calls_by_scope
            .get(&scope_of(key, org_id, project_id))
            .copied()
            .unwrap_or(0)
    }

    /// Requests received so far that carried `x-org-id` or `x-project-id`, whatever
    /// their credentials (unlike [`StandIn::calls`], also those with none or
    /// several), path or method: to prove that selectors are never sent beside a
    /// project or org key.
    #[must_use]
    pub fn calls_with_selectors(&self) -> u64 {
        self.shared.script().calls_with_selectors
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
    let org_id = selector(request.headers(), ORG_ID);
    let project_id = selector(request.headers(), PROJECT_ID);
    if org_id.is_some() || project_id.is_some() {
        shared.script().calls_with_selectors += 1;
    }
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
    let (header, key) = match credential(request.headers()) {
        Ok(credential) => credential,
        Err(reply) => return Ok(reply.into_response()),
    };
    let latency = {
        let mut script = shared.script();
        *script.calls_by_key.entry(key.clone()).or_default() += 1;
        if let (Some(org_id), Some(project_id)) = (&org_id, &project_id) {
            let scope = scope_of(&key, org_id, project_id);
            *script.calls_by_scope.entry(scope).or_default() += 1;
        }
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
    // Decided as the call arrives; delivered after any hold and latency. Selectors
    // beside a project or org key decide nothing here (Composio's answer to them is
    // not documented).
    let reply = {
        let script = shared.script();
        script.outage.clone().unwrap_or_else(|| {
            if header == CredentialHeader::UserApiKey {
                script.user_reply(&key, org_id.as_deref(), project_id.as_deref())
            } else {
                script.key_reply(&key)
            }
        })
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

    #[test]
    fn tells_uuids_from_nano_ids() {
        assert!(is_uuid("123e4567-e89b-12d3-a456-426614174000"));
        assert!(is_uuid("123E4567-E89B-12D3-A456-426614174000"));
        assert!(!is_uuid("org_V1StGXR8Z5jdHi6B"));
        assert!(!is_uuid("123e4567-e89b-12d3-a456-42661417400"));
        assert!(!is_uuid("123e4567-e89b-12d3-a456-42661417400g"));
        assert!(!is_uuid("123e4567e89b-12d3-a456-426614174000-"));
    }

    const USER_KEY: &str = "uak_test_alice_0123456789";
    const UUID: &str = "123e4567-e89b-12d3-a456-426614174000";

    /// The status and body of a v3.1 call with these headers.
    async fn call(composio: &StandIn, headers: &[(&str, &str)]) -> (u16, Value) {
        let url = format!("{}/api/v3.1/auth/session/info", composio.base_url());
        let mut request = reqwest::Client::new().get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the stand-in answers");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("a body");
        (status, serde_json::from_slice(&body).expect("a JSON body"))
    }

    fn user(org_id: &str, project_id: &str) -> [(&'static str, String); 3] {
        [
            ("x-user-api-key", USER_KEY.to_owned()),
            (ORG_ID, org_id.to_owned()),
            (PROJECT_ID, project_id.to_owned()),
        ]
    }

    async fn call_scope(composio: &StandIn, org_id: &str, project_id: &str) -> (u16, Value) {
        let headers = user(org_id, project_id);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        call(composio, &headers).await
    }

    fn error(body: &Value) -> (i64, &str) {
        let code = body["error"]["code"].as_i64().expect("a code");
        (code, body["error"]["slug"].as_str().expect("a slug"))
    }

    #[tokio::test]
    async fn scopes_of_a_user_key_have_their_own_sessions() {
        let composio = StandIn::start().await.expect("a loopback port");
        let alice = StandIn::document_for("alice@example.com", "Alice", "admin");
        let bob = StandIn::document_for("bob@example.com", "Bob", "member");
        composio.add_scoped_session(USER_KEY, "org_1", "pr_1", alice);
        composio.add_scoped_session(USER_KEY, "org_1", "pr_2", bob);

        let (status, body) = call_scope(&composio, "org_1", "pr_1").await;
        assert_eq!(
            (status, body["org_member"]["name"].as_str()),
            (200, Some("Alice"))
        );
        let (status, body) = call_scope(&composio, "org_1", "pr_2").await;
        assert_eq!(
            (status, body["org_member"]["name"].as_str()),
            (200, Some("Bob"))
        );
        let (status, body) = call_scope(&composio, "org_1", "pr_2").await;
        assert_eq!(status, 200, "{body}");

        // Neither the org nor the project is one of the key's: the same 404.
        for (org_id, project_id) in [("org_1", "pr_3"), ("org_2", "pr_1")] {
            let (status, body) = call_scope(&composio, org_id, project_id).await;
            assert_eq!((status, error(&body)), (404, (10404, "HTTP_NotFound")));
        }
        // Without selectors: the key's default session, which it has none of yet.
        let (status, body) = call(&composio, &[("x-user-api-key", USER_KEY)]).await;
        assert_eq!((status, error(&body)), (401, (801, "APIKey_InvalidAPIKey")));
        composio.add_session(USER_KEY, StandIn::example_document());
        let (status, _) = call(&composio, &[("x-user-api-key", USER_KEY)]).await;
        assert_eq!(status, 200);
        let (status, body) = call_scope(&composio, "org_1", "pr_1").await;
        assert_eq!(
            (status, body["org_member"]["name"].as_str()),
            (200, Some("Alice"))
        );

        assert_eq!(composio.calls_for_scope(USER_KEY, "org_1", "pr_1"), 2);
        assert_eq!(composio.calls_for_scope(USER_KEY, "org_1", "pr_2"), 2);
        assert_eq!(composio.calls_for_scope(USER_KEY, "org_2", "pr_1"), 1);
        assert_eq!(composio.calls_for_scope(USER_KEY, "org_9", "pr_9"), 0);
        assert_eq!(composio.calls_for(USER_KEY), 8);
        assert_eq!(composio.calls_with_selectors(), 6);
    }

    #[tokio::test]
    async fn a_scoped_reply_comes_before_the_scoped_session() {
        let composio = StandIn::start().await.expect("a loopback port");
        composio.add_scoped_session(USER_KEY, "org_1", "pr_1", StandIn::example_document());
        let forbidden = Reply::envelope(403, 2206, "Organization_InsufficientPermissions", "no");
        composio.set_scoped_reply(USER_KEY, "org_1", "pr_1", forbidden);
        let (status, body) = call_scope(&composio, "org_1", "pr_1").await;
        assert_eq!(
            (status, error(&body)),
            (403, (2206, "Organization_InsufficientPermissions"))
        );
        // A key-level refusal comes before the scope.
        composio.set_reply(
            USER_KEY,
            Reply::envelope(401, 902, "Auth_Unauthorized", "no"),
        );
        let (status, body) = call_scope(&composio, "org_1", "pr_1").await;
        assert_eq!((status, error(&body)), (401, (902, "Auth_Unauthorized")));
    }

    #[tokio::test]
    async fn malformed_selectors_are_refused_before_the_key() {
        let composio = StandIn::start().await.expect("a loopback port");
        composio.add_scoped_session(USER_KEY, "org_1", "pr_1", StandIn::example_document());
        for headers in [
            [("x-user-api-key", USER_KEY), (ORG_ID, "org_1")],
            [("x-user-api-key", USER_KEY), (PROJECT_ID, "pr_1")],
            [
                ("x-user-api-key", "uak_unknown_0123456789"),
                (ORG_ID, "org_1"),
            ],
        ] {
            let (status, body) = call(&composio, &headers).await;
            assert_eq!((status, error(&body)), (400, (10400, "HTTP_BadRequest")));
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("together"), "{message}");
        }
        for (org_id, project_id) in [(UUID, "pr_1"), ("org_1", UUID)] {
            let (status, body) = call_scope(&composio, org_id, project_id).await;
            assert_eq!((status, error(&body)), (400, (10400, "HTTP_BadRequest")));
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("not a UUID"), "{message}");
        }
        assert_eq!(composio.calls_for_scope(USER_KEY, UUID, "pr_1"), 1);
        assert_eq!(composio.calls_with_selectors(), 5);
    }

    #[tokio::test]
    async fn a_refused_key_is_refused_whatever_the_scope() {
        let composio = StandIn::start().await.expect("a loopback port");
        composio.add_scoped_session(USER_KEY, "org_1", "pr_1", StandIn::example_document());
        composio.revoke(USER_KEY);
        let (status, body) = call_scope(&composio, "org_1", "pr_1").await;
        assert_eq!((status, error(&body)), (401, (801, "APIKey_InvalidAPIKey")));
        // An unknown key too, before its (unknown) scope.
        let unknown = [
            ("x-user-api-key", "uak_unknown_0123456789"),
            (ORG_ID, "org_1"),
            (PROJECT_ID, "pr_1"),
        ];
        let (status, body) = call(&composio, &unknown).await;
        assert_eq!((status, error(&body)), (401, (801, "APIKey_InvalidAPIKey")));
        // The outage answers first.
        composio.add_scoped_session(USER_KEY, "org_1", "pr_1", StandIn::example_document());
        composio.fail_with(Reply::html(502));
        let response = reqwest::Client::new()
            .get(format!(
                "{}/api/v3.1/auth/session/info",
                composio.base_url()
            ))
            .header("x-user-api-key", USER_KEY)
            .header(ORG_ID, "org_1")
            .send()
            .await
            .expect("the stand-in answers");
        assert_eq!(response.status(), 502);
        composio.recover();
        let (status, _) = call_scope(&composio, "org_1", "pr_1").await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn selectors_beside_other_keys_are_counted_not_used() {
        let composio = StandIn::start().await.expect("a loopback port");
        composio.add_session("ak_test_project_key_01", StandIn::example_document());
        for header in ["x-api-key", "x-org-api-key"] {
            let headers = [
                (header, "ak_test_project_key_01"),
                (ORG_ID, UUID),
                (PROJECT_ID, "pr_unknown"),
            ];
            let (status, _) = call(&composio, &headers).await;
            assert_eq!(status, 200, "{header}");
            let lone = [(header, "ak_test_project_key_01"), (PROJECT_ID, "pr_1")];
            assert_eq!(call(&composio, &lone).await.0, 200, "{header}");
        }
        let (status, _) = call(&composio, &[("x-api-key", "ak_test_project_key_01")]).await;
        assert_eq!(status, 200);
        // Refused for carrying no credential, yet counted.
        let (status, _) = call(&composio, &[(ORG_ID, "org_1"), (PROJECT_ID, "pr_1")]).await;
        assert_eq!(status, 401);
        assert_eq!(composio.calls_with_selectors(), 5);
        assert_eq!(composio.calls(), 5);
        let scope = ("ak_test_project_key_01", UUID, "pr_unknown");
        assert_eq!(composio.calls_for_scope(scope.0, scope.1, scope.2), 2);
    }
}
