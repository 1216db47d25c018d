//! Traces over OTLP (`--otlp-endpoint`, or the standard `OTEL_EXPORTER_OTLP_*`
//! variables): off unless an endpoint is set, and then no cost beyond a disabled
//! span per check.
//!
//! One span per check, `composio_auth_server.check` (`/verify`, `/ext-authz/`,
//! gRPC `Check`), continuing the proxy's W3C `traceparent` (extracted here, never
//! sent on: the library's call to Composio carries none), with the library's
//! `composio_auth.verification` span, the upstream call, as its child.
//!
//! What is exported, and nothing else: the spans of the library (`composio_auth`)
//! and of this server, each with the fields it declares (none holds a key, a
//! pepper, a secret or an email). No `tracing` event leaves the process, as a
//! span event or otherwise: their messages and fields stay in the logs on stderr.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{self, HeaderMap};
use composio_auth::testing::pause_point::{CACHE_MISS, JOINED_VERIFICATION};
use composio_auth::{Rejection, SessionInfo};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry::InstrumentationScope;
use opentelemetry_http::{HeaderExtractor, HttpClient, HttpError};
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tokio::runtime::Handle;
use tracing::field::{Empty, Field, Visit};
use tracing::{Event, Level, Metadata, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, Registry};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The `tracing` target of this server's spans and events.
pub const TARGET: &str = "composio_auth_server";

/// The span of one check.
pub const CHECK: &str = "composio_auth_server.check";

/// The library's `tracing` target.
const LIBRARY: &str = "composio_auth";

/// How long the spans still queued at exit get to reach the collector.
const FLUSH_TIME: Duration = Duration::from_secs(3);

/// How long one export may take (OTLP's default).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer of a collector read (it holds at most a partial success).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";

impl Protocol {
    /// Its name in `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpProtobuf => "http/protobuf",
            Self::Grpc => "grpc",
        }
    }
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Otlp {
    /// The URL spans are sent to (for http/protobuf, with its `/v1/traces`).
    endpoint: String,
    protocol: Protocol,
    /// Whether the endpoint is `https://`.
    tls: bool,
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf`, the default.
    HttpProtobuf,
    /// `grpc`.
    Grpc,
}

impl Otlp {
    /// The export `--otlp-endpoint` (`flag`) and the variables `env` reads
    /// describe, if any: the flag, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (as
    /// is), else `OTEL_EXPORTER_OTLP_ENDPOINT`; none if `OTEL_SDK_DISABLED=true`.
    /// The flag and `OTEL_EXPORTER_OTLP_ENDPOINT` are the collector's base URL:
    /// http/protobuf appends `/v1/traces`.
    ///
    /// # Errors
    ///
    /// An endpoint that is not an http:// or https:// URL, a protocol other than
    /// `http/protobuf` or `grpc`: one line, never the URL (it may hold credentials).
    pub fn resolve(
        flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, String> {
        let var = |name: &str| {
            env(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let protocol = match [TRACES_PROTOCOL, PROTOCOL]
            .into_iter()
            .find_map(|name| Some((name, var(name)?)))
        {
            None => Protocol::HttpProtobuf,
            Some((_, value)) if value == "http/protobuf" => Protocol::HttpProtobuf,
            Some((_, value)) if value == "grpc" => Protocol::Grpc,
            Some((name, value)) => {
                return Err(format!(
                    "{name}={value} is not supported: use http/protobuf or grpc"
                ))
            }
        };
        let base = |base: &str| match protocol {
            Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
            Protocol::Grpc => base.to_owned(),
        };
        let flag = flag.map(str::trim).filter(|flag| !flag.is_empty());
        let (endpoint, source) = if let Some(flag) = flag {
            (base(flag), "--otlp-endpoint")
        } else if let Some(endpoint) = var(TRACES_ENDPOINT) {
            (endpoint, TRACES_ENDPOINT)
        } else if let Some(endpoint) = var(ENDPOINT) {
            (base(&endpoint), ENDPOINT)
        } else {
            return Ok(None);
        };
        let tls = match reqwest::Url::parse(&endpoint) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                url.scheme() == "https"
            }
            Ok(_) => return Err(format!("{source} must be an http:// or https:// URL")),
            Err(error) => return Err(format!("{source} is not a URL: {error}")),
        };
        Ok(Some(Self {
            endpoint,
            protocol,
            tls,
        }))
    }

    /// The protocol spans are sent with.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}

/// The spans' way out: a batch exporter, flushed at exit.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// The exporter `otlp` describes; its exports run on `runtime`.
    ///
    /// # Errors
    ///
    /// An exporter that cannot be made (e.g. a compression the build lacks in
    /// `OTEL_EXPORTER_OTLP_COMPRESSION`): one line, without the URL.
    pub fn start(otlp: &Otlp, runtime: &Handle) -> Result<Self, String> {
        let exporter = match otlp.protocol {
            Protocol::HttpProtobuf => SpanExporter::builder()
                .with_http()
                .with_http_client(OnRuntime::new(runtime.clone())?)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(&otlp.endpoint)
                .build(),
            Protocol::Grpc => {
                // tonic's channel starts its worker on the runtime it is made in.
                let _runtime = runtime.enter();
                let mut builder = SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(&otlp.endpoint);
                if otlp.tls {
                    // The roots compiled in: the image has no system store.
                    builder = builder.with_tls_config(
                        opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                            .with_webpki_roots(),
                    );
                }
                builder.build()
            }
        }
        .map_err(|error| {
            let error = error.to_string().replace(&otlp.endpoint, "the endpoint");
            format!("cannot export traces over OTLP: {error}")
        })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource(|name| std::env::var(name).ok()))
            .build();
        Ok(Self { provider })
    }

    /// Exports what is still queued, within [`FLUSH_TIME`]; before the runtime
    /// stops (the exports run on it).
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown_with_timeout(FLUSH_TIME) {
            tracing::warn!(target: TARGET, %error, "the last spans could not all be exported");
        }
    }
}

/// `service.name` is `composio-auth-server` unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` name it; the rest of those variables applies.
fn resource(env: impl Fn(&str) -> Option<String>) -> Resource {
    let named = env("OTEL_SERVICE_NAME").is_some_and(|name| !name.trim().is_empty())
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attributes| {
            attributes
                .split(',')
                .any(|pair| pair.trim_start().starts_with("service.name="))
        });
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name("composio-auth-server").build()
    }
}

