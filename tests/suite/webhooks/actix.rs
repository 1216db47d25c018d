//! The webhook layer as actix-web middleware (features `actix-web` and `webhook`):
//! a real `HttpServer` with several workers over TCP. The fixtures reach the
//! handler with their `WebhookEvent` and bytes; every refusal answers byte for
//! byte as the axum layer and `WebhookRejection::into_http_response` do; and a
//! delivery reaches the handler once across every worker (each a Tokio runtime of
//! its own), again only after the handler failed.

use crate::common::{self, within};

use std::cell::RefCell;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use composio_auth::testing::{pause_point, sign_delivery};
use composio_auth::{ComposioWebhookLayer, WebhookEvent, WebhookVersion};
use http::HeaderMap;
use tokio::sync::{watch, Semaphore};
use tracing_subscriber::layer::SubscriberExt;

use super::fixtures::{now, FIXTURE_TIME, SECRET, V1, V2, V3};

const WORKERS: usize = 4;

/// The handler behind the layer, in both frameworks: counts its calls, keeps the
/// last event and body it got, waits for a permit of `gate`, answers `status`.
struct Handler {
    calls: AtomicUsize,
    entered: watch::Sender<usize>,
    gate: Semaphore,
    status: AtomicU16,
    last: Mutex<Option<(WebhookEvent, Vec<u8>)>>,
}

impl Handler {
    /// Held: each call waits for a permit (`gate.add_permits`).
    fn new(held: bool) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            entered: watch::Sender::new(0),
            gate: Semaphore::new(if held { 0 } else { Semaphore::MAX_PERMITS }),
            status: AtomicU16::new(200),
            last: Mutex::new(None),
        })
    }

    async fn call(&self, event: WebhookEvent, body: &[u8]) -> u16 {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.last.lock().unwrap() = Some((event, body.to_vec()));
        self.entered.send_modify(|n| *n += 1);
        self.gate.acquire().await.unwrap().forget();
        self.status.load(Ordering::SeqCst)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Waits until the handler was entered `n` times in all.
    async fn entered(&self, n: usize) {
        let mut entered = self.entered.subscribe();
        within("the handler to be entered", entered.wait_for(|e| *e >= n))
            .await
            .unwrap();
    }
}

async fn actix_handle(
    handler: web::Data<Handler>,
    event: WebhookEvent,
    body: web::Bytes,
) -> HttpResponse {
    let status = handler.call(event, &body).await;
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).body("handled")
}

async fn axum_handle(
    State(handler): State<Arc<Handler>>,
    event: WebhookEvent,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, &'static str) {
    let status = handler.call(event, &body).await;
    (axum::http::StatusCode::from_u16(status).unwrap(), "handled")
}

/// Every pause point reached on the actix workers, with the worker's thread name.
#[derive(Clone, Default)]
struct Points {
    seen: Arc<Mutex<Vec<(String, String)>>>,
    count: Arc<watch::Sender<usize>>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Points {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(point) = common::pause_point_of(event) {
            let thread = std::thread::current().name().unwrap_or("?").to_owned();
            self.seen.lock().unwrap().push((point, thread));
            self.count.send_modify(|n| *n += 1);
        }
    }
}

impl Points {
    /// The threads each event at `point` was emitted on.
    fn threads(&self, point: &str) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(p, _)| p == point)
            .map(|(_, thread)| thread.clone())
            .collect()
    }

    async fn wait_for(&self, point: &str, n: usize) {
        let mut count = self.count.subscribe();
        within("the pause points", async {
            while self.threads(point).len() < n {
                count.changed().await.unwrap();
            }
        })
        .await;
    }

    /// Records this thread's events (an actix worker's) for as long as it lives.
    fn install_on_this_thread(&self) {
        thread_local! {
            static GUARD: RefCell<Option<tracing::subscriber::DefaultGuard>> = const { RefCell::new(None) };
        }
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::TRACE)
            .with(self.clone());
        let guard = tracing::subscriber::set_default(subscriber);
        GUARD.with(|slot| *slot.borrow_mut() = Some(guard));
    }
}

