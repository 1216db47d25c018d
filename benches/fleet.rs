//! Fleet figures, printed as Markdown (`cargo bench --bench fleet --features redis`;
//! starts its own `redis-server`, which must be on PATH):
//!
//! - upstream calls per key per TTL for 1, 2, 4 and 8 replicas, alone and sharing;
//! - revocation propagation, from `invalidate()` returning to every replica
//!   refusing, over 1,000 trials; again while subscriber connections are cut;
//! - the cost of a Redis hit next to a warm local hit and an upstream call;
//! - misses with Redis down (closed port, and frozen): extra latency, 503s;
//! - bytes per Redis entry;
//! - a warm local hit with a shared cache configured against one without.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use axum::Router;
use composio_auth::testing::StandIn;
use composio_auth::{ComposioAuthBuilder, ComposioAuthLayer, RedisCache};
use tower::ServiceExt;

const PEPPER: &str = "the pepper of the fleet benchmark, 32+ bytes";

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli on PATH");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn router(layer: ComposioAuthLayer) -> Router {
    Router::new()
        .route("/me", get(|| async { "ok" }))
        .layer(layer)
}

async fn status(router: &Router, key: &str) -> u16 {
    let request = Request::get("/me")
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap();
    router
        .clone()
        .oneshot(request)
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn keys(stand_in: &StandIn, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let key = format!("ak_{prefix}_{i:06}_0000000000");
            stand_in.add_session(&key, StandIn::document_for("b@example.com", "B", "member"));
            key
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn replica(
    stand_in: &StandIn,
    cache: Option<&RedisCache>,
    configure: impl Fn(ComposioAuthBuilder) -> ComposioAuthBuilder,
) -> (ComposioAuthLayer, Router) {
    let mut builder = ComposioAuthLayer::builder().base_url(stand_in.base_url());
    if let Some(cache) = cache {
        builder = builder.shared_cache(cache.clone());
    }
    let layer = configure(builder).build().unwrap();
    (layer.clone(), router(layer))
}

async fn calls_per_ttl(redis: &Redis) {
    println!("\n### Upstream calls per key per TTL (TTL 500 ms, refresh-ahead on, 20 keys in steady use for 6 TTLs)\n");
    println!("| replicas | alone | sharing one Redis |");
    println!("|---|---|---|");
    let ttl = Duration::from_millis(500);
    let ttls = 6;
    for n in [1usize, 2, 4, 8] {
        let mut row = Vec::new();
        for shared in [false, true] {
            let stand_in = StandIn::start().await.unwrap();
            let keys = keys(&stand_in, "steady", 20);
            let cache = RedisCache::new(&redis.url(), PEPPER)
                .unwrap()
                .prefix(format!("bench-ttl-{n}:"));
            let routers: Vec<_> = (0..n)
                .map(|_| replica(&stand_in, shared.then_some(&cache), |b| b.ttl(ttl)).1)
                .collect();
            let started = Instant::now();
            while started.elapsed() < ttl * ttls {
                for router in &routers {
                    for key in &keys {
                        assert_eq!(status(router, key).await, 200);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            row.push(stand_in.calls() as f64 / (keys.len() as f64 * f64::from(ttls)));
        }
        println!("| {n} | {:.2} | {:.2} |", row[0], row[1]);
    }
}

async fn propagation(redis: &Redis, cut: bool) {
    let stand_in = StandIn::start().await.unwrap();
    let cache = RedisCache::new(&redis.url(), PEPPER)
        .unwrap()
        .prefix(format!("bench-propagation-{cut}:"));
    let replicas: Vec<_> = (0..4)
        .map(|_| replica(&stand_in, Some(&cache), |b| b))
        .collect();
    let trials = 1000;
    let keys = keys(&stand_in, &format!("revoked{cut}"), trials);
    // Cuts every subscriber connection (those blocked in XREAD) every 50 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let cutter = cut.then(|| {
        let stop = Arc::clone(&stop);
        let port = redis.port;
        std::thread::spawn(move || {
            let mut cuts = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let list = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "client", "list"])
                    .output()
                    .unwrap();
                for line in String::from_utf8_lossy(&list.stdout).lines() {
                    if line.contains("cmd=xread") {
                        if let Some(id) = line.split(' ').find_map(|f| f.strip_prefix("id=")) {
                            let _ = Command::new("redis-cli")
                                .args(["-p", &port.to_string(), "client", "kill", "id", id])
                                .output();
                            cuts += 1;
                        }
                    }
                }
            }
            cuts
        })
    });
    let mut took = Vec::with_capacity(trials);
    for key in &keys {
        for (_, router) in &replicas {
            assert_eq!(status(router, key).await, 200);
        }
        stand_in.revoke(key);
        replicas[0]
            .0
            .invalidate(key)
            .await
            .expect("Redis reachable");
        let invalidated = Instant::now();
        let mut last = Duration::ZERO;
        for (_, router) in &replicas[1..] {
            while status(router, key).await != 401 {
                tokio::task::yield_now().await;
            }
            last = invalidated.elapsed();
        }
        took.push(last);
    }
    stop.store(true, Ordering::Relaxed);
    let cuts = cutter.map(|c| c.join().unwrap());
    took.sort();
    let label = match cuts {
        Some(cuts) => format!("subscriber connections cut every 50 ms ({cuts} cuts)"),
        None => "steady".to_owned(),
    };
    println!(
        "| {label} | {trials} | {} | {} | {} |",
        ms(percentile(&took, 0.5)),
        ms(percentile(&took, 0.99)),
        ms(*took.last().unwrap())
    );
}

