//! Replicas sharing verdicts and invalidations through a real `redis-server` (feature
//! `redis`): each test starts its own server on a free loopback port.

use crate::common;

use std::time::{Duration, Instant};

use common::redis::{RedisServer, PEPPER, VERDICTS};
use common::{app, builder, composio, eventually, serve, within, Capture, Client, ALICE, BOB};
use composio_auth::testing::{pause_point, Reply, StandIn};
use composio_auth::{ComposioAuthBuilder, ComposioAuthLayer, RedisCache};

/// A Redis budget generous enough that a loaded machine never makes these tests
/// go on without Redis (the fault tests use short ones).
const BUDGET: Duration = Duration::from_secs(2);

fn shared(redis: &RedisServer) -> RedisCache {
    redis.cache(BUDGET)
}

/// `n` replicas of one service (each a layer served on its own port) sharing `redis`.
async fn replicas(
    composio: &StandIn,
    cache: RedisCache,
    n: usize,
    configure: impl Fn(ComposioAuthBuilder) -> ComposioAuthBuilder,
) -> Vec<(ComposioAuthLayer, Client)> {
    let mut replicas = Vec::new();
    for _ in 0..n {
        let layer = configure(builder(composio).shared_cache(cache.clone()))
            .build()
            .unwrap();
        let addr = serve(app(layer.clone())).await;
        replicas.push((layer, Client::new(addr)));
    }
    replicas
}

/// The Redis key of the first verdict recorded (waiting for the write, which
/// follows the answer).
async fn recorded(redis: &RedisServer) -> String {
    redis.wait_for_verdicts(1).await.remove(0)
}

#[tokio::test]
async fn a_key_verified_on_one_replica_is_used_on_three_others_with_one_upstream_call() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let fleet = replicas(&composio, shared(&redis), 4, |b| b).await;
    for (_, client) in &fleet {
        let answer = client.me(ALICE).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "alice@example.com");
    }
    assert_eq!(composio.calls(), 1);
    // And without Redis, the same four replicas ask four times.
    let alone = common::composio().await;
    for _ in 0..4 {
        let layer = builder(&alone).build().unwrap();
        let client = Client::new(serve(app(layer)).await);
        assert_eq!(client.me(ALICE).await.status, 200);
    }
    assert_eq!(alone.calls(), 4);
}

#[tokio::test]
async fn concurrent_first_requests_on_every_replica_make_one_upstream_call() {
    let (capture, _guard) = Capture::install();
    let redis = RedisServer::start();
    let composio = composio().await;
    let fleet = replicas(&composio, shared(&redis), 4, |b| b).await;
    composio.hold();
    let mut requests = Vec::new();
    for (_, client) in &fleet {
        for _ in 0..8 {
            let client = client.clone();
            requests.push(tokio::spawn(async move { client.me(ALICE).await.status }));
        }
    }
    within("the first call", composio.wait_for_calls(1)).await;
    // The three other replicas found the lease taken and wait for its verdict.
    within(
        "three replicas waiting on the lease",
        capture.wait_for_point(pause_point::LEASE_HELD_ELSEWHERE, 3),
    )
    .await;
    composio.release();
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(
        composio.calls(),
        1,
        "one upstream call for 4 replicas x 8 requests"
    );
}

#[tokio::test]
async fn a_replica_that_waits_too_long_on_a_lease_asks_composio_itself() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let cache = shared(&redis).lease_wait(Duration::from_millis(300));
    let fleet = replicas(&composio, cache, 2, |b| b).await;
    composio.hold();
    let first = {
        let client = fleet[0].1.clone();
        tokio::spawn(async move { client.me(ALICE).await.status })
    };
    within("the first call", composio.wait_for_calls(1)).await;
    let second = {
        let client = fleet[1].1.clone();
        tokio::spawn(async move { client.me(ALICE).await.status })
    };
    // The first replica's verification is stuck (its answer held); the second one
    // stops waiting for it and calls Composio itself, while the hold is still on.
    within("the second replica's own call", composio.wait_for_calls(2)).await;
    composio.release();
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(second.await.unwrap(), 200);
}

