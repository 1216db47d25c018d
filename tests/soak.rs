//! The invariant soak: mixed traffic from many concurrent clients while the upstream
//! randomly fails, stalls and recovers. About 20 s by default; set
//! `COMPOSIO_AUTH_SOAK_SECS` to run longer, `COMPOSIO_AUTH_SOAK_SEED` to replay a run.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{app, serve, Client};
use composio_auth::testing::{Reply, StandIn};
use composio_auth::ComposioAuthLayer;

const TTL: Duration = Duration::from_millis(800);
const BUDGET: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Valid,
    Invalid,
    Forbidden,
    Missing,
    Malformed,
}

/// xorshift64*: enough randomness for traffic mixes, replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_traffic_under_chaos_never_gives_a_wrong_verdict() {
    let secs: u64 = std::env::var("COMPOSIO_AUTH_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("COMPOSIO_AUTH_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("soak: {secs} s, seed {seed} (COMPOSIO_AUTH_SOAK_SEED={seed} replays it)");

    let composio = Arc::new(StandIn::start().await.unwrap());
    let valid: Vec<String> = (0..10).map(|i| format!("ak_soak_valid_{i:04}")).collect();
    let forbidden: Vec<String> = (0..3).map(|i| format!("ak_soak_viewer_{i:04}")).collect();
    for key in &valid {
        composio.add_session(
            key,
            StandIn::document_for("member@example.com", "Member", "member"),
        );
    }
    for key in &forbidden {
        composio.add_session(
            key,
            StandIn::document_for("viewer@example.com", "Viewer", "viewer"),
        );
    }
    let layer = ComposioAuthLayer::builder()
        .base_url(composio.base_url())
        .ttl(TTL)
        .negative_ttl(Duration::from_millis(400))
        .stale_if_error(Duration::from_secs(2))
        .timeout(BUDGET)
        .max_concurrent_verifications(8)
        .require(|s| s.org_member.role != "viewer")
        .build()
        .unwrap();
    let client = Client::new(serve(app(layer.clone())).await);

    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let healthy = Arc::new(AtomicBool::new(true));

    // Chaos: healthy and faulty windows in turn. Calls made during healthy windows
    // are counted per key, to check them against the TTL.
    let chaos = {
        let (composio, healthy, valid) =
            (Arc::clone(&composio), Arc::clone(&healthy), valid.clone());
        tokio::spawn(async move {
            let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
            let (mut healthy_calls, mut healthy_time, mut windows) =
                (HashMap::<String, u64>::new(), Duration::ZERO, 0u64);
            while Instant::now() < deadline {
                let before: Vec<u64> = valid.iter().map(|k| composio.calls_for(k)).collect();
                let window = Duration::from_millis(300 + rng.below(1200));
                tokio::time::sleep(window).await;
                healthy_time += window;
                windows += 1;
                for (key, before) in valid.iter().zip(before) {
                    *healthy_calls.entry(key.clone()).or_default() +=
                        composio.calls_for(key) - before;
                }
                healthy.store(false, Ordering::SeqCst);
                match rng.below(6) {
                    0 => composio.fail_with(Reply::html(502)),
                    1 => composio.fail_with(Reply::rate_limited(1)),
                    2 => composio.fail_with(Reply::envelope(500, 500, "Internal", "boom")),
                    3 => composio.fail_with(Reply::html(401)),
                    4 => composio.set_latency(BUDGET * 2),
                    _ => composio.hold(),
                }
                tokio::time::sleep(Duration::from_millis(100 + rng.below(700))).await;
                composio.recover();
                composio.set_latency(Duration::ZERO);
                composio.release();
                healthy.store(true, Ordering::SeqCst);
            }
            (healthy_calls, healthy_time, windows)
        })
    };

    // Clients.
    let seen: Arc<Mutex<HashMap<(Kind, u16), u64>>> = Arc::default();
    let clients: Vec<_> = (0..16u64)
        .map(|c| {
            let (client, seen, valid, forbidden) = (
                client.clone(),
                Arc::clone(&seen),
                valid.clone(),
                forbidden.clone(),
            );
            tokio::spawn(async move {
                let mut rng = Rng(seed.wrapping_add(c.wrapping_mul(0x1000_0000_01b3)) | 1);
                while Instant::now() < deadline {
                    let kind = [
                        Kind::Valid,
                        Kind::Valid,
                        Kind::Invalid,
                        Kind::Forbidden,
                        Kind::Missing,
                        Kind::Malformed,
                    ][rng.below(6) as usize];
                    let answer = match kind {
                        Kind::Valid => {
                            client
                                .me(&valid[rng.below(valid.len() as u64) as usize])
                                .await
                        }
                        Kind::Forbidden => {
                            client
                                .me(&forbidden[rng.below(forbidden.len() as u64) as usize])
                                .await
                        }
                        Kind::Invalid => {
                            client
                                .me(&format!("ak_soak_invalid_{:04}", rng.below(500)))
                                .await
                        }
                        Kind::Missing => client.get("/me", &[]).await,
                        Kind::Malformed => client.me("ak soak malformed").await,
                    };
                    *seen
                        .lock()
                        .unwrap()
                        .entry((kind, answer.status.as_u16()))
                        .or_default() += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs / 4)).await;
    let rss_after_warmup = rss_bytes();
    for client in clients {
        client
            .await
            .expect("a client task panicked or lost its connection");
    }
    let (healthy_calls, healthy_time, windows) = chaos.await.unwrap();
    let rss_at_end = rss_bytes();

    let seen = seen.lock().unwrap().clone();
    eprintln!("soak answers (kind, status) -> count: {seen:?}");
    let count = |kind: Kind, status: u16| seen.get(&(kind, status)).copied().unwrap_or(0);
    for ((kind, status), n) in &seen {
        let allowed: &[u16] = match kind {
            Kind::Valid => &[200, 503],
            Kind::Invalid => &[401, 503],
            Kind::Forbidden => &[403, 503],
            Kind::Missing | Kind::Malformed => &[401],
        };
        assert!(
            allowed.contains(status),
            "{n} answers of {status} for {kind:?} keys"
        );
    }
    assert!(
        count(Kind::Valid, 200) > 0
            && count(Kind::Invalid, 401) > 0
            && count(Kind::Forbidden, 403) > 0
    );

    // TTL arithmetic: while healthy, a key is verified at most once per 0.8 TTL
    // (refresh-ahead), plus once at the start of each healthy window.
    let bound =
        (healthy_time.as_secs_f64() / (TTL.as_secs_f64() * 0.8)).ceil() as u64 + windows + 1;
    for (key, calls) in &healthy_calls {
        assert!(
            *calls <= bound,
            "{key}: {calls} calls while healthy, bound {bound}"
        );
    }
    eprintln!(
        "healthy calls per valid key: {:?} (bound {bound})",
        healthy_calls.values().collect::<Vec<_>>()
    );

    let growth = rss_at_end.saturating_sub(rss_after_warmup);
    eprintln!(
        "rss after warm-up {} KiB, at end {} KiB",
        rss_after_warmup / 1024,
        rss_at_end / 1024
    );
    assert!(growth < 64 * 1024 * 1024, "memory grew by {growth} bytes");

    // Once Composio is healthy, no valid key is locked out.
    assert!(healthy.load(Ordering::SeqCst));
    layer.invalidate_all().await.unwrap();
    for key in &valid {
        assert_eq!(
            client.me(key).await.status,
            StatusCode::OK,
            "{key} locked out after the soak"
        );
    }
}
