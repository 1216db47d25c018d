//! The layer's metrics (feature `metrics`), through the [`metrics`] facade:
//! whatever recorder the application installed (e.g. `metrics-exporter-prometheus`)
//! receives them. Handles are registered once, when the layer is built, so a request
//! only bumps atomics: install the recorder before building the layer.
//!
//! The metrics and their labels: the crate's `guide::metrics`. Without the feature
//! every method here is empty and inlined away.

use std::time::Instant;

use crate::verifier::cache::CachedVerdicts;
use crate::verifier::upstream::Verdict;

/// How a request was answered: the `result` label of
/// `composio_auth_requests_total`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome {
    Allowed,
    Stale,
    Unauthorized,
    Forbidden,
    Unavailable,
    /// A request the layer refused as malformed (400: a user key's selectors).
    BadRequest,
}

impl Outcome {
    /// The outcome of a rejection with this status.
    pub(crate) fn of_status(status: http::StatusCode) -> Self {
        match status {
            http::StatusCode::UNAUTHORIZED => Self::Unauthorized,
            http::StatusCode::FORBIDDEN => Self::Forbidden,
            http::StatusCode::BAD_REQUEST => Self::BadRequest,
            _ => Self::Unavailable,
        }
    }
}

/// What a request's lookup found: the `result` label of `composio_auth_cache_total`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CacheResult {
    Hit,
    NegativeHit,
    Miss,
}

/// What the fleet gave a local miss: the `result` label of
/// `composio_auth_shared_total`.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(crate) enum FleetResult {
    Adopted,
    Verified,
    Alone,
}

/// Which way an invalidation went through the fleet's stream: the `direction`
/// label of `composio_auth_shared_invalidations_total`.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Direction {
    Sent,
    Received,
}

/// The layer's metric handles (none without the feature `metrics`).
pub(crate) struct Instruments {
    #[cfg(feature = "metrics")]
    handles: handles::LayerHandles,
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl Instruments {
    /// The handles of a layer; `fleet`: with a fleet.
    pub(crate) fn new(fleet: bool) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = fleet;
        Self {
            #[cfg(feature = "metrics")]
            handles: handles::LayerHandles::new(fleet),
        }
    }

    #[inline]
    pub(crate) fn fleet_result(&self, result: FleetResult) {
        #[cfg(feature = "metrics")]
        if let Some(fleet) = &self.handles.fleet {
            fleet.results[result as usize].increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = result;
    }

    #[inline]
    pub(crate) fn invalidation(&self, direction: Direction) {
        #[cfg(feature = "metrics")]
        if let Some(fleet) = &self.handles.fleet {
            fleet.invalidations[direction as usize].increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = direction;
    }

    #[inline]
    pub(crate) fn subscribed(&self, subscribed: bool) {
        #[cfg(feature = "metrics")]
        if let Some(fleet) = &self.handles.fleet {
            fleet.subscribed.set(f64::from(u8::from(subscribed)));
        }
        #[cfg(not(feature = "metrics"))]
        let _ = subscribed;
    }

    #[inline]
    pub(crate) fn answered(&self, outcome: Outcome) {
        #[cfg(feature = "metrics")]
        self.handles.requests[outcome as usize].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = outcome;
    }

    #[inline]
    pub(crate) fn looked_up(&self, result: CacheResult) {
        #[cfg(feature = "metrics")]
        self.handles.cache[result as usize].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = result;
    }

    #[inline]
    pub(crate) fn call_started(&self) {
        #[cfg(feature = "metrics")]
        self.handles.in_flight.increment(1.0);
    }

    #[inline]
    pub(crate) fn call_ended(&self, verdict: &Verdict, sent_at: Instant) {
        #[cfg(feature = "metrics")]
        {
            self.handles.in_flight.decrement(1.0);
            let kind = match verdict {
                Verdict::Allowed(_) => 0,
                Verdict::Rejected(_) => 1,
                Verdict::Undecided(_) => 2,
            };
            self.handles.upstream[kind].increment(1);
            self.handles
                .duration
                .record(sent_at.elapsed().as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (verdict, sent_at);
    }

    /// Sets the entry gauges from `counts` (called only with the feature on: it
    /// runs the cache's pending maintenance).
    #[inline]
    pub(crate) fn entries(&self, counts: impl FnOnce() -> CachedVerdicts) {
        #[cfg(feature = "metrics")]
        {
            let counts = counts();
            self.handles.entries[0].set(counts.sessions as f64);
            self.handles.entries[1].set(counts.rejections as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = counts;
    }
}

/// The handles themselves, registered with the application's recorder.
#[cfg(feature = "metrics")]
mod handles {
    use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

    /// Every handle of a layer, indexed by label (the enums' order).
    pub(super) struct LayerHandles {
        pub(super) requests: [Counter; 6],
        pub(super) cache: [Counter; 3],
        pub(super) upstream: [Counter; 3],
        pub(super) duration: Histogram,
        pub(super) in_flight: Gauge,
        pub(super) entries: [Gauge; 2],
        #[cfg_attr(not(feature = "redis"), allow(dead_code))]
        pub(super) fleet: Option<FleetHandles>,
    }

    /// The fleet's handles, registered only for a layer with one.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(super) struct FleetHandles {
        pub(super) results: [Counter; 3],
        pub(super) invalidations: [Counter; 2],
        pub(super) subscribed: Gauge,
    }

    impl LayerHandles {
        pub(super) fn new(fleet: bool) -> Self {
            let fleet = fleet.then(|| {
                FleetHandles {
                results: ["adopted", "verified", "alone"]
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
                "bad_request",
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
    }
}