#[tokio::test]
async fn a_refused_key_is_refused_on_every_replica_with_one_upstream_call() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let fleet = replicas(&composio, shared(&redis), 3, |b| b).await;
    for (_, client) in &fleet {
        let answer = client.me("ak_unknown_key_000000000").await;
        assert_eq!(answer.status, 401);
        assert_eq!(
            answer.envelope().error.slug.as_deref(),
            Some("APIKey_InvalidAPIKey")
        );
    }
    assert_eq!(composio.calls(), 1);
}

#[tokio::test]
async fn invalidate_on_one_replica_reaches_every_replica_and_their_fronts() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let fleet = replicas(&composio, shared(&redis), 4, |b| b).await;
    for (_, client) in &fleet {
        // Several requests each: the key is in moka and in the thread's front.
        for _ in 0..3 {
            assert_eq!(client.me(ALICE).await.status, 200);
            assert_eq!(client.me(BOB).await.status, 200);
        }
    }
    let calls = composio.calls();
    assert_eq!(calls, 2);
    composio.revoke(ALICE);
    fleet[0].0.invalidate(ALICE).await.expect("Redis reachable");
    assert_eq!(fleet[0].1.me(ALICE).await.status, 401);
    for (_, client) in &fleet[1..] {
        let took = client.until_refused(ALICE).await;
        assert!(took < Duration::from_secs(1), "refused after {took:?}");
    }
    // Other keys are untouched everywhere.
    for (_, client) in &fleet {
        assert_eq!(client.me(BOB).await.status, 200);
    }
    assert_eq!(composio.calls_for(BOB), 1);
}

#[tokio::test]
async fn invalidate_all_on_one_replica_reaches_every_replica() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let fleet = replicas(&composio, shared(&redis), 3, |b| b).await;
    for (_, client) in &fleet {
        assert_eq!(client.me(ALICE).await.status, 200);
        assert_eq!(client.me(BOB).await.status, 200);
    }
    composio.revoke(ALICE);
    composio.revoke(BOB);
    fleet[2].0.invalidate_all().await.expect("Redis reachable");
    for (_, client) in &fleet {
        client.until_refused(ALICE).await;
        client.until_refused(BOB).await;
    }
}

#[tokio::test]
async fn an_invalidation_sent_while_a_replica_was_not_subscribed_reaches_it_on_reconnect() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let cache = shared(&redis);
    let a = builder(&composio)
        .shared_cache(cache.clone())
        .build()
        .unwrap();
    let b = builder(&composio).shared_cache(cache).build().unwrap();
    let a_client = Client::new(serve(app(a.clone())).await);
    assert_eq!(a_client.me(ALICE).await.status, 200);

    // Replica B runs on a runtime of its own, where its subscription task lives.
    let b_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let b_app = app(b.clone());
    let b_port = std::sync::mpsc::channel();
    let (stop_b, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        b_runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            b_port.0.send(listener.local_addr().unwrap()).unwrap();
            tokio::spawn(async move { axum::serve(listener, b_app).await.unwrap() });
            let _ = stopped.await;
        });
        // The runtime (and B's subscription with it) goes away here.
    });
    let b_client = Client::new(b_port.1.recv().unwrap());
    assert_eq!(b_client.me(ALICE).await.status, 200);
    assert_eq!(b_client.me(BOB).await.status, 200);
    let calls = composio.calls();
    stop_b.send(()).unwrap();
    thread.join().unwrap();

    // While B hears nothing, ALICE is revoked and invalidated from A.
    composio.revoke(ALICE);
    a.invalidate(ALICE).await.expect("Redis reachable");

    // B serves again (on this runtime); its next verification (BOB's, below, is
    // still cached, so another key's) resubscribes, replays the stream and drops
    // ALICE.
    let b_client = Client::new(serve(app(b.clone())).await);
    assert_eq!(b_client.me("ak_unknown_key_000000000").await.status, 401);
    b_client.until_refused(ALICE).await;
    // Replayed, not guessed: BOB stayed cached on B (no upstream call for it).
    assert_eq!(b_client.me(BOB).await.status, 200);
    assert_eq!(composio.calls_for(BOB), 1);
    assert!(composio.calls() <= calls + 3);
}

