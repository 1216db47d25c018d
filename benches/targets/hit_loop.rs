//! 200,000 requests through an axum router, with this layer on every route
//! (`Router::layer`) and its cache warm (`hit`), the same layer around the whole
//! router (`around`), tower-http's fixed-key check instead (`static`), or none
//! (`bare`): the target for counting instructions and sampling time per request.
//!
//! ```sh
//! CARGO_PROFILE_RELEASE_DEBUG=true cargo build --release --example hit_loop
//! valgrind --tool=callgrind target/release/examples/hit_loop bare
//! valgrind --tool=callgrind target/release/examples/hit_loop hit
//! valgrind --tool=callgrind target/release/examples/hit_loop around
//! perf record -g target/release/examples/hit_loop hit 5000000   # any count
//! ```
//!
//! (Total instructions of each run / 200,000, and `callgrind_annotate` for where the
//! difference goes; see BENCHMARKS.md.)

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use composio_auth::testing::StandIn;
use composio_auth::ComposioAuthLayer;
use tower::{Service, ServiceExt};
use tower_http::validate_request::ValidateRequestHeaderLayer;

const KEY: &str = "ak_bench_0123456789abcdef";
/// Requests made unless the second argument gives a count.
const REQUESTS: usize = 200_000;

// tower-http's `ValidateRequest` returns the rejection response as its `Err`.
#[allow(clippy::result_large_err)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let requests = match std::env::args().nth(2) {
        Some(count) => count.parse()?,
        None => REQUESTS,
    };
    let upstream = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let stand_in = upstream.block_on(StandIn::start())?;
    stand_in.add_session(KEY, StandIn::example_document());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let layer = ComposioAuthLayer::builder()
        .base_url(stand_in.base_url())
        .build()?;
    let mut app = Router::new().route("/", get(|| async { "ok" }));
    match mode.as_str() {
        "hit" => app = app.layer(layer.clone()),
        // The floor of any check: tower-http comparing one fixed key.
        "static" => {
            app = app.layer(ValidateRequestHeaderLayer::custom(
                |request: &mut Request<Body>| match request.headers().get("x-api-key") {
                    Some(key) if key == KEY => Ok(()),
                    _ => Err(StatusCode::UNAUTHORIZED.into_response()),
                },
            ));
        }
        "bare" | "around" => {}
        other => return Err(format!("mode {other:?}: bare, static, hit or around").into()),
    }
    let app = app.with_state(());
    if mode == "around" {
        runtime.block_on(run(tower::Layer::layer(&layer, app), requests))?;
    } else {
        runtime.block_on(run(app, requests))?;
    }
    println!("{requests} requests, {mode}");
    Ok(())
}

/// `requests` warm requests through `app`, each one answered 200.
async fn run<S>(app: S, requests: usize) -> Result<(), Box<dyn std::error::Error>>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone,
{
    for _ in 0..requests {
        let request = Request::get("/")
            .header("x-api-key", KEY)
            .body(Body::empty())?;
        let status = app.clone().oneshot(request).await?.status();
        if status != 200 {
            return Err(format!("answered {status}").into());
        }
    }
    Ok(())
}
