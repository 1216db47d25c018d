//! What a replica trusts in Redis (feature `redis`): a revoked key stops working
//! when its TTL ends, whatever Redis says. Each test plays a Redis writer without
//! the pepper (extending a value's expiry, writing back old values, forging or
//! replaying `invalidate_all` messages, lowering the epoch, emptying Redis behind
//! a replica's back) against real `redis-server` processes, with Composio refusing
//! the key after it was revoked.

use crate::common;

use std::time::{Duration, Instant};

use common::redis::{RedisServer, VERDICTS};
use common::{app, builder, composio, serve, Capture, Client, ALICE, BOB};
use composio_auth::testing::{Reply, StandIn};
use composio_auth::{ComposioAuthBuilder, ComposioAuthLayer, RedisCache};

const BUDGET: Duration = Duration::from_secs(2);
const TTL: Duration = Duration::from_millis(600);
/// What the stream of invalidations is called under the default prefix.
const STREAM: &str = "composio-auth:invalidations";

/// A replica sharing `cache`: TTL 600 ms, no refresh-ahead, then `configure`.
async fn replica(
    composio: &StandIn,
    cache: &RedisCache,
    configure: impl Fn(ComposioAuthBuilder) -> ComposioAuthBuilder,
) -> (ComposioAuthLayer, Client) {
    let layer = configure(
        builder(composio)
            .shared_cache(cache.clone())
            .ttl(TTL)
            .refresh_ahead(false),
    )
    .build()
    .unwrap();
    let client = Client::new(serve(app(layer.clone())).await);
    (layer, client)
}

/// Waits until `since` is more than a TTL ago. Time passing is what these tests
/// are about.
async fn past_the_ttl(since: Instant) {
    tokio::time::sleep((TTL + Duration::from_millis(50)).saturating_sub(since.elapsed())).await;
}

/// Every client refuses `key` with Composio's 401.
async fn all_refuse(clients: &[&Client], key: &str) {
    for (n, client) in clients.iter().enumerate() {
        let answer = client.me(key).await;
        assert_eq!(answer.status, 401, "replica {n} admitted a revoked key");
        assert_eq!(
            answer.envelope().error.slug.as_deref(),
            Some("APIKey_InvalidAPIKey")
        );
    }
}

#[tokio::test]
async fn a_stale_window_never_admits_a_revoked_key_while_composio_answers() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let cache = redis.cache(BUDGET);
    let stale = |b: ComposioAuthBuilder| b.stale_if_error(Duration::from_secs(30));
    let (_, a) = replica(&composio, &cache, stale).await;
    let (_, b) = replica(&composio, &cache, stale).await;
    assert_eq!(a.me(ALICE).await.status, 200);
    let verified = Instant::now();
    assert_eq!(b.me(ALICE).await.status, 200);
    assert_eq!(composio.calls(), 1);
    composio.revoke(ALICE);
    past_the_ttl(verified).await;
    // Redis still holds the session (30 s of stale window): Composio decides.
    assert_eq!(redis.keys(VERDICTS).len(), 1);
    all_refuse(&[&a, &b], ALICE).await;
    let (_, c) = replica(&composio, &cache, stale).await;
    all_refuse(&[&c], ALICE).await;
    assert_eq!(
        composio.calls_for(ALICE),
        2,
        "Composio asked once more, for the fleet"
    );
}

#[tokio::test]
async fn a_session_in_its_stale_window_in_redis_is_served_only_while_composio_cannot_decide() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let cache = redis.cache(BUDGET);
    let stale = |b: ComposioAuthBuilder| b.stale_if_error(Duration::from_secs(30));
    let (_, a) = replica(&composio, &cache, stale).await;
    assert_eq!(a.me(BOB).await.status, 200);
    let verified = Instant::now();
    redis.wait_for_verdicts(1).await;
    past_the_ttl(verified).await;
    composio.fail_with(Reply::html(502));
    // A replica that never saw BOB has only Redis's copy: served stale.
    let (_, fresh) = replica(&composio, &cache, stale).await;
    let answer = fresh.me(BOB).await;
    assert_eq!(answer.status, 200, "the stale fallback from Redis");
    assert_eq!(answer.body, "bob@example.com");
    assert_eq!(a.me(BOB).await.status, 200, "the local stale fallback");
    // Without a stale window, the same replica has nothing to fall back on.
    let (_, strict) = replica(&composio, &cache, |b| b).await;
    assert_eq!(strict.me(BOB).await.status, 503);
    // Composio back: it decides again.
    composio.recover();
    composio.revoke(BOB);
    all_refuse(&[&fresh, &a, &strict], BOB).await;
}

