//! Probes and shutdown: `/readyz` beside `/healthz`, the `health` subcommand a
//! container's HEALTHCHECK runs, and the drain on SIGTERM and SIGINT within
//! `--shutdown-grace`, on the plain binary (a child process whose exit status
//! each test reads).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{client, composio, request, Server, SocketDir, ADMIN, MEMBER};

const BIN: &str = env!("CARGO_BIN_EXE_composio-auth-server");

/// The binary, with none of the server's variables inherited from the tests' (as
/// `Server` starts it).
fn command() -> Command {
    let mut command = Command::new(BIN);
    for name in [
        "COMPOSIO_BASE_URL",
        "COMPOSIO_WEBHOOK_SECRET",
        "COMPOSIO_AUTH_LISTEN",
        "COMPOSIO_AUTH_SHUTDOWN_GRACE",
    ] {
        command.env_remove(name);
    }
    command
}

/// `composio-auth-server health` with `args` and `env`: its exit code and its
/// one line (stdout and stderr together).
fn health(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = command()
        .arg("health")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run composio-auth-server health");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    (output.status.code(), text)
}

async fn get(url: &str) -> (u16, String) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_200_while_serving_and_health_asks_it() {
    let composio = composio().await;
    let mut server = Server::start_with_env(&composio.base_url(), &[], &[]);
    assert_eq!(get(&server.url("/readyz")).await, (200, "ok".to_owned()));
    assert_eq!(get(&server.url("/healthz")).await, (200, "ok".to_owned()));
    let listen = server.addr.to_string();
    let (code, line) = health(&["--listen", &listen], &[]);
    assert_eq!(code, Some(0), "{line}");
    assert!(line.starts_with("ready: "), "{line}");
    // The image's `ENV COMPOSIO_AUTH_LISTEN=0.0.0.0:8080`: asked on loopback.
    let everywhere = format!("0.0.0.0:{}", server.addr.port());
    let (code, line) = health(&[], &[("COMPOSIO_AUTH_LISTEN", &everywhere)]);
    assert_eq!(code, Some(0), "{line}");
    assert!(line.contains(&format!("127.0.0.1:{}", server.addr.port())));

    // The plain binary, nothing in flight: SIGTERM stops it at once (the
    // default grace is 20s), exit 0.
    let started = Instant::now();
    server.signal("TERM");
    assert!(server.exit_within(Duration::from_secs(5)).await.success());
    assert!(started.elapsed() < Duration::from_secs(3));
    let (code, line) = health(&["--listen", &listen], &[]);
    assert_eq!(code, Some(1), "{line}");
    assert!(line.starts_with("not ready: "), "{line}");

    // SIGINT (Ctrl-C) likewise.
    let mut server = Server::start_with_env(&composio.base_url(), &[], &[]);
    server.signal("INT");
    assert!(server.exit_within(Duration::from_secs(3)).await.success());
}

