//! 200,000 requests through an axum router, with (`hit`) or without (`bare`) the layer
//! in front and its cache warm: the target for counting instructions per request.
//!
//! ```sh
//! CARGO_PROFILE_RELEASE_DEBUG=true cargo build --release --example hit_loop
//! valgrind --tool=callgrind target/release/examples/hit_loop bare
//! valgrind --tool=callgrind target/release/examples/hit_loop hit
//! ```
//!
//! (Total instructions of each run / 200,000, and `callgrind_annotate` for where the
//! difference goes; see BENCHMARKS.md.)

use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use axum::Router;
use composio_auth::testing::StandIn;
use composio_auth::ComposioAuthLayer;
use tower::ServiceExt;

const KEY: &str = "ak_bench_0123456789abcdef";
const REQUESTS: usize = 200_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protected = std::env::args().nth(1).as_deref() == Some("hit");
    let upstream = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let stand_in = upstream.block_on(StandIn::start())?;
    stand_in.add_session(KEY, StandIn::example_document());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut app = Router::new().route("/", get(|| async { "ok" }));
    if protected {
        let layer = ComposioAuthLayer::builder()
            .base_url(stand_in.base_url())
            .build()?;
        app = app.layer(layer);
    }
    let app = app.with_state(());
    runtime.block_on(async {
        for _ in 0..REQUESTS {
            let request = Request::get("/")
                .header("x-api-key", KEY)
                .body(Body::empty())?;
            let status = app.clone().oneshot(request).await?.status();
            if status != 200 {
                return Err(format!("answered {status}").into());
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    println!(
        "{REQUESTS} requests, {}",
        if protected {
            "through the layer"
        } else {
            "bare"
        }
    );
    Ok(())
}
