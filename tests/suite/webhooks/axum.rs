//! The webhook layer in axum over real TCP, and `verify`: Composio's published
//! vectors, every answer in its documented order, the same body bytes handed on,
//! and once-delivery with the handler held.

use crate::common::{self, serve, Capture};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use composio_auth::testing::{pause_point, sign_delivery};
use composio_auth::{ComposioWebhookLayer, WebhookEvent, WebhookVersion};
use tokio::sync::{watch, Semaphore};

use super::fixtures::{self, now, FIXTURE_TIME, GOLDEN, SECRET, V1, V2, V3};

/// The fixtures' headers: as Composio sent them.
fn fixture_headers((id, signature, _): (&str, &str, &str)) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", id.parse().unwrap());
    headers.insert("webhook-timestamp", FIXTURE_TIME.parse().unwrap());
    headers.insert("webhook-signature", signature.parse().unwrap());
    headers
}

/// A layer for the fixtures, whose timestamps are long past: the check off.
fn fixtures_layer() -> ComposioWebhookLayer {
    ComposioWebhookLayer::builder()
        .secret(SECRET)
        .tolerance(Duration::ZERO)
        .build()
        .unwrap()
}

fn slug(rejection: &composio_auth::WebhookRejection) -> String {
    rejection.envelope().error.slug.clone().unwrap_or_default()
}

#[test]
fn the_v1_v2_and_v3_fixtures_verify_and_parse() {
    let layer = fixtures_layer();
    let event = layer.verify(&fixture_headers(V3), V3.2.as_bytes()).unwrap();
    assert_eq!(event.version(), WebhookVersion::V3);
    assert_eq!(event.id(), "msg_fixture_v3_001", "the header is the id");
    assert_eq!(event.event_type(), "composio.trigger.message");
    assert_eq!(event.trigger_slug(), Some("GITHUB_PUSH_EVENT"));
    assert_eq!(event.user_id(), Some("user_fixture_001"));
    assert_eq!(event.data()["repository"]["name"], "test-repo");
    assert_eq!(event.body(), V3.2.as_bytes());
    let event = layer.verify(&fixture_headers(V2), V2.2.as_bytes()).unwrap();
    assert_eq!(event.version(), WebhookVersion::V2);
    assert_eq!(event.trigger_slug(), Some("GITHUB_PUSH_EVENT"));
    assert_eq!(event.connected_account_id(), Some("ca_fixture_002"));
    let event = layer.verify(&fixture_headers(V1), V1.2.as_bytes()).unwrap();
    assert_eq!(event.version(), WebhookVersion::V1);
    assert_eq!(event.trigger_id(), Some("trigger_fixture_001"));
    assert_eq!(event.user_id(), None);
}

#[test]
fn the_golden_signatures_verify_but_their_bodies_are_no_event() {
    for (id, timestamp, body, secret, signature) in GOLDEN {
        let layer = ComposioWebhookLayer::builder()
            .secret(secret)
            .tolerance(Duration::ZERO)
            .build()
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", id.parse().unwrap());
        headers.insert("webhook-timestamp", timestamp.parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        let rejection = layer.verify(&headers, body.as_bytes()).unwrap_err();
        assert_eq!(rejection.status(), StatusCode::BAD_REQUEST, "{id}: not 401");
        assert_eq!(slug(&rejection), "Webhook_InvalidPayload");
    }
}

#[test]
fn every_tampering_gets_its_documented_answer() {
    let layer = fixtures_layer();
    let (id, signature, body) = V3;
    let refused =
        |headers: &HeaderMap, body: &[u8]| slug(&layer.verify(headers, body).unwrap_err());
    let headers = fixture_headers(V3);
    // One byte of the body, the id or the timestamp.
    let mut changed = body.as_bytes().to_vec();
    changed[10] ^= 1;
    assert_eq!(refused(&headers, &changed), "Webhook_InvalidSignature");
    let mut other_id = headers.clone();
    other_id.insert("webhook-id", format!("{id}x").parse().unwrap());
    assert_eq!(
        refused(&other_id, body.as_bytes()),
        "Webhook_InvalidSignature"
    );
    let mut other_time = headers.clone();
    other_time.insert("webhook-timestamp", "1738150201".parse().unwrap());
    assert_eq!(
        refused(&other_time, body.as_bytes()),
        "Webhook_InvalidSignature"
    );
    // The same JSON, serialized again: other bytes.
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    let reserialized = serde_json::to_vec_pretty(&value).unwrap();
    assert_eq!(refused(&headers, &reserialized), "Webhook_InvalidSignature");
    // The MAC in hex instead of base64.
    let mut hex = headers.clone();
    hex.insert(
        "webhook-signature",
        "v1,1aa4ec31a0edae879e34dec7ac0cc44a".parse().unwrap(),
    );
    assert_eq!(refused(&hex, body.as_bytes()), "Webhook_InvalidSignature");
    // Each header missing.
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let mut missing = headers.clone();
        missing.remove(name);
        assert_eq!(
            refused(&missing, body.as_bytes()),
            "Webhook_MissingHeaders",
            "{name}"
        );
    }
    assert!(layer.verify(&headers, body.as_bytes()).is_ok());
    let _ = signature;
}

