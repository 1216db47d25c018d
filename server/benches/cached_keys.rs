//! The server's memory with many cached keys: the real binary against the
//! stand-in (which accepts every key here), RSS before and after verifying
//! `KEYS` distinct keys, then each key asked again (hits: no new upstream call).
//!
//! ```text
//! cargo bench -p composio-auth-server --bench cached_keys            # 100,000 keys
//! KEYS=10000 cargo bench -p composio-auth-server --bench cached_keys
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use composio_auth::testing::{Reply, StandIn};

/// The process's resident set, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Asks `/verify` once for each of `keys`, 64 at a time; all must be admitted.
async fn verify_all(url: &str, keys: &[String]) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let keys = Arc::new(keys.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..64)
        .map(|_| {
            let (client, keys, next, url) =
                (client.clone(), keys.clone(), next.clone(), url.to_owned());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(key) = keys.get(n) else { break };
                    let answer = client
                        .get(&url)
                        .header("x-api-key", key)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(answer.status(), 200);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("KEYS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(100_000);
    let composio = StandIn::start().await.unwrap();
    composio.set_default_reply(Some(Reply::Session(StandIn::example_document())));
    let capacity = (count + count / 10).to_string();
    let mut server = Command::new(env!("CARGO_BIN_EXE_composio-auth-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--base-url",
            &composio.base_url(),
        ])
        .args(["--max-capacity", &capacity, "--ttl", "10m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    let addr = line.rsplit("http://").next().unwrap().to_owned();
    let url = format!("http://{addr}/verify");
    let pid = server.id();

    let keys: Vec<String> = (0..count).map(|n| format!("ak_bench_{n:020}")).collect();
    verify_all(&url, &keys[..1]).await;
    let before = rss_kib(pid);
    let started = Instant::now();
    verify_all(&url, &keys).await;
    let filled = started.elapsed();
    let after = rss_kib(pid);
    let calls = composio.calls();
    let started = Instant::now();
    verify_all(&url, &keys).await;
    let hits = started.elapsed();
    assert_eq!(composio.calls(), calls, "the second pass was all hits");
    println!(
        "{count} keys: RSS {before} KiB -> {after} KiB (+{} KiB, {:.2} KiB per key); \
         {calls} upstream calls; first pass {:.1} s, second pass (hits) {:.1} s",
        after - before,
        (after - before) as f64 / count as f64,
        filled.as_secs_f64(),
        hits.as_secs_f64()
    );
    let _ = server.kill();
    let _ = server.wait();
}
