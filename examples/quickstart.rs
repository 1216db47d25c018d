//! A protected axum app, ready to try offline.
//!
//! ```text
//! cargo run --example quickstart            # serve, print curl commands
//! cargo run --example quickstart -- --demo  # make those requests itself, then exit
//! ```
//!
//! Without `COMPOSIO_BASE_URL` it starts a local stand-in of Composio's session
//! endpoint that knows two demo keys. With `COMPOSIO_BASE_URL` set (e.g.
//! `https://backend.composio.dev`) it verifies real keys against that backend.

use std::net::SocketAddr;

use axum::routing::get;
use axum::{Json, Router};
use composio_auth::testing::StandIn;
use composio_auth::{ComposioAuthLayer, SessionInfo, BASE_URL_ENV};
use serde_json::{json, Value};

const DEMO_KEYS: [(&str, &str, &str, &str); 2] = [
    (
        "ak_demo_alice_0123456789",
        "alice@example.com",
        "Alice",
        "admin",
    ),
    (
        "ak_demo_bob_0123456789ab",
        "bob@example.com",
        "Bob",
        "member",
    ),
];

/// What a handler behind the layer knows about its caller.
async fn me(session: SessionInfo) -> Json<Value> {
    Json(json!({
        "email": session.org_member.email,
        "name": session.org_member.name,
        "role": session.org_member.role,
        "project": session.project.as_ref().map(|p| &p.name),
        "org": session.project.as_ref().map(|p| &p.org.name),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = std::env::args().any(|a| a == "--demo");

    // Keep the stand-in alive as long as the app.
    let (_stand_in, layer) = match std::env::var(BASE_URL_ENV) {
        Ok(base_url) => {
            println!("Verifying keys against {base_url}");
            (None, ComposioAuthLayer::builder().build()?)
        }
        Err(_) => {
            let stand_in = StandIn::start().await?;
            for (key, email, name, role) in DEMO_KEYS {
                stand_in.add_session(key, StandIn::document_for(email, name, role));
            }
            println!(
                "Verifying keys against a local stand-in of Composio at {}",
                stand_in.base_url()
            );
            let layer = ComposioAuthLayer::builder()
                .base_url(stand_in.base_url())
                .build()?;
            (Some(stand_in), layer)
        }
    };

    let app = Router::new()
        .route("/me", get(me))
        .layer(layer)
        .route("/health", get(|| async { "ok" }));

    let listener = match tokio::net::TcpListener::bind("127.0.0.1:3000").await {
        Ok(listener) => listener,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let (valid, _, _, _) = DEMO_KEYS[0];
    let tries = [
        ("a valid key", Some(valid)),
        ("an invalid key", Some("ak_not_a_real_key_ESjq")),
        ("no key", None),
    ];
    if demo {
        for (what, key) in tries {
            let (status, body) = call(addr, key).await?;
            println!("\n{what}: HTTP {status}\n{body}");
        }
        return Ok(());
    }
    println!("\nServing a protected GET /me on http://{addr}. Try:\n");
    for (what, key) in tries {
        let header = key
            .map(|k| format!(" -H 'x-api-key: {k}'"))
            .unwrap_or_default();
        println!("  # {what}\n  curl -i{header} http://{addr}/me\n");
    }
    println!("Ctrl-C to stop.");
    server.await??;
    Ok(())
}

async fn call(addr: SocketAddr, key: Option<&str>) -> Result<(u16, String), reqwest::Error> {
    let mut request = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(format!("http://{addr}/me"));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = request.send().await?;
    Ok((response.status().as_u16(), response.text().await?))
}
