//! The fleet when Redis fails: unreachable, frozen (SIGSTOP), flushed, out of
//! memory, refusing the password. Every verdict stays right, no request gets a 503
//! because of Redis, and after a few failures requests stop waiting for it.

use crate::common;

use std::time::{Duration, Instant};

use common::redis::{nowhere, RedisServer, PEPPER};
use common::{app, builder, composio, serve, within, Capture, Client, ALICE, BOB};
use composio_auth::testing::{pause_point, StandIn};
use composio_auth::{ComposioAuthLayer, RedisCache};

/// Tests run on a current-thread runtime, so `Capture` sees the layer's events.
async fn replica(composio: &StandIn, cache: RedisCache) -> (ComposioAuthLayer, Client) {
    let layer = builder(composio).shared_cache(cache).build().unwrap();
    (layer.clone(), Client::new(serve(app(layer)).await))
}

/// Two replicas on `cache`, both having admitted ALICE (the second from Redis):
/// replica A's layer, then a client of each.
async fn two_replicas_sharing_alice(
    composio: &StandIn,
    cache: RedisCache,
) -> (ComposioAuthLayer, Client, Client) {
    let (a_layer, a) = replica(composio, cache.clone()).await;
    let (_, b) = replica(composio, cache).await;
    assert_eq!(a.me(ALICE).await.status, 200);
    assert_eq!(b.me(ALICE).await.status, 200);
    (a_layer, a, b)
}

/// Keys the stand-in knows, each used once.
fn fresh_keys(composio: &StandIn, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let key = format!("ak_fresh_{i:04}_{}", composio.calls());
            composio.add_session(&key, StandIn::document_for("f@example.com", "F", "member"));
            key
        })
        .collect()
}

#[tokio::test]
async fn without_a_reachable_redis_every_verdict_is_right_and_none_is_a_503() {
    let (capture, _guard) = Capture::install();
    let cache = nowhere(Duration::from_millis(200));
    let composio = composio().await;
    let (layer, client) = replica(&composio, cache).await;
    for key in fresh_keys(&composio, 10) {
        assert_eq!(client.me(&key).await.status, 200);
    }
    assert_eq!(client.me("ak_unknown_key_000000000").await.status, 401);
    composio.revoke(ALICE);
    assert_eq!(client.me(ALICE).await.status, 401);
    // invalidate still forgets locally at once, and says Redis was not reached.
    assert_eq!(client.me(BOB).await.status, 200);
    composio.revoke(BOB);
    let error = layer
        .invalidate(BOB)
        .await
        .expect_err("Redis is unreachable");
    assert!(error.is_unreachable());
    assert!(error.to_string().contains("this replica only"), "{error}");
    assert_eq!(client.me(BOB).await.status, 401);
    assert!(layer.invalidate_all().await.is_err());
    let _ = capture;
}

#[tokio::test]
async fn a_frozen_redis_costs_each_request_at_most_the_budget_then_nothing() {
    let (capture, _guard) = Capture::install();
    let redis = RedisServer::start();
    let budget = Duration::from_millis(1000);
    let cache = redis.cache(budget);
    let composio = composio().await;
    // B is subscribed and shares (ALICE comes from Redis) when Redis stops.
    let (_, a, b) = two_replicas_sharing_alice(&composio, cache).await;
    assert_eq!(composio.calls(), 1);
    redis.freeze();
    let keys = fresh_keys(&composio, 8);
    let mut slowest_after_three = Duration::ZERO;
    for (n, key) in keys.iter().enumerate() {
        let started = Instant::now();
        assert_eq!(b.me(key).await.status, 200);
        let took = started.elapsed();
        assert!(took < budget * 3, "request {n} took {took:?}");
        if n >= 4 {
            slowest_after_three = slowest_after_three.max(took);
        }
    }
    // Once the breaker is open, requests do not wait for Redis at all.
    assert!(
        slowest_after_three < budget / 2,
        "requests still wait for a frozen Redis: {slowest_after_three:?}"
    );
    // Warned once per transition (each replica's subscription, and the breaker),
    // not once per request.
    let warnings = capture.count_containing("WARN composio_auth");
    assert!(
        (1..=3).contains(&warnings),
        "{warnings} warnings for 8 requests"
    );
    redis.thaw();
    // Sharing resumes by itself: a key verified on A is then adopted by B.
    within("sharing to resume", async {
        loop {
            let key = fresh_keys(&composio, 1).remove(0);
            assert_eq!(a.me(&key).await.status, 200);
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(b.me(&key).await.status, 200);
            if composio.calls_for(&key) == 1 {
                break;
            }
        }
    })
    .await;
    assert!(
        capture.count_point(pause_point::BREAKER_CLOSED)
            + capture.count_point(pause_point::SUBSCRIPTION_RESTORED)
            >= 1
    );
}