/// The process's subscriber: the log lines on stderr as ever (`info` and up),
/// and with `traces`, the spans exported and the cache outcome observed.
pub fn install(traces: Option<&Traces>) {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_filter(LevelFilter::INFO);
    let spans = traces.map(|traces| {
        let scope = InstrumentationScope::builder("composio-auth-server")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        tracing_opentelemetry::layer()
            .with_tracer(traces.provider.tracer_with_scope(scope))
            .with_location(false)
            .with_threads(false)
            .with_filter(filter_fn(exported).with_max_level_hint(LevelFilter::DEBUG))
    });
    let lookups = traces
        .map(|_| Lookups.with_filter(filter_fn(observed).with_max_level_hint(LevelFilter::DEBUG)));
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .with(lookups)
        .init();
}

/// Whether `target` is `krate`'s or one of its modules'.
fn of(target: &str, krate: &str) -> bool {
    target
        .strip_prefix(krate)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// What is exported: the spans of the library and of this server. Never an
/// event, never another crate's span.
fn exported(metadata: &Metadata<'_>) -> bool {
    metadata.is_span() && (of(metadata.target(), LIBRARY) || of(metadata.target(), TARGET))
}

/// What [`Lookups`] sees: the check spans, and the library's events that name a
/// place in its lookup.
fn observed(metadata: &Metadata<'_>) -> bool {
    if metadata.is_span() {
        return metadata.name() == CHECK;
    }
    *metadata.level() <= Level::DEBUG
        && of(metadata.target(), LIBRARY)
        && metadata.fields().field("pause_point").is_some()
}

/// What the library reported of a check's lookup, kept on the check's span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lookup {
    /// A miss: the check started a verification (its child span).
    Miss,
    /// A miss that joined the verification another check had started.
    Joined,
}

/// Notes on each check span the library's lookup events inside it
/// (`pause_point` `cache_miss`, `joined_verification`: stable names).
struct Lookups;

