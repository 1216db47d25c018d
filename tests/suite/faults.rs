//! The fault matrix: a loopback upstream that misbehaves on purpose, each fault
//! against the documented answer (503 with envelope and `Retry-After` inside the
//! timeout budget, nothing cached; or the stale session where `stale_if_error`
//! applies), with every `tracing` event audited for keys.

use crate::common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::faulty::{Fault, Faulty};
use common::{app, serve, Capture, Client, ALICE};
use composio_auth::testing::Reply;
use composio_auth::ComposioAuthLayer;

const BUDGET: Duration = Duration::from_millis(500);
/// Room for a loaded machine to schedule the answer after the budget ran out.
const SLACK: Duration = Duration::from_secs(2);
const HUGE: usize = 32 * 1024 * 1024;

fn raw_faults() -> Vec<(&'static str, Fault, &'static str)> {
    vec![
        ("accepts, never answers", Fault::NeverAnswers, "timed out"),
        (
            "headers, then stalls the body",
            Fault::HeadersThenStall,
            "timed out",
        ),
        ("truncated body", Fault::Truncated, "broke off"),
        ("reset mid-body", Fault::ResetMidBody, "broke off"),
        (
            "32 MiB body, declared",
            Fault::Huge {
                len: HUGE,
                chunked: false,
            },
            "exceeds",
        ),
        (
            "32 MiB body, chunked",
            Fault::Huge {
                len: HUGE,
                chunked: true,
            },
            "exceeds",
        ),
    ]
}

fn reply_faults() -> Vec<(&'static str, Reply, &'static str)> {
    vec![
        (
            "500 with the envelope",
            Reply::envelope(500, 500, "Internal", "boom"),
            "answered 500",
        ),
        ("503 without the envelope", Reply::html(503), "answered 503"),
        (
            "429 with Retry-After",
            Reply::rate_limited(9),
            "answered 429",
        ),
        (
            "HTML 401 from a proxy",
            Reply::html(401),
            "without its error envelope",
        ),
        (
            "401 with a body that is not the envelope",
            Reply::Raw {
                status: 401,
                headers: vec![],
                body: r#"{"message": "Unauthorized"}"#.into(),
            },
            "401 without its error envelope",
        ),
        (
            "invalid JSON with 200",
            Reply::Raw {
                status: 200,
                headers: vec![],
                body: "{\"project\": {".into(),
            },
            "without a session document",
        ),
    ]
}

async fn protected(base_url: String, stale: Option<Duration>) -> (ComposioAuthLayer, Client) {
    let mut builder = ComposioAuthLayer::builder()
        .base_url(base_url)
        .timeout(BUDGET);
    if let Some(window) = stale {
        builder = builder
            .ttl(Duration::from_millis(200))
            .stale_if_error(window);
    }
    let layer = builder.build().unwrap();
    let client = Client::new(serve(app(layer.clone())).await);
    (layer, client)
}

/// The documented 503, inside the budget; returns the reason it gives.
async fn assert_503_in_budget(client: &Client, what: &str, reason: &str) {
    let started = Instant::now();
    let answer = client.me(ALICE).await;
    let took = started.elapsed();
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {}",
        answer.body
    );
    assert!(answer.headers.contains_key("retry-after"), "{what}");
    let error = answer.envelope().error;
    assert_eq!((error.status, error.code), (503, 10503), "{what}");
    let errors = error.errors.unwrap_or_default().join(" ");
    assert!(
        errors.contains(reason),
        "{what}: {errors:?} should say {reason:?}"
    );
    assert!(took < BUDGET + SLACK, "{what}: answered after {took:?}");
    eprintln!("fault {what:?}: 503 in {took:?}");
}