#[tokio::test]
async fn after_a_flush_verdicts_are_shared_again_and_invalidations_still_arrive() {
    let redis = RedisServer::start();
    let cache = redis.cache(Duration::from_secs(2));
    let composio = composio().await;
    let (a_layer, a, b) = two_replicas_sharing_alice(&composio, cache).await;
    assert_eq!(redis.cli(&["flushall"]).trim(), "OK");
    assert_eq!(a.me(BOB).await.status, 200);
    redis.wait_for_verdicts(1).await;
    assert_eq!(b.me(BOB).await.status, 200);
    assert_eq!(composio.calls_for(BOB), 1);
    composio.revoke(ALICE);
    a_layer.invalidate(ALICE).await.unwrap();
    b.until_refused(ALICE).await;
}

#[tokio::test]
async fn a_redis_out_of_memory_refuses_writes_and_no_verdict_suffers() {
    let (capture, _guard) = Capture::install();
    let redis = RedisServer::start();
    let cache = redis.cache(Duration::from_secs(2));
    let composio = composio().await;
    let (a_layer, a, b) = two_replicas_sharing_alice(&composio, cache).await;
    redis.cli(&["config", "set", "maxmemory-policy", "noeviction"]);
    redis.cli(&["config", "set", "maxmemory", "1"]);
    for key in fresh_keys(&composio, 5) {
        assert_eq!(a.me(&key).await.status, 200);
        assert_eq!(b.me(&key).await.status, 200);
    }
    assert_eq!(a.me("ak_unknown_key_000000000").await.status, 401);
    assert_eq!(b.me("ak_unknown_key_000000000").await.status, 401);
    // Writes failed again and again: the breaker opened, and said so once per
    // opening (reads still succeed, so it may close and open again), not once per
    // request.
    let warnings = capture.count_point(pause_point::BREAKER_OPENED);
    assert!(
        (1..=3).contains(&warnings),
        "{warnings} warnings for 12 requests"
    );
    // An invalidation that Redis refuses says so, and still applies here.
    composio.revoke(ALICE);
    let error = a_layer
        .invalidate(ALICE)
        .await
        .expect_err("Redis refuses writes");
    assert!(error.is_unreachable());
    assert_eq!(a.me(ALICE).await.status, 401);
    redis.cli(&["config", "set", "maxmemory", "0"]);
}

#[tokio::test]
async fn a_wrong_password_shares_nothing_breaks_nothing_and_is_never_logged() {
    let (capture, _guard) = Capture::install();
    let redis = RedisServer::start_with(&["--requirepass", "the-right-password"]);
    let url = format!("redis://:a-wrong-password@127.0.0.1:{}", redis.port);
    let cache = RedisCache::new(&url, PEPPER)
        .unwrap()
        .budget(Duration::from_millis(300));
    let composio = composio().await;
    let (layer, a) = replica(&composio, cache).await;
    for key in fresh_keys(&composio, 5) {
        assert_eq!(a.me(&key).await.status, 200);
    }
    assert!(layer.invalidate(ALICE).await.is_err());
    within(
        "the warning",
        capture.wait_for_point(pause_point::SUBSCRIPTION_LOST, 1),
    )
    .await;
    for event in capture.events() {
        assert!(!event.contains("a-wrong-password"), "{event}");
    }
    assert!(!format!("{layer:?}").contains("a-wrong-password"));
}
