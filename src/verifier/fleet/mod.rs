//! The shared tier (feature `redis`): replicas of a service share verdicts and
//! invalidations through Redis (or Valkey), so a fleet asks Composio once per key
//! per TTL and an invalidation on one replica reaches all of them.
//!
//! The request's path does not change on a hit: the tier is consulted only when a
//! replica's own cache misses (or a session nears its TTL with refresh-ahead).
//!
//! - `seal.rs`: fleet digests (HMAC-SHA256 under the pepper), value encryption
//!   (ChaCha20-Poly1305 under HKDF of the API key), sealed invalidation messages.
//! - `link.rs`: connections per runtime, the per-operation budget.
//! - `breaker.rs`: the circuit breaker that keeps requests off a failing Redis.
//! - `tier.rs`: consult (adopt or lease), record, invalidate.
//! - `subscription.rs`: where the subscription stands (the epoch, whether to share).
//! - `listener.rs`: the subscription task reading the invalidation stream, with
//!   replay and gap detection.
//!
//! Imports go one way: `listener.rs` drives `tier.rs`'s `Fleet`, and both read
//! `subscription.rs`; the layer's verifications (`verification.rs`) use this
//! module, which uses nothing of theirs but hands them [`Invalidation`]s through a
//! [`Forget`].

#[cfg(feature = "redis")]
mod breaker;
#[cfg(feature = "redis")]
mod link;
#[cfg(feature = "redis")]
mod listener;
#[cfg(feature = "redis")]
mod redis_cache;
#[cfg(feature = "redis")]
mod seal;
#[cfg(feature = "redis")]
mod subscription;
#[cfg(feature = "redis")]
mod tier;

/// What an invalidation from another replica asks of a layer's verifications.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Invalidation {
    Keys(Vec<crate::verifier::digest::Digest>),
    All,
}

/// Applies an [`Invalidation`] to a layer's verifications; `false` once the layer
/// is gone.
pub(crate) type Forget = Box<dyn Fn(Invalidation) -> bool + Send + Sync>;

#[cfg(feature = "redis")]
pub use redis_cache::RedisCache;
#[cfg(feature = "redis")]
pub(crate) use tier::{Fleet, FleetSettings};

/// Without the `redis` feature there is no shared tier: a layer's fleet is always
/// `None`, and this type, which has no values, stands in for it.
#[cfg(not(feature = "redis"))]
pub(crate) enum Fleet {}

#[cfg(not(feature = "redis"))]
pub(crate) type Share = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

#[cfg(not(feature = "redis"))]
impl Fleet {
    pub(crate) fn local_digest_secret(&self) -> (u64, u64) {
        match *self {}
    }

    pub(crate) fn instruments(&self) -> std::sync::Arc<crate::verifier::instruments::Instruments> {
        match *self {}
    }

    pub(crate) fn bind(&self, _: Forget) {
        match *self {}
    }

    pub(crate) fn listen(self: &std::sync::Arc<Self>) {
        match **self {}
    }

    pub(crate) async fn verify<F, Fut>(
        self: &std::sync::Arc<Self>,
        _: crate::verifier::credential::CredentialHeader,
        _: http::HeaderValue,
        _: std::time::Duration,
        _: F,
    ) -> (
        crate::verifier::upstream::Verdict,
        std::time::Instant,
        Option<Share>,
    )
    where
        F: FnOnce(http::HeaderValue) -> Fut,
        Fut: std::future::Future<
            Output = (
                crate::verifier::upstream::Verdict,
                std::time::Instant,
                Option<crate::verifier::upstream::Answer>,
            ),
        >,
    {
        match **self {}
    }

    pub(crate) async fn invalidate(
        &self,
        _: &[u8],
        _: &[(
            crate::verifier::credential::CredentialHeader,
            crate::verifier::digest::Digest,
        )],
    ) -> bool {
        match *self {}
    }

    pub(crate) async fn invalidate_all(&self) -> bool {
        match *self {}
    }
}
