//! Once-delivery across replicas (features `webhook` and `redis`): two axum apps,
//! each behind its own `ComposioWebhookLayer` with `.shared_cache(..)` on one real
//! `redis-server`, over real TCP. Each test starts its own server.

use crate::common::redis::{RedisServer, PEPPER};
use crate::common::{eventually, serve, within, Capture};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use axum::routing::post;
use axum::Router;
use composio_auth::testing::{pause_point, sign_delivery};
use composio_auth::{ComposioWebhookLayer, RedisCache, WebhookEvent};
use tokio::sync::{watch, Semaphore};
use tower::{Layer, ServiceExt};

use super::fixtures::{now, SECRET, V1, V2, V3};

/// Generous enough that a loaded machine never makes these tests go on without
/// Redis (the test that wants that stops Redis).
const BUDGET: Duration = Duration::from_secs(2);

/// The Redis keys of deliveries' claims and acknowledgements.
const CLAIMS: &str = "composio-auth:wh:*:claim";
const ACKS: &str = "composio-auth:wh:*:ack";

/// A handler: counts its calls, held until `gate` has a permit, answers `status`.
struct Handler {
    calls: AtomicUsize,
    gate: Semaphore,
    status: AtomicU16,
    entered: watch::Sender<usize>,
}

impl Handler {
    fn new(held: bool, status: u16) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            gate: Semaphore::new(if held { 0 } else { Semaphore::MAX_PERMITS }),
            status: AtomicU16::new(status),
            entered: watch::channel(0).0,
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Lets every call through from now on.
    fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS);
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Waits until `n` calls have entered the handler.
    async fn entered(&self, n: usize) {
        let mut entered = self.entered.subscribe();
        within("the handler to be called", entered.wait_for(|c| *c >= n))
            .await
            .unwrap();
    }

    async fn handle(&self) -> StatusCode {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.entered.send_modify(|n| *n += 1);
        self.gate.acquire().await.unwrap().forget();
        StatusCode::from_u16(self.status.load(Ordering::SeqCst)).unwrap()
    }
}

async fn handle(State(handler): State<Arc<Handler>>, _: WebhookEvent) -> StatusCode {
    handler.handle().await
}

fn layer(cache: RedisCache) -> ComposioWebhookLayer {
    ComposioWebhookLayer::builder()
        .secret(SECRET)
        .shared_cache(cache)
        .build()
        .unwrap()
}

/// A replica: its own layer on `cache`, served on its own port.
async fn replica(cache: RedisCache, handler: &Arc<Handler>) -> SocketAddr {
    let app = Router::new()
        .route("/hook", post(handle).layer(layer(cache)))
        .with_state(Arc::clone(handler));
    serve(app).await
}

/// Delivers `(id, body)` to `addr`, signed now (each attempt its own timestamp
/// and signature, as Composio's retries); the status.
async fn deliver(addr: SocketAddr, id: &str, body: &str) -> u16 {
    let headers = sign_delivery(SECRET, id, body.as_bytes(), now());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client
        .post(format!("http://{addr}/hook"))
        .headers(reqwest_headers(&headers))
        .body(body.to_owned())
        .send()
        .await
        .expect("the replica answers");
    response.status().as_u16()
}

fn reqwest_headers(headers: &HeaderMap) -> reqwest::header::HeaderMap {
    headers
        .iter()
        .map(|(name, value)| {
            (
                reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap(),
                reqwest::header::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            )
        })
        .collect()
}

/// `deliver`, spawned.
fn spawn_delivery(
    addr: SocketAddr,
    id: &'static str,
    body: &'static str,
) -> tokio::task::JoinHandle<u16> {
    tokio::spawn(deliver(addr, id, body))
}

/// The one delivery claim in Redis (its key), waited for.
async fn the_claim(redis: &RedisServer) -> String {
    eventually("a claim in Redis", || redis.keys(CLAIMS).len() == 1).await;
    redis.keys(CLAIMS).remove(0)
}

