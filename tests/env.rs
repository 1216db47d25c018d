//! `ComposioAuthLayer::new()` honours `COMPOSIO_BASE_URL`, and fails closed (503, no
//! panic) when it is unusable; `ComposioWebhookLayer::from_env()` reads
//! `COMPOSIO_WEBHOOK_SECRET`. One test in its own binary: it changes the process
//! environment.

mod common;

use common::{app, composio, serve, Client, ALICE};
use composio_auth::{ComposioAuthLayer, BASE_URL_ENV, DEFAULT_BASE_URL};

#[tokio::test]
async fn new_reads_composio_base_url() {
    let composio = composio().await;
    std::env::set_var(BASE_URL_ENV, composio.base_url());
    let layer = ComposioAuthLayer::new();
    assert_eq!(layer.base_url(), composio.base_url());
    let client = Client::new(serve(app(layer)).await);
    assert_eq!(client.me(ALICE).await.status, 200);
    assert_eq!(composio.calls_for(ALICE), 1);

    // An unusable value: `build()` explains, `new()` fails closed.
    std::env::set_var(BASE_URL_ENV, "http://composio.example");
    let error = ComposioAuthLayer::builder()
        .build()
        .unwrap_err()
        .to_string();
    assert!(error.contains("must use https"), "{error}");
    let layer = ComposioAuthLayer::new();
    assert_eq!(layer.base_url(), DEFAULT_BASE_URL);
    let client = Client::new(serve(app(layer)).await);
    let answer = client.me(ALICE).await;
    assert_eq!(answer.status, 503);
    assert!(answer.envelope().error.errors.unwrap()[0].contains("misconfigured"));
    assert_eq!(client.get("/me", &[]).await.status, 401);

    // An explicit base URL wins over the environment.
    let layer = ComposioAuthLayer::builder()
        .base_url(composio.base_url())
        .build()
        .unwrap();
    assert_eq!(layer.base_url(), composio.base_url());
    std::env::remove_var(BASE_URL_ENV);
    assert_eq!(ComposioAuthLayer::new().base_url(), DEFAULT_BASE_URL);

    // The webhook guard's secret, from the SDKs' variable (in this one test: the
    // process environment is not to be changed by two tests at once).
    #[cfg(feature = "webhook")]
    webhook_secret_from_the_environment();
}

#[cfg(feature = "webhook")]
fn webhook_secret_from_the_environment() {
    use composio_auth::{ComposioWebhookLayer, WEBHOOK_SECRET_ENV};
    const SECRET: &str = "whsec_from_the_environment";
    for unusable in [None, Some(""), Some("  ")] {
        match unusable {
            None => std::env::remove_var(WEBHOOK_SECRET_ENV),
            Some(value) => std::env::set_var(WEBHOOK_SECRET_ENV, value),
        }
        let error = ComposioWebhookLayer::from_env().unwrap_err().to_string();
        assert!(error.contains(WEBHOOK_SECRET_ENV), "{error}");
    }
    std::env::set_var(WEBHOOK_SECRET_ENV, SECRET);
    let layer = ComposioWebhookLayer::from_env().unwrap();
    std::env::remove_var(WEBHOOK_SECRET_ENV);
    let body = br#"{"trigger_name":"T","payload":{}}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let headers = composio_auth::testing::sign_delivery(SECRET, "msg_env", body, now);
    assert!(layer.verify(&headers, body).is_ok());
    let other = composio_auth::testing::sign_delivery("another", "msg_env", body, now);
    assert!(layer.verify(&other, body).is_err());
}
