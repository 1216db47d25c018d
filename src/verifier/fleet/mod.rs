//! The fleet (feature `redis`): replicas of a service share verdicts and
//! invalidations through Redis (or Valkey), so they ask Composio once per key per
//! TTL between them, and an invalidation on one replica reaches all of them. A
//! replica consults the fleet only when its own cache misses (or a session nears
//! its TTL with refresh-ahead). What Redis holds: the crate's `guide::replicas`.
//!
//! This file holds [`Fleet`], one layer's handle on it (and, without the feature,
//! the type with no values that stands in for it), and what the layer's
//! verifications exchange with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::verifier::digest::Digest;
use crate::verifier::instruments::Instruments;
use crate::verifier::upstream::Verdict;

#[cfg(not(feature = "redis"))]
use crate::verifier::{
    credential::{CredentialHeader, Subject},
    upstream::Called,
};
#[cfg(feature = "redis")]
use {
    crate::verifier::cache::CachePolicy,
    crate::TRACING_TARGET,
    std::collections::hash_map::RandomState,
    std::hash::BuildHasher,
    std::sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

#[cfg(feature = "redis")]
mod breaker;
#[cfg(feature = "redis")]
mod link;
#[cfg(feature = "redis")]
mod listener;
#[cfg(feature = "redis")]
mod protocol;
#[cfg(feature = "redis")]
mod publish;
#[cfg(feature = "redis")]
mod redis_cache;
#[cfg(feature = "redis")]
mod scripts;
#[cfg(feature = "redis")]
mod seal;
#[cfg(feature = "redis")]
mod stored;
#[cfg(feature = "redis")]
mod subscription;

#[cfg(feature = "redis")]
pub use redis_cache::RedisCache;

/// What an invalidation from another replica asks of a layer's verifications.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Invalidation {
    Keys(Vec<Digest>),
    All,
}

/// Applies an [`Invalidation`] to a layer's verifications; `false` once the layer
/// is gone.
pub(crate) type Forget = Box<dyn Fn(Invalidation) -> bool + Send + Sync>;

/// A write to Redis still to make once the verdict has been handed to the
/// requests that wait for it.
pub(crate) type Share = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the fleet made of a verification: the verdict, when its call was sent,
/// and the write that shares it with the other replicas, if there is one.
pub(crate) struct FleetVerdict {
    pub(crate) verdict: Verdict,
    pub(crate) sent_at: Instant,
    pub(crate) share: Option<Share>,
}

/// The fleet of one layer: its connections, secrets, Redis keys, lifetimes and
/// subscription.
#[cfg(feature = "redis")]
pub(crate) struct Fleet {
    instruments: Arc<Instruments>,
    links: link::Links,
    sealer: seal::Sealer,
    base_url: String,
    prefix: String,
    /// The stream of invalidations, `{prefix}invalidations`.
    stream: String,
    epoch_key: String,
    incarnation_key: String,
    /// The layer's lifetimes (and sizes, unused here).
    lives: CachePolicy,
    /// How long a lease is held: the layer's `timeout`.
    lease: Duration,
    /// How long a replica waits for another's verdict before verifying itself.
    wait: Duration,
    subscription: subscription::Subscription,
    scripts: scripts::Scripts,
    tokens: RandomState,
    next_token: AtomicU64,
    /// Whether something in Redis that this layer did not write was logged at
    /// `warn` yet: once per layer, then at `debug`.
    warned: AtomicBool,
}

/// Without the `redis` feature there is no fleet: a layer's fleet is always
/// `None`, and this type, which has no values, stands in for it.
#[cfg(not(feature = "redis"))]
pub(crate) enum Fleet {}

/// The settings a fleet takes from its [`RedisCache`] and its layer.
#[cfg(feature = "redis")]
pub(crate) struct FleetSettings {
    pub(crate) instruments: Arc<Instruments>,
    pub(crate) servers: link::Servers,
    pub(crate) pepper: Box<[u8]>,
    pub(crate) prefix: String,
    /// The longest one Redis operation may take.
    pub(crate) time_limit: Duration,
    pub(crate) wait: Duration,
    pub(crate) base_url: String,
    pub(crate) lives: CachePolicy,
    pub(crate) lease: Duration,
}

#[cfg(feature = "redis")]
impl Fleet {
    pub(crate) fn new(settings: FleetSettings) -> Self {
        let prefix = settings.prefix;
        Self {
            instruments: settings.instruments,
            links: link::Links::new(settings.servers, settings.time_limit),
            sealer: seal::Sealer::new(&settings.pepper),
            base_url: settings.base_url,
            stream: format!("{prefix}invalidations"),
            epoch_key: format!("{prefix}epoch"),
            incarnation_key: format!("{prefix}incarnation"),
            prefix,
            lives: settings.lives,
            lease: settings.lease,
            wait: settings.wait,
            subscription: subscription::Subscription::new(),
            scripts: scripts::Scripts::new(),
            tokens: RandomState::new(),
            next_token: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        }
    }

    /// The SipHash key of this layer's local digests: the same on every replica.
    pub(crate) fn local_digest_secret(&self) -> (u64, u64) {
        self.sealer.local_digest_secret()
    }

    /// The layer's metric handles, the fleet's included.
    pub(crate) fn instruments(&self) -> Arc<Instruments> {
        Arc::clone(&self.instruments)
    }

    /// Lets the stream's invalidations reach this layer's verifications.
    pub(crate) fn bind(&self, forget: Forget) {
        self.subscription.bind(forget);
    }

    /// A random word (lease tokens, generations, incarnations); unique, not secret.
    fn random_word(&self) -> String {
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}", self.tokens.hash_one(n))
    }

    /// Logs something found in Redis that no replica with this pepper wrote (or
    /// that was altered since): at `warn` the first time for this layer, then at
    /// `debug`, so a Redis writer cannot flood the logs. Never a verdict.
    fn suspicious(&self, what: &'static str) {
        if self.warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(target: TRACING_TARGET, "{what}");
        } else {
            tracing::warn!(target: TRACING_TARGET, "{what} (logged at warn once; further ones at debug)");
        }
    }
}

#[cfg(not(feature = "redis"))]
impl Fleet {
    pub(crate) fn local_digest_secret(&self) -> (u64, u64) {
        match *self {}
    }

    pub(crate) fn instruments(&self) -> Arc<Instruments> {
        match *self {}
    }

    pub(crate) fn bind(&self, _: Forget) {
        match *self {}
    }

    pub(crate) fn listen(self: &Arc<Self>) {
        match **self {}
    }

    pub(crate) async fn verify<F, Fut>(
        self: &Arc<Self>,
        _: Subject,
        _: Duration,
        _: F,
    ) -> FleetVerdict
    where
        F: FnOnce(Subject) -> Fut,
        Fut: Future<Output = Called>,
    {
        match **self {}
    }

    pub(crate) async fn invalidate(&self, _: &[u8], _: &[(CredentialHeader, Digest)]) -> bool {
        match *self {}
    }

    pub(crate) async fn invalidate_all(&self) -> bool {
        match *self {}
    }
}
