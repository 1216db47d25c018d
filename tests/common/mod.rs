//! Support shared by the integration tests: an axum app behind the layer served on
//! loopback, a client, and a capture of `tracing` events.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use composio_auth::testing::StandIn;
use composio_auth::{ComposioAuthBuilder, ComposioAuthLayer, ErrorEnvelope, SessionInfo};
use tokio::sync::watch;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

pub mod faulty;
pub mod pause;
#[cfg(feature = "redis")]
pub mod redis;

/// Awaits `future`, or panics naming `what` after 10 s (expected: milliseconds), so
/// that a broken promise fails the test instead of hanging it.
pub async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("waited 10 s for {what}"))
}

/// Polls `condition` every 5 ms until it holds, or panics naming `what` after 10 s:
/// for state outside the process (Redis) that signals nothing.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
}

pub const ALICE: &str = "ak_alice_0123456789abcdef";
pub const BOB: &str = "ak_bob_0123456789abcdefgh";

/// A stand-in with two valid keys: ALICE (admin) and BOB (member).
pub async fn composio() -> StandIn {
    let composio = StandIn::start().await.expect("bind the stand-in");
    composio.add_session(
        ALICE,
        StandIn::document_for("alice@example.com", "Alice", "admin"),
    );
    composio.add_session(
        BOB,
        StandIn::document_for("bob@example.com", "Bob", "member"),
    );
    composio
}

pub fn builder(composio: &StandIn) -> ComposioAuthBuilder {
    ComposioAuthLayer::builder().base_url(composio.base_url())
}

/// The protected app: `/me` answers the session's email (through `Extension`),
/// `/whoami` the member's role (through the extractor), `/maybe` whether there is a
/// session (through `Option<SessionInfo>`).
pub fn app(layer: ComposioAuthLayer) -> Router {
    Router::new()
        .route(
            "/me",
            get(|Extension(session): Extension<SessionInfo>| async move {
                session.org_member.email.clone()
            }),
        )
        .route(
            "/age",
            get(|session: SessionInfo| async move {
                session.verified().elapsed().as_millis().to_string()
            }),
        )
        .route(
            "/whoami",
            get(|session: SessionInfo| async move {
                Json(serde_json::json!({"role": session.org_member.role}))
            }),
        )
        .layer(layer)
        .route(
            "/maybe",
            get(|session: Option<SessionInfo>| async move {
                if session.is_some() {
                    "session"
                } else {
                    "none"
                }
            }),
        )
}

/// Serves `app` on a free loopback port.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Starts a stand-in and serves the app behind a layer built by `configure`.
pub async fn setup(
    configure: impl FnOnce(ComposioAuthBuilder) -> ComposioAuthBuilder,
) -> (StandIn, ComposioAuthLayer, Client) {
    let composio = composio().await;
    let layer = configure(builder(&composio))
        .build()
        .expect("valid configuration");
    let addr = serve(app(layer.clone())).await;
    (composio, layer, Client::new(addr))
}

/// A real HTTP client for the served app.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn envelope(&self) -> ErrorEnvelope {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an envelope ({e}): {}", self.body))
    }
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Self { addr, http }
    }

    /// GET `path` with `headers`.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = self.http.get(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the app answers");
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap();
        Answer {
            status,
            headers,
            body,
        }
    }

    /// GET `/me` with `key` in `x-api-key`.
    pub async fn me(&self, key: &str) -> Answer {
        self.get("/me", &[("x-api-key", key)]).await
    }

    /// Asks with `key` until it is refused (401), at most 10 s; how long that took.
    pub async fn until_refused(&self, key: &str) -> std::time::Duration {
        let started = std::time::Instant::now();
        within("the key to be refused", async {
            while self.me(key).await.status != StatusCode::UNAUTHORIZED {
                tokio::task::yield_now().await;
            }
        })
        .await;
        started.elapsed()
    }
}

