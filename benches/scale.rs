//! Scale figures, printed as a Markdown table (`cargo bench --bench scale`):
//!
//! - upstream calls for 10,000 requests over 100 keys at 64-way concurrency;
//! - bytes per cached session at 100,000 sessions (counting allocator), and peak RSS;
//! - peak RSS of a flood of 100,000 invalid keys;
//! - time to first byte of a cold miss against the stand-in's own latency;
//! - latency of a key in steady use across several TTLs, with and without
//!   refresh-ahead;
//! - rejected uploads draining: 200 and `MAX_DRAINING` connections sending a body
//!   as fast as they can for the whole `DRAIN_TIME`, against a valid request's
//!   latency meanwhile, the heap and the process's CPU time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use composio_auth::testing::{Reply, StandIn};
use composio_auth::ComposioAuthLayer;
use futures_util::{stream, StreamExt};
use tower::ServiceExt;

/// Counts the bytes live on the heap.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
static ALLOCATIONS: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

/// Resets the peak RSS (`VmHWM`) of this process.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A `/proc/self/status` field given in KiB (`VmHWM`, `VmRSS`), in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    kib / 1024.0
}

/// Peak resident memory, in MiB.
fn peak_rss_mib() -> f64 {
    status_mib("VmHWM")
}

fn app(layer: ComposioAuthLayer) -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer)
        .with_state(())
}

fn request(key: &str) -> Request<Body> {
    Request::get("/")
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap()
}