#[test]
fn a_timestamp_301_seconds_off_either_way_is_refused_and_two_secrets_both_verify() {
    let layer = ComposioWebhookLayer::builder()
        .secret("old-secret")
        .secret("new-secret")
        .build()
        .unwrap();
    let body = V1.2.as_bytes();
    for secret in ["old-secret", "new-secret"] {
        assert!(layer
            .verify(&sign_delivery(secret, "msg_1", body, now()), body)
            .is_ok());
    }
    for when in [now() - 301, now() + 301] {
        let rejection = layer
            .verify(&sign_delivery("new-secret", "msg_1", body, when), body)
            .unwrap_err();
        assert_eq!(slug(&rejection), "Webhook_TimestampOutsideTolerance");
        assert_eq!(rejection.status(), StatusCode::UNAUTHORIZED);
    }
    let rejection = layer
        .verify(&sign_delivery("another", "msg_1", body, now()), body)
        .unwrap_err();
    assert_eq!(slug(&rejection), "Webhook_InvalidSignature");
}

/// What the handler saw, and how it answers: held until `gate` has a permit.
struct Handler {
    calls: AtomicUsize,
    gate: Semaphore,
    status: AtomicU16,
    entered: watch::Sender<usize>,
    last: std::sync::Mutex<Option<(WebhookEvent, Bytes)>>,
}

impl Handler {
    fn new(held: bool) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            gate: Semaphore::new(if held { 0 } else { Semaphore::MAX_PERMITS }),
            status: AtomicU16::new(200),
            entered: watch::channel(0).0,
            last: std::sync::Mutex::new(None),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn handle(
    State(handler): State<Arc<Handler>>,
    event: WebhookEvent,
    body: Bytes,
) -> StatusCode {
    handler.calls.fetch_add(1, Ordering::SeqCst);
    handler.entered.send_modify(|n| *n += 1);
    *handler.last.lock().unwrap() = Some((event, body));
    // Each permit lets one call through, once.
    handler.gate.acquire().await.unwrap().forget();
    StatusCode::from_u16(handler.status.load(Ordering::SeqCst)).unwrap()
}

async fn serve_hook(layer: ComposioWebhookLayer, handler: Arc<Handler>) -> SocketAddr {
    let app = Router::new()
        .route("/hook", post(handle).layer(layer))
        .with_state(handler);
    serve(app).await
}

/// POSTs `body` with `headers` to the hook; status, `Allow`, body.
async fn deliver(
    addr: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> (u16, Option<String>, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut request = client
        .post(format!("http://{addr}/hook"))
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(name.as_str(), value.to_str().unwrap());
    }
    let response = request.send().await.unwrap();
    let allow = response
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        response.status().as_u16(),
        allow,
        response.text().await.unwrap(),
    )
}