#[tokio::test]
async fn a_replica_that_cannot_know_what_it_missed_drops_its_local_verdicts() {
    let mut redis = RedisServer::start();
    let composio = composio().await;
    let fleet = replicas(&composio, shared(&redis), 2, |b| b).await;
    for (layer, client) in &fleet {
        assert_eq!(client.me(ALICE).await.status, 200);
        assert_eq!(layer.cached().sessions, 1);
    }
    assert_eq!(composio.calls(), 1);
    // Redis restarts empty: the stream and what it held are gone.
    redis.restart();
    // Each replica's subscription notices, and drops its sessions: the next request
    // asks again (Composio, or Redis once a replica has recorded it).
    within("the replicas to forget", async {
        loop {
            if fleet.iter().all(|(layer, _)| layer.cached().sessions == 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    for (_, client) in &fleet {
        assert_eq!(client.me(ALICE).await.status, 200);
    }
    assert_eq!(
        composio.calls(),
        2,
        "one more call for the fleet, not one per replica"
    );
}

#[tokio::test]
async fn an_adopted_verdict_keeps_its_age_and_no_copy_outlives_it() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let ttl = Duration::from_millis(1500);
    let fleet = replicas(&composio, shared(&redis), 2, |b| {
        b.ttl(ttl).refresh_ahead(false)
    })
    .await;
    assert_eq!(
        fleet[0].1.get("/age", &[("x-api-key", ALICE)]).await.status,
        200
    );
    let verified = Instant::now();
    // Time passing is what this test is about.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let age: u64 = fleet[1]
        .1
        .get("/age", &[("x-api-key", ALICE)])
        .await
        .body
        .parse()
        .unwrap();
    assert!(
        age >= 550,
        "adopted with age {age} ms: a fresh TTL, not what was left"
    );
    assert_eq!(composio.calls(), 1);
    // What Redis holds lives no longer than what is left of the TTL.
    let key = recorded(&redis).await;
    let pttl: u64 = redis.cli(&["pttl", &key]).trim().parse().unwrap();
    let left = ttl.saturating_sub(verified.elapsed()).as_millis() as u64;
    assert!(
        pttl <= left + 50,
        "pttl {pttl} ms, {left} ms left of the TTL"
    );
    // Once the TTL is over, both replicas ask again: one call for the fleet.
    tokio::time::sleep(ttl.saturating_sub(verified.elapsed()) + Duration::from_millis(50)).await;
    for (_, client) in &fleet {
        assert_eq!(client.me(ALICE).await.status, 200);
    }
    assert_eq!(composio.calls(), 2);
}

#[tokio::test]
async fn refresh_ahead_takes_a_fresher_verdict_from_redis_before_calling_composio() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let ttl = Duration::from_millis(1000);
    let fleet = replicas(&composio, shared(&redis), 2, |b| b.ttl(ttl)).await;
    for (_, client) in &fleet {
        assert_eq!(client.me(ALICE).await.status, 200);
    }
    assert_eq!(composio.calls(), 1);
    // Past the refresh point (80% of the TTL) on both replicas.
    tokio::time::sleep(Duration::from_millis(850)).await;
    // Replica 0 refreshes from Composio and records the fresher verdict.
    assert_eq!(fleet[0].1.me(ALICE).await.status, 200);
    within("replica 0's refresh", composio.wait_for_calls(2)).await;
    let key = recorded(&redis).await;
    eventually("the fresher verdict in Redis", || {
        let pttl: i64 = redis.cli(&["pttl", &key]).trim().parse().unwrap_or(-2);
        pttl > 500
    })
    .await;
    // Replica 1's refresh takes it from Redis: no third call.
    assert_eq!(fleet[1].1.me(ALICE).await.status, 200);
    within("replica 1's refresh", async {
        loop {
            let age: u64 = fleet[1]
                .1
                .get("/age", &[("x-api-key", ALICE)])
                .await
                .body
                .parse()
                .unwrap();
            if age < 500 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(composio.calls(), 2);
}

#[tokio::test]
async fn undecided_outcomes_are_never_written_to_redis() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let fleet = replicas(&composio, shared(&redis), 2, |b| b).await;
    composio.fail_with(Reply::html(502));
    assert_eq!(fleet[0].1.me(ALICE).await.status, 503);
    // The lease is given back once the outcome is known; nothing else is written.
    eventually("the lease given back", || {
        redis.keys("composio-auth:*:lock").is_empty()
    })
    .await;
    assert_eq!(redis.keys(VERDICTS), Vec::<String>::new());
    composio.recover();
    assert_eq!(fleet[1].1.me(ALICE).await.status, 200);
    assert_eq!(composio.calls(), 2);
}

#[tokio::test]
async fn a_tampered_value_is_a_miss_logged_at_warn_never_a_session() {
    let (capture, _guard) = Capture::install();
    let redis = RedisServer::start();
    let composio = composio().await;
    let fleet = replicas(&composio, shared(&redis), 2, |b| b).await;
    assert_eq!(fleet[0].1.me(ALICE).await.status, 200);
    let key = recorded(&redis).await;
    // Flip one byte in the middle of the ciphertext.
    let middle = redis.cli(&["getrange", &key, "40", "40"]);
    let flipped = if middle.trim() == "A" { "B" } else { "A" };
    redis.cli(&["setrange", &key, "40", flipped]);
    assert_eq!(fleet[1].1.me(ALICE).await.status, 200);
    assert_eq!(composio.calls(), 2, "verified again");
    assert_eq!(capture.count_at("WARN", "does not open"), 1);
    // A value moved under another key's name does not open either.
    assert_eq!(fleet[0].1.me(BOB).await.status, 200);
    let bob_key = redis
        .wait_for_verdicts(2)
        .await
        .into_iter()
        .find(|k| *k != key)
        .expect("BOB's verdict");
    redis.cli(&["copy", &key, &bob_key, "replace"]);
    redis.cli(&["pexpire", &bob_key, "60000"]);
    let other = builder(&composio)
        .shared_cache(shared(&redis))
        .build()
        .unwrap();
    let client = Client::new(serve(app(other)).await);
    assert_eq!(client.me(BOB).await.body, "bob@example.com");
}

#[tokio::test]
async fn replicas_with_another_pepper_share_nothing() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let ours = replicas(&composio, shared(&redis), 1, |b| b).await;
    let cache = RedisCache::new(&redis.url(), "another pepper, also 32 bytes or more")
        .unwrap()
        .budget(BUDGET);
    let theirs = replicas(&composio, cache, 1, |b| b).await;
    assert_eq!(ours[0].1.me(ALICE).await.status, 200);
    assert_eq!(theirs[0].1.me(ALICE).await.status, 200);
    assert_eq!(composio.calls(), 2);
    composio.revoke(ALICE);
    // Their invalidation does not reach us (and is logged as foreign, not applied).
    theirs[0].0.invalidate(ALICE).await.unwrap();
    ours[0].0.invalidate(BOB).await.unwrap();
    assert_eq!(ours[0].1.me(ALICE).await.status, 200);
}

#[tokio::test]
async fn redis_sees_no_key_no_session_field_and_no_secret() {
    let redis = RedisServer::start();
    let composio = composio().await;
    let monitor = redis.monitor();
    let fleet = replicas(&composio, shared(&redis), 2, |b| b).await;
    for (_, client) in &fleet {
        assert_eq!(client.me(ALICE).await.status, 200);
        assert_eq!(client.me("ak_refused_0123456789abc").await.status, 401);
    }
    recorded(&redis).await;
    assert_eq!(fleet[0].1.me(BOB).await.status, 200);
    fleet[0].0.invalidate(BOB).await.unwrap();
    fleet[1].0.invalidate_all().await.unwrap();
    assert_eq!(fleet[0].1.me(ALICE).await.status, 200);
    recorded(&redis).await;
    let dump = redis.dump();
    let seen = monitor.stop();
    assert!(
        seen.contains("EVALSHA") || seen.contains("EVAL"),
        "the monitor saw the layer's commands"
    );
    assert!(seen.contains("XADD"), "and its invalidations");
    let dump = String::from_utf8_lossy(&dump);
    assert!(
        dump.contains("composio-auth:"),
        "the dump holds the layer's keys"
    );
    for secret in [
        ALICE,
        BOB,
        "ak_refused_0123456789abc",
        "alice@example.com",
        "bob@example.com",
        "whsec_a1b2c3d4e5f6g7h8i9j0",
        "org_member",
        "webhook_secret",
        "APIKey_InvalidAPIKey",
        PEPPER,
    ] {
        assert!(!seen.contains(secret), "MONITOR saw {secret}");
        assert!(!dump.contains(secret), "the dump holds {secret}");
    }
}

/// The environment variable that makes [`replica_process`] a replica: the Redis URL
/// and the stand-in's base URL, separated by a space.
const REPLICA_ENV: &str = "COMPOSIO_AUTH_TEST_REPLICA";

/// The second OS process of the test below: a replica serving on a free port,
/// which it prints, until its standard input closes. Without the variable (a plain
/// `cargo test`), it does nothing.
#[test]
fn replica_process() {
    let Ok(config) = std::env::var(REPLICA_ENV) else {
        return;
    };
    let (redis_url, base_url) = config.split_once(' ').expect("two URLs");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cache = RedisCache::new(redis_url, PEPPER).unwrap().budget(BUDGET);
        let layer = ComposioAuthLayer::builder()
            .base_url(base_url)
            .shared_cache(cache)
            .build()
            .unwrap();
        let addr = serve(app(layer)).await;
        println!("replica listening on {addr}");
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).unwrap_or(0) > 0 {}
        })
        .await
        .unwrap();
    });
}