#[tokio::test]
async fn an_extended_expiry_in_redis_does_not_extend_a_verdict() {
    let (capture, _guard) = Capture::install();
    let redis = RedisServer::start();
    let composio = composio().await;
    // A verdict is called older than its lifetime once it is past it by more than
    // the Redis budget (how early a writer's reading of Redis's clock may be).
    let budget = Duration::from_millis(300);
    let cache = redis.cache(budget);
    let (_, a) = replica(&composio, &cache, |b| b).await;
    assert_eq!(a.me(ALICE).await.status, 200);
    let verified = Instant::now();
    let key = redis.wait_for_verdicts(1).await.remove(0);
    composio.revoke(ALICE);
    // Blind: any value's expiry, without knowing whose key it is.
    assert_eq!(redis.cli(&["pexpire", &key, "3600000"]).trim(), "1");
    tokio::time::sleep((TTL + budget * 2).saturating_sub(verified.elapsed())).await;
    let (_, fresh) = replica(&composio, &cache, |b| b).await;
    all_refuse(&[&fresh, &a], ALICE).await;
    assert_eq!(
        capture.count_at("WARN", "older than its lifetime"),
        1,
        "one warn, not one per request"
    );
    for _ in 0..3 {
        assert_eq!(redis.cli(&["pexpire", &key, "3600000"]).trim(), "1");
        let (_, another) = replica(&composio, &cache, |b| b).await;
        all_refuse(&[&another], ALICE).await;
    }
}

#[tokio::test]
async fn a_value_written_back_after_invalidate_is_a_miss() {
    let (capture, _guard) = Capture::install();
    let redis = RedisServer::start();
    let composio = composio().await;
    let cache = redis.cache(BUDGET);
    let (a_layer, a) = replica(&composio, &cache, |b| b).await;
    assert_eq!(a.me(ALICE).await.status, 200);
    let verified = Instant::now();
    let key = redis.wait_for_verdicts(1).await.remove(0);
    assert_eq!(redis.cli(&["copy", &key, "copied"]).trim(), "1");
    composio.revoke(ALICE);
    a_layer.invalidate(ALICE).await.expect("Redis reachable");
    assert!(redis.keys(VERDICTS).is_empty());
    // Written back as it was, with a long life.
    assert_eq!(redis.cli(&["copy", "copied", &key]).trim(), "1");
    assert_eq!(redis.cli(&["pexpire", &key, "3600000"]).trim(), "1");
    // Inside the TTL already: the value was sealed with the key's generation before
    // the invalidation.
    let (_, fresh) = replica(&composio, &cache, |b| b).await;
    all_refuse(&[&fresh], ALICE).await;
    assert_eq!(capture.count_at("WARN", "does not open"), 1);
    // And after it, written back again, on every replica.
    assert_eq!(redis.cli(&["copy", "copied", &key, "replace"]).trim(), "1");
    assert_eq!(redis.cli(&["pexpire", &key, "3600000"]).trim(), "1");
    past_the_ttl(verified).await;
    let (_, late) = replica(&composio, &cache, |b| b).await;
    all_refuse(&[&late, &fresh, &a], ALICE).await;
}

/// Replays the oldest sealed `invalidate_all` message of the stream, as a Redis
/// writer can (server-side, so the test handles no binary).
const REPLAY_OLDEST_ALL: &str = r"
for _, message in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  local fields = message[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'all' then
      redis.call('XADD', KEYS[1], '*', 'all', fields[i + 1])
      return 1
    end
  end
end
return 0
";

#[tokio::test]
async fn old_values_and_a_forged_or_replayed_invalidate_all_do_not_bring_an_epoch_back() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let cache = redis.cache(BUDGET);
    let (a_layer, a) = replica(&composio, &cache, |b| b).await;
    let (_, b) = replica(&composio, &cache, |b| b).await;
    // Epoch 1, and ALICE's verdict recorded in it.
    a_layer.invalidate_all().await.expect("Redis reachable");
    assert_eq!(a.me(ALICE).await.status, 200);
    let verified = Instant::now();
    let key = redis.wait_for_verdicts(1).await.remove(0);
    assert_eq!(redis.cli(&["copy", &key, "copied"]).trim(), "1");
    for client in [&a, &b] {
        assert_eq!(client.me(ALICE).await.status, 200);
        assert_eq!(client.me(BOB).await.status, 200);
    }
    // ALICE revoked; epoch 2 everywhere.
    composio.revoke(ALICE);
    a_layer.invalidate_all().await.expect("Redis reachable");
    b.until_refused(ALICE).await;
    // The old value back, a forged `all` of epoch 1 and the real one replayed.
    assert_eq!(redis.cli(&["copy", "copied", &key, "replace"]).trim(), "1");
    assert_eq!(redis.cli(&["pexpire", &key, "3600000"]).trim(), "1");
    assert!(!redis.cli(&["xadd", STREAM, "*", "all", "1"]).is_empty());
    assert_eq!(
        redis.cli(&["eval", REPLAY_OLDEST_ALL, "1", STREAM]).trim(),
        "1"
    );
    // A real invalidation after them: once a replica applied it, it read them.
    composio.revoke(BOB);
    let (c_layer, c) = replica(&composio, &cache, |b| b).await;
    c_layer.invalidate(BOB).await.expect("Redis reachable");
    a.until_refused(BOB).await;
    b.until_refused(BOB).await;
    all_refuse(&[&a, &b, &c], ALICE).await;
    past_the_ttl(verified).await;
    all_refuse(&[&a, &b, &c], ALICE).await;
}

