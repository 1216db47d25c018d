//! Floods: bad keys never push good ones out, and upstream calls stay bounded.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{app, builder, composio, ALICE};
use futures_util::{stream, StreamExt};
use tower::ServiceExt;

fn request(key: &str) -> Request<Body> {
    Request::get("/me")
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_invalid_keys_never_evicts_a_valid_session() {
    const FLOOD: usize = 100_000;
    let composio = composio().await;
    // Default capacities (10,000 + 10,000); a TTL longer than any flood, so that only
    // an eviction could cost ALICE a second call (a loaded machine may take a minute).
    let layer = builder(&composio)
        .ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let app = app(layer.clone());
    assert_eq!(
        app.clone().oneshot(request(ALICE)).await.unwrap().status(),
        StatusCode::OK
    );

    let started = std::time::Instant::now();
    let statuses = stream::iter(0..FLOOD)
        .map(|i| {
            let app = app.clone();
            async move {
                app.oneshot(request(&format!("ak_flood_{i:08}")))
                    .await
                    .unwrap()
                    .status()
            }
        })
        .buffer_unordered(64)
        .fold(0usize, |refused, status| async move {
            refused + usize::from(status == StatusCode::UNAUTHORIZED)
        })
        .await;
    eprintln!("{FLOOD} invalid keys in {:?}", started.elapsed());
    assert_eq!(statuses, FLOOD, "every invalid key refused");
    assert_eq!(composio.calls(), 1 + FLOOD as u64);

    // The valid session survived: no extra upstream call for it.
    assert_eq!(
        app.oneshot(request(ALICE)).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(composio.calls_for(ALICE), 1);
    let composio_auth::CachedVerdicts {
        sessions,
        rejections,
        ..
    } = layer.cached();
    assert_eq!(sessions, 1);
    assert!(rejections <= 10_000, "{rejections} rejections cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_10000_requests_over_100_keys_make_exactly_100_calls() {
    let composio = composio().await;
    let keys: Arc<Vec<String>> =
        Arc::new((0..100).map(|i| format!("ak_scale_key_{i:04}")).collect());
    for key in keys.iter() {
        composio.add_session(key, composio_auth::testing::StandIn::example_document());
    }
    // Slow enough that many requests for one key arrive while it is being verified.
    composio.set_latency(Duration::from_millis(20));
    let app = app(builder(&composio).build().unwrap());
    let ok =
        stream::iter(0..10_000usize)
            .map(|i| {
                let (app, keys) = (app.clone(), Arc::clone(&keys));
                async move {
                    app.oneshot(request(&keys[i % 100])).await.unwrap().status() == StatusCode::OK
                }
            })
            .buffer_unordered(64)
            .fold(0usize, |ok, answer| async move { ok + usize::from(answer) })
            .await;
    assert_eq!(ok, 10_000);
    assert_eq!(composio.calls(), 100);
    assert!(keys.iter().all(|k| composio.calls_for(k) == 1));
}
