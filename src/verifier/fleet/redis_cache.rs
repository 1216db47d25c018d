//! [`RedisCache`]: the Redis the fleet shares, and its settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use super::link::Servers;
use crate::Error;
#[cfg(feature = "webhook")]
use {
    super::link::Links,
    futures_util::future::BoxFuture,
    redis::{ScriptInvocation, Value},
};

/// Shortest pepper accepted, in bytes.
const MIN_PEPPER_LEN: usize = 32;
/// Longest key prefix accepted, in bytes.
const MAX_PREFIX_LEN: usize = 128;
/// Longest time limit per Redis operation accepted.
const MAX_TIME_LIMIT: Duration = Duration::from_secs(10);

/// A Redis (or Valkey) shared by the replicas of a service: they share verdicts
/// (one upstream call per key per TTL for the whole fleet) and invalidations
/// (`invalidate` on one replica reaches every replica). Pass it to
/// [`ComposioAuthBuilder::shared_cache`](crate::ComposioAuthBuilder::shared_cache).
///
/// Making one touches no network: each replica connects when it first needs Redis,
/// and again after a failure, by itself.
///
/// The pepper is a fleet secret of at least 32 bytes, the same on every replica
/// (e.g. from an environment variable): Redis keys are HMACs under it, so a Redis
/// reader cannot test guessed API keys. Replicas with different peppers share
/// nothing. What Redis sees: [`guide::replicas`](crate::guide::replicas).
///
/// ```
/// use composio_auth::{ComposioAuthLayer, RedisCache};
/// use std::time::Duration;
///
/// let pepper = "a fleet secret of at least thirty-two bytes"; // e.g. from the environment
/// let redis = RedisCache::new("redis://127.0.0.1:6379", pepper)?
///     .prefix("orders-api:auth:")
///     .budget(Duration::from_millis(50));
/// let layer = ComposioAuthLayer::builder().shared_cache(redis).build()?;
/// # Ok::<(), composio_auth::Error>(())
/// ```
#[derive(Clone)]
pub struct RedisCache {
    pub(crate) servers: Servers,
    pub(crate) pepper: Arc<[u8]>,
    pub(crate) prefix: String,
    /// The longest one Redis operation may take (set by [`budget`](Self::budget)).
    pub(crate) time_limit: Duration,
    pub(crate) wait: Option<Duration>,
}

impl RedisCache {
    /// How far apart the replicas' wall clocks may be. A verdict read from Redis is
    /// fresh while it is younger than its TTL on Redis's clock (read by the same
    /// script that reads the verdict); its age is also never taken as less than
    /// on the replicas' wall clocks minus this allowance, so a Redis clock set
    /// back cannot make a verdict young again: a session read from Redis is
    /// admitted at most `ttl` after its verification on Redis's clock, and at
    /// most `ttl` + this allowance (+ how far the writing replica's clock is ahead
    /// of the reader's) whatever Redis's clock says. Replica clocks further apart
    /// cost sharing (more upstream calls), never a longer life.
    pub const CLOCK_ALLOWANCE: Duration = super::stored::CLOCK_ALLOWANCE;

    /// One Redis server: `redis://[user:password@]host[:port][/db]`, or `rediss://`
    /// for TLS.
    ///
    /// # Errors
    ///
    /// When the URL does not parse or has another scheme, or the pepper is shorter
    /// than 32 bytes. The message never contains the URL's password.
    pub fn new(url: &str, pepper: impl AsRef<[u8]>) -> Result<Self, Error> {
        Self::with(vec![connection_info(url)?], false, pepper.as_ref())
    }

    /// A Redis Cluster, given one or more of its nodes (the others are discovered).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), for each URL; and when no URL is given.
    pub fn cluster<I, S>(urls: I, pepper: impl AsRef<[u8]>) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes = urls
            .into_iter()
            .map(|url| connection_info(url.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(Error::new(
                "RedisCache::cluster needs at least one node URL",
            ));
        }
        Self::with(nodes, true, pepper.as_ref())
    }