/// Every `tracing` event (all levels, all targets) recorded on this thread while the
/// guard lives, as text: level, target, message and every field; and every span,
/// with its parent and fields (which also count as events' text, for the secrets
/// audit).
#[derive(Clone)]
pub struct Capture {
    events: Arc<Mutex<Vec<String>>>,
    /// The pause point of each event that carries one, in order.
    points: Arc<Mutex<Vec<String>>>,
    spans: Arc<Mutex<Vec<CapturedSpan>>>,
    count: watch::Sender<usize>,
}

/// A span as recorded: its name, its parent's name, and its fields as text.
#[derive(Clone, Debug)]
pub struct CapturedSpan {
    pub id: u64,
    pub name: String,
    pub parent: Option<String>,
    pub fields: String,
}

/// The pause point an event carries (its `pause_point` field), if any.
pub fn pause_point_of(event: &tracing::Event<'_>) -> Option<String> {
    struct Point(Option<String>);
    impl Visit for Point {
        fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "pause_point" {
                self.0 = Some(value.to_owned());
            }
        }
    }
    let mut point = Point(None);
    event.record(&mut point);
    point.0
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={}", field.name(), value);
    }
}

struct CaptureLayer(Capture);

impl<S> tracing_subscriber::Layer<S> for CaptureLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Fields(String::new());
        attrs.record(&mut fields);
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent())
            .map(|parent| parent.name().to_owned());
        self.0.spans.lock().unwrap().push(CapturedSpan {
            id: id.into_u64(),
            name: attrs.metadata().name().to_owned(),
            parent,
            fields: fields.0,
        });
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: Context<'_, S>,
    ) {
        let mut fields = Fields(String::new());
        values.record(&mut fields);
        let mut spans = self.0.spans.lock().unwrap();
        if let Some(span) = spans.iter_mut().rev().find(|s| s.id == id.into_u64()) {
            span.fields.push_str(&fields.0);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields(format!("{} {}", meta.level(), meta.target()));
        event.record(&mut fields);
        if let Some(point) = pause_point_of(event) {
            self.0.points.lock().unwrap().push(point);
        }
        self.0.events.lock().unwrap().push(fields.0);
        self.0.count.send_modify(|n| *n += 1);
    }
}

impl Capture {
    /// Captures events on this thread (use a current-thread runtime so spawned tasks
    /// run here too).
    pub fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        let capture = Self {
            events: Arc::default(),
            points: Arc::default(),
            spans: Arc::default(),
            count: watch::Sender::new(0),
        };
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::TRACE)
            .with(CaptureLayer(capture.clone()));
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    /// Every event's text, then every span's name and fields.
    pub fn events(&self) -> Vec<String> {
        let mut all = self.events.lock().unwrap().clone();
        all.extend(
            self.spans
                .lock()
                .unwrap()
                .iter()
                .map(|s| format!("span {}{}", s.name, s.fields)),
        );
        all
    }

    pub fn spans(&self) -> Vec<CapturedSpan> {
        self.spans.lock().unwrap().clone()
    }

    pub fn count_containing(&self, needle: &str) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.contains(needle))
            .count()
    }

    /// How many events at `level` (`"WARN"`, `"DEBUG"`, ...) contain `needle`.
    pub fn count_at(&self, level: &str, needle: &str) -> usize {
        let prefix = format!("{level} ");
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.starts_with(&prefix) && e.contains(needle))
            .count()
    }

    /// Waits until `n` events contain `needle`: for other crates' events (this
    /// crate's are waited on by pause point, [`wait_for_point`](Self::wait_for_point)).
    pub async fn wait_for(&self, needle: &str, n: usize) {
        let mut changes = self.count.subscribe();
        while self.count_containing(needle) < n {
            changes.changed().await.unwrap();
        }
    }

    /// How many events carried this pause point (`composio_auth::testing::pause_point`).
    pub fn count_point(&self, point: &str) -> usize {
        self.points
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == point)
            .count()
    }

    /// Waits until `n` events carried this pause point.
    pub async fn wait_for_point(&self, point: &str, n: usize) {
        let mut changes = self.count.subscribe();
        while self.count_point(point) < n {
            changes.changed().await.unwrap();
        }
    }
}
