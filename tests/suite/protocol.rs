//! The protocol edges, over real TCP, with clients that are not this crate's: every
//! client must read the layer's own answer (not a broken pipe, not a protocol
//! error), whatever it sends and however it reads.
//!
//! Python clients (`tests/clients/`) run where `python3` (and, for gRPC, `grpcio`)
//! is installed; `.ci/run` installs them. Outside CI a missing one skips that check
//! with a note; in CI (`CI` set) it fails.

use crate::common;

use std::net::SocketAddr;
use std::process::Command;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use common::{builder, composio, serve, Client, ALICE};
use composio_auth::limits::{DRAIN_IDLE_TIME, DRAIN_TIME};
use composio_auth::testing::Reply;
use composio_auth::{ComposioAuthLayer, CredentialHeader, SessionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An app with a GET and a POST route behind `layer`.
fn app(layer: ComposioAuthLayer) -> Router {
    Router::new()
        .route(
            "/me",
            get(|s: SessionInfo| async move { s.org_member.email.clone() }),
        )
        .route(
            "/upload",
            post(|s: SessionInfo| async move { s.org_member.email.clone() }),
        )
        .layer(layer)
}

/// Runs a Python client from `tests/clients/`; `None` when it cannot run here (and
/// this is not CI).
fn python(script: &str, args: &[String], module: &str) -> Option<String> {
    let available = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with {module} is required in CI (.ci/run installs it)"
        );
        eprintln!("skipped: python3 with {module} is not installed here");
        return None;
    }
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_writes_its_whole_body_first_reads_the_rejection_whatever_its_size() {
    let composio = composio().await;
    let addr = serve(app(builder(&composio).build().unwrap())).await;
    // Python writes it all, then reads; ten times each, each on a new connection.
    for mib in [4, 16, 64] {
        let args = [
            "127.0.0.1".to_owned(),
            addr.port().to_string(),
            "/upload".to_owned(),
            (mib * 1024 * 1024).to_string(),
            "10".to_owned(),
        ];
        let Some(out) =
            tokio::task::spawn_blocking(move || python("post_body.py", &args, "http.client"))
                .await
                .unwrap()
        else {
            return;
        };
        assert_eq!(out, "401 -\n".repeat(10), "{mib} MiB: {out}");
    }
    assert_eq!(composio.calls(), 0);
}

/// A raw HTTP/1.1 request: `headers`, then `body_sent` bytes of a declared
/// `declared`-byte body, written while the answer is read.
async fn raw_post(addr: SocketAddr, headers: &str, declared: usize, body_sent: usize) -> String {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head =
        format!("POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {declared}\r\n{headers}\r\n");
    let writing = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < body_sent {
            let n = chunk.len().min(body_sent - sent);
            writer.write_all(&chunk[..n]).await?;
            sent += n;
        }
        Ok::<_, std::io::Error>(writer)
    });
    let mut answer = Vec::new();
    let mut buf = [0; 4096];
    // The head of the answer is enough.
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = common::within("the answer", reader.read(&mut buf))
            .await
            .unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    writing.abort();
    String::from_utf8_lossy(&answer).to_lowercase()
}

#[tokio::test]
async fn a_rejection_reads_a_body_to_its_end_and_keeps_the_connection() {
    let composio = composio().await;
    let addr = serve(app(builder(&composio).build().unwrap())).await;
    let answer = raw_post(addr, "", 24 * 1024 * 1024, 24 * 1024 * 1024).await;
    assert!(answer.starts_with("http/1.1 401"), "{answer}");
    assert!(!answer.contains("connection: close"), "{answer}");
}