#[tokio::test]
async fn the_same_delivery_to_two_replicas_reaches_the_handler_once() {
    let redis = RedisServer::start();
    let handler = Handler::new(false, 200);
    let a = replica(redis.cache(BUDGET), &handler).await;
    let b = replica(redis.cache(BUDGET), &handler).await;
    for (n, (id, _, body)) in [V3, V2, V1].into_iter().enumerate() {
        assert_eq!(deliver(a, id, body).await, 200);
        assert_eq!(
            deliver(b, id, body).await,
            200,
            "the copy on the other replica"
        );
        assert_eq!(deliver(a, id, body).await, 200);
        assert_eq!(handler.calls(), n + 1, "{id}: handled once in all");
    }
    // Both at once, on both replicas, many times: once.
    let copies: Vec<_> = (0..10)
        .map(|i| spawn_delivery([a, b][i % 2], "msg_fleet_burst", V3.2))
        .collect();
    for copy in copies {
        assert_eq!(copy.await.unwrap(), 200);
    }
    assert_eq!(handler.calls(), 4);
    // Acknowledged: no claim is left, one acknowledgement per delivery.
    eventually("the claims released", || redis.keys(CLAIMS).is_empty()).await;
    assert_eq!(redis.keys(ACKS).len(), 4);
}

#[tokio::test]
async fn a_copy_on_another_replica_waits_for_the_first_and_gets_its_200() {
    let (capture, _guard) = Capture::install();
    let redis = RedisServer::start();
    let handler = Handler::new(true, 200);
    let a = replica(redis.cache(BUDGET), &handler).await;
    let b = replica(redis.cache(BUDGET), &handler).await;
    let first = spawn_delivery(a, "msg_fleet_held", V2.2);
    handler.entered(1).await;
    let copy = spawn_delivery(b, "msg_fleet_held", V2.2);
    within(
        "the copy to wait",
        capture.wait_for_point(pause_point::DELIVERY_WAITING, 1),
    )
    .await;
    assert!(!copy.is_finished(), "the copy waits for the first's answer");
    handler.open();
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(within("the copy's answer", copy).await.unwrap(), 200);
    assert_eq!(handler.calls(), 1);
}

#[tokio::test]
async fn when_the_first_replica_fails_the_copy_waiting_on_another_is_handled_there() {
    let (capture, _guard) = Capture::install();
    let redis = RedisServer::start();
    let (on_a, on_b) = (Handler::new(true, 500), Handler::new(false, 200));
    let a = replica(redis.cache(BUDGET), &on_a).await;
    let b = replica(redis.cache(BUDGET), &on_b).await;
    let first = spawn_delivery(a, "msg_fleet_failed", V1.2);
    on_a.entered(1).await;
    let copy = spawn_delivery(b, "msg_fleet_failed", V1.2);
    within(
        "the copy to wait",
        capture.wait_for_point(pause_point::DELIVERY_WAITING, 1),
    )
    .await;
    assert_eq!(on_b.calls(), 0);
    on_a.open();
    assert_eq!(first.await.unwrap(), 500);
    // A's claim released: the copy waiting on B is handled there.
    assert_eq!(within("the copy's answer", copy).await.unwrap(), 200);
    assert_eq!((on_a.calls(), on_b.calls()), (1, 1));
    // Acknowledged by B: a retry reaching A gets 200 without A's handler.
    assert_eq!(deliver(a, "msg_fleet_failed", V1.2).await, 200);
    assert_eq!((on_a.calls(), on_b.calls()), (1, 1));
    // And a failure with no copy waiting lets Composio's retry through elsewhere.
    on_b.answer(500);
    assert_eq!(deliver(b, "msg_fleet_retried", V3.2).await, 500);
    on_a.answer(200);
    assert_eq!(deliver(a, "msg_fleet_retried", V3.2).await, 200);
    assert_eq!((on_a.calls(), on_b.calls()), (2, 2));
}