/// An actix-web server on a free loopback port, on threads of its own: `/hook`
/// behind `layer`, `/unprotected` (the same handler, `WebhookEvent` extracted) on
/// no layer. Each worker records its pause points in `points`.
struct ActixHook {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl ActixHook {
    fn start(layer: &ComposioWebhookLayer, handler: &Arc<Handler>, points: &Points) -> Self {
        let (started_tx, started) = std::sync::mpsc::channel();
        let (layer, points) = (layer.clone(), points.clone());
        let handler = web::Data::from(Arc::clone(handler));
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    points.install_on_this_thread();
                    App::new()
                        .app_data(handler.clone())
                        .service(
                            web::resource("/hook")
                                .wrap(layer.clone())
                                .route(web::post().to(actix_handle)),
                        )
                        .route("/unprotected", web::post().to(actix_handle))
                })
                .workers(WORKERS)
                .disable_signals()
                .bind(("127.0.0.1", 0))
                .expect("bind a loopback port");
                let addr = server.addrs()[0];
                let server = server.run();
                started_tx.send((addr, server.handle())).unwrap();
                server.await
            })
        });
        let (addr, handle) = started.recv().expect("the actix server starts");
        Self { addr, handle }
    }
}

impl Drop for ActixHook {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

/// The same routes in axum, behind the same layer.
async fn serve_axum(layer: &ComposioWebhookLayer, handler: &Arc<Handler>) -> SocketAddr {
    let app = Router::new()
        .route("/hook", post(axum_handle).layer(layer.clone()))
        .route("/unprotected", post(axum_handle))
        .with_state(Arc::clone(handler));
    common::serve(app).await
}

/// An answer as sent: status, every header but `date` and `connection` (sorted),
/// body bytes. `connection` is the framework's: actix-web adds `connection: close`
/// to any answer sent before the request's body was read whole (its dispatcher
/// closes such connections), as for a refusal on the headers or the size.
type Sent = (u16, Vec<(String, String)>, Vec<u8>);

/// Sends `method` to `path` with `headers` and `body`, on a connection of its own.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Sent {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response = client
        .request(method, format!("http://{addr}{path}"))
        .headers(headers.clone())
        .body(body.to_vec())
        .send()
        .await
        .expect("the server answers");
    let mut sent: Vec<_> = response
        .headers()
        .iter()
        .filter(|(name, _)| *name != "date" && *name != "connection")
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
        .collect();
    sent.sort();
    let status = response.status().as_u16();
    (status, sent, response.bytes().await.unwrap().to_vec())
}

async fn deliver(addr: SocketAddr, headers: &HeaderMap, body: &[u8]) -> Sent {
    send(addr, "POST", "/hook", headers, body).await
}

/// `WebhookRejection::into_http_response` as the wire carries it.
async fn wire(response: http::Response<http_body_util::Full<bytes::Bytes>>) -> Sent {
    use http_body_util::BodyExt;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    let mut headers: Vec<_> = parts
        .headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
        .collect();
    headers.push(("content-length".to_owned(), body.len().to_string()));
    headers.sort();
    (parts.status.as_u16(), headers, body)
}