fn assert_no_key_leaked(capture: &Capture) {
    let events = capture.events();
    assert!(
        events.iter().any(|e| e.contains("composio_auth")),
        "the audit saw no event"
    );
    for event in events {
        assert!(!event.contains(ALICE), "an event leaks the key: {event}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn raw_faults_get_503_inside_the_budget_and_nothing_is_cached() {
    let (capture, _guard) = Capture::install();
    let upstream = Faulty::start(Fault::Healthy).await;
    let (layer, client) = protected(upstream.base_url(), None).await;
    for (what, fault, reason) in raw_faults() {
        layer.invalidate_all().await.unwrap();
        upstream.set(fault);
        let before = upstream.requests();
        assert_503_in_budget(&client, what, reason).await;
        assert_503_in_budget(&client, what, reason).await;
        assert_eq!(
            upstream.requests(),
            before + 2,
            "{what}: the failure was cached"
        );
        // Nothing negative was remembered: once the upstream heals, the key works.
        upstream.set(Fault::Healthy);
        assert_eq!(
            client.me(ALICE).await.status,
            200,
            "{what}: locked out after recovery"
        );
    }
    assert_no_key_leaked(&capture);
}

#[tokio::test]
async fn huge_bodies_are_refused_at_the_cap_without_reading_them() {
    let upstream = Faulty::start(Fault::Huge {
        len: HUGE,
        chunked: true,
    })
    .await;
    let (_, client) = protected(upstream.base_url(), None).await;
    assert_503_in_budget(&client, "chunked", "exceeds").await;
    // The stream stopped once the layer hung up; far less than 32 MiB left the server.
    let sent = upstream.body_bytes_sent();
    assert!(sent < 8 * 1024 * 1024, "{sent} bytes were sent");

    upstream.set(Fault::Huge {
        len: HUGE,
        chunked: false,
    });
    let before = upstream.body_bytes_sent();
    assert_503_in_budget(&client, "declared", "exceeds").await;
    let sent = upstream.body_bytes_sent() - before;
    assert!(sent < 8 * 1024 * 1024, "{sent} bytes were sent");
}

#[tokio::test]
async fn connection_refused_is_503() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_, client) = protected(format!("http://127.0.0.1:{port}"), None).await;
    assert_503_in_budget(&client, "connection refused", "could not be reached").await;
}

#[tokio::test(flavor = "current_thread")]
async fn every_fault_serves_the_stale_session_when_stale_if_error_is_set() {
    let (capture, _guard) = Capture::install();
    let window = Some(Duration::from_secs(60));

    let upstream = Faulty::start(Fault::Healthy).await;
    let (_, client) = protected(upstream.base_url(), window).await;
    assert_eq!(client.me(ALICE).await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await; // past the 200 ms TTL
    for (what, fault, _) in raw_faults() {
        upstream.set(fault);
        let before = upstream.requests();
        let started = Instant::now();
        let answer = client.me(ALICE).await;
        assert_eq!(answer.status, 200, "{what}: {}", answer.body);
        assert_eq!(answer.body, "user@example.com");
        assert!(started.elapsed() < BUDGET + SLACK, "{what}");
        assert_eq!(
            upstream.requests(),
            before + 1,
            "{what}: Composio was asked"
        );
    }
    // Connection refused: the same layer, its upstream gone.
    drop(upstream);
    assert_eq!(client.me(ALICE).await.status, 200, "connection refused");

    let composio = common::composio().await;
    let (_, client) = protected(composio.base_url(), window).await;
    assert_eq!(client.me(ALICE).await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await; // past the 200 ms TTL
    for (what, reply, _) in reply_faults() {
        composio.fail_with(reply);
        assert_eq!(client.me(ALICE).await.status, 200, "{what}");
    }
    // A verdict, unlike a fault, is obeyed at once.
    composio.fail_with(Reply::invalid_key(ALICE));
    assert_eq!(client.me(ALICE).await.status, 401);
    assert_no_key_leaked(&capture);
}

#[tokio::test]
async fn reply_faults_get_503_and_nothing_is_cached() {
    let composio = common::composio().await;
    let (_, client) = protected(composio.base_url(), None).await;
    for (what, reply, reason) in reply_faults() {
        composio.fail_with(reply);
        let before = composio.calls_for(ALICE);
        assert_503_in_budget(&client, what, reason).await;
        assert_503_in_budget(&client, what, reason).await;
        assert_eq!(composio.calls_for(ALICE), before + 2, "{what}");
    }
    // A 429's own `Retry-After` is passed on.
    composio.fail_with(Reply::rate_limited(7));
    assert_eq!(client.me(ALICE).await.headers["retry-after"], "7");
    composio.recover();
    assert_eq!(client.me(ALICE).await.status, 200);
}
