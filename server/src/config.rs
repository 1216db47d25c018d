//! The server's flags (each with an environment fallback), and the layer they
//! configure.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use composio_auth::{
    ComposioAuthBuilder, ComposioAuthLayer, ComposioWebhookBuilder, ComposioWebhookLayer,
    CredentialHeader, DEFAULT_MAX_BODY_BYTES, WEBHOOK_SECRET_ENV,
};

use crate::relay::Webhooks;
use crate::traces::Otlp;

/// Verifies Composio API keys for nginx `auth_request`, Caddy `forward_auth`,
/// Traefik ForwardAuth and Envoy `ext_authz`, with one upstream call per key per TTL.
#[derive(Debug, Parser)]
#[command(
    name = "composio-auth-server",
    version,
    about,
    disable_help_subcommand = true
)]
pub struct Config {
    /// `health`, or none to serve.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Where the HTTP endpoints listen (`/verify`, `/ext-authz/`, `/healthz`,
    /// `/readyz`, `/metrics`): an address, or `unix:/path` for a unix domain
    /// socket (see `--socket-mode`).
    #[arg(
        long,
        env = "COMPOSIO_AUTH_LISTEN",
        default_value = "127.0.0.1:8080",
        value_parser = Listen::from_str,
        global = true
    )]
    pub listen: Listen,

    /// Where Envoy's gRPC `envoy.service.auth.v3.Authorization/Check` listens (an
    /// address or `unix:/path`); off by default.
    #[arg(long, env = "COMPOSIO_AUTH_GRPC_LISTEN", value_parser = Listen::from_str)]
    pub grpc_listen: Option<Listen>,

    /// Where the operators' endpoints listen (`POST /invalidate`,
    /// `POST /invalidate-all`; an address or `unix:/path`); off by default. Keep
    /// it off the network clients reach.
    #[arg(long, env = "COMPOSIO_AUTH_ADMIN_LISTEN", value_parser = Listen::from_str)]
    pub admin_listen: Option<Listen>,

    /// The permissions of every unix socket the server creates (`unix:/path`),
    /// in octal: `660` (owner and group read and write, which connecting needs)
    /// or `0660`; at most 0777. Set right after the socket is bound.
    #[arg(
        long,
        env = "COMPOSIO_AUTH_SOCKET_MODE",
        value_name = "OCTAL",
        default_value = DEFAULT_SOCKET_MODE,
        value_parser = socket_mode
    )]
    pub socket_mode: u32,

    /// Composio's API (the library's `COMPOSIO_BASE_URL`).
    #[arg(long, env = "COMPOSIO_BASE_URL")]
    pub base_url: Option<String>,

    /// How long a valid session is served from the cache, e.g. `60s`, `5m`.
    #[arg(long, env = "COMPOSIO_AUTH_TTL", value_parser = duration)]
    pub ttl: Option<Duration>,

    /// How long a refused key stays refused without asking again.
    #[arg(long, env = "COMPOSIO_AUTH_NEGATIVE_TTL", value_parser = duration)]
    pub negative_ttl: Option<Duration>,

    /// How long past its TTL a session may be served while Composio cannot decide.
    #[arg(long, env = "COMPOSIO_AUTH_STALE_IF_ERROR", value_parser = duration)]
    pub stale_if_error: Option<Duration>,

    /// The budget of one verification (waiting for a slot and the call), e.g.
    /// `500ms`.
    #[arg(long, env = "COMPOSIO_AUTH_TIMEOUT", value_parser = duration)]
    pub timeout: Option<Duration>,

    /// Most sessions cached (about 2 KiB each; see BENCHMARKS.md, "Forward auth").
    #[arg(long, env = "COMPOSIO_AUTH_MAX_CAPACITY")]
    pub max_capacity: Option<u64>,

    /// Most refused keys cached.
    #[arg(long, env = "COMPOSIO_AUTH_NEGATIVE_MAX_CAPACITY")]
    pub negative_max_capacity: Option<u64>,

    /// Most upstream calls in flight at once.
    #[arg(long, env = "COMPOSIO_AUTH_MAX_CONCURRENT_VERIFICATIONS")]
    pub max_concurrent_verifications: Option<usize>,

    /// A header that may carry the key (repeat for several; default `x-api-key`).
    #[arg(
        long = "credential-header",
        env = "COMPOSIO_AUTH_CREDENTIAL_HEADERS",
        value_delimiter = ',',
        value_enum
    )]
    pub credential_headers: Vec<Header>,

    /// Have Envoy (gRPC `Check`) remove the credential header before the app sees
    /// the request. The HTTP proxies' recipes clear it themselves.
    #[arg(long, env = "COMPOSIO_AUTH_HIDE_CREDENTIAL")]
    pub hide_credential: bool,

    /// Redis or Valkey shared by every replica (`redis://`, `rediss://`); repeat for
    /// the nodes of a cluster.
    #[arg(
        long = "redis-url",
        env = "COMPOSIO_AUTH_REDIS_URL",
        value_delimiter = ',',
        // `--help` never prints it: a Redis URL may hold a password.
        hide_env_values = true
    )]
    pub redis_urls: Vec<String>,

    /// A file holding the fleet's pepper (at least 32 bytes), needed with
    /// `--redis-url`. A file, so the secret is never in a process listing.
    #[arg(long, env = "COMPOSIO_AUTH_REDIS_PEPPER_FILE")]
    pub redis_pepper_file: Option<PathBuf>,

    /// Relay Composio's webhook deliveries to this URL (`http://` or `https://`):
    /// a POST to `--webhook-path` is verified (bodies up to 1 MiB, the library's
    /// limit) and deduplicated, then forwarded with its headers and body, and the
    /// app's answer goes back. Off by default.
    #[arg(
        long,
        env = "COMPOSIO_AUTH_WEBHOOK_FORWARD",
        value_name = "URL",
        // It may hold credentials.
        hide_env_values = true
    )]
    pub webhook_forward: Option<String>,

    /// Where deliveries arrive on `--listen`, outside the key verification.
    #[arg(
        long,
        env = "COMPOSIO_AUTH_WEBHOOK_PATH",
        value_name = "PATH",
        default_value = DEFAULT_WEBHOOK_PATH,
        requires = "webhook_forward"
    )]
    pub webhook_path: String,

    /// A file holding a webhook secret of the project's subscription (a trailing
    /// newline is ignored); repeat to accept an old and a new one while rotating.
    /// Without it, the secret itself is read from COMPOSIO_WEBHOOK_SECRET.
    #[arg(
        long = "webhook-secret-file",
        env = "COMPOSIO_AUTH_WEBHOOK_SECRET_FILE",
        value_name = "FILE",
        value_delimiter = ',',
        requires = "webhook_forward"
    )]
    pub webhook_secret_files: Vec<PathBuf>,

    /// How long the app has to answer a delivery (default 10s); later, the
    /// delivery is answered 504 and not acknowledged.
    #[arg(
        long,
        env = "COMPOSIO_AUTH_WEBHOOK_TIMEOUT",
        value_name = "D",
        value_parser = duration,
        requires = "webhook_forward"
    )]
    pub webhook_timeout: Option<Duration>,

    /// After SIGTERM or SIGINT, how long requests in flight get to finish (`/readyz`
    /// answers 503 from the signal on); one still in flight then is answered 503
    /// and the server exits 0.
    #[arg(
        long,
        env = "COMPOSIO_AUTH_SHUTDOWN_GRACE",
        value_name = "D",
        value_parser = duration,
        default_value = DEFAULT_SHUTDOWN_GRACE
    )]
    pub shutdown_grace: Duration,

    /// Export traces over OTLP to this collector: a span per check, continuing the
    /// proxy's `traceparent`. Its base URL (http/protobuf posts to `URL/v1/traces`;
    /// OTEL_EXPORTER_OTLP_PROTOCOL=grpc for gRPC). Without it,
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (as is), else OTEL_EXPORTER_OTLP_ENDPOINT;
    /// off if none.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Run offline against a local stand-in of Composio with demo keys, and print
    /// the requests to try.
    #[arg(long)]
    pub demo: bool,

    /// With `--demo`: make those requests, print the answers, exit 0.
    #[arg(long, requires = "demo")]
    pub exit: bool,
}