impl<S> Layer<S> for Lookups
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, context: Context<'_, S>) {
        let mut point = PausePoint(None);
        event.record(&mut point);
        let lookup = match point.0 {
            Some(CACHE_MISS) => Lookup::Miss,
            Some(JOINED_VERIFICATION) => Lookup::Joined,
            _ => return,
        };
        // Only check spans are in this layer's scopes.
        if let Some(check) = context
            .event_scope(event)
            .and_then(|mut scope| scope.find(|span| span.name() == CHECK))
        {
            check.extensions_mut().replace(lookup);
        }
    }
}

/// An event's `pause_point`, if it is one of the library's names.
struct PausePoint(Option<&'static str>);

impl Visit for PausePoint {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "pause_point" {
            self.0 = [CACHE_MISS, JOINED_VERIFICATION]
                .into_iter()
                .find(|name| *name == value);
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

/// The lookup [`Lookups`] noted on `span`, if any.
fn lookup(span: &Span) -> Option<Lookup> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let span = registry.span(id)?;
        let lookup = span.extensions().get::<Lookup>().copied();
        lookup
    })
    .flatten()
}

/// The span of one check on `route` (`verify`, `ext_authz`, `grpc`): a child of
/// the proxy's span when `headers` (else `fallback`'s) carry a W3C
/// `traceparent`. Disabled (and nothing read) without traces.
pub fn check_span(
    route: &'static str,
    headers: &HeaderMap,
    fallback: impl FnOnce() -> Option<HeaderMap>,
) -> Span {
    let span = tracing::debug_span!(
        target: TARGET,
        CHECK,
        otel.kind = "server",
        route,
        verdict = Empty,
        status = Empty,
        code = Empty,
        cache = Empty,
        otel.status_code = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let propagator = TraceContextPropagator::new();
    let remote = |headers: &HeaderMap| {
        let context = propagator.extract(&HeaderExtractor(headers));
        let valid = context.span().span_context().is_valid();
        valid.then_some(context)
    };
    let parent = remote(headers).or_else(|| fallback().and_then(|headers| remote(&headers)));
    if let Some(parent) = parent {
        // Set before the span is entered: it cannot fail for another reason.
        let _ = span.set_parent(parent);
    }
    span
}

/// Records on `span` the verdict of its check, and what the library reported of
/// its lookup: `cache` is `miss` (this check started a verification: the
/// library's span is its child), `joined` (it waited for one another check
/// started), else `hit` (answered without a verification: from the cache, or
/// refused before any lookup, for want of a usable key; `code` tells which).
pub fn checked(span: &Span, verdict: &Result<SessionInfo, Rejection>) {
    if span.is_disabled() {
        return;
    }
    match verdict {
        Ok(_) => {
            span.record("verdict", "allowed");
            span.record("status", 200);
        }
        Err(rejection) => {
            span.record("verdict", "refused");
            refused(span, rejection.status().as_u16());
            span.record("code", rejection.envelope().error.code);
        }
    }
    let cache = match lookup(span) {
        Some(Lookup::Miss) => "miss",
        Some(Lookup::Joined) => "joined",
        None => "hit",
    };
    span.record("cache", cache);
}

/// Records on `span` a check refused with `status` for a route's wrong policy
/// (no lookup).
pub fn misconfigured(span: &Span, status: u16) {
    if !span.is_disabled() {
        span.record("verdict", "refused");
        refused(span, status);
    }
}

fn refused(span: &Span, status: u16) {
    span.record("status", status);
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
}

/// OTLP/HTTP's client: the server's reqwest (rustls, the webpki roots compiled
/// in), each export sent from the server's runtime: the batch processor exports
/// from a thread of its own, where reqwest's connections could not run.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: Handle,
}

impl OnRuntime {
    fn new(runtime: Handle) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|error| format!("cannot make the OTLP client: {}", error.without_url()))?;
        Ok(Self { client, runtime })
    }
}