/// Per-request latencies of `keys`, each asked once of `router`.
async fn each_once(router: &Router, keys: &[String], expect: u16) -> Vec<Duration> {
    let mut took = Vec::with_capacity(keys.len());
    for key in keys {
        let started = Instant::now();
        let status = status(router, key).await;
        took.push(started.elapsed());
        assert_eq!(status, expect, "{key}");
    }
    took.sort();
    took
}

fn row(label: &str, took: &[Duration]) {
    let mean = took.iter().sum::<Duration>() / took.len() as u32;
    println!(
        "| {label} | {} | {} | {} |",
        us(mean),
        us(percentile(took, 0.5)),
        us(percentile(took, 0.99))
    );
}

async fn hit_costs(redis: &Redis) {
    println!("\n### A Redis hit next to a local hit and an upstream call (µs per request, 1,000 keys each)\n");
    println!("| request | mean | p50 | p99 |");
    println!("|---|---|---|---|");
    for latency in [Duration::ZERO, Duration::from_millis(50)] {
        let stand_in = StandIn::start().await.unwrap();
        let cache = RedisCache::new(&redis.url(), PEPPER)
            .unwrap()
            .prefix(format!("bench-hit-{}:", latency.as_millis()));
        let (_, a) = replica(&stand_in, Some(&cache), |b| b);
        let (_, b) = replica(&stand_in, Some(&cache), |b| b);
        let (_, alone) = replica(&stand_in, None, |b| b);
        let shared_keys = keys(&stand_in, &format!("hit{}", latency.as_millis()), 1000);
        let own_keys = keys(&stand_in, &format!("own{}", latency.as_millis()), 1000);
        stand_in.set_latency(latency);
        let upstream = if latency.is_zero() {
            "loopback stand-in"
        } else {
            "stand-in with 50 ms latency"
        };
        each_once(&a, &shared_keys, 200).await;
        // Let A's writes land before B reads.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let calls = stand_in.calls();
        let redis_hit = each_once(&b, &shared_keys, 200).await;
        assert_eq!(stand_in.calls(), calls, "B asked Composio");
        let local_hit = each_once(&b, &shared_keys, 200).await;
        let upstream_call = each_once(&alone, &own_keys, 200).await;
        if latency.is_zero() {
            row("warm local hit", &local_hit);
        }
        row(
            &format!("Redis hit (read, decrypt, parse, insert), {upstream}"),
            &redis_hit,
        );
        row(&format!("upstream call, {upstream}"), &upstream_call);
        if latency.is_zero() {
            // Before these entries expire (the 50 ms run takes about a minute).
            bytes_per_entry(redis);
            println!("\n| request | mean | p50 | p99 |\n|---|---|---|---|");
        }
    }
}