#[tokio::test]
async fn over_tcp_the_handler_gets_the_same_bytes_and_the_event_and_refusals_never_reach_it() {
    let layer = ComposioWebhookLayer::builder()
        .secret(SECRET)
        .max_body_bytes(1024)
        .build()
        .unwrap();
    let handler = Handler::new(false);
    let addr = serve_hook(layer, Arc::clone(&handler)).await;
    let body = V3.2.as_bytes();
    let (status, _, _) =
        deliver(addr, &sign_delivery(SECRET, "msg_tcp_1", body, now()), body).await;
    assert_eq!(status, 200);
    let (event, seen) = handler.last.lock().unwrap().take().unwrap();
    assert_eq!((event.id(), seen.as_ref()), ("msg_tcp_1", body));
    // Refusals, each answered before the handler.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = client
        .get(format!("http://{addr}/hook"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    let large = format!(r#"{{"trigger_name":"T","payload":"{}"}}"#, "x".repeat(2048));
    let signed = sign_delivery(SECRET, "msg_tcp_2", large.as_bytes(), now());
    assert_eq!(deliver(addr, &signed, large.as_bytes()).await.0, 413);
    let exact = format!(
        r#"{{"trigger_name":"T","payload":"{}"}}"#,
        "x".repeat(1024 - 33)
    );
    assert_eq!(exact.len(), 1024);
    let signed = sign_delivery(SECRET, "msg_tcp_3", exact.as_bytes(), now());
    assert_eq!(
        deliver(addr, &signed, exact.as_bytes()).await.0,
        200,
        "exactly the limit"
    );
    let stale = sign_delivery(SECRET, "msg_tcp_4", body, now() - 301);
    assert_eq!(deliver(addr, &stale, body).await.0, 401);
    let unsigned = sign_delivery("another", "msg_tcp_5", body, now());
    assert_eq!(deliver(addr, &unsigned, body).await.0, 401);
    let not_event = sign_delivery(SECRET, "msg_tcp_6", b"{}", now());
    let (status, _, envelope) = deliver(addr, &not_event, b"{}").await;
    assert_eq!(status, 400);
    assert!(envelope.contains("Webhook_InvalidPayload"), "{envelope}");
    assert_eq!(handler.calls(), 2);
    let _ = fixtures::V1;
}

#[tokio::test]
async fn a_405_says_allow_post() {
    let layer = fixtures_layer();
    let addr = serve_hook(layer, Handler::new(false)).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client
        .put(format!("http://{addr}/hook"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
}

#[tokio::test(flavor = "current_thread")]
async fn twenty_copies_with_the_handler_held_reach_it_once_and_all_get_its_200() {
    let (capture, _guard) = Capture::install();
    let layer = ComposioWebhookLayer::builder()
        .secret(SECRET)
        .build()
        .unwrap();
    let handler = Handler::new(true);
    let addr = serve_hook(layer, Arc::clone(&handler)).await;
    let body = V2.2.as_bytes();
    let headers = sign_delivery(SECRET, "msg_once", body, now());
    let copies: Vec<_> = (0..20)
        .map(|_| {
            let headers = headers.clone();
            tokio::spawn(async move { deliver(addr, &headers, body).await.0 })
        })
        .collect();
    // One copy is in the handler; nineteen wait for it.
    capture
        .wait_for_point(pause_point::DELIVERY_WAITING, 19)
        .await;
    assert_eq!(handler.calls(), 1);
    handler.gate.add_permits(Semaphore::MAX_PERMITS);
    for copy in copies {
        assert_eq!(copy.await.unwrap(), 200);
    }
    assert_eq!(handler.calls(), 1);
    // A retry later, with a new timestamp and signature: acknowledged already.
    let retry = sign_delivery(SECRET, "msg_once", body, now());
    assert_eq!(deliver(addr, &retry, body).await.0, 200);
    assert_eq!(handler.calls(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_delivery_whose_handler_failed_is_handled_again_by_the_copy_waiting_or_the_retry() {
    let (capture, _guard) = Capture::install();
    let layer = ComposioWebhookLayer::builder()
        .secret(SECRET)
        .build()
        .unwrap();
    let handler = Handler::new(true);
    handler.status.store(500, Ordering::SeqCst);
    let addr = serve_hook(layer, Arc::clone(&handler)).await;
    let body = V1.2.as_bytes();
    let headers = sign_delivery(SECRET, "msg_failed", body, now());
    let first = tokio::spawn({
        let headers = headers.clone();
        async move { deliver(addr, &headers, body).await.0 }
    });
    let mut entered = handler.entered.subscribe();
    common::within(
        "the first copy in the handler",
        entered.wait_for(|n| *n == 1),
    )
    .await
    .unwrap();
    let copy = tokio::spawn({
        let headers = headers.clone();
        async move { deliver(addr, &headers, body).await.0 }
    });
    capture
        .wait_for_point(pause_point::DELIVERY_WAITING, 1)
        .await;
    // The first fails; the copy that waited is handled itself, and succeeds.
    handler.gate.add_permits(1);
    assert_eq!(first.await.unwrap(), 500);
    common::within("the copy in the handler", entered.wait_for(|n| *n == 2))
        .await
        .unwrap();
    handler.status.store(200, Ordering::SeqCst);
    handler.gate.add_permits(1);
    assert_eq!(copy.await.unwrap(), 200);
    assert_eq!(handler.calls(), 2);
    handler.gate.add_permits(Semaphore::MAX_PERMITS);
    assert_eq!(deliver(addr, &headers, body).await.0, 200);
    assert_eq!(handler.calls(), 2, "acknowledged now");
}

/// Writes a whole request (`head`, then `body`) before reading its answer, as
/// Python's `http.client` does; the answer's status line.
async fn write_all_then_read(addr: SocketAddr, head: String, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(body)
        .await
        .expect("the whole body is read, not reset");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_refused_upload_is_read_to_its_end_before_the_answer() {
    let layer = ComposioWebhookLayer::builder()
        .secret(SECRET)
        .max_body_bytes(1024)
        .build()
        .unwrap();
    let handler = Handler::new(false);
    let addr = serve_hook(layer, Arc::clone(&handler)).await;
    let large = vec![b'x'; 4 * 1024 * 1024];
    let signed = sign_delivery(SECRET, "msg_large", &large, now());
    let mut head = format!(
        "POST /hook HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n",
        large.len()
    );
    for (name, value) in &signed {
        head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    head.push_str("\r\n");
    let status = write_all_then_read(addr, head.clone(), &large).await;
    assert!(status.contains(" 413 "), "{status}");
    // Refused on its headers (another method), with a body on its way: the same.
    let put = head.replacen("POST", "PUT", 1);
    let status = write_all_then_read(addr, put, &large).await;
    assert!(status.contains(" 405 "), "{status}");
    assert_eq!(handler.calls(), 0);
}

#[tokio::test]
async fn over_tcp_the_published_vectors_get_what_verify_gives() {
    let layer = fixtures_layer();
    let handler = Handler::new(false);
    let addr = serve_hook(layer.clone(), Arc::clone(&handler)).await;
    let mut cases: Vec<(HeaderMap, Vec<u8>, u16)> = Vec::new();
    for fixture in [V3, V2, V1] {
        cases.push((fixture_headers(fixture), fixture.2.as_bytes().to_vec(), 200));
        let mut changed = fixture.2.as_bytes().to_vec();
        changed[5] ^= 1;
        cases.push((fixture_headers(fixture), changed, 401));
    }
    for (id, timestamp, body, secret, signature) in GOLDEN {
        // Signed with their own secrets: refused here for the signature...
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", id.parse().unwrap());
        headers.insert("webhook-timestamp", timestamp.parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        cases.push((headers, body.as_bytes().to_vec(), 401));
        // ...and with this layer's secret, verified, but no event: 400.
        let resigned = sign_delivery(SECRET, id, body.as_bytes(), timestamp.parse().unwrap());
        cases.push((resigned, body.as_bytes().to_vec(), 400));
        let _ = secret;
    }
    for (headers, body, status) in &cases {
        let expected = match layer.verify(headers, body) {
            Ok(_) => 200,
            Err(rejection) => rejection.status().as_u16(),
        };
        assert_eq!(expected, *status);
        assert_eq!(deliver(addr, headers, body).await.0, *status);
    }
    assert_eq!(handler.calls(), 3, "the three fixtures, once each");
}
