//! Per-request cost of the layer, side by side with its two yardsticks, in one run:
//!
//! - `bare`: the router with no authentication (the limit);
//! - `static_key`: tower-http's `ValidateRequestHeaderLayer` comparing one fixed key
//!   (the floor of any check);
//! - `warm_hit`: this layer, key cached (the hot path);
//! - `cold_miss`: this layer, key just invalidated: one upstream round trip to the
//!   loopback stand-in;
//! - `naive_per_request`: an `AsyncRequireAuthorizationLayer` that calls the stand-in
//!   on every request;
//! - `bare_with_connect_info` and `warm_hit_with_connect_info`: the first and third,
//!   with the `ConnectInfo` extension a server made with
//!   `into_make_service_with_connect_info` adds.
//!
//! Plus contention: 2 and 8 tasks on a 2-worker runtime, on one hot key and on 1,000
//! keys. Run with `cargo bench --bench layer`; figures are in BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode};
use axum::routing::get;
use axum::Router;
use composio_auth::testing::StandIn;
use composio_auth::ComposioAuthLayer;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tower::ServiceExt;
use tower_http::auth::{AsyncAuthorizeRequest, AsyncRequireAuthorizationLayer};
use tower_http::validate_request::ValidateRequestHeaderLayer;

const KEY: &str = "ak_bench_0123456789abcdef";

fn handler() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}

/// Turns every handler into a route once, as `axum::serve` does
/// (`into_make_service`), instead of on every request.
fn finish(router: Router) -> Router {
    router.with_state(())
}

fn request(key: &str) -> Request<Body> {
    Request::get("/")
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap()
}

async fn call(app: &Router, key: &str) -> StatusCode {
    app.clone().oneshot(request(key)).await.unwrap().status()
}

/// As [`call`], from a client at a fixed address (what `axum::serve` with
/// `into_make_service_with_connect_info` gives a per-client rate limiter).
async fn call_from_peer(app: &Router, key: &str) -> StatusCode {
    let mut request = request(key);
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 40_000));
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    app.clone().oneshot(request).await.unwrap().status()
}

/// The stand-in on a runtime (and thread) of its own, as a real upstream would be.
fn upstream(keys: &[String]) -> (tokio::runtime::Runtime, StandIn) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let stand_in = runtime.block_on(StandIn::start()).unwrap();
    for key in keys {
        stand_in.add_session(key, StandIn::example_document());
    }
    (runtime, stand_in)
}

/// Checks the key by asking the stand-in on every request.
#[derive(Clone)]
struct Naive {
    client: reqwest::Client,
    url: Arc<str>,
}

impl AsyncAuthorizeRequest<Body> for Naive {
    type RequestBody = Body;
    type ResponseBody = Body;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Request<Body>, Response<Body>>> + Send>,
    >;

    fn authorize(&mut self, request: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let unauthorized = || {
                let mut response = Response::new(Body::empty());
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                response
            };
            let Some(key) = request.headers().get("x-api-key").cloned() else {
                return Err(unauthorized());
            };
            let answer = this
                .client
                .get(&*this.url)
                .header("x-api-key", key)
                .send()
                .await;
            match answer {
                Ok(answer) if answer.status() == 200 => {
                    let body = answer.bytes().await.map_err(|_| unauthorized())?;
                    serde_json::from_slice::<serde_json::Value>(&body)
                        .map_err(|_| unauthorized())?;
                    Ok(request)
                }
                _ => Err(unauthorized()),
            }
        })
    }
}