#[tokio::test]
async fn two_processes_share_verdicts_and_invalidations_through_one_redis() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let redis = RedisServer::start();
    let composio = composio().await;
    // The test's name as libtest knows it: its module path without the crate.
    let name = match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::replica_process"),
        None => "replica_process".to_owned(),
    };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name.as_str(), "--nocapture", "--test-threads=1"])
        .env(
            REPLICA_ENV,
            format!("{} {}", redis.url(), composio.base_url()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (found, addr) = tokio::sync::oneshot::channel();
    // Reads the child's output to its end (a closed pipe would fail its last words).
    std::thread::spawn(move || {
        let mut found = Some(found);
        for line in std::io::BufReader::new(stdout).lines() {
            // libtest may print its own words before ours on the same line.
            let line = line.unwrap();
            if let Some((_, addr)) = line.split_once("replica listening on ") {
                let addr = addr.trim().parse::<std::net::SocketAddr>().unwrap();
                found.take().map(|found| found.send(addr));
            }
        }
    });
    let other = Client::new(within("the other process", addr).await.unwrap());
    let ours = replicas(&composio, shared(&redis), 1, |b| b).await;

    assert_eq!(ours[0].1.me(ALICE).await.status, 200);
    assert_eq!(other.me(ALICE).await.body, "alice@example.com");
    assert_eq!(composio.calls(), 1, "the other process took our verdict");
    assert_eq!(other.me(BOB).await.status, 200);
    assert_eq!(ours[0].1.me(BOB).await.status, 200);
    assert_eq!(composio.calls(), 2, "and we took theirs");

    composio.revoke(ALICE);
    ours[0].0.invalidate(ALICE).await.unwrap();
    let took = other.until_refused(ALICE).await;
    assert!(took < Duration::from_secs(1), "refused after {took:?}");

    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

/// The ACL guide::replicas recommends: the layer's prefix and the commands it uses.
pub const ACL: &[&str] = &[
    "resetkeys",
    "~orders-api:auth:*",
    "resetchannels",
    "-@all",
    "+evalsha",
    "+eval",
    "+script|load",
    "+get",
    "+set",
    "+del",
    "+pttl",
    "+incr",
    "+xadd",
    "+xread",
    "+xrange",
    "+ping",
    "+time",
];

#[tokio::test]
async fn an_acl_limited_to_the_prefix_and_the_layers_commands_is_enough() {
    let redis = RedisServer::start();
    let mut setuser = vec!["acl", "setuser", "orders", "on", ">s3cret-acl-password"];
    setuser.extend(ACL);
    assert_eq!(redis.cli(&setuser).trim(), "OK");
    assert_eq!(
        redis.cli(&["acl", "setuser", "default", "off"]).trim(),
        "OK"
    );
    let url = format!(
        "redis://orders:s3cret-acl-password@127.0.0.1:{}",
        redis.port
    );
    let cache = RedisCache::new(&url, PEPPER)
        .unwrap()
        .prefix("orders-api:auth:")
        .budget(BUDGET);
    let composio = composio().await;
    let fleet = replicas(&composio, cache, 2, |b| b).await;
    for (_, client) in &fleet {
        assert_eq!(client.me(ALICE).await.status, 200);
        assert_eq!(client.me("ak_unknown_key_000000000").await.status, 401);
    }
    assert_eq!(composio.calls(), 2, "verdicts shared under the ACL");
    composio.revoke(ALICE);
    fleet[0]
        .0
        .invalidate(ALICE)
        .await
        .expect("allowed by the ACL");
    fleet[1].1.until_refused(ALICE).await;
    fleet[1]
        .0
        .invalidate_all()
        .await
        .expect("allowed by the ACL");
}

#[tokio::test]
async fn over_tls_replicas_share_and_check_the_servers_certificate() {
    let redis = RedisServer::start_tls();
    let url = format!("rediss://127.0.0.1:{}", redis.tls_port.unwrap());
    let composio = composio().await;
    let cache = RedisCache::new(&url, PEPPER)
        .unwrap()
        .root_certificate(redis.ca_pem())
        .budget(BUDGET);
    let fleet = replicas(&composio, cache, 2, |b| b).await;
    for (_, client) in &fleet {
        assert_eq!(client.me(ALICE).await.status, 200);
    }
    assert_eq!(composio.calls(), 1, "shared over TLS");
    composio.revoke(ALICE);
    fleet[0]
        .0
        .invalidate(ALICE)
        .await
        .expect("Redis reachable over TLS");
    fleet[1].1.until_refused(ALICE).await;

    // A replica that does not trust the server's CA shares nothing, and fails
    // nothing: its verdicts are its own.
    let untrusting = RedisCache::new(&url, PEPPER)
        .unwrap()
        .budget(Duration::from_millis(300));
    let alone = replicas(&composio, untrusting, 1, |b| b).await;
    assert_eq!(fleet[0].1.me(BOB).await.status, 200);
    recorded(&redis).await;
    assert_eq!(alone[0].1.me(BOB).await.status, 200);
    assert_eq!(
        composio.calls_for(BOB),
        2,
        "nothing read from an untrusted server"
    );
    assert!(alone[0].0.invalidate(BOB).await.is_err());
}

#[tokio::test]
async fn a_verification_in_flight_during_an_invalidation_never_refills_redis() {
    let (capture, _guard) = Capture::install();
    let redis = RedisServer::start();
    let composio = composio().await;
    let fleet = replicas(&composio, shared(&redis), 3, |b| b).await;
    // Replica 1 asks Composio, which decides (valid) at once but holds its answer.
    composio.hold();
    let first = {
        let client = fleet[1].1.clone();
        tokio::spawn(async move { client.me(ALICE).await.status })
    };
    within("replica 1's call", composio.wait_for_calls(1)).await;
    // Meanwhile the key is revoked, and invalidated from replica 0.
    composio.revoke(ALICE);
    fleet[0].0.invalidate(ALICE).await.expect("Redis reachable");
    // Replica 1 (the only one subscribed yet: the others have verified nothing)
    // hears it while its call is held.
    within(
        "replica 1 to hear the invalidation",
        capture.wait_for_point(pause_point::INVALIDATION_RECEIVED, 1),
    )
    .await;
    composio.release();
    // The request that was waiting gets that verification's answer...
    assert_eq!(first.await.unwrap(), 200);
    // ...but the verdict reached neither replica 1's cache nor Redis: replica 2
    // finds nothing to adopt and asks Composio, which refuses the key.
    eventually("the lease given back", || {
        redis.keys("composio-auth:*:lock").is_empty()
    })
    .await;
    assert_eq!(redis.keys(VERDICTS), Vec::<String>::new());
    assert_eq!(fleet[2].1.me(ALICE).await.status, 401);
    assert_eq!(fleet[1].1.me(ALICE).await.status, 401);
    assert_eq!(composio.calls_for(ALICE), 2);
}
