//! Prints what Composio says about a real key (secrets redacted).
//!
//! ```text
//! COMPOSIO_API_KEY=ak_... cargo run --example whoami
//! ```
//!
//! Uses `COMPOSIO_BASE_URL` if set, else Composio's production API.

use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use axum::Router;
use composio_auth::{ComposioAuthLayer, SessionInfo};
use http_body_util::BodyExt;
use tower::ServiceExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(key) = std::env::var("COMPOSIO_API_KEY") else {
        eprintln!("usage: COMPOSIO_API_KEY=ak_... cargo run --example whoami");
        std::process::exit(2);
    };
    let layer = ComposioAuthLayer::builder().build()?;
    println!("Asking {} about the key", layer.base_url());
    let app = Router::new()
        .route(
            "/",
            get(|session: SessionInfo| async move { format!("{:#?}", session.document()) }),
        )
        .layer(layer);
    let request = Request::get("/")
        .header("x-api-key", key)
        .body(Body::empty())?;
    let response = app.oneshot(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!("HTTP {status}\n{}", String::from_utf8_lossy(&body));
    if !status.is_success() {
        std::process::exit(1);
    }
    Ok(())
}
