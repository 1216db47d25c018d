//! The server's flags (each with an environment fallback), and the layer they
//! configure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use composio_auth::{ComposioAuthBuilder, ComposioAuthLayer, CredentialHeader};

/// Verifies Composio API keys for nginx `auth_request`, Caddy `forward_auth`,
/// Traefik ForwardAuth and Envoy `ext_authz`, with one upstream call per key per TTL.
#[derive(Debug, Parser)]
#[command(name = "composio-auth-server", version, about)]
pub struct Config {
    /// Where the HTTP endpoints listen (`/verify`, `/ext-authz/`, `/healthz`,
    /// `/metrics`).
    #[arg(long, env = "COMPOSIO_AUTH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Where Envoy's gRPC `envoy.service.auth.v3.Authorization/Check` listens; off
    /// by default.
    #[arg(long, env = "COMPOSIO_AUTH_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,

    /// Where the operators' endpoints listen (`POST /invalidate`,
    /// `POST /invalidate-all`); off by default. Keep it off the network clients
    /// reach.
    #[arg(long, env = "COMPOSIO_AUTH_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

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

    /// Run offline against a local stand-in of Composio with demo keys, and print
    /// the requests to try.
    #[arg(long)]
    pub demo: bool,

    /// With `--demo`: make those requests, print the answers, exit 0.
    #[arg(long, requires = "demo")]
    pub exit: bool,
}

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
    /// A setting the library refuses, an unreadable pepper file, or Redis flags
    /// that do not go together: one line, no secret in it.
    pub fn layer(&self, base_url: Option<String>) -> Result<ComposioAuthLayer, String> {
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
        builder = self.shared_cache(builder)?;
        builder.build().map_err(|error| error.to_string())
    }

    #[cfg(feature = "redis")]
    fn shared_cache(&self, builder: ComposioAuthBuilder) -> Result<ComposioAuthBuilder, String> {
        use composio_auth::RedisCache;
        match (&self.redis_urls[..], &self.redis_pepper_file) {
            ([], None) => Ok(builder),
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
                Ok(builder.shared_cache(cache))
            }
        }
    }

    #[cfg(not(feature = "redis"))]
    fn shared_cache(&self, builder: ComposioAuthBuilder) -> Result<ComposioAuthBuilder, String> {
        if self.redis_urls.is_empty() && self.redis_pepper_file.is_none() {
            Ok(builder)
        } else {
            Err("this build has no Redis support (feature `redis`)".to_owned())
        }
    }
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
    fn flags_parse_with_their_defaults() {
        let config = Config::try_parse_from(["composio-auth-server"]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(config.admin_listen.is_none() && !config.demo);
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
}