// tower-http's `ValidateRequest` returns the rejection response as its `Err`.
#[allow(clippy::result_large_err)]
fn per_request(c: &mut Criterion) {
    // With `--features metrics`, every layer below records into a Prometheus
    // recorder, as in production (the row "warm hit, metrics on" of BENCHMARKS.md).
    #[cfg(feature = "metrics")]
    let _metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder");
    let (_upstream_runtime, stand_in) = upstream(&[KEY.to_owned()]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let bare = finish(handler());
    let static_key = finish(handler().layer(ValidateRequestHeaderLayer::custom(
        |request: &mut Request<Body>| match request.headers().get("x-api-key") {
            Some(key) if key == KEY => Ok(()),
            _ => {
                let mut response = Response::new(Body::empty());
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                Err(response)
            }
        },
    )));
    let layer = ComposioAuthLayer::builder()
        .base_url(stand_in.base_url())
        .build()
        .unwrap();
    let protected = finish(handler().layer(layer.clone()));
    // The same layer with one more predicate (as a per-route policy would be).
    let required = finish(handler().layer(layer.require(|s| s.org_member.role == "admin")));
    let mut key_headers = axum::http::HeaderMap::new();
    key_headers.insert("x-api-key", HeaderValue::from_static(KEY));
    // The same, behind a per-client rate limiter that never limits here: what the
    // limiter itself costs a request.
    let governor = std::sync::Arc::new(
        tower_governor::governor::GovernorConfigBuilder::default()
            .per_nanosecond(1)
            .burst_size(u32::MAX)
            .finish()
            .unwrap(),
    );
    let governed = finish(
        handler()
            .layer(layer.clone())
            .layer(tower_governor::GovernorLayer::new(governor)),
    );
    let naive = finish(
        handler().layer(AsyncRequireAuthorizationLayer::new(Naive {
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            url: format!(
                "{}{}",
                stand_in.base_url(),
                composio_auth::DEFAULT_SESSION_PATH
            )
            .into(),
        })),
    );
    runtime.block_on(async {
        for app in [&bare, &static_key, &protected, &required, &naive] {
            assert_eq!(call(app, KEY).await, StatusCode::OK);
        }
        assert_eq!(call_from_peer(&governed, KEY).await, StatusCode::OK);
    });

    let mut group = c.benchmark_group("per_request");
    group.throughput(Throughput::Elements(1));
    for (name, app) in [
        ("bare", &bare),
        ("static_key", &static_key),
        ("warm_hit", &protected),
        ("warm_hit_through_require", &required),
    ] {
        group.bench_function(name, |b| b.to_async(&runtime).iter(|| call(app, KEY)));
    }
    // `verify` on the same headers, warm: the layer's path without a request.
    group.bench_function("verify_warm", |b| {
        b.to_async(&runtime)
            .iter(|| async { layer.verify(&key_headers).await.is_ok() })
    });
    // Served with `into_make_service_with_connect_info`, a request arrives with one
    // extension more: axum's map has grown before this layer adds the session.
    for (name, app) in [
        ("bare_with_connect_info", &bare),
        ("warm_hit_with_connect_info", &protected),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| call_from_peer(app, KEY))
        });
    }
    group.bench_function("warm_hit_behind_rate_limiter", |b| {
        b.to_async(&runtime).iter(|| call_from_peer(&governed, KEY))
    });
    group.bench_function("cold_miss", |b| {
        b.to_async(&runtime).iter(|| async {
            layer.invalidate(KEY).await.unwrap();
            call(&protected, KEY).await
        })
    });
    group.bench_function("naive_per_request", |b| {
        b.to_async(&runtime).iter(|| call(&naive, KEY))
    });
    group.finish();
}

/// `tasks` tasks share `iters` requests over `keys` keys on a 2-worker runtime.
fn contended(
    runtime: &tokio::runtime::Runtime,
    app: &Router,
    keys: &Arc<Vec<String>>,
    tasks: u64,
    iters: u64,
) -> Duration {
    runtime.block_on(async {
        let started = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|task| {
                let (app, keys) = (app.clone(), Arc::clone(keys));
                tokio::spawn(async move {
                    let mut i = task as usize;
                    for _ in 0..iters.div_ceil(tasks) {
                        assert_eq!(call(&app, &keys[i % keys.len()]).await, StatusCode::OK);
                        i += 7;
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
        started.elapsed()
    })
}

fn contention(c: &mut Criterion) {
    let many: Vec<String> = (0..1000).map(|i| format!("ak_bench_key_{i:06}")).collect();
    let (_upstream_runtime, stand_in) = upstream(
        &many
            .iter()
            .cloned()
            .chain([KEY.to_owned()])
            .collect::<Vec<_>>(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let layer = ComposioAuthLayer::builder()
        .base_url(stand_in.base_url())
        .build()
        .unwrap();
    let protected = finish(handler().layer(layer));
    let bare = finish(handler());
    let one = Arc::new(vec![KEY.to_owned()]);
    let many = Arc::new(many);
    // Warm every key.
    contended(&runtime, &protected, &many, 8, 1000);
    contended(&runtime, &protected, &one, 1, 1);

    let mut group = c.benchmark_group("contention");
    group.throughput(Throughput::Elements(1));
    for tasks in [2u64, 8] {
        for (keys_name, keys) in [("1_key", &one), ("1000_keys", &many)] {
            for (app_name, app) in [("bare", &bare), ("warm_hit", &protected)] {
                let id =
                    BenchmarkId::new(format!("{app_name}/{keys_name}"), format!("{tasks}_tasks"));
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| contended(&runtime, app, keys, tasks, iters))
                });
            }
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = per_request, contention
}
criterion_main!(benches);
