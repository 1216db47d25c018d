//! Three replicas of one service sharing verdicts and invalidations through Redis.
//!
//! ```text
//! cargo run --example fleet --features redis            # serve, print curl commands
//! cargo run --example fleet --features redis -- --demo  # show it, then exit
//! ```
//!
//! Redis: `REDIS_URL` if set, else a `redis-server` this example starts on a free
//! port when one is on `PATH`. Composio: a local stand-in that knows one demo key
//! (or `COMPOSIO_BASE_URL`). The fleet's pepper: `COMPOSIO_AUTH_PEPPER`, else a
//! demo value (never use it in production).
//!
//! `--demo` warms the demo key on all three replicas (one upstream call for the
//! three), revokes it at Composio, invalidates it on replica 1, and shows all three
//! refuse it.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use composio_auth::testing::StandIn;
use composio_auth::{ComposioAuthLayer, RedisCache, SessionInfo, BASE_URL_ENV};

const DEMO_KEY: &str = "ak_demo_fleet_0123456789";
const DEMO_PEPPER: &str = "demo pepper: set COMPOSIO_AUTH_PEPPER to 32+ random bytes";

/// A `redis-server` this example started, stopped when dropped.
struct OwnRedis(Child);

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `REDIS_URL`, or a `redis-server` started here.
fn redis() -> Result<(String, Option<OwnRedis>), Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return Ok((url, None));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|_| "set REDIS_URL, or put redis-server on PATH (apt-get install redis-server)")?;
    let own = OwnRedis(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("redis-server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((format!("redis://127.0.0.1:{port}"), Some(own)))
}

async fn me(session: SessionInfo) -> String {
    format!("hello {}\n", session.org_member.email)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = std::env::args().any(|a| a == "--demo");
    let (redis_url, _own_redis) = redis()?;
    let pepper = std::env::var("COMPOSIO_AUTH_PEPPER").unwrap_or_else(|_| DEMO_PEPPER.to_owned());
    let stand_in = StandIn::start().await?;
    stand_in.add_session(
        DEMO_KEY,
        StandIn::document_for("fleet@example.com", "Fleet", "admin"),
    );
    let base_url = std::env::var(BASE_URL_ENV).unwrap_or_else(|_| stand_in.base_url());
    let shared = RedisCache::new(&redis_url, &pepper)?;
    println!("Redis: {shared:?}");

    let mut replicas: Vec<(ComposioAuthLayer, SocketAddr)> = Vec::new();
    for _ in 0..3 {
        let layer = ComposioAuthLayer::builder()
            .base_url(&base_url)
            .shared_cache(shared.clone())
            .build()?;
        let app = Router::new().route("/me", get(me)).layer(layer.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        replicas.push((layer, addr));
    }

    if !demo {
        for (n, (_, addr)) in replicas.iter().enumerate() {
            println!(
                "replica {}: curl -H 'x-api-key: {DEMO_KEY}' http://{addr}/me",
                n + 1
            );
        }
        println!("Ctrl-C to stop.");
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }

    let client = reqwest::Client::builder().no_proxy().build()?;
    let ask = |addr: SocketAddr| {
        let client = client.clone();
        async move {
            client
                .get(format!("http://{addr}/me"))
                .header("x-api-key", DEMO_KEY)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    for (n, (_, addr)) in replicas.iter().enumerate() {
        println!("replica {}: {}", n + 1, ask(*addr).await?);
    }
    println!("upstream calls for three replicas: {}", stand_in.calls());

    stand_in.revoke(DEMO_KEY);
    replicas[0].0.invalidate(DEMO_KEY).await?;
    println!("revoked at Composio, invalidated on replica 1");
    let started = Instant::now();
    for (n, (_, addr)) in replicas.iter().enumerate() {
        // A replica hears of the invalidation within milliseconds.
        let mut status = ask(*addr).await?;
        while status != 401 && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            status = ask(*addr).await?;
        }
        println!("replica {}: {status}", n + 1);
        if status != 401 {
            return Err(format!("replica {} still admits the key", n + 1).into());
        }
    }
    println!(
        "all three refuse it, {:?} after the invalidation",
        started.elapsed()
    );
    Ok(())
}
