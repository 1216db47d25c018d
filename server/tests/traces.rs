//! Traces over OTLP: the real binary's exporter, received here by small OTLP
//! receivers (HTTP `POST /v1/traces` with protobuf, and gRPC `TraceService`, both
//! from the OTLP protobufs): the check span continues the proxy's `traceparent`,
//! the library's verification span is its child, Composio never sees the
//! `traceparent`, and no key, pepper, webhook secret or email is in any export.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use support::{client, composio, Server, ADMIN, MEMBER};

const CHECK: &str = "composio_auth_server.check";
const VERIFICATION: &str = "composio_auth.verification";
const WEBHOOK: &str = "composio_auth.webhook";

/// The proxy's trace and span, as in the W3C spec's example.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PROXY_SPAN: &str = "00f067aa0ba902b7";

/// The emails of ADMIN's and MEMBER's sessions (`support::composio`).
const EMAILS: [&str; 2] = ["alice@example.com", "bob@example.com"];

/// The webhook secret of the relay in these tests.
const SECRET: &str = "whsec_the-trace-tests-webhook-secret";

/// Exports every 50 ms instead of every 5 s (the SDK's variable).
const QUICK: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "50");

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// A trace id of its own for each request of a test.
fn trace(n: u8) -> String {
    format!("{}{n:02x}", &TRACE[..30])
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// What a receiver got: each export's path and bytes (as they arrived over
/// HTTP; encoded again from gRPC's message), and how many so far.
#[derive(Default)]
struct Received {
    exports: Mutex<Vec<(String, Vec<u8>)>>,
    count: tokio::sync::watch::Sender<usize>,
}

impl Received {
    fn push(&self, path: String, bytes: Vec<u8>) {
        self.exports.lock().unwrap().push((path, bytes));
        self.count.send_modify(|count| *count += 1);
    }

    fn exports(&self) -> Vec<(String, Vec<u8>)> {
        self.exports.lock().unwrap().clone()
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Span> {
        self.requests()
            .into_iter()
            .flat_map(|request| request.resource_spans)
            .flat_map(|resource| resource.scope_spans)
            .flat_map(|scope| scope.spans)
            .collect()
    }

    fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.exports()
            .iter()
            .map(|(_, bytes)| ExportTraceServiceRequest::decode(&bytes[..]).unwrap())
            .collect()
    }

    /// The spans once `done` holds of them, waiting for each export up to 20 s.
    async fn spans_when(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let mut count = self.count.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            count.borrow_and_update();
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            let names: Vec<_> = spans.iter().map(|s| s.name.clone()).collect();
            tokio::time::timeout_at(deadline, count.changed())
                .await
                .unwrap_or_else(|_| panic!("waited 20 s for {what}; received {names:?}"))
                .unwrap();
        }
    }

    /// No export holds any of `secrets`, anywhere (attributes, events, resource).
    fn assert_holds_none(&self, secrets: &[&str]) {
        let exports = self.exports();
        assert!(!exports.is_empty());
        for (_, bytes) in exports {
            for secret in secrets {
                assert!(
                    !bytes
                        .windows(secret.len())
                        .any(|window| window == secret.as_bytes()),
                    "an export holds {secret:?}"
                );
            }
        }
    }
}

/// An OTLP/HTTP receiver on loopback: any path, protobuf only.
async fn http_receiver() -> (Arc<Received>, SocketAddr) {
    let received = Arc::new(Received::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let into = Arc::clone(&received);
    let app = Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| async move {
            let protobuf = headers
                .get("content-type")
                .is_some_and(|v| v == "application/x-protobuf");
            if method != Method::POST || !protobuf {
                return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
            }
            into.push(uri.path().to_owned(), body.to_vec());
            let answer = ExportTraceServiceResponse::default().encode_to_vec();
            ([("content-type", "application/x-protobuf")], answer).into_response()
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (received, addr)
}

/// An OTLP/gRPC receiver on loopback.
async fn grpc_receiver() -> (Arc<Received>, SocketAddr) {
    struct Receiver(Arc<Received>);

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            self.0
                .push("grpc".to_owned(), request.into_inner().encode_to_vec());
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    let received = Arc::new(Received::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(Receiver(Arc::clone(&received)));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap()
    });
    (received, addr)
}

/// `span`'s attribute `key`, as text.
fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span.attributes.iter().find(|kv| kv.key == key)?;
    Some(match value.value.as_ref()?.value.as_ref()? {
        Value::StringValue(text) => text.clone(),
        Value::IntValue(n) => n.to_string(),
        Value::DoubleValue(x) => x.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

fn named<'a>(spans: &'a [Span], name: &str, trace: &str) -> Option<&'a Span> {
    let trace = hex(trace);
    spans.iter().find(|s| s.name == name && s.trace_id == trace)
}

/// The check span of `trace` once exported, continuing the proxy's span, with
/// its verification span if `verified`.
async fn check_of(received: &Received, trace: &str, verified: bool) -> (Span, Option<Span>) {
    let spans = received
        .spans_when(&format!("the check of {trace}"), |spans| {
            named(spans, CHECK, trace).is_some()
                && (!verified || named(spans, VERIFICATION, trace).is_some())
        })
        .await;
    let check = named(&spans, CHECK, trace).unwrap().clone();
    assert_eq!(check.parent_span_id, hex(PROXY_SPAN), "the proxy's span");
    assert_eq!(check.kind, SpanKind::Server as i32);
    let verification = named(&spans, VERIFICATION, trace).cloned();
    if let Some(verification) = &verification {
        assert_eq!(
            verification.parent_span_id, check.span_id,
            "a child of the check"
        );
        assert!(verification.start_time_unix_nano >= check.start_time_unix_nano);
    }
    (check, verification)
}

fn assert_attributes(span: &Span, expected: &[(&str, &str)]) {
    for (key, value) in expected {
        assert_eq!(
            attribute(span, key).as_deref(),
            Some(*value),
            "{key} of {}",
            span.name
        );
    }
}

/// What holds of every export: only the library's and the server's spans, no
/// span event, the service named, and none of `secrets` anywhere.
fn assert_redacted(received: &Received, secrets: &[&str]) {
    for request in received.requests() {
        for resource in request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref()?.value.clone());
            assert_eq!(
                service,
                Some(Value::StringValue("composio-auth-server".to_owned()))
            );
            for span in resource.scope_spans.iter().flat_map(|s| &s.spans) {
                assert!(
                    [CHECK, VERIFICATION, WEBHOOK].contains(&span.name.as_str()),
                    "exported: {}",
                    span.name
                );
                assert!(span.events.is_empty(), "events of {}", span.name);
            }
        }
    }
    received.assert_holds_none(secrets);
}

