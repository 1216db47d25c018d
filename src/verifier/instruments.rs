//! The layer's metrics (feature `metrics`), through the [`metrics`](::metrics) facade:
//! whatever recorder the application installed (e.g. `metrics-exporter-prometheus`)
//! receives them. Handles are registered once, when the layer is built, so a request
//! only bumps atomics: install the recorder before building the layer.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `composio_auth_requests_total` | counter | `result`: `allowed`, `stale`, `unauthorized`, `forbidden`, `unavailable` | every request through the layer, by its answer |
//! | `composio_auth_cache_total` | counter | `result`: `hit`, `negative_hit`, `miss` | lookups of requests that carried a usable key |
//! | `composio_auth_upstream_calls_total` | counter | `outcome`: `allowed`, `rejected`, `undecided` | verifications by their verdict |
//! | `composio_auth_upstream_duration_seconds` | histogram | | from sending the upstream request to its verdict |
//! | `composio_auth_upstream_in_flight` | gauge | | upstream calls in progress |
//! | `composio_auth_cache_entries` | gauge | `tier`: `sessions`, `rejections` | entries held, updated as verdicts are cached or invalidated |
//!
//! With a shared cache (feature `redis`), also:
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `composio_auth_shared_total` | counter | `result`: `adopted`, `verified`, `alone` | local misses, by what the fleet gave: a verdict another replica recorded; the lease (this replica asked Composio for the fleet); nothing (Redis unusable, or another replica's lease held too long) |
//! | `composio_auth_shared_invalidations_total` | counter | `direction`: `sent`, `received` | invalidations published by this replica, and read from the stream (its own included) |
//! | `composio_auth_shared_subscribed` | gauge | | 1 while the replica is subscribed to the fleet's invalidations (it shares only then), else 0 |
//!
//! Without the feature every method here is empty and inlined away.

use crate::verifier::cache::CachedVerdicts;
use crate::verifier::upstream::Verdict;

/// How a request was answered.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Answer {
    Allowed,
    Stale,
    Unauthorized,
    Forbidden,
    Unavailable,
}

impl Answer {
    /// The answer a rejection with this status is.
    pub(crate) fn of_status(status: http::StatusCode) -> Self {
        match status {
            http::StatusCode::UNAUTHORIZED => Self::Unauthorized,
            http::StatusCode::FORBIDDEN => Self::Forbidden,
            _ => Self::Unavailable,
        }
    }
}

/// What consulting the shared tier gave a local miss.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shared {
    Adopted,
    Verified,
    Alone,
}

/// Which way an invalidation went through the fleet's stream.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Direction {
    Sent,
    Received,
}

/// What a request's lookup found.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Lookup {
    Hit,
    NegativeHit,
    Miss,
}

#[cfg(feature = "metrics")]
pub(crate) use enabled::Instruments;

#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::Instruments;

#[cfg(feature = "metrics")]
mod enabled {
    use std::time::Instant;

    use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

    use super::{Answer, CachedVerdicts, Direction, Lookup, Shared, Verdict};

    /// The layer's metric handles.
    pub(crate) struct Instruments {
        requests: [Counter; 5],
        cache: [Counter; 3],
        upstream: [Counter; 3],
        duration: Histogram,
        in_flight: Gauge,
        entries: [Gauge; 2],
        #[cfg_attr(not(feature = "redis"), allow(dead_code))]
        fleet: Option<Fleet>,
    }

