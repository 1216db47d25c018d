//! The target of the end-to-end benchmark (`benches/e2e.sh`): the same one-route
//! axum app served three times on one Tokio worker thread: unprotected, behind a
//! warm `ComposioAuthLayer` around the whole router (before routing, as the README
//! does), and with the same layer added with `Router::layer` (on every route), for
//! a load generator to compare.
//!
//! ```text
//! cargo run --release --example load_target
//! ```
//!
//! Prints `unprotected=ADDR protected=ADDR per_route=ADDR key=KEY`, then serves
//! until killed.

use axum::routing::get;
use axum::{Router, ServiceExt};
use composio_auth::testing::StandIn;
use composio_auth::ComposioAuthLayer;
use tower::Layer;

const KEY: &str = "ak_load_target_0123456789";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stand_in = StandIn::start().await?;
        stand_in.add_session(KEY, StandIn::example_document());
        let layer = ComposioAuthLayer::builder()
            .base_url(stand_in.base_url())
            .build()?;
        let app = || Router::new().route("/", get(|| async { "ok" }));

        let unprotected = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let protected = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let per_route = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!(
            "unprotected={} protected={} per_route={} key={KEY}",
            unprotected.local_addr()?,
            protected.local_addr()?,
            per_route.local_addr()?
        );
        let warm = reqwest::Client::builder().no_proxy().build()?;
        let protected_addr = protected.local_addr()?;
        // The same layer (one cache): warming one warms both.
        let serve_protected = axum::serve(
            protected,
            ServiceExt::<axum::extract::Request>::into_make_service(layer.layer(app())),
        );
        let serve_per_route = axum::serve(per_route, app().layer(layer));
        let serve_unprotected = axum::serve(unprotected, app());
        tokio::spawn(async move {
            // Warm the cache so that every measured request is a hit.
            let _ = warm
                .get(format!("http://{protected_addr}/"))
                .header("x-api-key", KEY)
                .send()
                .await;
        });
        tokio::try_join!(
            async { serve_protected.await },
            async { serve_per_route.await },
            async { serve_unprotected.await }
        )?;
        Ok(())
    })
}