/// A directory of files for a server, removed when dropped.
struct Files(std::path::PathBuf);

impl Files {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "composio-auth-server-traces-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `--otlp-endpoint` over http/protobuf, with every secret the server holds: a
/// key verified (a miss: the upstream call is the check's child), then one
/// from the cache, a request without a key, and a webhook delivery; with a
/// fleet's pepper (feature `redis`). None of the secrets, nor the session's
/// email, is in any export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_spans_continue_the_proxys_trace_and_hold_no_secret() {
    let composio = composio().await;
    let (received, otlp) = http_receiver().await;
    let files = Files::new("http");
    let secret = files.write("secret", &format!("{SECRET}\n"));
    let endpoint = format!("http://{otlp}");
    #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
    let mut args = vec![
        "--otlp-endpoint",
        &endpoint,
        "--webhook-forward",
        // Nobody listens: the delivery is verified, then answered 502.
        "http://127.0.0.1:9/hook",
        "--webhook-secret-file",
        &secret,
    ];
    #[cfg(feature = "redis")]
    let redis = support::redis::RedisServer::start();
    #[cfg(feature = "redis")]
    let (redis_url, pepper) = (redis.url(), files.write("pepper", support::redis::PEPPER));
    #[cfg(feature = "redis")]
    args.extend(["--redis-url", &redis_url, "--redis-pepper-file", &pepper]);
    let env = [QUICK, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];
    let server = Server::start_with_env(&composio.base_url(), &args, &env);

    let verify = |path: &str, trace: &str, key: Option<&str>| {
        let mut request = client()
            .get(server.url(path))
            .header("traceparent", traceparent(trace, PROXY_SPAN))
            .header("tracestate", "proxy=opaque");
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.send()
    };
    assert_eq!(
        verify("/verify", &trace(1), Some(ADMIN))
            .await
            .unwrap()
            .status(),
        200
    );
    let upstream = composio.last_request_headers().expect("Composio was asked");
    assert!(
        !upstream.contains_key("traceparent") && !upstream.contains_key("tracestate"),
        "sent on to Composio: {upstream:?}"
    );
    let (check, verification) = check_of(&received, &trace(1), true).await;
    assert_attributes(
        &check,
        &[
            ("route", "verify"),
            ("verdict", "allowed"),
            ("status", "200"),
            ("cache", "miss"),
        ],
    );
    assert_attributes(
        &verification.unwrap(),
        &[
            ("header", "x-api-key"),
            ("outcome", "allowed"),
            ("upstream_status", "200"),
        ],
    );

    // From the cache: no verification, no upstream call.
    let cached = verify("/ext-authz/orders", &trace(2), Some(ADMIN));
    assert_eq!(cached.await.unwrap().status(), 200);
    let (check, verification) = check_of(&received, &trace(2), false).await;
    assert_attributes(&check, &[("route", "ext_authz"), ("cache", "hit")]);
    assert!(verification.is_none());
    assert_eq!(composio.calls_for(ADMIN), 1);

    // No key: refused before any lookup, the envelope's code recorded.
    assert_eq!(
        verify("/verify", &trace(3), None).await.unwrap().status(),
        401
    );
    let (check, _) = check_of(&received, &trace(3), false).await;
    assert_attributes(
        &check,
        &[("verdict", "refused"), ("status", "401"), ("code", "906")],
    );

