//! A verified webhook delivery's cost (`cargo bench --bench webhook`): the layer in
//! front of an axum route against the bare route, in process, for a 2 KiB and a
//! 256 KiB body. Each delivery has an id of its own (signed outside the measured
//! time), so every one is verified, claimed and handed to the handler; the bare
//! route receives the same request and reads the same body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::Request;
use axum::routing::post;
use axum::Router;
use composio_auth::testing::sign_delivery;
use composio_auth::{ComposioWebhookLayer, WebhookEvent};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use tower::ServiceExt;

const SECRET: &str = "whsec_bench_secret";

/// A V1 event whose payload pads the body to `size` bytes.
fn body_of(size: usize) -> Bytes {
    let head = r#"{"trigger_name":"GITHUB_PUSH_EVENT","connection_id":"c","trigger_id":"t","log_id":"l","payload":{"padding":""#;
    let tail = r#""}}"#;
    let padding = "x".repeat(size - head.len() - tail.len());
    Bytes::from(format!("{head}{padding}{tail}"))
}

fn request(body: &Bytes, next: &AtomicU64) -> Request<Body> {
    let id = format!("msg_bench_{}", next.fetch_add(1, Ordering::Relaxed));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut request = Request::post("/hook")
        .body(Body::from(body.clone()))
        .unwrap();
    *request.headers_mut() = sign_delivery(SECRET, &id, body, now);
    request
}

fn deliveries(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let layer = ComposioWebhookLayer::builder()
        .secret(SECRET)
        .build()
        .unwrap();
    let guarded = Router::new().route(
        "/hook",
        post(|_: WebhookEvent, body: Bytes| async move { body.len().to_string() }).layer(layer),
    );
    let bare = Router::new().route(
        "/hook",
        post(|body: Bytes| async move { body.len().to_string() }),
    );
    let next = AtomicU64::new(0);
    let mut group = c.benchmark_group("webhook delivery");
    for size in [2 * 1024, 256 * 1024] {
        let body = body_of(size);
        for (name, app) in [("bare", &bare), ("layer", &guarded)] {
            group.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter_batched(
                    || request(&body, &next),
                    |request| {
                        let response = runtime.block_on(app.clone().oneshot(request)).unwrap();
                        assert!(response.status().is_success());
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, deliveries);
criterion_main!(benches);
