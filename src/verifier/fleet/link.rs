//! The connections to Redis: one multiplexed connection (or cluster connection) per
//! Tokio runtime, opened on first use; every operation bounded by Redis's time limit
//! and guarded by the circuit breaker. A connection that fails is dropped and the
//! next operation opens another; that is all the reconnecting there is.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionInfo, Pipeline, RedisFuture, RedisResult,
    TlsCertificates, Value,
};

use super::breaker::Breaker;
use crate::verifier::per_runtime::{self, PerRuntime};

/// Where Redis is: one server, or a cluster's seed nodes; and the root certificate
/// that `rediss://` servers are verified against, when not the platform's.
#[derive(Clone)]
pub(crate) struct Servers {
    pub(crate) nodes: Vec<ConnectionInfo>,
    pub(crate) cluster: bool,
    pub(crate) root_certificate: Option<Arc<[u8]>>,
}

/// A connection of either kind.
#[derive(Clone)]
pub(crate) enum Link {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(link) => link.req_packed_command(cmd),
            Self::Cluster(link) => link.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(link) => link.req_packed_commands(pipeline, offset, count),
            Self::Cluster(link) => link.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(link) => link.get_db(),
            Self::Cluster(link) => link.get_db(),
        }
    }
}

impl Servers {
    /// Opens a connection whose replies may take `response_timeout` (`None`: any
    /// time, for blocking reads), each connection attempt at most `connect_timeout`.
    pub(crate) async fn connect(
        &self,
        connect_timeout: Duration,
        response_timeout: Option<Duration>,
    ) -> RedisResult<Link> {
        if self.cluster {
            let mut builder = ClusterClient::builder(self.nodes.clone())
                .connection_timeout(connect_timeout)
                .retries(1);
            if let Some(timeout) = response_timeout {
                builder = builder.response_timeout(timeout);
            }
            if let Some(certificates) = self.certificates() {
                builder = builder.certs(certificates);
            }
            let link = builder.build()?.get_async_connection().await?;
            return Ok(Link::Cluster(link));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(response_timeout);
        let link = self
            .client()?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Link::Single(link))
    }

    /// The client of the one server (its first node), with the root certificate
    /// when one is set. Also what checks that certificate, without any network.
    pub(crate) fn client(&self) -> RedisResult<redis::Client> {
        let node = self.nodes[0].clone();
        match self.certificates() {
            Some(certificates) => redis::Client::build_with_tls(node, certificates),
            None => redis::Client::open(node),
        }
    }

    fn certificates(&self) -> Option<TlsCertificates> {
        self.root_certificate.as_ref().map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.to_vec()),
        })
    }
}

/// The connections of one fleet, their time limit and their breaker.
pub(crate) struct Links {
    servers: Servers,
    /// The longest one operation may take, connecting included.
    time_limit: Duration,
    by_runtime: PerRuntime<Link>,
    pub(crate) breaker: Breaker,
}

impl Links {
    pub(crate) fn new(servers: Servers, time_limit: Duration) -> Self {
        Self {
            servers,
            time_limit,
            by_runtime: PerRuntime::new(),
            breaker: Breaker::new(),
        }
    }

    pub(crate) fn servers(&self) -> &Servers {
        &self.servers
    }

    pub(crate) fn time_limit(&self) -> Duration {
        self.time_limit
    }

    /// Runs `operation` on this runtime's connection within the time limit, unless the
    /// breaker keeps requests off Redis. `None` when it was not run or failed (the
    /// breaker counts it, and a broken connection is dropped).
    pub(crate) async fn run<T, F, Fut>(&self, operation: F) -> Option<T>
    where
        F: FnOnce(Link) -> Fut + Clone,
        Fut: Future<Output = RedisResult<T>>,
    {
        let runtime = per_runtime::current()?;
        if !self.breaker.allows() {
            return None;
        }
        let attempt = async {
            let connect = || async {
                let link = self
                    .servers
                    .connect(self.time_limit, Some(self.time_limit))
                    .await?;
                self.by_runtime.set(runtime, link.clone());
                Ok::<_, redis::RedisError>(link)
            };
            let Some(kept) = self.by_runtime.get(runtime) else {
                return operation(connect().await?).await;
            };
            // A kept connection may have broken since its last use (Redis
            // restarted): that is found out only now, and worth one new connection.
            // Every operation of the fleet may run twice (they are idempotent, or
            // at worst publish a message twice).
            match operation.clone()(kept).await {
                Err(error) if error.is_connection_dropped() || error.is_connection_refusal() => {
                    self.by_runtime.forget(runtime);
                    operation(connect().await?).await
                }
                done => done,
            }
        };
        match tokio::time::timeout(self.time_limit, attempt).await {
            Ok(Ok(value)) => {
                self.breaker.succeeded();
                Some(value)
            }
            Ok(Err(error)) => {
                if error.is_io_error() || error.is_unrecoverable_error() || error.is_timeout() {
                    self.by_runtime.forget(runtime);
                }
                // The error's text names no password: redis-rs never prints one.
                self.breaker.failed(&format!("{:?}", error.kind()));
                None
            }
            Err(_) => {
                self.by_runtime.forget(runtime);
                self.breaker
                    .failed(&format_args!("no answer within {:?}", self.time_limit));
                None
            }
        }
    }
}
