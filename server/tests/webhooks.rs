//! `--webhook-forward`: Composio's deliveries, signed as Composio signs them,
//! verified and deduplicated by the real server and forwarded to an app (a tiny
//! axum server here) that counts its calls, can be held and can answer 500;
//! directly, and through the nginx and Caddy recipes as they are shipped.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use composio_auth::testing::sign_delivery;
use serde_json::Value;
use support::proxy::{free_port, Proxy};
use support::{client, run_to_exit, Server};

/// The secret of WEBHOOKS.md's fixtures.
const SECRET: &str = "test-webhook-secret-for-fixtures";
/// A second secret the relay accepts (rotation).
const OLD_SECRET: &str = "whsec_an-older-secret-still-accepted";

/// The fixture bodies of WEBHOOKS.md, byte for byte.
const V3: &str = r#"{"id":"evt_fixture_v3_001","timestamp":"2026-01-29T10:30:00Z","type":"composio.trigger.message","metadata":{"log_id":"log_fixture_001","trigger_slug":"GITHUB_PUSH_EVENT","trigger_id":"ti_fixture_001","connected_account_id":"ca_fixture_001","auth_config_id":"ac_fixture_001","user_id":"user_fixture_001"},"data":{"ref":"refs/heads/main","repository":{"name":"test-repo","full_name":"user/test-repo"},"pusher":{"name":"test-user"},"commits":[{"id":"abc123","message":"Test commit"}]}}"#;
const V2: &str = r#"{"type":"github_push_event","timestamp":"2026-01-29T10:30:00Z","log_id":"log_fixture_002","data":{"connection_id":"conn_uuid_fixture_002","connection_nano_id":"ca_fixture_002","trigger_nano_id":"ti_fixture_002","trigger_id":"trigger_uuid_fixture_002","user_id":"user_fixture_002","ref":"refs/heads/main","repository":{"name":"test-repo"}}}"#;
const V1: &str = r#"{"trigger_name":"GITHUB_PUSH_EVENT","connection_id":"conn_fixture_001","trigger_id":"trigger_fixture_001","payload":{"ref":"refs/heads/main","commits":[{"id":"def456","message":"Legacy commit"}]},"log_id":"log_fixture_003"}"#;

/// The relay's body limit: the library's default.
const LIMIT: usize = composio_auth::DEFAULT_MAX_BODY_BYTES;

/// Composio for the key verification: nobody (the webhook path never asks it).
const NOWHERE: &str = "http://127.0.0.1:9";

/// The app behind the relay: counts its calls, keeps what it received, answers
/// `status` (202 unless told otherwise) with a header and a body of its own, and
/// waits while held.
struct App {
    calls: AtomicUsize,
    status: AtomicU16,
    held: tokio::sync::watch::Sender<bool>,
    seen: Mutex<Vec<(HeaderMap, Bytes)>>,
}