async fn redis_down(redis: &Redis) {
    println!("\n### Misses with Redis down (1,000 fresh keys each; budget 100 ms)\n");
    println!("| Redis | mean µs | p50 µs | p99 µs | max µs | 503s |");
    println!("|---|---|---|---|---|---|");
    let stand_in = StandIn::start().await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let frozen = Redis::start();
    let cases = [
        ("none configured", None),
        ("closed port", Some(format!("redis://127.0.0.1:{closed}"))),
        (
            "frozen (SIGSTOP) after the first request",
            Some(frozen.url()),
        ),
    ];
    for (n, (label, url)) in cases.into_iter().enumerate() {
        let cache = url.map(|url| RedisCache::new(&url, PEPPER).unwrap());
        let (_, router) = replica(&stand_in, cache.as_ref(), |b| b);
        let keys = keys(&stand_in, &format!("down{n}"), 1001);
        assert_eq!(status(&router, &keys[0]).await, 200);
        if label.starts_with("frozen") {
            let _ = Command::new("kill")
                .args(["-STOP", &frozen.child.id().to_string()])
                .status();
        }
        let mut took = Vec::new();
        let mut unavailable = 0;
        for key in &keys[1..] {
            let started = Instant::now();
            let status = status(&router, key).await;
            took.push(started.elapsed());
            unavailable += usize::from(status == 503);
        }
        took.sort();
        let mean = took.iter().sum::<Duration>() / took.len() as u32;
        println!(
            "| {label} | {} | {} | {} | {} | {unavailable} |",
            us(mean),
            us(percentile(&took, 0.5)),
            us(percentile(&took, 0.99)),
            us(*took.last().unwrap())
        );
    }
    let _ = redis;
}

fn bytes_per_entry(redis: &Redis) {
    let keys = redis.cli(&["--scan", "--pattern", "bench-hit-0:*:v"]);
    let keys: Vec<&str> = keys.lines().collect();
    let usage: Vec<u64> = keys
        .iter()
        .take(100)
        .map(|k| {
            redis
                .cli(&["memory", "usage", k])
                .trim()
                .parse()
                .unwrap_or(0)
        })
        .collect();
    let length: Vec<u64> = keys
        .iter()
        .take(100)
        .map(|k| redis.cli(&["strlen", k]).trim().parse().unwrap_or(0))
        .collect();
    println!(
        "\n### Bytes per Redis entry\n\nA session's value: {} bytes stored, {} bytes of Redis memory (`MEMORY USAGE`, mean of {} entries; the stand-in's reference document is {} bytes of JSON).\n",
        length.iter().sum::<u64>() / length.len().max(1) as u64,
        usage.iter().sum::<u64>() / usage.len().max(1) as u64,
        usage.len(),
        StandIn::example_document().to_string().len()
    );
}

async fn warm_hit(redis: &Redis) {
    let stand_in = StandIn::start().await.unwrap();
    let cache = RedisCache::new(&redis.url(), PEPPER)
        .unwrap()
        .prefix("bench-warm:");
    let (_, shared) = replica(&stand_in, Some(&cache), |b| b);
    let (_, alone) = replica(&stand_in, None, |b| b);
    let key = &keys(&stand_in, "warm", 1)[0];
    let rounds = 200_000;
    let mut best = [Duration::MAX; 2];
    for _ in 0..5 {
        for (n, router) in [&alone, &shared].into_iter().enumerate() {
            assert_eq!(status(router, key).await, 200);
            let started = Instant::now();
            for _ in 0..rounds {
                status(router, key).await;
            }
            best[n] = best[n].min(started.elapsed() / rounds);
        }
    }
    println!(
        "\n### Warm local hit, in one run (best of 5 x {rounds} requests)\n\nWithout a shared cache: {} ns; with one configured: {} ns ({:.2}x).",
        best[0].as_nanos(),
        best[1].as_nanos(),
        best[1].as_secs_f64() / best[0].as_secs_f64()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let redis = Redis::start();
        println!("## Fleet (`cargo bench --bench fleet --features redis`)");
        calls_per_ttl(&redis).await;
        println!("\n### Revocation propagation: `invalidate()` on replica 1 returning, to replicas 2-4 all refusing (ms)\n");
        println!("| run | trials | p50 | p99 | max |");
        println!("|---|---|---|---|---|");
        propagation(&redis, false).await;
        propagation(&redis, true).await;
        hit_costs(&redis).await;
        redis_down(&redis).await;
        warm_hit(&redis).await;
    });
}
