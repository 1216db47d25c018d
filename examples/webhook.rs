//! An axum route receiving Composio's webhook deliveries, ready to try offline.
//!
//! ```text
//! cargo run --example webhook            # serve, print a curl command
//! cargo run --example webhook -- --demo  # deliver, redeliver and forge itself, then exit
//! ```
//!
//! The secret comes from `COMPOSIO_WEBHOOK_SECRET` (the project's webhook secret, as
//! Composio's SDKs read it); without it, a demo secret.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use composio_auth::testing::sign_delivery;
use composio_auth::{ComposioWebhookLayer, WebhookEvent, WEBHOOK_SECRET_ENV};

const DEMO_SECRET: &str = "whsec_demo_secret_for_the_example";

/// A V3 trigger event, as Composio delivers it.
const EVENT: &str = r#"{"id":"msg_demo_1","timestamp":"2026-12-07T10:30:00Z","type":"composio.trigger.message","metadata":{"log_id":"log_1","trigger_slug":"GITHUB_PUSH_EVENT","trigger_id":"ti_1","connected_account_id":"ca_1","auth_config_id":"ac_1","user_id":"user_1"},"data":{"ref":"refs/heads/main","commits":[{"id":"abc123","message":"Fix the build"}]}}"#;

/// What the service does with each delivery: called once per `webhook-id`.
async fn on_event(event: WebhookEvent) -> &'static str {
    println!(
        "  handler: {} {} from {} (user {})",
        event.event_type(),
        event.trigger_slug().unwrap_or("-"),
        event.connected_account_id().unwrap_or("-"),
        event.user_id().unwrap_or("-"),
    );
    "ok"
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = std::env::args().any(|a| a == "--demo");
    let (webhooks, secret) = match ComposioWebhookLayer::from_env() {
        Ok(layer) if !demo => (layer, None),
        _ => {
            println!("{WEBHOOK_SECRET_ENV} unset (or --demo): using a demo secret");
            let layer = ComposioWebhookLayer::builder()
                .secret(DEMO_SECRET)
                .build()?;
            (layer, Some(DEMO_SECRET))
        }
    };
    let app = Router::new().route("/composio/webhook", post(on_event).layer(webhooks));
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:3001").await {
        Ok(listener) => listener,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let signed = sign_delivery(
        secret.unwrap_or(DEMO_SECRET),
        "msg_demo_1",
        EVENT.as_bytes(),
        now,
    );
    if demo {
        let forged = sign_delivery("not the secret", "msg_demo_2", EVENT.as_bytes(), now);
        let tries = [
            ("a delivery", &signed),
            ("the same delivery again (a retry, or a replay)", &signed),
            ("a forged delivery", &forged),
        ];
        for (what, headers) in tries {
            println!("\n{what}:");
            let (status, body) = deliver(addr, headers).await?;
            println!("  HTTP {status} {body}");
        }
        return Ok(());
    }
    println!("\nReceiving deliveries on http://{addr}/composio/webhook. Try:\n");
    let headers: Vec<String> = signed
        .iter()
        .map(|(name, value)| format!(" -H '{name}: {}'", value.to_str().unwrap_or("")))
        .collect();
    println!(
        "  curl -i{} -d '{EVENT}' http://{addr}/composio/webhook\n",
        headers.concat()
    );
    println!("Ctrl-C to stop.");
    server.await??;
    Ok(())
}

async fn deliver(addr: SocketAddr, headers: &HeaderMap) -> Result<(u16, String), reqwest::Error> {
    let mut request = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .post(format!("http://{addr}/composio/webhook"))
        .body(EVENT);
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_bytes());
    }
    let response = request.send().await?;
    Ok((response.status().as_u16(), response.text().await?))
}
