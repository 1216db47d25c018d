//! Pause points: named places in the verifier where a test can hold a thread, or
//! count how often it got there. Each is the value of the `pause_point` field of the
//! `tracing` event emitted at that place, so a test matches the field, never the
//! event's message (which may be reworded freely).
//!
//! A field costs nothing while its event's level is off. None is on the warm path:
//! the `cache hit` event carries no pause point.
//!
//! Tests reach them as `composio_auth::testing::pause_point` (feature `test-util`);
//! the fleet's only with feature `redis`.

/// A request's lookup found no fresh verdict: it joins or starts a verification
/// (`debug`, field `stale`).
pub const CACHE_MISS: &str = "cache_miss";

/// A request joins the verification already in flight for its digest instead of
/// starting another (`debug`).
pub const JOINED_VERIFICATION: &str = "joined_verification";

/// Composio's reply to a verification arrived, before its verdict is settled
/// (`debug`, fields `status`, `latency_ms`, `verdict`).
pub const UPSTREAM_REPLIED: &str = "upstream_replied";

/// A verification ended, but its verdict is not cached: the key was invalidated, or
/// its flight replaced, while it was in flight (`debug`, field `verdict`).
pub const VERDICT_NOT_CACHED: &str = "verdict_not_cached";

/// `invalidate` or `invalidate_all` forgot the key(s) on this replica and is about to
/// tell the fleet (`debug`).
pub const INVALIDATED_HERE: &str = "invalidated_here";

/// This replica's subscription received an invalidation from the fleet, before
/// applying it (`debug`).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const INVALIDATION_RECEIVED: &str = "invalidation_received";

/// Another replica holds the lease on a digest's verification: this one waits for
/// its verdict in Redis (`debug`, once per wait).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const LEASE_HELD_ELSEWHERE: &str = "lease_held_elsewhere";

/// The subscription to the fleet's invalidations was lost: verdicts are not shared
/// until it is back (`warn`, once per loss).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const SUBSCRIPTION_LOST: &str = "subscription_lost";

/// The subscription to the fleet's invalidations is back: sharing verdicts resumes
/// (`info`).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const SUBSCRIPTION_RESTORED: &str = "subscription_restored";

/// Redis failed often enough that the breaker opened: verdicts are not shared until
/// it answers again (`warn`, once per opening).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const BREAKER_OPENED: &str = "breaker_opened";

/// Redis answers again and the breaker closed: sharing verdicts resumes (`info`).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const BREAKER_CLOSED: &str = "breaker_closed";

/// A copy of a webhook delivery waits for the copy being handled (`debug`).
#[cfg(feature = "webhook")]
#[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
pub const DELIVERY_WAITING: &str = "delivery_waiting";

/// A webhook delivery was verified and is handed to the inner service (`debug`).
#[cfg(feature = "webhook")]
#[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
pub const DELIVERY_HANDLED: &str = "delivery_handled";
