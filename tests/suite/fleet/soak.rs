//! The fleet's invariant soak: three replicas sharing one Redis under mixed traffic,
//! while Redis is killed and restarted at random and keys are revoked and
//! invalidated. Zero wrong verdicts: a valid key is always admitted (Redis failing
//! never causes a 503), a refused key never is, and a key invalidated is refused
//! everywhere once the invalidation has had a second to travel. About 4 s; set
//! `COMPOSIO_AUTH_SOAK_SECS` to run longer.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{app, builder, composio, serve, Client};
use composio_auth::testing::StandIn;

/// How long after `invalidate` returns `Ok` every replica must refuse the key.
const GRACE: Duration = Duration::from_secs(1);

/// xorshift64*, seeded from the clock: a mix of traffic, not a proof.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_redis_that_crashes_at_random_never_give_a_wrong_verdict() {
    let secs = std::env::var("COMPOSIO_AUTH_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let redis = RedisServer::start();
    let composio = composio().await;
    let valid: Vec<String> = (0..6)
        .map(|i| format!("ak_soak_valid_{i:02}_000000"))
        .collect();
    for key in &valid {
        composio.add_session(key, StandIn::document_for("s@example.com", "S", "member"));
    }
    let cache = redis.cache(Duration::from_millis(100));
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let layer = builder(&composio)
            .shared_cache(cache.clone())
            .ttl(Duration::from_secs(2))
            .build()
            .unwrap();
        replicas.push((layer.clone(), Client::new(serve(app(layer)).await)));
    }

    // Redis crashes and comes back, empty, every 100 to 400 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let crasher = {
        let stop = Arc::clone(&stop);
        let mut redis = redis;
        std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
            let mut restarts = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100 + rng.below(300)));
                redis.restart();
                restarts += 1;
            }
            (redis, restarts)
        })
    };

    let started = Instant::now();
    let mut rng = Rng(started.elapsed().as_nanos() as u64 | 1);
    let (mut requests, mut wrong, mut revoked) =
        (0u64, Vec::new(), Vec::<(String, Instant)>::new());
    let mut next_revocation = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        let (layer, client) = &replicas[rng.below(3) as usize];
        // Now and then revoke a valid key upstream, and invalidate it (retrying
        // while Redis is down, as an operator would) from a random replica.
        if rng.below(60) == 0 && next_revocation < valid.len() - 2 {
            let key = &valid[next_revocation];
            next_revocation += 1;
            composio.revoke(key);
            loop {
                if layer.invalidate(key).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            revoked.push((key.clone(), Instant::now()));
            continue;
        }
        let pick = rng.below(valid.len() as u64 + 1) as usize;
        let (key, refused) = match valid.get(pick) {
            Some(key) => (key.clone(), false),
            None => ("ak_soak_never_valid_000000".to_owned(), true),
        };
        let sent = Instant::now();
        let status = client.me(&key).await.status.as_u16();
        requests += 1;
        let invalidated = revoked.iter().find(|(k, _)| *k == key).map(|(_, at)| *at);
        let ok = match (refused, invalidated) {
            (true, _) => status == 401,
            // Until the grace is over, either answer is right.
            (false, Some(at)) if sent < at + GRACE => status == 200 || status == 401,
            (false, Some(_)) => status == 401,
            (false, None) => status == 200,
        };
        if !ok {
            wrong.push(format!("{key} -> {status} at {:?}", started.elapsed()));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (_redis, restarts) = crasher.join().unwrap();
    eprintln!(
        "{requests} requests, {restarts} Redis restarts, {} keys revoked",
        revoked.len()
    );
    assert!(restarts >= 3, "Redis restarted {restarts} times");
    assert!(requests >= 100, "{requests} requests");
    assert!(
        wrong.is_empty(),
        "{} wrong verdicts: {wrong:#?}",
        wrong.len()
    );
}
