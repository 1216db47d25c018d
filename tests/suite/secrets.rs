//! Secrets stay secret: every `tracing` event at every level (this crate's and its
//! dependencies') is captured while keys are verified, refused and failed, and none
//! may contain a key or a secret of the session document; `Debug` of every public
//! type redacts them.

use crate::common;

use std::time::Duration;

use common::{setup, Capture, ALICE};
use composio_auth::testing::{Reply, StandIn};
use composio_auth::{ComposioAuthLayer, SessionDocument, SessionInfo};
use serde_json::json;

const SECRETS: [&str; 2] = ["whsec_a1b2c3d4e5f6g7h8i9j0", "sk_live_abc123xyz456"];

#[tokio::test(flavor = "current_thread")]
async fn no_event_at_any_level_contains_a_key_or_a_secret() {
    let (capture, _guard) = Capture::install();
    let (composio, layer, client) = setup(|b| {
        b.ttl(Duration::from_millis(400))
            .stale_if_error(Duration::from_secs(30))
            .timeout(Duration::from_millis(300))
    })
    .await;
    let keys = [
        ALICE,
        "ak_unknown_secret_key_1",
        "ak_deleted_secret_key_2",
        "ak_html_secret_key_3",
        "ak_limited_secret_key_4",
        "ak_slow_secret_key_5",
    ];
    let mut deleted = StandIn::example_document();
    deleted["api_key"]["deleted"] = json!(true);
    composio.add_session(keys[2], deleted);
    composio.set_reply(keys[3], Reply::html(401));
    composio.set_reply(keys[4], Reply::rate_limited(3));

    for key in &keys[..5] {
        client.me(key).await;
        client.me(key).await; // and from the cache
    }
    client
        .get("/me", &[("x-api-key", ALICE), ("x-api-key", keys[1])])
        .await;
    client
        .get("/me", &[("x-api-key", "ak_malformed secret")])
        .await;

    // A timeout, then a stale session served during an outage.
    composio.hold();
    assert_eq!(client.me(keys[5]).await.status, 503);
    composio.release();
    composio.fail_with(Reply::html(502));
    tokio::time::sleep(Duration::from_millis(500)).await; // let ALICE's session go stale
    assert_eq!(client.me(ALICE).await.status, 200);
    layer.invalidate(ALICE).await.unwrap();
    assert_eq!(client.me(ALICE).await.status, 503);

    let events = capture.events();
    for needed in [
        "cache hit",
        "cache miss",
        "Composio answered",
        "rejected",
        "timed out",
        "stale session",
    ] {
        assert!(
            events.iter().any(|e| e.contains(needed)),
            "no event mentions {needed:?}; the audit saw too little"
        );
    }
    for event in &events {
        for secret in keys.iter().chain(&SECRETS).chain(&["ak_malformed"]) {
            assert!(
                !event.contains(secret),
                "an event leaks {secret:?}: {event}"
            );
        }
    }
}

#[tokio::test]
async fn debug_of_public_types_redacts_secrets() {
    let document: SessionDocument = serde_json::from_value(StandIn::example_document()).unwrap();
    let session = SessionInfo::new(document.clone());
    let layer = ComposioAuthLayer::builder()
        .base_url("https://backend.composio.dev")
        .require(|_| true)
        .build()
        .unwrap();
    let composio = StandIn::start().await.unwrap();
    composio.add_session(ALICE, StandIn::example_document());
    let reply = Reply::Session(StandIn::example_document());
    let service = tower::Layer::layer(&layer, ());
    let shown = format!(
        "{document:?} {session:?} {:?} {:?} {layer:?} {:?} {composio:?} {reply:?} {service:?}",
        document.project,
        document.api_key,
        ComposioAuthLayer::builder(),
    );
    for secret in SECRETS.iter().chain(&[ALICE]) {
        assert!(!shown.contains(secret), "Debug shows {secret:?}: {shown}");
    }
    assert!(
        shown.contains("Production API"),
        "Debug shows the non-secret fields"
    );
}

#[cfg(feature = "webhook")]
#[tokio::test(flavor = "current_thread")]
async fn no_event_error_or_debug_of_the_webhook_guard_contains_its_secret() {
    use axum::routing::post;
    use composio_auth::testing::sign_delivery;
    use composio_auth::{ComposioWebhookLayer, WebhookEvent};

    const SECRET: &str = "whsec_webhook_secret_that_must_not_leak";
    let (capture, _guard) = Capture::install();
    let builder = ComposioWebhookLayer::builder()
        .secret(SECRET)
        .secret("old_secret_that_must_not_leak");
    let builder_debug = format!("{builder:?}");
    let layer = builder.build().unwrap();
    let app = axum::Router::new().route(
        "/hook",
        post(|event: WebhookEvent| async move { format!("{event:?}") }).layer(layer.clone()),
    );
    let client = common::Client::new(common::serve(app).await);
    let body = br#"{"trigger_name":"T","connection_id":"c","trigger_id":"t","payload":{"token":"body_secret_value"},"log_id":"l"}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut seen = vec![builder_debug, format!("{layer:?}")];
    for (secret, id) in [(SECRET, "msg_1"), ("wrong", "msg_2"), (SECRET, "msg_1")] {
        let headers = sign_delivery(secret, id, body, now);
        let mut request = client
            .http
            .post(format!("http://{}/hook", client.addr))
            .body(body.to_vec());
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.as_bytes());
        }
        let response = request.send().await.unwrap();
        seen.push(response.text().await.unwrap());
        match layer.verify(&headers, body) {
            Ok(event) => seen.push(format!("{event:?}")),
            Err(rejection) => seen.extend([format!("{rejection:?}"), rejection.to_string()]),
        }
    }
    seen.push(
        ComposioWebhookLayer::builder()
            .build()
            .unwrap_err()
            .to_string(),
    );
    seen.extend(capture.events());
    for text in &seen {
        for secret in [SECRET, "old_secret_that_must_not_leak", "body_secret_value"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