#[test]
fn health_and_the_grace_refuse_bad_configuration() {
    let (code, stderr) = support::run_to_exit(&["--shutdown-grace", "soon"]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--shutdown-grace"), "{stderr}");
    // Nothing listens on port 1: not ready, exit 1 within the 2 s budget.
    let started = Instant::now();
    let (code, line) = health(&["--listen", "127.0.0.1:1"], &[]);
    assert_eq!(code, Some(1), "{line}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// SIGTERM with a verification in flight on each listener (held at the
/// stand-in): `/readyz` turns 503 while `/healthz` stays 200, the listener still
/// answers, each request is answered once Composio answers, then exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_verifications_in_flight_answers_them_then_exits_0() {
    let composio = composio().await;
    let args = ["--shutdown-grace", "10s", "--grpc-listen", "127.0.0.1:0"];
    let mut server = Server::start_with_env(&composio.base_url(), &args, &[]);
    composio.hold();
    let verify = client()
        .get(server.url("/verify"))
        .header("x-api-key", ADMIN)
        .send();
    let verify = tokio::spawn(verify);
    let grpc = server.grpc.unwrap();
    let check =
        tokio::spawn(async move { support::check(grpc, &[("x-api-key", MEMBER)], &[]).await });
    support::eventually("both calls at Composio", || composio.calls() >= 2).await;

    server.signal("TERM");
    let draining = Instant::now() + Duration::from_secs(5);
    while get(&server.url("/readyz")).await != (503, "draining".to_owned()) {
        assert!(Instant::now() < draining, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(&server.url("/healthz")).await.0, 200);
    let (code, line) = health(&["--listen", &server.addr.to_string()], &[]);
    assert_eq!(code, Some(1), "{line}");
    assert!(line.ends_with("answered 503\n"), "{line}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!server.exited(), "exited with requests in flight");

    composio.release();
    let verify = verify.await.unwrap().unwrap();
    assert_eq!(verify.status(), 200);
    assert_eq!(
        verify.headers()["x-composio-member-email"],
        "alice@example.com"
    );
    let check = check.await.unwrap();
    assert_eq!(check.status.unwrap().code, 0, "gRPC OK");
    assert!(server.exit_within(Duration::from_secs(5)).await.success());
}

/// A grace shorter than the hold: the request still in flight at its end is
/// answered 503 (the envelope, `Retry-After`), and the server exits 0 within
/// the grace and a small margin. The grace from its variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_grace_a_request_in_flight_gets_503_and_the_exit_is_0() {
    let composio = composio().await;
    let grace = [("COMPOSIO_AUTH_SHUTDOWN_GRACE", "1s")];
    let mut server = Server::start_with_env(&composio.base_url(), &[], &grace);
    composio.hold();
    let verify = client()
        .get(server.url("/verify"))
        .header("x-api-key", ADMIN)
        .send();
    let verify = tokio::spawn(verify);
    support::eventually("the call at Composio", || composio.calls() >= 1).await;

    let signalled = Instant::now();
    server.signal("TERM");
    let verify = verify.await.unwrap().unwrap();
    let answered = signalled.elapsed();
    assert_eq!(verify.status(), 503);
    assert_eq!(verify.headers()["retry-after"], "1");
    let envelope: Value = verify.json().await.unwrap();
    assert_eq!(envelope["error"]["code"], 10503, "{envelope}");
    assert!(server.exit_within(Duration::from_secs(5)).await.success());
    let exited = signalled.elapsed();
    assert!(answered >= Duration::from_millis(900), "{answered:?}");
    assert!(exited < Duration::from_secs(3), "{exited:?}");
    composio.release();
}

/// Readiness is not Redis's reachability: Redis stopped, `/readyz` is still 200
/// and a key never seen is still verified, by Composio.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_ignores_a_stopped_redis() {
    use support::redis::{RedisServer, PEPPER};
    let composio = composio().await;
    let mut redis = RedisServer::start();
    let dir = std::env::temp_dir().join(format!("composio-auth-probes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pepper = dir.join("pepper");
    std::fs::write(&pepper, PEPPER).unwrap();
    let (url, pepper) = (redis.url(), pepper.display().to_string());
    let args = ["--redis-url", &url, "--redis-pepper-file", &pepper];
    let server = Server::start_with_env(&composio.base_url(), &args, &[]);
    let verify = |key: &'static str| {
        client()
            .get(server.url("/verify"))
            .header("x-api-key", key)
            .send()
    };
    assert_eq!(verify(ADMIN).await.unwrap().status(), 200);

    redis.kill();
    assert_eq!(get(&server.url("/readyz")).await, (200, "ok".to_owned()));
    assert_eq!(verify(MEMBER).await.unwrap().status(), 200);
    assert_eq!(composio.calls_for(MEMBER), 1);
    assert_eq!(verify(ADMIN).await.unwrap().status(), 200);
    let (code, line) = health(&["--listen", &server.addr.to_string()], &[]);
    assert_eq!(code, Some(0), "{line}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Over a unix socket: `health --listen unix:/path` asks `/readyz` through it
/// (exit 1 while nothing listens), and SIGTERM with a verification in flight
/// drains as over TCP: `/readyz` 503, the request answered, exit 0, and the
/// socket gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_unix_socket_health_asks_readyz_and_the_drain_is_the_same() {
    let composio = composio().await;
    let dir = SocketDir::new();
    let listen = dir.unix("auth.sock");
    let (code, line) = health(&["--listen", &listen], &[]);
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.starts_with(&format!("not ready: /readyz on {listen}: ")),
        "{line}"
    );

    let args = ["--shutdown-grace", "10s"];
    let mut server = Server::start_unix(&composio.base_url(), &dir.join("auth.sock"), &args);
    let (code, line) = health(&["--listen", &listen], &[]);
    assert_eq!(code, Some(0), "{line}");
    assert_eq!(line, format!("ready: /readyz on {listen} answered 200\n"));
    let (code, line) = health(&[], &[("COMPOSIO_AUTH_LISTEN", &listen)]);
    assert_eq!(code, Some(0), "{line}");

    composio.hold();
    let socket = server.addr.clone();
    let verify = tokio::spawn(async move {
        request(&socket, "GET", "/verify", &[("x-api-key", ADMIN)], "").await
    });
    support::eventually("the call at Composio", || composio.calls() >= 1).await;
    server.signal("TERM");
    let draining = Instant::now() + Duration::from_secs(5);
    loop {
        let readyz = server.get("/readyz", &[]).await;
        if (readyz.status, readyz.body.as_str()) == (503, "draining") {
            break;
        }
        assert!(Instant::now() < draining, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (code, line) = health(&["--listen", &listen], &[]);
    assert_eq!(code, Some(1), "{line}");
    assert!(line.ends_with("answered 503\n"), "{line}");
    assert!(!server.exited(), "exited with a request in flight");

    composio.release();
    let verify = verify.await.unwrap();
    assert_eq!(verify.status, 200);
    assert_eq!(
        verify.headers["x-composio-member-email"],
        "alice@example.com"
    );
    assert!(tokio::task::block_in_place(|| server.wait()).success());
    assert!(!server.addr.exists(), "the socket outlived the server");
    let (code, line) = health(&["--listen", &listen], &[]);
    assert_eq!(code, Some(1), "{line}");
}