    fn with(nodes: Vec<ConnectionInfo>, cluster: bool, pepper: &[u8]) -> Result<Self, Error> {
        if pepper.len() < MIN_PEPPER_LEN {
            return Err(Error::new(format!(
                "the Redis pepper is {} bytes; it must be at least {MIN_PEPPER_LEN} random bytes, the same on every replica",
                pepper.len()
            )));
        }
        Ok(Self {
            servers: Servers {
                nodes,
                cluster,
                root_certificate: None,
            },
            pepper: pepper.into(),
            prefix: "composio-auth:".to_owned(),
            time_limit: Duration::from_millis(100),
            wait: None,
        })
    }

    /// The prefix of every Redis key this layer uses (default `composio-auth:`), e.g.
    /// to give each service its own keys and an ACL limited to them. At most 128
    /// bytes, without `{` or `}` (the layer's keys use hash tags).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest a request waits for one Redis operation (default 100 ms),
    /// connecting included. Past it the request goes on without Redis; after three
    /// failures in a row no request waits for Redis until it answers again.
    #[must_use]
    pub fn budget(mut self, limit: Duration) -> Self {
        self.time_limit = limit;
        self
    }

    /// The longest a replica waits for the verdict of another replica that is
    /// verifying the same key, before asking Composio itself (default: half the
    /// layer's [`timeout`](crate::ComposioAuthBuilder::timeout); a wait longer than
    /// the `timeout` is lowered to it).
    #[must_use]
    pub fn lease_wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// The certificate (PEM) of the authority that signed the `rediss://` servers'
    /// certificates, when it is not among the platform's roots (a private CA).
    /// Checked by [`build`](crate::ComposioAuthBuilder::build).
    #[must_use]
    pub fn root_certificate(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.servers.root_certificate = Some(pem.as_ref().into());
        self
    }

    /// What runs the webhook guard's scripts (`webhook/fleet.rs`): connections of
    /// its own, as the key verifier's fleet makes them (one per Tokio runtime),
    /// within [`budget`](Self::budget) and behind a breaker of their own.
    #[cfg(feature = "webhook")]
    #[allow(clippy::type_complexity)]
    pub(crate) fn script_runner(
        &self,
    ) -> Box<dyn for<'a> Fn(&'a ScriptInvocation<'a>) -> BoxFuture<'a, Option<Value>> + Send + Sync>
    {
        let links = Arc::new(Links::new(self.servers.clone(), self.time_limit));
        Box::new(move |invocation| {
            let links = Arc::clone(&links);
            Box::pin(async move {
                links
                    .run(|mut link| async move { invocation.invoke_async(&mut link).await })
                    .await
            })
        })
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.servers.root_certificate.is_some() {
            let all_tls = self
                .servers
                .nodes
                .iter()
                .all(|node| matches!(node.addr(), ConnectionAddr::TcpTls { .. }));
            if !all_tls {
                return Err(Error::new(
                    "a Redis root_certificate needs rediss:// URLs (TLS)",
                ));
            }
            let pem = self.servers.root_certificate.as_deref().unwrap_or_default();
            let marker = b"-----BEGIN CERTIFICATE-----";
            let has_certificate = pem.windows(marker.len()).any(|w| w == marker);
            if !has_certificate || self.servers.client().is_err() {
                return Err(Error::new(
                    "the Redis root_certificate is not a PEM certificate",
                ));
            }
        }
        if self.prefix.len() > MAX_PREFIX_LEN || self.prefix.contains(['{', '}']) {
            return Err(Error::new(format!(
                "the Redis key prefix must be at most {MAX_PREFIX_LEN} bytes, without '{{' or '}}'"
            )));
        }
        if self.time_limit.is_zero() || self.time_limit > MAX_TIME_LIMIT {
            return Err(Error::new(format!(
                "the Redis budget is {:?}; it must be more than zero and at most {MAX_TIME_LIMIT:?}",
                self.time_limit
            )));
        }
        if self.wait.is_some_and(|wait| wait > MAX_TIME_LIMIT * 6) {
            return Err(Error::new("lease_wait must be at most a minute"));
        }
        Ok(())
    }
}