/// What the server does instead of serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// GET `/readyz` on `--listen` (on loopback for 0.0.0.0 or [::], over the
    /// socket for unix:/path): exit 0 if it answers 200 within 2s, else 1. For a
    /// container's HEALTHCHECK.
    Health,
}

/// Where a listener listens: a TCP address, or a unix domain socket the server
/// creates (and removes at exit), written `unix:/run/composio-auth/auth.sock`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// An IP address and port, `127.0.0.1:8080` or `[::]:50051`.
    Tcp(SocketAddr),
    /// The path of a unix domain socket.
    Unix(PathBuf),
}

/// The longest path of a unix socket: Linux's `sun_path` holds 108 bytes, the
/// last of them the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

impl FromStr for Listen {
    type Err = String;

    /// `unix:` and a path of at most [`MAX_SOCKET_PATH`] bytes, else an IP
    /// address and port.
    fn from_str(text: &str) -> Result<Self, String> {
        let Some(path) = text.strip_prefix("unix:") else {
            return text
                .parse()
                .map(Self::Tcp)
                .map_err(|_| "write an address like 127.0.0.1:8080, or unix:/path".to_owned());
        };
        if path.is_empty() {
            return Err(
                "unix: needs the socket's path, like unix:/run/composio-auth/auth.sock".to_owned(),
            );
        }
        if path.len() > MAX_SOCKET_PATH {
            return Err(format!(
                "a unix socket's path is at most {MAX_SOCKET_PATH} bytes, this one is {}",
                path.len()
            ));
        }
        if path.contains('\0') {
            return Err("a unix socket's path has no NUL byte".to_owned());
        }
        Ok(Self::Unix(PathBuf::from(path)))
    }
}