#[tokio::test]
async fn with_redis_down_deliveries_reach_the_handler_deduplicated_on_each_replica() {
    let (capture, _guard) = Capture::install();
    let mut redis = RedisServer::start();
    let handler = Handler::new(false, 200);
    let a = replica(redis.cache(BUDGET), &handler).await;
    let b = replica(redis.cache(BUDGET), &handler).await;
    redis.kill();
    assert_eq!(deliver(a, "msg_fleet_down", V3.2).await, 200);
    assert_eq!(handler.calls(), 1);
    // On one replica, still once.
    assert_eq!(deliver(a, "msg_fleet_down", V3.2).await, 200);
    assert_eq!(handler.calls(), 1);
    // Another replica cannot know: at-least-once, as Composio promises.
    assert_eq!(deliver(b, "msg_fleet_down", V3.2).await, 200);
    assert_eq!(handler.calls(), 2);
    // Copies at once on one replica wait for the first there.
    let held = Handler::new(true, 200);
    let c = replica(redis.cache(BUDGET), &held).await;
    let copies: Vec<_> = (0..5)
        .map(|_| spawn_delivery(c, "msg_fleet_down_held", V2.2))
        .collect();
    held.entered(1).await;
    within(
        "the copies to wait",
        capture.wait_for_point(pause_point::DELIVERY_WAITING, 4),
    )
    .await;
    held.open();
    for copy in copies {
        assert_eq!(copy.await.unwrap(), 200);
    }
    assert_eq!(held.calls(), 1);
    // Logged at warn, at most once a minute per layer (at debug otherwise).
    let warned = capture.count_at("WARN", "deduplicated on this replica only");
    assert_eq!(warned, 3, "once for each of the three layers");
}

#[tokio::test]
async fn redis_holds_no_id_secret_or_body_and_a_forged_acknowledgement_suppresses_nothing() {
    let (capture, _guard) = Capture::install();
    let redis = RedisServer::start();
    let monitor = redis.monitor();
    let (on_a, on_b) = (Handler::new(false, 200), Handler::new(false, 500));
    let a = replica(redis.cache(BUDGET), &on_a).await;
    let b = replica(redis.cache(BUDGET), &on_b).await;
    // Y acknowledged by A; X failed on a third replica, its claim seen meanwhile.
    assert_eq!(deliver(a, "msg_fleet_y", V2.2).await, 200);
    eventually("Y acknowledged in Redis", || redis.keys(ACKS).len() == 1).await;
    let ack_y = redis.keys(ACKS).remove(0);
    let on_c = Handler::new(true, 500);
    let c = replica(redis.cache(BUDGET), &on_c).await;
    let first = spawn_delivery(c, "msg_fleet_x", V3.2);
    let ack_x = the_claim(&redis).await.replace(":claim", ":ack");
    on_c.open();
    assert_eq!(first.await.unwrap(), 500);
    // A writer without the pepper forges X's acknowledgement: the retry is
    // handled (and fails again).
    redis.cli(&["set", &ack_x, "acknowledged"]);
    assert_eq!(deliver(b, "msg_fleet_x", V3.2).await, 500);
    assert_eq!(
        on_b.calls(),
        1,
        "a forged acknowledgement suppresses nothing"
    );
    // Nor does Y's genuine acknowledgement moved to X's key.
    assert_eq!(redis.cli(&["copy", &ack_y, &ack_x, "replace"]).trim(), "1");
    on_b.answer(200);
    assert_eq!(deliver(b, "msg_fleet_x", V3.2).await, 200);
    assert_eq!(on_b.calls(), 2);
    // Now acknowledged for real, on every replica.
    assert_eq!(deliver(a, "msg_fleet_x", V3.2).await, 200);
    assert_eq!(deliver(c, "msg_fleet_x", V3.2).await, 200);
    assert_eq!((on_a.calls(), on_b.calls(), on_c.calls()), (1, 2, 1));
    // Logged at warn once per layer, then at debug.
    assert_eq!(capture.count_at("WARN", "not written by this fleet"), 1);
    assert_eq!(capture.count_at("DEBUG", "not written by this fleet"), 1);
    eventually("the claims released", || redis.keys(CLAIMS).is_empty()).await;
    let seen = monitor.stop();
    let held = String::from_utf8_lossy(&redis.dump()).into_owned();
    assert!(
        seen.contains("evalsha") || seen.contains("EVALSHA"),
        "{seen}"
    );
    let secrets = [
        "msg_fleet",
        SECRET,
        PEPPER,
        "GITHUB_PUSH_EVENT",
        "github_push_event",
        "refs/heads/main",
        "test-repo",
        "fixture",
        "composio.trigger",
    ];
    for secret in secrets {
        assert!(!seen.contains(secret), "MONITOR saw {secret}");
        assert!(!held.contains(secret), "Redis holds {secret}");
    }
    for key in redis.keys("composio-auth:*") {
        let (tag, kind) = key
            .strip_prefix("composio-auth:wh:{")
            .and_then(|rest| rest.split_once('}'))
            .unwrap_or_else(|| panic!("an unexpected key {key}"));
        assert!(
            tag.len() == 64 && tag.bytes().all(|c| c.is_ascii_hexdigit()),
            "{key}"
        );
        assert_eq!(kind, ":ack", "{key}");
    }
}