#[tokio::test]
async fn a_body_that_stalls_is_cut_after_the_idle_time_with_connection_close() {
    let composio = composio().await;
    let addr = serve(app(builder(&composio).build().unwrap())).await;
    let started = std::time::Instant::now();
    let answer = raw_post(addr, "", 1024 * 1024, 1000).await;
    let waited = started.elapsed();
    assert!(answer.starts_with("http/1.1 401"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(waited >= DRAIN_IDLE_TIME, "{waited:?}");
    assert!(
        waited < DRAIN_TIME,
        "cut by the idle time, not the total: {waited:?}"
    );
}

#[tokio::test]
async fn a_client_waiting_for_100_continue_is_answered_at_once_and_told_the_connection_closes() {
    let composio = composio().await;
    let addr = serve(app(builder(&composio).build().unwrap())).await;
    let started = std::time::Instant::now();
    let answer = raw_post(addr, "expect: 100-continue\r\n", 1 << 30, 0).await;
    assert!(answer.starts_with("http/1.1 401"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(!answer.contains("100 continue"), "{answer}");
    assert!(started.elapsed() < DRAIN_IDLE_TIME, "answered at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_rejections_draining_at_once_leave_other_requests_answered() {
    let composio = composio().await;
    let addr = serve(app(builder(&composio).build().unwrap())).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut uploads = Vec::new();
    let mut started = Vec::new();
    for _ in 0..200 {
        let (ready, ready_rx) = tokio::sync::oneshot::channel();
        started.push(ready_rx);
        let mut stopped = stopped.clone();
        uploads.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut reader, mut writer) = stream.into_split();
            let head = "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1073741824\r\n\r\n";
            writer.write_all(head.as_bytes()).await.unwrap();
            writer.write_all(&[b'x'; 64 * 1024]).await.unwrap();
            let _ = ready.send(());
            // A byte every 200 ms keeps the drain from going idle, until told.
            while !*stopped.borrow() {
                writer.write_all(b"x").await.unwrap();
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(200), stopped.changed())
                        .await;
            }
            let mut early = [0u8; 1];
            let answered_early = reader.try_read(&mut early).is_ok_and(|n| n > 0);
            // The body ends short: the server gives the rest up and answers.
            writer.shutdown().await.unwrap();
            let mut answer = Vec::new();
            common::within(
                "a draining rejection's answer",
                reader.read_to_end(&mut answer),
            )
            .await
            .unwrap();
            (
                answered_early,
                String::from_utf8_lossy(&answer).to_lowercase(),
            )
        }));
    }
    for ready in started {
        common::within("an upload under way", ready).await.unwrap();
    }
    // Meanwhile, on another connection, a valid request is answered as usual.
    let client = Client::new(addr);
    let answer = common::within("the valid request", client.me(ALICE)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "alice@example.com");
    stop.send(true).unwrap();
    for upload in uploads {
        let (answered_early, answer) = upload.await.unwrap();
        assert!(!answered_early, "answered before its body ended");
        assert!(answer.starts_with("http/1.1 401"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
    }
}

#[tokio::test]
async fn the_challenge_names_the_headers_the_layer_accepts() {
    let composio = composio().await;
    let layer = builder(&composio)
        .credential_headers([CredentialHeader::UserApiKey])
        .build()
        .unwrap();
    let client = Client::new(serve(app(layer)).await);
    let refused = client.get("/me", &[]).await;
    assert_eq!(refused.status, 401);
    let challenge = refused.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        challenge,
        r#"ApiKey realm="composio", header="x-user-api-key""#
    );
    // A client that follows the challenge is let in.
    let header = challenge
        .split("header=\"")
        .nth(1)
        .unwrap()
        .trim_end_matches('"');
    assert_eq!(client.get("/me", &[(header, ALICE)]).await.status, 200);
}

#[tokio::test]
async fn only_a_bounded_well_formed_request_id_is_echoed() {
    let composio = composio().await;
    let client = Client::new(serve(app(builder(&composio).build().unwrap())).await);
    let echoed = client.get("/me", &[("x-request-id", "req-42")]).await;
    assert_eq!(
        echoed.envelope().error.request_id.as_deref(),
        Some("req-42")
    );
    let huge = "r".repeat(200_000);
    let answer = client.get("/me", &[("x-request-id", &huge)]).await;
    assert_eq!(answer.status, 401);
    let echoed = answer.envelope().error.request_id.map(|id| id.len());
    assert_eq!(echoed, None, "a 200 KB request id was echoed");
    assert!(answer.body.len() < 1024, "{} bytes", answer.body.len());
    let answer = client
        .get("/me", &[("x-request-id", "req with spaces")])
        .await;
    assert_eq!(answer.envelope().error.request_id, None);
    assert!(!answer.body.contains("null"), "{}", answer.body);
}

#[tokio::test]
async fn grpc_web_and_any_case_grpc_get_a_grpc_status_in_their_content_type() {
    let composio = composio().await;
    let client = Client::new(serve(app(builder(&composio).build().unwrap())).await);
    for (sent, answered) in [
        ("application/grpc-web+proto", "application/grpc-web+proto"),
        ("application/grpc-web-text", "application/grpc-web-text"),
        ("Application/gRPC", "application/grpc"),
        (
            "application/grpc+proto; charset=utf-8",
            "application/grpc+proto",
        ),
    ] {
        let answer = client.get("/me", &[("content-type", sent)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{sent}");
        assert_eq!(answer.headers["content-type"], answered, "{sent}");
        assert_eq!(answer.headers["grpc-status"], "16", "{sent}");
        assert!(answer.body.is_empty(), "{sent}");
    }
    // Not a gRPC media type: the JSON envelope.
    let answer = client
        .get("/me", &[("content-type", "application/grpcx")])
        .await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.headers["content-type"], "application/json");
}

/// Serves tonic's health service behind `layer` (accepting HTTP/2 only).
async fn serve_grpc(layer: ComposioAuthLayer) -> SocketAddr {
    let health = tonic_health::server::HealthService::from_health_reporter(
        tonic_health::server::HealthReporter::new(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .layer(layer)
        .add_service(tonic_health::pb::health_server::HealthServer::new(health));
    tokio::spawn(server.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_composio_message_still_reaches_grpc_clients_as_unauthenticated() {
    let composio = composio().await;
    // 12 KB of non-ASCII text: 36 KB once percent-encoded, if it were not bounded.
    let message = "é".repeat(6_000);
    composio.set_reply(
        ALICE,
        Reply::envelope(401, 801, "APIKey_InvalidAPIKey", &message),
    );
    let addr = serve_grpc(builder(&composio).build().unwrap()).await;

    // tonic.
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
    request
        .metadata_mut()
        .insert("x-api-key", ALICE.parse().unwrap());
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_eq!(
        status.message().len(),
        composio_auth::limits::MAX_GRPC_MESSAGE_BYTES
    );

    // grpcio, an independent implementation.
    let args = [addr.to_string(), ALICE.to_owned()];
    let Some(out) = tokio::task::spawn_blocking(move || python("grpcio_check.py", &args, "grpc"))
        .await
        .unwrap()
    else {
        return;
    };
    assert_eq!(
        out.trim(),
        format!(
            "UNAUTHENTICATED {}",
            composio_auth::limits::MAX_GRPC_MESSAGE_BYTES / 2
        )
    );
}