#[tokio::test]
async fn a_lowered_epoch_in_redis_is_raised_back_when_a_replica_reconnects() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let cache = redis.cache(BUDGET);
    let long = |b: ComposioAuthBuilder| b.ttl(Duration::from_secs(60));
    let (a_layer, a) = replica(&composio, &cache, long).await;
    a_layer.invalidate_all().await.expect("Redis reachable");
    a_layer.invalidate_all().await.expect("Redis reachable");
    assert_eq!(a.me(ALICE).await.status, 200);
    redis.wait_for_verdicts(1).await;
    assert_eq!(redis.cli(&["get", "composio-auth:epoch"]).trim(), "2");
    redis.cli(&["set", "composio-auth:epoch", "0"]);
    // Every connection dropped: the replica reconnects and catches up.
    redis.cli(&["client", "kill", "type", "normal"]);
    common::eventually("the epoch raised back", || {
        redis.cli(&["get", "composio-auth:epoch"]).trim() == "2"
    })
    .await;
    // A replica that joins now reads epoch 2: it adopts what the first recorded
    // in epoch 2 (in epoch 0 it would have been a miss, and a second call).
    let (_, b) = replica(&composio, &cache, long).await;
    assert_eq!(b.me(ALICE).await.status, 200);
    assert_eq!(composio.calls(), 1);
}

#[tokio::test]
async fn a_stream_trimmed_past_a_live_replica_makes_it_forget_every_verdict() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let cache = redis.cache(BUDGET);
    let (a_layer, a) = replica(&composio, &cache, |b| b.ttl(Duration::from_secs(60))).await;
    assert_eq!(a.me(ALICE).await.status, 200);
    assert_eq!(a.me(BOB).await.status, 200);
    redis.wait_for_verdicts(2).await;
    assert_eq!(a_layer.cached().sessions, 2);
    // An invalidation this replica never reads: Redis forgets ALICE's verdict, and
    // its message is added and trimmed away in one step, then one message it
    // does read.
    composio.revoke(ALICE);
    for key in redis.keys(VERDICTS) {
        redis.cli(&["del", &key]);
    }
    let trim = r"
redis.call('XADD', KEYS[1], '*', 'd0', 'an invalidation nobody reads')
redis.call('XTRIM', KEYS[1], 'MAXLEN', 0)
return redis.call('XADD', KEYS[1], '*', 'hello', '1')
";
    redis.cli(&["eval", trim, "1", STREAM]);
    common::eventually("every local verdict forgotten", || {
        a_layer.cached().sessions == 0
    })
    .await;
    all_refuse(&[&a], ALICE).await;
}

#[tokio::test]
async fn a_redis_emptied_behind_a_replica_is_detected_even_when_its_stream_looks_continuous() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let cache = redis.cache(BUDGET);
    let (a_layer, a) = replica(&composio, &cache, |b| b.ttl(Duration::from_secs(60))).await;
    assert_eq!(a.me(ALICE).await.status, 200);
    assert_eq!(a.me(ALICE).await.status, 200);
    assert_eq!(a_layer.cached().sessions, 1);
    // Recorded (after the answer) before Redis is emptied.
    redis.wait_for_verdicts(1).await;
    composio.revoke(ALICE);
    // As a Redis restarted without persistence on a clock far behind: empty, and
    // a stream whose ids are all below the replica's position.
    redis.cli(&["flushall"]);
    assert_eq!(
        redis.cli(&["xadd", STREAM, "1-1", "hello", "1"]).trim(),
        "1-1"
    );
    redis.cli(&["client", "kill", "type", "normal"]);
    common::eventually("every local verdict forgotten", || {
        a_layer.cached().sessions == 0
    })
    .await;
    all_refuse(&[&a], ALICE).await;
}

#[tokio::test]
async fn a_deleted_key_is_recorded_for_negative_ttl_not_a_sessions_life() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let mut document = StandIn::document_for("gone@example.com", "Gone", "member");
    document["api_key"]["deleted"] = serde_json::Value::Bool(true);
    let gone = "ak_deleted_0123456789abcd";
    composio.add_session(gone, document);
    let cache = redis.cache(BUDGET);
    let negative = Duration::from_millis(800);
    let (_, a) = replica(&composio, &cache, |b| {
        b.ttl(Duration::from_secs(60))
            .stale_if_error(Duration::from_secs(60))
            .negative_ttl(negative)
    })
    .await;
    assert_eq!(a.me(gone).await.status, 401);
    let key = redis.wait_for_verdicts(1).await.remove(0);
    let pttl: u64 = redis.cli(&["pttl", &key]).trim().parse().unwrap();
    assert!(
        pttl <= negative.as_millis() as u64,
        "recorded for {pttl} ms, negative_ttl is {negative:?}"
    );
}