/// A node's address, parsed, for `url` with a scheme this layer accepts.
fn connection_info(url: &str) -> Result<ConnectionInfo, Error> {
    let parsed = url::Url::parse(url).map_err(|_| {
        Error::new("the Redis URL does not parse; expected redis://[user:password@]host[:port][/db] or rediss://…")
    })?;
    match parsed.scheme() {
        "redis" | "rediss" => {}
        scheme => {
            return Err(Error::new(format!(
                "the Redis URL's scheme is {scheme:?}; use redis:// or rediss:// (TLS)"
            )))
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::new("the Redis URL names no host"));
    }
    parsed.into_connection_info().map_err(|e| {
        Error::new(format!(
            "the Redis URL is not usable ({:?}); expected redis://[user:password@]host[:port][/db]",
            e.kind()
        ))
    })
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let address = |info: &ConnectionInfo| match info.addr() {
            ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}"),
            ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}"),
            other => format!("{other:?}"),
        };
        let servers: Vec<String> = self.servers.nodes.iter().map(address).collect();
        f.debug_struct("RedisCache")
            .field("servers", &servers)
            .field("cluster", &self.servers.cluster)
            .field(
                "root_certificate",
                &self.servers.root_certificate.as_ref().map(|_| "set"),
            )
            .field("pepper", &"<redacted>")
            .field("prefix", &self.prefix)
            .field("budget", &self.time_limit)
            .field("lease_wait", &self.wait)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEPPER: &str = "a fleet secret of at least thirty-two bytes";

    fn error(result: Result<RedisCache, Error>) -> String {
        result.expect_err("should be refused").to_string()
    }

    #[test]
    fn urls_and_peppers_are_checked_without_echoing_a_password() {
        assert!(RedisCache::new("redis://127.0.0.1:6379", PEPPER).is_ok());
        assert!(RedisCache::new("rediss://user:pw@redis.example:6380/2", PEPPER).is_ok());
        let refused = [
            error(RedisCache::new("http://user:hunter2@redis.example", PEPPER)),
            error(RedisCache::new("redis//user:hunter2@oops", PEPPER)),
            error(RedisCache::new("redis://user:hunter2@:6379", PEPPER)),
            error(RedisCache::new("unix:///run/redis.sock", PEPPER)),
            error(RedisCache::cluster(
                ["redis://a:1", "ftp://user:hunter2@b"],
                PEPPER,
            )),
        ];
        for message in &refused {
            assert!(!message.contains("hunter2"), "{message}");
            assert!(message.contains("redis://"), "{message}");
        }
        assert!(error(RedisCache::new("redis://h", "short")).contains("at least 32"));
        assert!(error(RedisCache::cluster(Vec::<&str>::new(), PEPPER)).contains("at least one"));
    }

    #[test]
    fn settings_are_checked_at_build() {
        let base = || RedisCache::new("redis://h:1", PEPPER).unwrap();
        assert!(base().validate().is_ok());
        assert!(base().prefix("a{b}:").validate().is_err());
        assert!(base().budget(Duration::ZERO).validate().is_err());
        assert!(base().budget(Duration::from_secs(11)).validate().is_err());
        assert!(base()
            .lease_wait(Duration::from_secs(61))
            .validate()
            .is_err());
        let tls = || RedisCache::new("rediss://h:1", PEPPER).unwrap();
        let refused = |cache: RedisCache| cache.validate().unwrap_err().to_string();
        assert!(refused(base().root_certificate("x")).contains("rediss://"));
        assert!(refused(tls().root_certificate("not a certificate")).contains("PEM"));
        assert!(tls().validate().is_ok());
    }

    #[test]
    fn debug_shows_where_but_no_secret() {
        let cache = RedisCache::new("redis://user:hunter2@redis.example:6380", PEPPER).unwrap();
        let shown = format!("{cache:?}");
        assert!(shown.contains("redis.example:6380"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("thirty-two"),
            "{shown}"
        );
    }
}