/// Sends one request per key, 64 at a time; returns how many got `expected`.
async fn drive(app: &Router, keys: impl Iterator<Item = String>, expected: StatusCode) -> usize {
    stream::iter(keys)
        .map(|key| {
            let app = app.clone();
            async move { app.oneshot(request(&key)).await.unwrap().status() == expected }
        })
        .buffer_unordered(64)
        .fold(0, |n, ok| async move { n + usize::from(ok) })
        .await
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

async fn calls_for_100_keys() {
    let stand_in = StandIn::start().await.unwrap();
    stand_in.set_default_reply(Some(Reply::Session(StandIn::example_document())));
    stand_in.set_latency(Duration::from_millis(5));
    let layer = ComposioAuthLayer::builder()
        .base_url(stand_in.base_url())
        .build()
        .unwrap();
    let app = app(layer);
    let ok = drive(
        &app,
        (0..10_000).map(|i| format!("ak_scale_{:04}", i % 100)),
        StatusCode::OK,
    )
    .await;
    assert_eq!(ok, 10_000);
    println!(
        "| upstream calls, 10,000 requests over 100 keys, 64-way | {} (target: exactly 100) |",
        stand_in.calls()
    );
}

/// Live heap bytes added by sending 100,000 valid keys through a layer that keeps
/// at most `capacity` sessions, and the peak RSS meanwhile.
async fn heap_after_100k_sessions(capacity: u64) -> (i64, f64, u64) {
    reset_peak_rss();
    let before = live();
    let stand_in = StandIn::start().await.unwrap();
    stand_in.set_default_reply(Some(Reply::Session(StandIn::example_document())));
    let layer = ComposioAuthLayer::builder()
        .base_url(stand_in.base_url())
        .max_capacity(capacity)
        .build()
        .unwrap();
    let app = app(layer.clone());
    let ok = drive(
        &app,
        (0..100_000).map(|i| format!("ak_session_{i:08}")),
        StatusCode::OK,
    )
    .await;
    assert_eq!(ok, 100_000);
    let cached = layer.cached().sessions;
    let grown = live() - before;
    let peak = peak_rss_mib();
    drop((app, layer, stand_in));
    (grown, peak, cached)
}

/// Resident memory now, in MiB.
fn rss_mib() -> f64 {
    status_mib("VmRSS")
}

async fn bytes_per_session() {
    let (full, _, cached) = heap_after_100k_sessions(200_000).await;
    let (control, _, control_cached) = heap_after_100k_sessions(1).await;
    let per_session = (full - control) as f64 / (cached - control_cached) as f64;
    println!(
        "| bytes per cached session (100,000 sessions, counting allocator, minus a run that caches none) | {per_session:.0} B (target: <= 2048) |"
    );
}

async fn sessions_rss(capacity: u64) {
    let idle = rss_mib();
    let (_, peak, cached) = heap_after_100k_sessions(capacity).await;
    println!(
        "| peak RSS, 100,000 valid keys, `max_capacity` {capacity} (stand-in in the same process) | {peak:.1} MiB (idle process: {idle:.1} MiB; {} sessions cached) |",
        cached
    );
}

async fn flood_rss() {
    let idle = rss_mib();
    reset_peak_rss();
    let stand_in = StandIn::start().await.unwrap();
    stand_in.add_session("ak_flood_valid_key", StandIn::example_document());
    let layer = ComposioAuthLayer::builder()
        .base_url(stand_in.base_url())
        .build()
        .unwrap();
    let app = app(layer.clone());
    assert_eq!(
        app.clone()
            .oneshot(request("ak_flood_valid_key"))
            .await
            .unwrap()
            .status(),
        200
    );
    let refused = drive(
        &app,
        (0..100_000).map(|i| format!("ak_flood_{i:08}")),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(refused, 100_000);
    assert_eq!(
        app.oneshot(request("ak_flood_valid_key"))
            .await
            .unwrap()
            .status(),
        200
    );
    let composio_auth::CachedVerdicts {
        sessions,
        rejections,
        ..
    } = layer.cached();
    println!(
        "| peak RSS, flood of 100,000 invalid keys after one valid key (default budgets) | {:.1} MiB (idle process: {idle:.1} MiB); after it {sessions} session and {rejections} rejections cached, the valid key still cached ({} upstream call for it) |",
        peak_rss_mib(),
        stand_in.calls_for("ak_flood_valid_key"),
    );
}

/// CPU time (user + system) of this process's threads named `name`, from
/// `/proc/self/task/*/stat`.
fn cpu_time_of(name: &str) -> Duration {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with(&format!("({name}")) {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime, the 14th and 15th fields, in clock ticks (100 a second).
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks += field(11) + field(12);
    }
    Duration::from_millis(ticks * 10)
}

/// `connections` rejected uploads (no key) that send garbage as fast as they can
/// until the layer gives up on them (`DRAIN_TIME`), while a valid key is asked for
/// every 10 ms on another connection.
async fn draining(connections: usize) {
    use tokio::io::AsyncWriteExt;
    let stand_in = StandIn::start().await.unwrap();
    stand_in.add_session("ak_drain_valid_key", StandIn::example_document());
    let layer = ComposioAuthLayer::builder()
        .base_url(stand_in.base_url())
        .build()
        .unwrap();
    // The server on one thread of its own, so its CPU time is its own.
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("drain-server")
        .enable_all()
        .build()
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    server.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        axum::serve(listener, app(layer)).await
    });
    let client = reqwest::Client::new();
    let valid = || {
        client
            .get(format!("http://{addr}/"))
            .header("x-api-key", "ak_drain_valid_key")
            .send()
    };
    assert_eq!(valid().await.unwrap().status(), 200);
    let heap_before = live();
    let cpu_before = cpu_time_of("drain-server");
    let started = Instant::now();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let uploads: Vec<_> = (0..connections)
        .map(|_| {
            let sent = std::sync::Arc::clone(&sent);
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let head = "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1099511627776\r\n\r\n";
                stream.write_all(head.as_bytes()).await.unwrap();
                // One buffer for every client, so the heap counts the server's side.
                static GARBAGE: [u8; 64 * 1024] = [b'x'; 64 * 1024];
                while stream.write_all(&GARBAGE).await.is_ok() {
                    sent.fetch_add(GARBAGE.len() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut peak_heap = 0;
    while uploads.iter().any(|u| !u.is_finished()) {
        assert!(
            started.elapsed() < composio_auth::limits::DRAIN_TIME * 2,
            "uploads outlived the drain time"
        );
        let asked = Instant::now();
        assert_eq!(valid().await.unwrap().status(), 200);
        latencies.push(asked.elapsed());
        peak_heap = peak_heap.max(live() - heap_before);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    let cpu = cpu_time_of("drain-server") - cpu_before;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let gib = sent.load(Ordering::Relaxed) as f64 / f64::from(1 << 30);
    println!(
        "| {connections} rejected uploads draining at full speed until given up ({:.1} s) | {gib:.1} GiB discarded ({:.2} GiB/s); the server's one thread: {:.1} s of CPU ({:.2} s per GiB); heap {:.1} MiB above idle at most; a valid request meanwhile: p50 {:.2} ms, p99 {:.2} ms over {} requests |",
        took.as_secs_f64(),
        gib / took.as_secs_f64(),
        cpu.as_secs_f64(),
        cpu.as_secs_f64() / gib.max(f64::MIN_POSITIVE),
        peak_heap as f64 / f64::from(1 << 20),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        latencies.len(),
    );
    server.shutdown_background();
}

/// Heap allocations per request through `app`, averaged over `n` requests.
async fn allocations_per_request(app: &Router, key: &str, n: i64) -> f64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..n {
        let status = app.clone().oneshot(request(key)).await.unwrap().status();
        assert_eq!(status, 200);
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

async fn allocations() {
    let stand_in = StandIn::start().await.unwrap();
    stand_in.add_session("ak_alloc_key", StandIn::example_document());
    let layer = ComposioAuthLayer::builder()
        .base_url(stand_in.base_url())
        .build()
        .unwrap();
    let protected = app(layer);
    let bare = Router::new()
        .route("/", get(|| async { "ok" }))
        .with_state(());
    // A pass-through layer: what axum's layering allocates by itself.
    let identity = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(tower::layer::util::Identity::new())
        .with_state(());
    allocations_per_request(&protected, "ak_alloc_key", 10).await; // warm
    let bare = allocations_per_request(&bare, "ak_alloc_key", 10_000).await;
    let identity = allocations_per_request(&identity, "ak_alloc_key", 10_000).await;
    let warm = allocations_per_request(&protected, "ak_alloc_key", 10_000).await;
    println!(
        "| heap allocations per request (request and response included): bare router / behind a pass-through layer / warm hit | {bare:.2} / {identity:.2} / {warm:.2} |"
    );
}

async fn cold_miss() {
    const N: usize = 2000;
    let stand_in = StandIn::start().await.unwrap();
    stand_in.add_session("ak_cold_key", StandIn::example_document());
    let url = format!(
        "{}{}",
        stand_in.base_url(),
        composio_auth::DEFAULT_SESSION_PATH
    );
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut direct = Vec::with_capacity(N);
    for _ in 0..N {
        let started = Instant::now();
        let answer = client
            .get(&url)
            .header("x-api-key", "ak_cold_key")
            .send()
            .await
            .unwrap();
        answer.bytes().await.unwrap();
        direct.push(started.elapsed());
    }
    let layer = ComposioAuthLayer::builder()
        .base_url(stand_in.base_url())
        .build()
        .unwrap();
    let app = app(layer.clone());
    let (mut cold, mut warm) = (Vec::with_capacity(N), Vec::with_capacity(N));
    let timed = || async {
        let started = Instant::now();
        let status = app
            .clone()
            .oneshot(request("ak_cold_key"))
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
        started.elapsed()
    };
    for _ in 0..N {
        layer.invalidate("ak_cold_key").await.unwrap();
        cold.push(timed().await);
        warm.push(timed().await);
    }
    for v in [&mut direct, &mut cold, &mut warm] {
        v.sort();
    }
    println!(
        "| time to first byte, p50 (p99): the stand-in alone / cold miss through the layer / warm hit | {} ({}) / {} ({}) / {} ({}) |",
        micros(percentile(&direct, 0.5)),
        micros(percentile(&direct, 0.99)),
        micros(percentile(&cold, 0.5)),
        micros(percentile(&cold, 0.99)),
        micros(percentile(&warm, 0.5)),
        micros(percentile(&warm, 0.99)),
    );
}

async fn steady_use(refresh_ahead: bool) {
    let ttl = Duration::from_millis(500);
    let stand_in = StandIn::start().await.unwrap();
    stand_in.add_session("ak_steady_key", StandIn::example_document());
    // A far upstream: what a miss costs is plain to see.
    stand_in.set_latency(Duration::from_millis(50));
    let layer = ComposioAuthLayer::builder()
        .base_url(stand_in.base_url())
        .ttl(ttl)
        .refresh_ahead(refresh_ahead)
        .build()
        .unwrap();
    let app = app(layer);
    let mut latencies = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let until = Instant::now() + ttl * 6;
    while Instant::now() < until {
        tick.tick().await;
        let started = Instant::now();
        assert_eq!(
            app.clone()
                .oneshot(request("ak_steady_key"))
                .await
                .unwrap()
                .status(),
            200
        );
        latencies.push(started.elapsed());
    }
    // The first request is a cold miss either way.
    let mut steady = latencies[1..].to_vec();
    steady.sort();
    println!(
        "| steady key over 6 TTLs (1 req/ms, upstream 50 ms), refresh-ahead {}: p50 / p99 / max | {} / {} / {} ({} requests, {} upstream calls) |",
        if refresh_ahead { "on" } else { "off" },
        micros(percentile(&steady, 0.5)),
        micros(percentile(&steady, 0.99)),
        micros(*steady.last().unwrap()),
        steady.len(),
        stand_in.calls(),
    );
}

const SCENARIOS: [&str; 9] = [
    "calls",
    "allocations",
    "bytes",
    "sessions-rss",
    "sessions-rss-default",
    "flood-rss",
    "cold-miss",
    "steady",
    "draining",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test` runs benches without `--bench`: measure only under `cargo bench`.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let Some(scenario) = args
        .iter()
        .position(|a| a == "--scenario")
        .and_then(|i| args.get(i + 1))
    else {
        // Each scenario in a fresh process, so that one's heap does not inflate the
        // next one's resident memory.
        println!("| figure | value |\n|---|---|");
        let exe = std::env::current_exe().unwrap();
        for scenario in SCENARIOS {
            let status = std::process::Command::new(&exe)
                .args(["--bench", "--scenario", scenario])
                .status()
                .unwrap();
            assert!(status.success(), "scenario {scenario} failed");
        }
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        match scenario.as_str() {
            "calls" => calls_for_100_keys().await,
            "allocations" => allocations().await,
            "bytes" => bytes_per_session().await,
            "sessions-rss" => sessions_rss(200_000).await,
            "sessions-rss-default" => sessions_rss(10_000).await,
            "flood-rss" => flood_rss().await,
            "cold-miss" => cold_miss().await,
            "steady" => {
                steady_use(true).await;
                steady_use(false).await;
            }
            "draining" => {
                draining(200).await;
                draining(composio_auth::limits::MAX_DRAINING).await;
            }
            other => panic!("unknown scenario {other}"),
        }
    });
}
