//! The target of `TARGET=actix_load_target bash benches/e2e.sh`: one actix-web
//! route served twice by one worker each, unprotected and behind a warm
//! `ComposioAuthLayer`, for a load generator to compare.
//!
//! ```text
//! cargo run --release --example actix_load_target
//! ```
//!
//! Prints `unprotected=ADDR protected=ADDR key=KEY`, then serves until killed.

use actix_web::{web, App, HttpServer};
use composio_auth::testing::StandIn;
use composio_auth::ComposioAuthLayer;

const KEY: &str = "ak_load_target_0123456789";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    actix_web::rt::System::new().block_on(async {
        let stand_in = StandIn::start().await?;
        stand_in.add_session(KEY, StandIn::example_document());
        let auth = ComposioAuthLayer::builder()
            .base_url(stand_in.base_url())
            .build()?;
        let route = || web::get().to(|| async { "ok" });
        let unprotected = HttpServer::new(move || App::new().route("/", route()))
            .workers(1)
            .bind(("127.0.0.1", 0))?;
        let layer = auth.clone();
        let protected = HttpServer::new(move || App::new().wrap(layer.clone()).route("/", route()))
            .workers(1)
            .bind(("127.0.0.1", 0))?;
        let protected_addr = protected.addrs()[0];
        println!(
            "unprotected={} protected={protected_addr} key={KEY}",
            unprotected.addrs()[0]
        );
        // Warm the cache so that every measured request is a hit.
        let (unprotected, protected) = (unprotected.run(), protected.run());
        let warm = async {
            let _ = reqwest::Client::builder()
                .no_proxy()
                .build()?
                .get(format!("http://{protected_addr}/"))
                .header("x-api-key", KEY)
                .send()
                .await;
            Ok::<_, reqwest::Error>(())
        };
        let (u, p, w) = tokio::join!(unprotected, protected, warm);
        u?;
        p?;
        w?;
        Ok(())
    })
}
