//! The quickstart's protected app, plus `GET /metrics` in Prometheus text format
//! (feature `metrics`), offline against the built-in stand-in.
//!
//! ```text
//! cargo run --example prometheus --features metrics            # serve on 127.0.0.1:3000
//! cargo run --example prometheus --features metrics -- --demo  # a few requests, print /metrics, exit
//! ```

use axum::routing::get;
use axum::Router;
use composio_auth::testing::StandIn;
use composio_auth::{ComposioAuthLayer, SessionInfo};
use metrics_exporter_prometheus::PrometheusBuilder;

const KEY: &str = "ak_demo_alice_0123456789";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The recorder first: the layer registers its metrics when it is built.
    let metrics = PrometheusBuilder::new().install_recorder()?;

    let composio = StandIn::start().await?;
    composio.add_session(
        KEY,
        StandIn::document_for("alice@example.com", "Alice", "admin"),
    );
    let layer = ComposioAuthLayer::builder()
        .base_url(composio.base_url())
        .build()?;
    let app = Router::new()
        .route(
            "/me",
            get(|session: SessionInfo| async move { session.org_member.email.clone() }),
        )
        .layer(layer)
        // Outside the layer: Prometheus scrapes without a key.
        .route("/metrics", get(move || async move { metrics.render() }));

    let demo = std::env::args().any(|a| a == "--demo");
    let address = if demo {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:3000"
    };
    let listener = tokio::net::TcpListener::bind(address).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    if !demo {
        println!("curl -H 'x-api-key: {KEY}' http://{addr}/me\ncurl http://{addr}/metrics");
        return Ok(server.await??);
    }

    let client = reqwest::Client::builder().no_proxy().build()?;
    for key in [KEY, KEY, "ak_unknown_0123456789abc"] {
        let status = client
            .get(format!("http://{addr}/me"))
            .header("x-api-key", key)
            .send()
            .await?
            .status();
        println!("GET /me -> {status}");
    }
    let scraped = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let ours: Vec<&str> = scraped
        .lines()
        .filter(|line| line.starts_with("composio_auth_"))
        .collect();
    println!("{}", ours.join("\n"));
    if !ours
        .iter()
        .any(|l| l.starts_with("composio_auth_requests_total{result=\"allowed\"} 2"))
    {
        return Err("expected 2 allowed requests in /metrics".into());
    }
    Ok(())
}