impl fmt::Display for Listen {
    /// `http://127.0.0.1:8080`, or `unix:/path`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "http://{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The mode of unix sockets unless `--socket-mode` says otherwise: the server's
/// user and group may connect (nginx's workers in the group), nobody else.
pub const DEFAULT_SOCKET_MODE: &str = "0660";

/// A socket's permissions in octal, `660` or `0660`, at most `0777`.
fn socket_mode(text: &str) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err("write the mode in octal, like 660 or 0660".to_owned());
    }
    match u32::from_str_radix(text, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        // Setuid, setgid and sticky bits mean nothing on a socket.
        _ => Err("a socket's mode is at most 0777".to_owned()),
    }
}

/// The grace unless `--shutdown-grace` says otherwise: the longest a request
/// normally takes (a webhook delivery, `--webhook-timeout`, 10s) and more, within
/// Kubernetes' 30s before SIGKILL, with room for a `preStop` pause.
pub const DEFAULT_SHUTDOWN_GRACE: &str = "20s";

/// Where deliveries arrive unless `--webhook-path` says otherwise.
pub const DEFAULT_WEBHOOK_PATH: &str = "/composio/webhook";

/// How long the app has to answer unless `--webhook-timeout` says otherwise.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// The paths of `--listen` a webhook path may not take.
const ROUTED: [&str; 5] = ["/verify", "/healthz", "/readyz", "/metrics", "/ext-authz"];

/// A credential header, as `--credential-header` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Header {
    /// `x-api-key`: a project API key.
    #[value(name = "x-api-key")]
    ApiKey,
    /// `x-user-api-key`: a user API key.
    #[value(name = "x-user-api-key")]
    UserApiKey,
    /// `x-org-api-key`: an organisation API key.
    #[value(name = "x-org-api-key")]
    OrgApiKey,
    /// `Authorization: Bearer <project key>`.
    #[value(name = "bearer")]
    Bearer,
}

impl From<Header> for CredentialHeader {
    fn from(header: Header) -> Self {
        match header {
            Header::ApiKey => Self::ApiKey,
            Header::UserApiKey => Self::UserApiKey,
            Header::OrgApiKey => Self::OrgApiKey,
            Header::Bearer => Self::Bearer,
        }
    }
}

/// A duration written `60s`, `500ms`, `5m`, `1h 30m`.
fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("{error} (write a duration like 60s, 500ms or 5m)"))
}

impl Config {
    /// The credential headers the layer accepts: those of `--credential-header`,
    /// else the library's default, `x-api-key`.
    fn accepted(&self) -> Vec<CredentialHeader> {
        if self.credential_headers.is_empty() {
            return vec![CredentialHeader::ApiKey];
        }
        self.credential_headers
            .iter()
            .map(|h| CredentialHeader::from(*h))
            .collect()
    }

    /// The credential headers `--hide-credential` has Envoy remove (none without
    /// it).
    pub fn hidden(&self) -> Vec<CredentialHeader> {
        if self.hide_credential {
            self.accepted()
        } else {
            Vec::new()
        }
    }