#[tonic::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let request = reqwest::Request::try_from(request).map_err(reqwest::Error::without_url)?;
        let sent = async move {
            // Errors without the URL: it may hold credentials, and they are logged.
            let mut answer = client
                .execute(request)
                .await
                .map_err(reqwest::Error::without_url)?;
            let mut response = http::Response::builder().status(answer.status());
            if let Some(headers) = response.headers_mut() {
                *headers = answer.headers().clone();
            }
            let mut body = Vec::new();
            while let Some(chunk) = answer.chunk().await.map_err(reqwest::Error::without_url)? {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(HttpError::from("the collector's answer is over 4 MiB"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(response.body(Bytes::from(body))?)
        };
        self.runtime.spawn(sent).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(flag: Option<&str>, vars: &[(&str, &str)]) -> Result<Option<Otlp>, String> {
        Otlp::resolve(flag, |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    fn endpoint(otlp: Result<Option<Otlp>, String>) -> (String, Protocol) {
        let otlp = otlp.unwrap().unwrap();
        (otlp.endpoint, otlp.protocol)
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(resolve(None, &[]), Ok(None));
        assert_eq!(resolve(None, &[(PROTOCOL, "grpc")]), Ok(None));
        assert_eq!(resolve(Some(" "), &[(ENDPOINT, "")]), Ok(None));
        let disabled = [("OTEL_SDK_DISABLED", "true"), (ENDPOINT, "http://c:4318")];
        assert_eq!(resolve(Some("http://c:4318"), &disabled), Ok(None));
    }

    #[test]
    fn the_flag_then_the_signals_variable_then_the_base() {
        use Protocol::*;
        let http = |e: &str| (e.to_owned(), HttpProtobuf);
        assert_eq!(
            endpoint(resolve(
                Some("http://c:4318/"),
                &[(TRACES_ENDPOINT, "http://t/x")]
            )),
            http("http://c:4318/v1/traces")
        );
        let both = [(TRACES_ENDPOINT, "http://t:4318/x"), (ENDPOINT, "http://b")];
        assert_eq!(endpoint(resolve(None, &both)), http("http://t:4318/x"));
        assert_eq!(
            endpoint(resolve(None, &[(ENDPOINT, "https://b/otlp")])),
            http("https://b/otlp/v1/traces")
        );
        let grpc = [(ENDPOINT, "http://b:4317"), (PROTOCOL, "grpc")];
        assert_eq!(
            endpoint(resolve(None, &grpc)),
            ("http://b:4317".to_owned(), Grpc)
        );
        let signal = [(PROTOCOL, "grpc"), (TRACES_PROTOCOL, "http/protobuf")];
        assert_eq!(endpoint(resolve(Some("http://c"), &signal)).1, HttpProtobuf);
    }

    #[test]
    fn a_wrong_endpoint_or_protocol_is_one_line_without_the_url() {
        let json = resolve(Some("http://c"), &[(PROTOCOL, "http/json")]).unwrap_err();
        assert!(
            json.contains("http/json") && json.contains("grpc"),
            "{json}"
        );
        let ftp = resolve(Some("ftp://user:hunter2@c"), &[]).unwrap_err();
        assert!(ftp.starts_with("--otlp-endpoint must be") && !ftp.contains("hunter2"));
        let bad = resolve(None, &[(TRACES_ENDPOINT, "not a url hunter2")]).unwrap_err();
        assert!(bad.starts_with(TRACES_ENDPOINT) && !bad.contains("hunter2"));
    }

    #[test]
    fn the_service_is_named_unless_the_environment_names_it() {
        let name = |vars: &[(&str, &str)]| {
            let resource = resource(|name| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            });
            resource
                .get(&opentelemetry::Key::from_static_str("service.name"))
                .map(|value| value.to_string())
        };
        assert_eq!(name(&[]).as_deref(), Some("composio-auth-server"));
        let named = [("OTEL_RESOURCE_ATTRIBUTES", "team=auth, service.name=edge")];
        assert_ne!(name(&named).as_deref(), Some("composio-auth-server"));
    }

    #[test]
    fn only_the_library_and_the_server_are_theirs() {
        assert!(of("composio_auth", LIBRARY) && of("composio_auth::verifier", LIBRARY));
        assert!(of("composio_auth_server", TARGET) && !of("composio_auth_server", LIBRARY));
        assert!(!of("h2::proto", LIBRARY) && !of("composio_authx", LIBRARY));
    }
}