/// The fixtures' headers: as Composio sent them.
fn fixture_headers((id, signature, _): (&str, &str, &str)) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", id.parse().unwrap());
    headers.insert("webhook-timestamp", FIXTURE_TIME.parse().unwrap());
    headers.insert("webhook-signature", signature.parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v1_v2_and_v3_fixtures_reach_the_handler_with_their_event_and_bytes() {
    // The fixtures' timestamps are long past: the check off.
    let layer = ComposioWebhookLayer::builder()
        .secret(SECRET)
        .tolerance(Duration::ZERO)
        .build()
        .unwrap();
    let handler = Handler::new(false);
    let actix = ActixHook::start(&layer, &handler, &Points::default());
    let last = || {
        handler
            .last
            .lock()
            .unwrap()
            .take()
            .expect("the handler ran")
    };
    for fixture in [V3, V2, V1] {
        let (status, _, body) =
            deliver(actix.addr, &fixture_headers(fixture), fixture.2.as_bytes()).await;
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"handled"[..]),
            "{}",
            fixture.0
        );
        let (event, seen) = last();
        assert_eq!(event.id(), fixture.0, "the header is the id");
        assert_eq!(seen, fixture.2.as_bytes(), "the same bytes, as the payload");
        assert_eq!(event.body(), fixture.2.as_bytes());
        assert_eq!(event.trigger_slug(), Some("GITHUB_PUSH_EVENT"));
        assert_eq!(event.event_type(), "composio.trigger.message");
        let expected = match fixture.0 {
            "msg_fixture_v3_001" => (
                WebhookVersion::V3,
                "ti_fixture_001",
                "ca_fixture_001",
                Some("user_fixture_001"),
            ),
            "msg_fixture_v2_001" => (
                WebhookVersion::V2,
                "ti_fixture_002",
                "ca_fixture_002",
                Some("user_fixture_002"),
            ),
            _ => (
                WebhookVersion::V1,
                "trigger_fixture_001",
                "conn_fixture_001",
                None,
            ),
        };
        let (version, trigger, account, user) = expected;
        assert_eq!(event.version(), version);
        assert_eq!(event.trigger_id(), Some(trigger));
        assert_eq!(event.connected_account_id(), Some(account));
        assert_eq!(event.user_id(), user);
        assert_eq!(event.data()["ref"], "refs/heads/main");
    }
    assert_eq!(handler.calls(), 3);
    // Acknowledged: a copy gets 200, empty, from actix-web as from axum (the same
    // layer, so the same deliveries), without the handler.
    let axum = serve_axum(&layer, &handler).await;
    let from_actix = deliver(actix.addr, &fixture_headers(V3), V3.2.as_bytes()).await;
    let from_axum = deliver(axum, &fixture_headers(V3), V3.2.as_bytes()).await;
    assert_eq!((from_actix.0, from_actix.2.len()), (200, 0));
    assert_eq!(from_actix, from_axum);
    assert_eq!(handler.calls(), 3);
}

/// A request: method, path, headers, body; and the status expected.
struct Case {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    headers: HeaderMap,
    body: Vec<u8>,
    status: u16,
}