    /// The layer these flags describe (its base URL overridden by `base_url`, for
    /// the demo's stand-in).
    ///
    /// # Errors
    ///
    /// A setting the library refuses: one line, no secret in it.
    pub fn layer(
        &self,
        base_url: Option<String>,
        fleet: &Fleet,
    ) -> Result<ComposioAuthLayer, String> {
        let mut builder: ComposioAuthBuilder = ComposioAuthLayer::builder();
        if let Some(base_url) = base_url.or_else(|| self.base_url.clone()) {
            builder = builder.base_url(base_url);
        }
        if let Some(ttl) = self.ttl {
            builder = builder.ttl(ttl);
        }
        if let Some(ttl) = self.negative_ttl {
            builder = builder.negative_ttl(ttl);
        }
        if let Some(window) = self.stale_if_error {
            builder = builder.stale_if_error(window);
        }
        if let Some(timeout) = self.timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(sessions) = self.max_capacity {
            builder = builder.max_capacity(sessions);
        }
        if let Some(rejections) = self.negative_max_capacity {
            builder = builder.negative_max_capacity(rejections);
        }
        if let Some(calls) = self.max_concurrent_verifications {
            builder = builder.max_concurrent_verifications(calls);
        }
        builder = builder.credential_headers(self.accepted());
        builder = fleet.keys(builder);
        builder.build().map_err(|error| error.to_string())
    }

    /// The trace export `--otlp-endpoint` and the `OTEL_EXPORTER_OTLP_*` variables
    /// describe, if any.
    ///
    /// # Errors
    ///
    /// An endpoint or protocol that cannot work: one line, never the URL.
    pub fn otlp(&self) -> Result<Option<Otlp>, String> {
        Otlp::resolve(self.otlp_endpoint.as_deref(), |name| {
            std::env::var(name).ok()
        })
    }

    /// The webhook relay these flags describe, if `--webhook-forward` is given.
    ///
    /// # Errors
    ///
    /// A URL or path that cannot work, no secret, an unreadable or empty secret
    /// file, a zero timeout: one line, never a secret or the URL.
    pub fn webhooks(&self, fleet: &Fleet) -> Result<Option<Webhooks>, String> {
        let Some(forward) = &self.webhook_forward else {
            return Ok(None);
        };
        let forward = match reqwest::Url::parse(forward) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => url,
            Ok(_) => return Err("--webhook-forward must be an http:// or https:// URL".to_owned()),
            Err(error) => return Err(format!("--webhook-forward is not a URL: {error}")),
        };
        let path = webhook_path(&self.webhook_path)?;
        let timeout = self.webhook_timeout.unwrap_or(DEFAULT_WEBHOOK_TIMEOUT);
        if timeout.is_zero() {
            return Err("--webhook-timeout must be more than 0".to_owned());
        }
        #[cfg(feature = "redis")]
        if fleet.is_shared() && timeout >= composio_auth::limits::WEBHOOK_CLAIM_LEASE {
            // Past the claim's lease another replica would forward the same delivery.
            return Err(format!(
                "--webhook-timeout must be under the {}s claim lease of deliveries shared through --redis-url",
                composio_auth::limits::WEBHOOK_CLAIM_LEASE.as_secs()
            ));
        }
        let mut builder = ComposioWebhookLayer::builder().max_body_bytes(DEFAULT_MAX_BODY_BYTES);
        for secret in webhook_secrets(&self.webhook_secret_files)? {
            builder = builder.secret(secret);
        }
        let layer = fleet
            .webhooks(builder)
            .build()
            .map_err(|error| error.to_string())?;
        Ok(Some(Webhooks {
            path,
            forward,
            timeout,
            layer,
        }))
    }

    /// The Redis of `--redis-url`, if given, for both layers.
    ///
    /// # Errors
    ///
    /// Redis flags that do not go together, an unreadable pepper file, a URL or
    /// pepper the library refuses: one line, no secret in it.
    #[cfg(feature = "redis")]
    pub fn fleet(&self) -> Result<Fleet, String> {
        use composio_auth::RedisCache;
        match (&self.redis_urls[..], &self.redis_pepper_file) {
            ([], None) => Ok(Fleet::default()),
            ([], Some(_)) => Err("--redis-pepper-file needs --redis-url".to_owned()),
            (_, None) => Err("--redis-url needs --redis-pepper-file".to_owned()),
            (urls, Some(file)) => {
                let pepper = std::fs::read(file).map_err(|error| {
                    format!(
                        "cannot read --redis-pepper-file {}: {error}",
                        file.display()
                    )
                })?;
                // A trailing newline is the editor's, not the secret's.
                let pepper = pepper.trim_ascii_end();
                let cache = match urls {
                    [url] => RedisCache::new(url, pepper),
                    urls => RedisCache::cluster(urls, pepper),
                }
                .map_err(|error| error.to_string())?;
                Ok(Fleet { cache: Some(cache) })
            }
        }
    }

    /// No Redis in this build: Redis flags are a configuration error.
    ///
    /// # Errors
    ///
    /// When `--redis-url` or `--redis-pepper-file` is given.
    #[cfg(not(feature = "redis"))]
    pub fn fleet(&self) -> Result<Fleet, String> {
        if self.redis_urls.is_empty() && self.redis_pepper_file.is_none() {
            Ok(Fleet::default())
        } else {
            Err("this build has no Redis support (feature `redis`)".to_owned())
        }
    }
}