    // A webhook delivery: the library's webhook span, verified with the secret.
    let body = br#"{"id":"evt_trace","timestamp":"2026-01-29T10:30:00Z","type":"composio.trigger.message","metadata":{"log_id":"log_trace","trigger_slug":"GITHUB_PUSH_EVENT","trigger_id":"ti_trace","connected_account_id":"ca_trace","auth_config_id":"ac_trace","user_id":"user_trace"},"data":{}}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signed = composio_auth::testing::sign_delivery(SECRET, "msg_trace", body, now);
    let delivered = client()
        .post(server.url("/composio/webhook"))
        .headers(signed)
        .header("x-composio-webhook-version", "V3")
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        delivered.status(),
        502,
        "verified, then the app unreachable"
    );
    received
        .spans_when("the webhook span", |spans| {
            spans.iter().any(|s| s.name == WEBHOOK)
        })
        .await;

    let mut secrets = vec![ADMIN, SECRET];
    secrets.extend(EMAILS);
    #[cfg(feature = "redis")]
    secrets.push(support::redis::PEPPER);
    assert_redacted(&received, &secrets);
    assert!(received
        .exports()
        .iter()
        .all(|(path, _)| path == "/v1/traces"));
}

/// The environment's form, `OTEL_EXPORTER_OTLP_ENDPOINT`, at the SDK's own pace
/// (an export every 5 s): the spans of a check are flushed at SIGTERM, before
/// the server exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environments_endpoint_and_the_flush_at_exit() {
    let composio = composio().await;
    let (received, otlp) = http_receiver().await;
    let endpoint = format!("http://{otlp}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_BSP_SCHEDULE_DELAY", "5000"),
    ];
    let mut server = Server::start_with_env(&composio.base_url(), &[], &env);
    let verified = client()
        .get(server.url("/verify"))
        .header("x-api-key", MEMBER)
        .header("traceparent", traceparent(TRACE, PROXY_SPAN))
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), 200);
    support::proxy::signal("TERM", &server.pid().to_string());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !server.exited() {
        assert!(tokio::time::Instant::now() < deadline, "still running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let spans = received.spans();
    let check = named(&spans, CHECK, TRACE).expect("flushed at exit");
    let verification = named(&spans, VERIFICATION, TRACE).expect("flushed at exit");
    assert_eq!(check.parent_span_id, hex(PROXY_SPAN));
    assert_eq!(verification.parent_span_id, check.span_id);
    let mut secrets = vec![MEMBER];
    secrets.extend(EMAILS);
    assert_redacted(&received, &secrets);
}

/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is the traces' URL as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signals_endpoint_is_used_as_it_is() {
    let composio = composio().await;
    let (received, otlp) = http_receiver().await;
    let endpoint = format!("http://{otlp}/collector/spans");
    let env = [
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        QUICK,
    ];
    let server = Server::start_with_env(&composio.base_url(), &[], &env);
    let verified = client()
        .get(server.url("/verify"))
        .header("x-api-key", ADMIN)
        .header("traceparent", traceparent(TRACE, PROXY_SPAN))
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), 200);
    check_of(&received, TRACE, true).await;
    assert!(received
        .exports()
        .iter()
        .all(|(path, _)| path == "/collector/spans"));
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`, and Envoy's gRPC `Check` with the
/// client's `traceparent` among its attributes' headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exports_the_spans_of_grpc_checks() {
    let composio = composio().await;
    let (received, otlp) = grpc_receiver().await;
    let endpoint = format!("http://{otlp}");
    let args = ["--grpc-listen", "127.0.0.1:0", "--otlp-endpoint", &endpoint];
    let env = [("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), QUICK];
    let server = Server::start_with_env(&composio.base_url(), &args, &env);
    let parent = traceparent(TRACE, PROXY_SPAN);
    let headers = [("x-api-key", MEMBER), ("traceparent", parent.as_str())];
    let answer = support::check(server.grpc.unwrap(), &headers, &[]).await;
    assert_eq!(answer.status.unwrap().code, 0, "OK");
    let upstream = composio.last_request_headers().expect("Composio was asked");
    assert!(!upstream.contains_key("traceparent"));
    let (check, verification) = check_of(&received, TRACE, true).await;
    assert_attributes(
        &check,
        &[
            ("route", "grpc"),
            ("verdict", "allowed"),
            ("status", "200"),
            ("cache", "miss"),
        ],
    );
    assert_attributes(&verification.unwrap(), &[("outcome", "allowed")]);
    let mut secrets = vec![MEMBER];
    secrets.extend(EMAILS);
    assert_redacted(&received, &secrets);
}

/// An endpoint or protocol that cannot work: one line on stderr, exit 2, never
/// the URL (it may hold credentials).
#[test]
fn a_wrong_otlp_setting_is_a_configuration_error() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_composio-auth-server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
        stderr
    };
    let ftp = run(&["--otlp-endpoint", "ftp://otel:hunter2@collector"], &[]);
    assert!(ftp.contains("--otlp-endpoint must be an http:// or https:// URL"));
    let json = run(
        &["--otlp-endpoint", "http://otel:hunter2@collector:4318"],
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
    );
    assert!(json.contains("http/json is not supported"), "{json}");
}