#[tokio::test]
async fn a_claim_left_by_a_replica_that_died_holds_the_retry_back_for_its_lease_only() {
    let (capture, _guard) = Capture::install();
    let redis = RedisServer::start();
    let (on_a, on_b) = (Handler::new(true, 500), Handler::new(false, 200));
    let a = replica(redis.cache(BUDGET), &on_a).await;
    let b = replica(redis.cache(BUDGET), &on_b).await;
    // The claim's name, seen while A handles a first attempt that fails.
    let first = spawn_delivery(a, "msg_fleet_orphan", V3.2);
    let claim = the_claim(&redis).await;
    on_a.open();
    assert_eq!(first.await.unwrap(), 500);
    eventually("A's claim released", || redis.keys(CLAIMS).is_empty()).await;
    // A replica took the retry and died: its claim stays until its lease ends.
    redis.cli(&["set", &claim, "a-dead-replica's-token", "px", "1000"]);
    let started = Instant::now();
    let retry = spawn_delivery(b, "msg_fleet_orphan", V3.2);
    within(
        "the retry to wait",
        capture.wait_for_point(pause_point::DELIVERY_WAITING, 1),
    )
    .await;
    assert_eq!(on_b.calls(), 0);
    assert_eq!(within("the retry's answer", retry).await.unwrap(), 200);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(500), "waited {waited:?}");
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert_eq!(on_b.calls(), 1);
}

#[tokio::test]
async fn a_delivery_cancelled_mid_handling_releases_its_claim_at_once() {
    let redis = RedisServer::start();
    let held = Handler::new(true, 200);
    let service = layer(redis.cache(BUDGET)).layer(tower::service_fn({
        let held = Arc::clone(&held);
        move |_: Request<Body>| {
            let held = Arc::clone(&held);
            async move {
                let status = held.handle().await;
                let mut response = Response::new(Body::empty());
                *response.status_mut() = status;
                Ok::<_, Infallible>(response)
            }
        }
    }));
    let mut request = Request::post("/hook").body(Body::from(V2.2)).unwrap();
    *request.headers_mut() = sign_delivery(SECRET, "msg_fleet_cancelled", V2.2.as_bytes(), now());
    let delivery = tokio::spawn(service.oneshot(request));
    held.entered(1).await;
    assert_eq!(redis.keys(CLAIMS).len(), 1);
    // The request is dropped (the client went away, the replica shuts down):
    // the claim goes with it, and the retry goes through at once elsewhere.
    delivery.abort();
    eventually("the claim released", || redis.keys(CLAIMS).is_empty()).await;
    let handler = Handler::new(false, 200);
    let b = replica(redis.cache(BUDGET), &handler).await;
    let started = Instant::now();
    assert_eq!(deliver(b, "msg_fleet_cancelled", V2.2).await, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!((held.calls(), handler.calls()), (1, 1));
}
