//! What `invalidate` and the TTL promise, with the upstream held at the point that
//! matters: a request after `invalidate` returns never rides on a verification that
//! started before it (plain or refresh-ahead), a verdict's age counts from its
//! question, and invalidating one key leaves the others' verifications alone.
//!
//! The interleavings that need the layer itself paused are in `interleavings.rs`.

use crate::common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{setup, within, Client, ALICE, BOB};
use composio_auth::testing::StandIn;
use composio_auth::ComposioAuthLayer;
use tokio::task::JoinHandle;

/// `GET /me` with `key`, in a task of its own.
fn spawn_me(client: &Client, key: &str) -> JoinHandle<StatusCode> {
    let (client, key) = (client.clone(), key.to_owned());
    tokio::spawn(async move { client.me(&key).await.status })
}

/// With Composio's "valid" for `key` held in a call it already counted (its
/// `calls`th): revokes the key upstream and invalidates it, then asks again. The new
/// request must make a call of its own and hear the revocation, and the held "valid",
/// released afterwards, must not reach the cache.
async fn revoke_invalidate_and_ask_again(
    composio: &StandIn,
    layer: &ComposioAuthLayer,
    client: &Client,
    key: &str,
    calls: u64,
) {
    composio.revoke(key);
    layer.invalidate(key).await.unwrap();
    let after = spawn_me(client, key);
    within("the upstream call", composio.wait_for_calls(calls + 2)).await;
    composio.release();
    assert_eq!(after.await.unwrap(), StatusCode::UNAUTHORIZED);
    assert_eq!(client.me(key).await.status, StatusCode::UNAUTHORIZED);
}

/// Each scenario runs this many times (fresh keys each time) so that the ordering is
/// exercised repeatedly, not once.
const ROUNDS: usize = 20;

#[tokio::test]
async fn a_request_after_invalidate_never_joins_a_verification_that_started_before_it() {
    let (composio, layer, client) = setup(|b| b).await;
    for round in 0..ROUNDS {
        let key = format!("ak_round_{round}_0123456789abcdef");
        composio.add_session(&key, StandIn::example_document());
        let calls = composio.calls();

        composio.hold();
        let before = spawn_me(&client, &key);
        // Composio has decided "valid"; its answer is held.
        within("the upstream call", composio.wait_for_calls(calls + 1)).await;
        revoke_invalidate_and_ask_again(&composio, &layer, &client, &key, calls).await;
        assert_eq!(before.await.unwrap(), StatusCode::OK, "round {round}");
        assert_eq!(composio.calls_for(&key), 2, "round {round}");
    }
}

#[tokio::test]
async fn a_request_after_invalidate_never_joins_a_refresh_ahead_that_started_before_it() {
    let ttl = Duration::from_secs(1);
    let (composio, layer, client) = setup(|b| b.ttl(ttl)).await;
    for round in 0..3 {
        let key = format!("ak_refresh_{round}_0123456789abcdef");
        composio.add_session(&key, StandIn::example_document());
        let warmed = Instant::now();
        assert_eq!(client.me(&key).await.status, StatusCode::OK);
        let calls = composio.calls();
        // Into the refresh-ahead window (past 80% of the TTL).
        tokio::time::sleep_until((warmed + ttl.mul_f64(0.85)).into()).await;

        composio.hold();
        // Served from the cache; starts the refresh, which Composio decides "valid".
        assert_eq!(client.me(&key).await.status, StatusCode::OK);
        within("the upstream call", composio.wait_for_calls(calls + 1)).await;
        revoke_invalidate_and_ask_again(&composio, &layer, &client, &key, calls).await;
        assert_eq!(composio.calls_for(&key), 3, "round {round}");
    }
}

#[tokio::test]
async fn invalidating_one_key_leaves_other_verifications_in_flight_alone() {
    let (composio, layer, client) = setup(|b| b).await;
    assert_eq!(client.me(ALICE).await.status, StatusCode::OK);
    for round in 0..ROUNDS {
        let key = format!("ak_bystander_{round}_0123456789abcdef");
        composio.add_session(&key, StandIn::example_document());
        let calls = composio.calls();
        composio.hold();
        let bystander = spawn_me(&client, &key);
        within("the upstream call", composio.wait_for_calls(calls + 1)).await;
        layer.invalidate(ALICE).await.unwrap();
        composio.release();
        assert_eq!(bystander.await.unwrap(), StatusCode::OK);
        // Its verdict was cached: no second call for it.
        assert_eq!(client.me(&key).await.status, StatusCode::OK);
        assert_eq!(composio.calls_for(&key), 1, "round {round}");
    }
    // BOB, cached before, was never touched by any of those invalidations.
    assert_eq!(client.me(BOB).await.status, StatusCode::OK);
    assert_eq!(client.me(BOB).await.status, StatusCode::OK);
    assert_eq!(composio.calls_for(BOB), 1);
}

#[tokio::test]
async fn a_verdicts_age_counts_from_when_its_question_was_sent() {
    let ttl = Duration::from_secs(1);
    let latency = Duration::from_millis(800);
    let (composio, _, client) = setup(|b| b.ttl(ttl).refresh_ahead(false)).await;
    composio.set_latency(latency);
    let asked = Instant::now();
    assert_eq!(client.me(ALICE).await.status, StatusCode::OK);
    assert!(asked.elapsed() >= latency);
    // Revoked right after Composio answered.
    composio.revoke(ALICE);
    composio.set_latency(Duration::ZERO);
    assert_eq!(client.me(ALICE).await.status, StatusCode::OK, "within ttl");
    // A TTL after the question (not after the answer): asked again, refused.
    tokio::time::sleep_until((asked + ttl + Duration::from_millis(50)).into()).await;
    assert_eq!(client.me(ALICE).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(composio.calls_for(ALICE), 2);
}

#[tokio::test]
async fn invalidate_all_reaches_verifications_in_flight_too() {
    let (composio, layer, client) = setup(|b| b).await;
    composio.hold();
    let before = spawn_me(&client, ALICE);
    within("the upstream call", composio.wait_for_calls(1)).await;
    composio.revoke(ALICE);
    layer.invalidate_all().await.unwrap();
    let after = spawn_me(&client, ALICE);
    within("the upstream call", composio.wait_for_calls(2)).await;
    composio.release();
    assert_eq!(before.await.unwrap(), StatusCode::OK);
    assert_eq!(after.await.unwrap(), StatusCode::UNAUTHORIZED);
    assert_eq!(client.me(ALICE).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(composio.calls_for(ALICE), 2);
}