/// The Redis replicas share (`--redis-url`), for the key layer's verdicts and the
/// webhook relay's deliveries alike; none without it.
#[derive(Clone, Default)]
pub struct Fleet {
    #[cfg(feature = "redis")]
    cache: Option<composio_auth::RedisCache>,
}

impl Fleet {
    /// Whether there is a Redis to share.
    pub fn is_shared(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.cache.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    fn keys(&self, builder: ComposioAuthBuilder) -> ComposioAuthBuilder {
        #[cfg(feature = "redis")]
        if let Some(cache) = &self.cache {
            return builder.shared_cache(cache.clone());
        }
        builder
    }

    fn webhooks(&self, builder: ComposioWebhookBuilder) -> ComposioWebhookBuilder {
        #[cfg(feature = "redis")]
        if let Some(cache) = &self.cache {
            return builder.shared_cache(cache.clone());
        }
        builder
    }
}

/// `--webhook-path`, if it is a plain path no other endpoint of `--listen` uses.
fn webhook_path(path: &str) -> Result<String, String> {
    let plain = path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"{}?#%*\\".contains(&b));
    if !plain {
        return Err(format!(
            "--webhook-path must be a path like {DEFAULT_WEBHOOK_PATH} (no query, braces, * or %)"
        ));
    }
    if ROUTED.contains(&path) || path.starts_with("/ext-authz/") {
        return Err(format!(
            "--webhook-path {path} is taken by another endpoint"
        ));
    }
    Ok(path.to_owned())
}