/// Every refusal, in the order the checks run, and the extractor's on a route
/// without the layer. Signed at `at`.
fn refusals(at: u64) -> Vec<Case> {
    let body = V3.2.as_bytes().to_vec();
    let signed = |id: &str, body: &[u8], at: u64| sign_delivery(SECRET, id, body, at);
    let case = |what, method, path, headers, body: &[u8], status| Case {
        what,
        method,
        path,
        headers,
        body: body.to_vec(),
        status,
    };
    let mut missing = signed("msg_r_2", &body, at);
    missing.remove("webhook-signature");
    let large = format!(r#"{{"trigger_name":"T","payload":"{}"}}"#, "x".repeat(2048));
    vec![
        case(
            "GET",
            "GET",
            "/hook",
            signed("msg_r_1", &body, at),
            &[],
            405,
        ),
        case(
            "PUT",
            "PUT",
            "/hook",
            signed("msg_r_1", &body, at),
            &body,
            405,
        ),
        case("no webhook-signature", "POST", "/hook", missing, &body, 401),
        case(
            "301 s old",
            "POST",
            "/hook",
            signed("msg_r_3", &body, at - 301),
            &body,
            401,
        ),
        case(
            "301 s ahead",
            "POST",
            "/hook",
            signed("msg_r_4", &body, at + 301),
            &body,
            401,
        ),
        case(
            "over the limit",
            "POST",
            "/hook",
            signed("msg_r_5", large.as_bytes(), at),
            large.as_bytes(),
            413,
        ),
        case(
            "another secret",
            "POST",
            "/hook",
            sign_delivery("another", "msg_r_6", &body, at),
            &body,
            401,
        ),
        case(
            "not an event",
            "POST",
            "/hook",
            signed("msg_r_7", b"{}", at),
            b"{}",
            400,
        ),
        case(
            "no layer",
            "POST",
            "/unprotected",
            signed("msg_r_8", &body, at),
            &body,
            401,
        ),
    ]
}

/// What `verify`'s rejection of `case` sends (`into_http_response`): none for a
/// 405, as `verify` checks no method. It checks no route either: a request on the
/// route without the layer is one without the headers.
async fn verified(layer: &ComposioWebhookLayer, case: &Case) -> Option<Sent> {
    let headers = match (case.status, case.path) {
        (405, _) => return None,
        (_, "/hook") => case.headers.clone(),
        _ => HeaderMap::new(),
    };
    match layer.verify(&headers, &case.body) {
        Err(rejection) => Some(wire(rejection.into_http_response()).await),
        // Only in a round that crossed a second, which is sent again.
        Ok(_) => Some((200, Vec::new(), Vec::new())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_answers_byte_for_byte_as_the_axum_layer_and_into_http_response() {
    let layer = ComposioWebhookLayer::builder()
        .secret(SECRET)
        .max_body_bytes(1024)
        .build()
        .unwrap();
    let handler = Handler::new(false);
    let actix = ActixHook::start(&layer, &handler, &Points::default());
    let axum = serve_axum(&layer, &handler).await;
    // All within one second of the clock, or "301 s ahead" would be 300 s ahead
    // (and handled): a round that crossed a second is sent again.
    let (at, answers, calls) = loop {
        let (at, calls) = (now(), handler.calls());
        let mut answers = Vec::new();
        for case in refusals(at) {
            let (method, path, body) = (case.method, case.path, &case.body);
            let from_actix = send(actix.addr, method, path, &case.headers, body).await;
            let from_axum = send(axum, method, path, &case.headers, body).await;
            let verified = verified(&layer, &case).await;
            answers.push((case, from_actix, from_axum, verified));
        }
        if now() == at {
            break (at, answers, calls);
        }
    };
    for (case, from_actix, from_axum, verified) in answers {
        let what = case.what;
        assert_eq!(from_actix.0, case.status, "{what}");
        assert_eq!(from_actix, from_axum, "{what}");
        let allow = from_actix.1.iter().find(|(name, _)| name == "allow");
        assert_eq!(allow.is_some(), case.status == 405, "{what}");
        match verified {
            Some(verified) => assert_eq!(from_actix, verified, "{what}"),
            None => assert_eq!(allow.unwrap().1, "POST"),
        }
    }
    assert_eq!(handler.calls(), calls, "no refusal reaches the handler");
    // A body of exactly the limit is read whole and handed on.
    let exact = format!(
        r#"{{"trigger_name":"T","payload":"{}"}}"#,
        "x".repeat(1024 - 33)
    );
    assert_eq!(exact.len(), 1024);
    let signed = sign_delivery(SECRET, "msg_exact", exact.as_bytes(), at);
    assert_eq!(deliver(actix.addr, &signed, exact.as_bytes()).await.0, 200);
    let (event, seen) = handler.last.lock().unwrap().take().unwrap();
    assert_eq!(
        (event.id(), seen.as_slice()),
        ("msg_exact", exact.as_bytes())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_copies_over_every_worker_reach_the_handler_once_and_all_get_its_200() {
    let layer = ComposioWebhookLayer::builder()
        .secret(SECRET)
        .build()
        .unwrap();
    let handler = Handler::new(true);
    let points = Points::default();
    let actix = ActixHook::start(&layer, &handler, &points);
    let body = V2.2.as_bytes();
    let headers = sign_delivery(SECRET, "msg_once", body, now());
    // Each copy on a connection of its own: actix-web hands them to its workers
    // in turn.
    let copies: Vec<_> = (0..20)
        .map(|_| {
            let (addr, headers) = (actix.addr, headers.clone());
            tokio::spawn(async move { deliver(addr, &headers, body).await })
        })
        .collect();
    // One copy is in the handler; nineteen wait for it, on every worker.
    handler.entered(1).await;
    points.wait_for(pause_point::DELIVERY_WAITING, 19).await;
    assert_eq!(handler.calls(), 1);
    let handled = points.threads(pause_point::DELIVERY_HANDLED);
    let waiting: HashSet<_> = points
        .threads(pause_point::DELIVERY_WAITING)
        .into_iter()
        .collect();
    assert!(
        waiting.iter().any(|thread| *thread != handled[0]),
        "copies wait on other workers than the handler's: {handled:?} {waiting:?}"
    );
    let mut workers = waiting.clone();
    workers.insert(handled[0].clone());
    assert_eq!(workers.len(), WORKERS, "{workers:?}");
    handler.gate.add_permits(Semaphore::MAX_PERMITS);
    for copy in copies {
        let (status, _, body) = within("the copies' answers", copy).await.unwrap();
        assert_eq!(status, 200);
        assert!(body == b"handled" || body.is_empty(), "{body:?}");
    }
    assert_eq!(handler.calls(), 1);
    assert_eq!(points.threads(pause_point::DELIVERY_WAITING).len(), 19);
    // A retry later, with a new timestamp and signature: acknowledged already.
    let retry = sign_delivery(SECRET, "msg_once", body, now());
    assert_eq!(deliver(actix.addr, &retry, body).await.0, 200);
    assert_eq!(handler.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_handler_answered_500_the_next_copy_reaches_it() {
    let layer = ComposioWebhookLayer::builder()
        .secret(SECRET)
        .build()
        .unwrap();
    let handler = Handler::new(true);
    handler.status.store(500, Ordering::SeqCst);
    let points = Points::default();
    let actix = ActixHook::start(&layer, &handler, &points);
    let body = V1.2.as_bytes();
    let headers = sign_delivery(SECRET, "msg_failed", body, now());
    let send_copy = || {
        let (addr, headers) = (actix.addr, headers.clone());
        tokio::spawn(async move { deliver(addr, &headers, body).await.0 })
    };
    let first = send_copy();
    handler.entered(1).await;
    let copy = send_copy();
    points.wait_for(pause_point::DELIVERY_WAITING, 1).await;
    // The first fails: the copy that waited is handled itself, and succeeds.
    handler.gate.add_permits(1);
    assert_eq!(within("the first answer", first).await.unwrap(), 500);
    handler.entered(2).await;
    assert_eq!(handler.calls(), 2);
    handler.status.store(200, Ordering::SeqCst);
    handler.gate.add_permits(1);
    assert_eq!(within("the copy's answer", copy).await.unwrap(), 200);
    // Acknowledged now: answered without the handler.
    handler.gate.add_permits(Semaphore::MAX_PERMITS);
    assert_eq!(deliver(actix.addr, &headers, body).await.0, 200);
    assert_eq!(handler.calls(), 2);
    // A 500 with nothing waiting: Composio's retry reaches the handler.
    handler.status.store(500, Ordering::SeqCst);
    let retried = sign_delivery(SECRET, "msg_failed_2", body, now());
    assert_eq!(deliver(actix.addr, &retried, body).await.0, 500);
    handler.status.store(200, Ordering::SeqCst);
    let retried = sign_delivery(SECRET, "msg_failed_2", body, now());
    assert_eq!(deliver(actix.addr, &retried, body).await.0, 200);
    assert_eq!(handler.calls(), 4);
}