impl App {
    /// The app, listening on `port` at `/hook`.
    async fn start(port: u16) -> Arc<Self> {
        let app = Arc::new(Self {
            calls: AtomicUsize::new(0),
            status: AtomicU16::new(202),
            held: tokio::sync::watch::channel(false).0,
            seen: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let router = Router::new()
            .route("/hook", any(hook))
            .with_state(Arc::clone(&app));
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        app
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn answer_with(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }

    /// What the app received last.
    fn last(&self) -> (HeaderMap, Bytes) {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

async fn hook(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    app.calls.fetch_add(1, Ordering::SeqCst);
    let id = headers["webhook-id"].to_str().unwrap().to_owned();
    app.seen.lock().unwrap().push((headers, body));
    let mut held = app.held.subscribe();
    let _ = held.wait_for(|held| !held).await;
    let status = StatusCode::from_u16(app.status.load(Ordering::SeqCst)).unwrap();
    let headers = [("x-app", "answered"), ("content-type", "text/plain")];
    (status, headers, format!("app saw {id}")).into_response()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A delivery's headers as Composio sends them, and one of the sender's own.
fn signed(secret: &str, id: &str, body: &[u8], timestamp: u64) -> HeaderMap {
    let mut headers = sign_delivery(secret, id, body, timestamp);
    headers.insert("x-composio-webhook-version", HeaderValue::from_static("V3"));
    headers.insert("x-composio-delivery-attempt", HeaderValue::from_static("1"));
    headers.insert(
        "x-trace",
        HeaderValue::from_str(&format!("t-{id}")).unwrap(),
    );
    headers
}

async fn deliver(url: &str, headers: HeaderMap, body: impl Into<Vec<u8>>) -> reqwest::Response {
    client()
        .post(url)
        .headers(headers)
        .body(body.into())
        .send()
        .await
        .expect("an answer")
}

/// A delivery of `body` with `id`, signed now with SECRET.
async fn fresh(url: &str, id: &str, body: &str) -> reqwest::Response {
    deliver(url, signed(SECRET, id, body.as_bytes(), now()), body).await
}

/// The status and the `{"error": {...}}` of a refusal.
async fn refusal(answer: reqwest::Response) -> (u16, i64, String) {
    let status = answer.status().as_u16();
    let content_type = answer.headers().get("content-type").cloned();
    assert_eq!(
        content_type.as_ref().and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{status}"
    );
    let envelope: Value = answer.json().await.unwrap();
    let error = &envelope["error"];
    assert_eq!(error["status"], status, "{envelope}");
    let code = error["code"].as_i64().unwrap();
    (status, code, error["slug"].as_str().unwrap().to_owned())
}

/// The secret files of a relay: SECRET with a trailing newline, OLD_SECRET.
struct SecretFiles {
    dir: PathBuf,
}

impl SecretFiles {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "composio-auth-webhooks-{what}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret"), format!("{SECRET}\n")).unwrap();
        std::fs::write(dir.join("old"), OLD_SECRET).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for SecretFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A relay forwarding to `http://127.0.0.1:{app_port}/hook`, the app given 1 s.
fn relay(app_port: u16, files: &SecretFiles, more: &[&str]) -> Server {
    let forward = format!("http://127.0.0.1:{app_port}/hook");
    let (secret, old) = (files.path("secret"), files.path("old"));
    let mut args = vec![
        "--webhook-forward",
        &forward,
        "--webhook-secret-file",
        &secret,
        "--webhook-secret-file",
        &old,
        "--webhook-timeout",
        "1s",
    ];
    args.extend_from_slice(more);
    Server::start(NOWHERE, &args)
}

/// Every case through `url`, the webhook path of a relay (or of a proxy in front
/// of one) forwarding to `app_port`, where nothing listens yet.
async fn every_case(url: &str, app_port: u16) {
    let app = down_then_up(url, app_port).await;
    each_version_both_ways(url, &app, app_port).await;
    refusals_never_reach_the_app(url, &app).await;
    a_failed_delivery_is_retried(url, &app).await;
    a_slow_app_is_504_and_retried(url, &app).await;
}

/// The app down: 502, not acknowledged; the retry reaches it once it is up.
async fn down_then_up(url: &str, app_port: u16) -> Arc<App> {
    let (status, code, slug) = refusal(fresh(url, "msg_down", V3).await).await;
    assert_eq!(
        (status, code, slug.as_str()),
        (502, 10502, "Webhook_AppUnreachable")
    );
    let app = App::start(app_port).await;
    let answer = fresh(url, "msg_down", V3).await;
    assert_eq!(answer.status(), 202);
    assert_eq!(app.calls(), 1);
    app
}

/// V3, V2 and V1 reach the app with the same body bytes and headers (not the
/// relay's `host`), either secret; the app's status, headers and body come back;
/// a copy of an acknowledged delivery is a 200 that never reaches it.
async fn each_version_both_ways(url: &str, app: &App, app_port: u16) {
    let cases = [
        ("msg_fixture_v3_001", V3, SECRET),
        ("msg_fixture_v2_001", V2, OLD_SECRET),
        ("msg_fixture_v1_001", V1, SECRET),
    ];
    for (n, (id, body, secret)) in cases.into_iter().enumerate() {
        let sent = signed(secret, id, body.as_bytes(), now());
        let answer = deliver(url, sent.clone(), body).await;
        assert_eq!(answer.status(), 202, "{id}");
        assert_eq!(answer.headers()["x-app"], "answered");
        assert_eq!(answer.headers()["content-type"], "text/plain");
        assert_eq!(answer.text().await.unwrap(), format!("app saw {id}"));
        assert_eq!(app.calls(), 2 + n);
        let (seen, seen_body) = app.last();
        assert_eq!(seen_body, body.as_bytes());
        for (name, value) in &sent {
            assert_eq!(seen.get(name), Some(value), "{name}");
        }
        assert_eq!(seen["host"], format!("127.0.0.1:{app_port}"));
        assert_eq!(seen["content-length"], body.len().to_string());
    }
    let copy = fresh(url, "msg_fixture_v3_001", V3).await;
    assert_eq!(copy.status(), 200);
    assert_eq!(copy.text().await.unwrap(), "");
    assert_eq!(app.calls(), 4, "a copy never reaches the app");
}

/// Bad signature, stale timestamp, GET, no headers, not an event, over the
/// limit: the layer's answers, and the app is never called.
async fn refusals_never_reach_the_app(url: &str, app: &App) {
    let before = app.calls();
    let forged = signed("another-secret", "msg_forged", V3.as_bytes(), now());
    let stale = signed(SECRET, "msg_stale", V3.as_bytes(), now() - 3600);
    let not_an_event = r#"{"hello":"world"}"#;
    let too_large = vec![b' '; LIMIT + 1];
    let cases = [
        (deliver(url, forged, V3).await, 401, 10423),
        (deliver(url, stale, V3).await, 401, 10422),
        (deliver(url, HeaderMap::new(), V3).await, 401, 10421),
        (
            fresh(url, "msg_not_an_event", not_an_event).await,
            400,
            10424,
        ),
        (
            deliver(
                url,
                signed(SECRET, "msg_big", &too_large, now()),
                too_large.clone(),
            )
            .await,
            413,
            10413,
        ),
    ];
    for (answer, status, code) in cases {
        let (s, c, _) = refusal(answer).await;
        assert_eq!((s, c), (status, code));
    }
    let get = client()
        .get(url)
        .headers(signed(SECRET, "msg_get", b"", now()))
        .send()
        .await
        .unwrap();
    assert_eq!(get.headers()["allow"], "POST");
    assert_eq!(refusal(get).await.0, 405);
    assert_eq!(app.calls(), before, "no refused delivery reaches the app");
}

/// The app answered 500: passed back, not acknowledged; the retry reaches it.
async fn a_failed_delivery_is_retried(url: &str, app: &App) {
    let before = app.calls();
    app.answer_with(500);
    let failed = fresh(url, "msg_500", V2).await;
    assert_eq!(failed.status(), 500);
    assert_eq!(failed.headers()["x-app"], "answered");
    assert_eq!(failed.text().await.unwrap(), "app saw msg_500");
    app.answer_with(202);
    assert_eq!(fresh(url, "msg_500", V2).await.status(), 202);
    assert_eq!(fresh(url, "msg_500", V2).await.status(), 200);
    assert_eq!(app.calls(), before + 2);
}

/// The app held past `--webhook-timeout`: 504, not acknowledged; the retry
/// reaches it once it answers again.
async fn a_slow_app_is_504_and_retried(url: &str, app: &App) {
    let before = app.calls();
    app.hold(true);
    let started = std::time::Instant::now();
    let (status, code, slug) = refusal(fresh(url, "msg_slow", V1).await).await;
    assert_eq!(
        (status, code, slug.as_str()),
        (504, 10504, "Webhook_AppTimeout")
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    app.hold(false);
    assert_eq!(fresh(url, "msg_slow", V1).await.status(), 202);
    assert_eq!(app.calls(), before + 2);
}

fn app_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_reach_the_app_once_and_its_answer_comes_back() {
    let files = SecretFiles::new("direct");
    let port = free_port();
    let relay = relay(port, &files, &[]);
    every_case(&relay.url("/composio/webhook"), port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_with_the_recipe() {
    let files = SecretFiles::new("nginx");
    let port = free_port();
    let relay = relay(port, &files, &[]);
    let nginx = Proxy::nginx(relay.addr, app_addr(port));
    every_case(&nginx.url("/composio/webhook"), port).await;
    // The webhook location asks for no API key; every other one still does
    // (Composio unreachable here: 503).
    let orders = client()
        .get(nginx.url("/orders"))
        .header("x-api-key", support::ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(orders.status(), 503, "{}", nginx.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_caddy_with_the_recipe() {
    let files = SecretFiles::new("caddy");
    let port = free_port();
    let relay = relay(port, &files, &[]);
    let caddy = Proxy::caddy(relay.addr, app_addr(port));
    every_case(&caddy.url("/composio/webhook"), port).await;
    let orders = client()
        .get(caddy.url("/orders"))
        .header("x-api-key", support::ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(orders.status(), 503, "{}", caddy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_setting_from_the_environment_and_the_secret_from_composios_variable() {
    let port = free_port();
    let forward = format!("http://127.0.0.1:{port}/hook");
    let relay = Server::start_with_env(
        NOWHERE,
        &[],
        &[
            ("COMPOSIO_AUTH_WEBHOOK_FORWARD", &forward),
            ("COMPOSIO_AUTH_WEBHOOK_PATH", "/hooks/composio"),
            ("COMPOSIO_AUTH_WEBHOOK_TIMEOUT", "2s"),
            ("COMPOSIO_WEBHOOK_SECRET", SECRET),
        ],
    );
    let app = App::start(port).await;
    let url = relay.url("/hooks/composio");
    assert_eq!(fresh(&url, "msg_env", V1).await.status(), 202);
    let elsewhere = fresh(&relay.url("/composio/webhook"), "msg_env2", V1).await;
    assert_eq!(elsewhere.status(), 404);
    assert_eq!(app.calls(), 1);
    let healthz = client().get(relay.url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
}

#[test]
fn bad_webhook_flags_are_one_line_and_exit_2_without_secrets() {
    let files = SecretFiles::new("flags");
    std::fs::write(files.path("empty"), "\n").unwrap();
    std::fs::write(
        files.path("pepper"),
        "a pepper of at least thirty-two bytes!",
    )
    .unwrap();
    let (secret, empty) = (files.path("secret"), files.path("empty"));
    let pepper = files.path("pepper");
    let app = "http://127.0.0.1:1/hook";
    let with_secret = |more: &[&'static str]| -> Vec<String> {
        let mut args = vec!["--webhook-forward", app, "--webhook-secret-file", &secret];
        args.extend_from_slice(more);
        args.into_iter().map(str::to_owned).collect()
    };
    let owned = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let cases: Vec<Vec<String>> = vec![
        owned(&["--webhook-forward", app]),
        owned(&[
            "--webhook-forward",
            app,
            "--webhook-secret-file",
            "/nonexistent/secret",
        ]),
        owned(&["--webhook-forward", app, "--webhook-secret-file", &empty]),
        owned(&[
            "--webhook-forward",
            "http://user:hunter2@[::1/hook",
            "--webhook-secret-file",
            &secret,
        ]),
        owned(&[
            "--webhook-forward",
            "ftp://127.0.0.1/hook",
            "--webhook-secret-file",
            &secret,
        ]),
        owned(&["--webhook-secret-file", &secret]),
        with_secret(&["--webhook-timeout", "soon"]),
        with_secret(&["--webhook-timeout", "0s"]),
        with_secret(&["--webhook-path", "/verify"]),
        with_secret(&["--webhook-path", "composio/webhook"]),
        // Past the claim's lease, another replica would forward it too.
        owned(&[
            "--webhook-forward",
            app,
            "--webhook-secret-file",
            &secret,
            "--webhook-timeout",
            "30s",
            "--redis-url",
            "redis://127.0.0.1:9",
            "--redis-pepper-file",
            &pepper,
        ]),
    ];
    for args in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = run_to_exit(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("composio-auth-server: "), "{stderr}");
        assert!(
            !stderr.contains("hunter2") && !stderr.contains(SECRET),
            "{stderr}"
        );
    }
}

#[test]
fn help_never_prints_a_webhook_secret_or_url_from_the_environment() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_composio-auth-server"))
        .arg("--help")
        .env("COMPOSIO_WEBHOOK_SECRET", "whsec_hunter2-webhook-secret")
        .env(
            "COMPOSIO_AUTH_WEBHOOK_FORWARD",
            "http://user:hunter3@app/hook",
        )
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--webhook-forward") && help.contains("COMPOSIO_WEBHOOK_SECRET"));
    assert!(
        !help.contains("hunter2") && !help.contains("hunter3"),
        "{help}"
    );
}

/// Two relays sharing a real `redis-server`: a delivery is forwarded once across
/// them; one stopped (SIGTERM) with a delivery in flight finishes it, or
/// releases its claim, before it exits, so the other forwards the retry at once.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_forward_once_and_settle_at_shutdown() {
    use support::proxy::signal;
    use support::redis::{RedisServer, PEPPER};
    let redis = RedisServer::start();
    let files = SecretFiles::new("fleet");
    std::fs::write(files.path("pepper"), format!("{PEPPER}\n")).unwrap();
    let port = free_port();
    let app = App::start(port).await;
    let (redis_url, pepper) = (redis.url(), files.path("pepper"));
    let shared = ["--redis-url", &redis_url, "--redis-pepper-file", &pepper];
    let two = relay(port, &files, &shared);
    let url_two = two.url("/composio/webhook");
    for (id, app_answers_in_time) in [("msg_finished", true), ("msg_released", false)] {
        let mut one = relay(port, &files, &shared);
        let before = app.calls();
        app.hold(true);
        let url_one = one.url("/composio/webhook");
        let first = tokio::spawn(async move { fresh(&url_one, id, V2).await });
        support::eventually("the delivery at the app", || app.calls() > before).await;
        signal("TERM", &one.pid().to_string());
        if app_answers_in_time {
            tokio::time::sleep(Duration::from_millis(200)).await;
            app.hold(false);
        }
        let first = first.await.unwrap().status();
        support::eventually("the stopped relay's exit", || one.exited()).await;
        assert!(redis.keys("*:claim").is_empty(), "a claim left behind");
        app.hold(false);
        let started = std::time::Instant::now();
        let copy = fresh(&url_two, id, V2).await.status();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "held back by a lease"
        );
        if app_answers_in_time {
            // Finished before the exit, acknowledged: the copy is a duplicate.
            assert_eq!((first, copy), (StatusCode::ACCEPTED, StatusCode::OK));
            assert_eq!(app.calls(), before + 1);
        } else {
            // The app held past --webhook-timeout: 504, the claim released.
            assert_eq!(
                (first, copy),
                (StatusCode::GATEWAY_TIMEOUT, StatusCode::ACCEPTED)
            );
            assert_eq!(app.calls(), before + 2);
        }
    }
    // And a delivery acknowledged through one relay never reaches the app again.
    assert_eq!(fresh(&url_two, "msg_fleet", V3).await.status(), 202);
    let three = relay(port, &files, &shared);
    let copy = fresh(&three.url("/composio/webhook"), "msg_fleet", V3).await;
    assert_eq!(copy.status(), 200);
    assert_eq!(copy.text().await.unwrap(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_a_sender_adds_are_never_forwarded() {
    let files = SecretFiles::new("identity");
    let port = free_port();
    let relay = relay(port, &files, &[]);
    let app = App::start(port).await;
    let url = relay.url("/composio/webhook");
    let mut sent = signed(SECRET, "msg_identity", V1.as_bytes(), now());
    sent.insert(
        "x-composio-member-email",
        HeaderValue::from_static("forged@example.com"),
    );
    sent.insert(
        "x-composio-project-id",
        HeaderValue::from_static("proj_forged"),
    );
    assert_eq!(deliver(&url, sent, V1).await.status(), 202);
    let (seen, _) = app.last();
    assert!(!seen.contains_key("x-composio-member-email"));
    assert!(!seen.contains_key("x-composio-project-id"));
    assert_eq!(
        seen["x-composio-webhook-version"], "V3",
        "Composio's own kept"
    );
    assert_eq!(seen["x-composio-delivery-attempt"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_said_2xx_is_acknowledged_even_when_its_body_cannot_be_passed_back() {
    let files = SecretFiles::new("large-answer");
    let port = free_port();
    let relay = relay(port, &files, &[]);
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = Arc::clone(&calls);
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            (StatusCode::OK, vec![b'x'; 2 * 1024 * 1024])
        }
    };
    let listener = tokio::net::TcpListener::bind(app_addr(port)).await.unwrap();
    let router = Router::new().route("/hook", any(handler));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let url = relay.url("/composio/webhook");
    let answer = fresh(&url, "msg_large_answer", V2).await;
    assert_eq!(answer.status(), 200, "the app's status, not a 502");
    assert!(answer.bytes().await.unwrap().is_empty());
    // Acknowledged: Composio's retry is not handled again.
    assert_eq!(fresh(&url, "msg_large_answer", V2).await.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
