//! Envoy's gRPC `Check` against the real server, warm: `TASKS` concurrent
//! clients (one HTTP/2 connection each) for `SECS` seconds; prints the rate and
//! the p50 / p99 latency. (ghz is not installable here: this is its stand-in.)
//!
//! ```text
//! cargo bench -p composio-auth-server --bench grpc_check
//! TASKS=32 SECS=10 cargo bench -p composio-auth-server --bench grpc_check
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

/// One of `--demo`'s keys.
const KEY: &str = "ak_demo_alice_0123456789";

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn request() -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".to_owned(),
                    path: "/orders".to_owned(),
                    headers: [("x-api-key".to_owned(), KEY.to_owned())].into(),
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

#[tokio::main]
async fn main() {
    let (tasks, secs) = (setting("TASKS", 16), setting("SECS", 5));
    let mut server = Command::new(env!("CARGO_BIN_EXE_composio-auth-server"))
        .args([
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let addr = lines
        .map_while(Result::ok)
        .find_map(|line| {
            line.strip_prefix("composio-auth-server grpc on ")
                .map(str::to_owned)
        })
        .expect("the server's gRPC address");
    let url = format!("http://{addr}");

    // Warm: the key verified once.
    let mut warm = AuthorizationClient::connect(url.clone()).await.unwrap();
    let answer = warm.check(request()).await.unwrap().into_inner();
    assert_eq!(answer.status.unwrap().code, 0);

    let until = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut client = AuthorizationClient::connect(url).await.unwrap();
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let started = Instant::now();
                    let answer = client.check(request()).await.unwrap().into_inner();
                    latencies.push(started.elapsed());
                    assert_eq!(answer.status.unwrap().code, 0);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "gRPC Check, warm, {tasks} clients for {secs} s: {:.0} checks/s, p50 {} µs, p99 {} µs",
        latencies.len() as f64 / secs as f64,
        at(0.50).as_micros(),
        at(0.99).as_micros()
    );
    let _ = server.kill();
    let _ = server.wait();
}