/// The secrets of `files` (each a trailing newline off), else
/// `COMPOSIO_WEBHOOK_SECRET`'s.
fn webhook_secrets(files: &[PathBuf]) -> Result<Vec<String>, String> {
    if files.is_empty() {
        return match std::env::var(WEBHOOK_SECRET_ENV) {
            Ok(secret) if !secret.trim().is_empty() => Ok(vec![secret]),
            _ => Err(format!(
                "--webhook-forward needs --webhook-secret-file or {WEBHOOK_SECRET_ENV}"
            )),
        };
    }
    files
        .iter()
        .map(|file| {
            let name = file.display();
            let bytes = std::fs::read(file)
                .map_err(|error| format!("cannot read --webhook-secret-file {name}: {error}"))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| format!("--webhook-secret-file {name} is not UTF-8"))?;
            // A trailing newline is the editor's, not the secret's.
            let secret = text.trim_end_matches(|c: char| c.is_ascii_whitespace());
            if secret.trim().is_empty() {
                return Err(format!("--webhook-secret-file {name} is empty"));
            }
            Ok(secret.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert!(duration("soon").unwrap_err().contains("like 60s"));
    }

    #[test]
    fn a_webhook_path_is_plain_and_free() {
        assert_eq!(
            webhook_path("/composio/webhook").unwrap(),
            "/composio/webhook"
        );
        assert_eq!(
            webhook_path("/hooks/composio-v3").unwrap(),
            "/hooks/composio-v3"
        );
        for taken in [
            "/verify",
            "/healthz",
            "/readyz",
            "/metrics",
            "/ext-authz",
            "/ext-authz/x",
        ] {
            assert!(
                webhook_path(taken).unwrap_err().contains("taken"),
                "{taken}"
            );
        }
        for bad in ["", "hook", "/{id}", "/*rest", "/a?b", "/a b", "/%41"] {
            assert!(webhook_path(bad).unwrap_err().contains("like"), "{bad}");
        }
    }

    #[test]
    fn a_webhook_secret_file_loses_its_trailing_newline_only() {
        let dir = std::env::temp_dir().join(format!("composio-auth-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (one, two) = (dir.join("one"), dir.join("two"));
        std::fs::write(&one, "whsec_a b\r\n").unwrap();
        std::fs::write(&two, " spaced-secret").unwrap();
        assert_eq!(
            webhook_secrets(&[one, two]).unwrap(),
            ["whsec_a b", " spaced-secret"]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn flags_parse_with_their_defaults() {
        let config = Config::try_parse_from(["composio-auth-server"]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(config.admin_listen.is_none() && !config.demo);
        assert_eq!(config.shutdown_grace, Duration::from_secs(20));
        assert_eq!(config.command, None);
        let config = Config::try_parse_from([
            "composio-auth-server",
            "--credential-header",
            "x-api-key",
            "--credential-header",
            "bearer",
            "--ttl",
            "2m",
        ])
        .unwrap();
        assert_eq!(config.credential_headers, [Header::ApiKey, Header::Bearer]);
        assert_eq!(config.ttl, Some(Duration::from_secs(120)));
        assert!(Config::try_parse_from(["composio-auth-server", "--exit"]).is_err());
    }

    #[test]
    fn a_listen_address_is_tcp_or_a_unix_socket_path() {
        let tcp: Listen = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(tcp, Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 8080))));
        assert_eq!(tcp.to_string(), "http://127.0.0.1:8080");
        let unix: Listen = "unix:/run/composio-auth/auth.sock".parse().unwrap();
        assert_eq!(unix, Listen::Unix("/run/composio-auth/auth.sock".into()));
        assert_eq!(unix.to_string(), "unix:/run/composio-auth/auth.sock");
        let longest = format!("unix:/{}", "s".repeat(MAX_SOCKET_PATH - 1));
        assert!(longest.parse::<Listen>().is_ok());
        let too_long = format!("unix:/{}", "s".repeat(MAX_SOCKET_PATH));
        assert!(too_long
            .parse::<Listen>()
            .unwrap_err()
            .contains("107 bytes"));
        assert!("unix:".parse::<Listen>().unwrap_err().contains("path"));
        for bad in ["localhost:8080", "8080", "unix", "unix:/a\0b"] {
            assert!(bad.parse::<Listen>().is_err(), "{bad}");
        }
        let config = Config::try_parse_from([
            "composio-auth-server",
            "--grpc-listen",
            "unix:grpc.sock",
            "--admin-listen",
            "[::1]:9000",
        ])
        .unwrap();
        assert_eq!(config.grpc_listen, Some(Listen::Unix("grpc.sock".into())));
        assert_eq!(config.admin_listen, Some("[::1]:9000".parse().unwrap()));
    }

    #[test]
    fn a_socket_mode_is_octal_up_to_0777() {
        assert_eq!(socket_mode("660"), Ok(0o660));
        assert_eq!(socket_mode("0660"), Ok(0o660));
        assert_eq!(socket_mode("0777"), Ok(0o777));
        assert_eq!(socket_mode("0"), Ok(0));
        for over in ["1777", "10000", "77777777777777777777"] {
            assert!(socket_mode(over).unwrap_err().contains("0777"), "{over}");
        }
        for bad in ["999", "rw", "", "0o660", "+660", " 660"] {
            assert!(socket_mode(bad).unwrap_err().contains("octal"), "{bad}");
        }
        let config = Config::try_parse_from(["composio-auth-server"]).unwrap();
        assert_eq!(config.socket_mode, 0o660);
    }

    #[test]
    fn health_reads_the_listen_address_before_or_after_it() {
        for args in [
            &["composio-auth-server", "health", "--listen", "0.0.0.0:9000"][..],
            &["composio-auth-server", "--listen", "0.0.0.0:9000", "health"],
        ] {
            let config = Config::try_parse_from(args).unwrap();
            assert_eq!(config.command, Some(Command::Health));
            assert_eq!(config.listen, "0.0.0.0:9000".parse().unwrap());
        }
        let config =
            Config::try_parse_from(["composio-auth-server", "--shutdown-grace", "2s"]).unwrap();
        assert_eq!(config.shutdown_grace, Duration::from_secs(2));
        assert!(Config::try_parse_from(["composio-auth-server", "--shutdown-grace", "x"]).is_err());
        assert!(Config::try_parse_from(["composio-auth-server", "help"]).is_err());
    }
}