    /// The shared tier's handles, registered only for a layer with one.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    struct Fleet {
        shared: [Counter; 3],
        invalidations: [Counter; 2],
        subscribed: Gauge,
    }

    impl Instruments {
        /// The handles of a layer; `shared`: with a shared cache.
        pub(crate) fn new(shared: bool) -> Self {
            let fleet = shared.then(|| {
                Fleet {
                shared: ["adopted", "verified", "alone"]
                    .map(|result| counter!("composio_auth_shared_total", "result" => result)),
                invalidations: ["sent", "received"].map(|direction| {
                    counter!("composio_auth_shared_invalidations_total", "direction" => direction)
                }),
                subscribed: gauge!("composio_auth_shared_subscribed"),
            }
            });
            let requests = [
                "allowed",
                "stale",
                "unauthorized",
                "forbidden",
                "unavailable",
            ]
            .map(|result| counter!("composio_auth_requests_total", "result" => result));
            let cache = ["hit", "negative_hit", "miss"]
                .map(|result| counter!("composio_auth_cache_total", "result" => result));
            let upstream = ["allowed", "rejected", "undecided"].map(
                |outcome| counter!("composio_auth_upstream_calls_total", "outcome" => outcome),
            );
            let entries = ["sessions", "rejections"]
                .map(|tier| gauge!("composio_auth_cache_entries", "tier" => tier));
            Self {
                requests,
                cache,
                upstream,
                duration: histogram!("composio_auth_upstream_duration_seconds"),
                in_flight: gauge!("composio_auth_upstream_in_flight"),
                entries,
                fleet,
            }
        }

        #[cfg_attr(not(feature = "redis"), allow(dead_code))]
        pub(crate) fn shared(&self, result: Shared) {
            if let Some(fleet) = &self.fleet {
                fleet.shared[result as usize].increment(1);
            }
        }

        #[cfg_attr(not(feature = "redis"), allow(dead_code))]
        pub(crate) fn invalidation(&self, direction: Direction) {
            if let Some(fleet) = &self.fleet {
                fleet.invalidations[direction as usize].increment(1);
            }
        }

        #[cfg_attr(not(feature = "redis"), allow(dead_code))]
        pub(crate) fn subscribed(&self, subscribed: bool) {
            if let Some(fleet) = &self.fleet {
                fleet.subscribed.set(f64::from(u8::from(subscribed)));
            }
        }

        pub(crate) fn answered(&self, answer: Answer) {
            self.requests[answer as usize].increment(1);
        }

        pub(crate) fn looked_up(&self, lookup: Lookup) {
            self.cache[lookup as usize].increment(1);
        }

        pub(crate) fn call_started(&self) {
            self.in_flight.increment(1.0);
        }

        pub(crate) fn call_ended(&self, verdict: &Verdict, sent_at: Instant) {
            self.in_flight.decrement(1.0);
            let outcome = match verdict {
                Verdict::Allowed(_) => 0,
                Verdict::Rejected(_) => 1,
                Verdict::Undecided(_) => 2,
            };
            self.upstream[outcome].increment(1);
            self.duration.record(sent_at.elapsed().as_secs_f64());
        }

        /// Sets the entry gauges from `counts` (called only with the feature on: it
        /// runs the cache's pending maintenance).
        pub(crate) fn entries(&self, counts: impl FnOnce() -> CachedVerdicts) {
            let counts = counts();
            self.entries[0].set(counts.sessions as f64);
            self.entries[1].set(counts.rejections as f64);
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod disabled {
    use std::time::Instant;

    use super::{Answer, CachedVerdicts, Direction, Lookup, Shared, Verdict};

    /// No metrics: every method is empty.
    pub(crate) struct Instruments;

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    impl Instruments {
        pub(crate) fn new(_: bool) -> Self {
            Self
        }

        #[inline(always)]
        pub(crate) fn shared(&self, _: Shared) {}

        #[inline(always)]
        pub(crate) fn invalidation(&self, _: Direction) {}

        #[inline(always)]
        pub(crate) fn subscribed(&self, _: bool) {}

        #[inline(always)]
        pub(crate) fn answered(&self, _: Answer) {}

        #[inline(always)]
        pub(crate) fn looked_up(&self, _: Lookup) {}

        #[inline(always)]
        pub(crate) fn call_started(&self) {}

        #[inline(always)]
        pub(crate) fn call_ended(&self, _: &Verdict, _: Instant) {}

        #[inline(always)]
        pub(crate) fn entries(&self, _: impl FnOnce() -> CachedVerdicts) {}
    }
}
