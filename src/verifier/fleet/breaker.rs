//! The circuit breaker in front of Redis: after [`FAILURES_TO_OPEN`] failures in a
//! row, no request touches Redis for [`COOL_DOWN`]; then one request at a time
//! probes it, and the first success closes the breaker. While it is open the layer
//! works exactly as it does without Redis. Transitions are logged (a warning when
//! sharing pauses, info when it resumes), not every failure.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::TRACING_TARGET;

/// Consecutive failures that open the breaker.
pub(crate) const FAILURES_TO_OPEN: u32 = 3;

/// How long an open breaker keeps requests off Redis before letting one probe.
pub(crate) const COOL_DOWN: Duration = Duration::from_millis(500);

pub(crate) struct Breaker {
    started: Instant,
    failures: AtomicU32,
    /// Milliseconds since `started` until which requests stay off Redis; 0: closed.
    open_until: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        // Never 0, which means closed.
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Whether this request may use Redis: always while closed; while open, only
    /// once the cool-down is over, and then one request at a time.
    pub(crate) fn allows(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        self.now_ms() >= until
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Whether requests are kept off Redis now.
    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    pub(crate) fn succeeded(&self) {
        self.failures.store(0, Ordering::Release);
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!(target: TRACING_TARGET, pause_point = crate::verifier::pause_point::BREAKER_CLOSED, "Redis answers again; sharing verdicts resumes");
        }
        self.probing.store(false, Ordering::Release);
    }

    pub(crate) fn failed(&self, error: &dyn std::fmt::Display) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let probing = self.probing.swap(false, Ordering::AcqRel);
        if failures >= FAILURES_TO_OPEN || probing {
            let until = self.now_ms() + COOL_DOWN.as_millis() as u64;
            if self.open_until.swap(until, Ordering::AcqRel) == 0 {
                tracing::warn!(target: TRACING_TARGET, pause_point = crate::verifier::pause_point::BREAKER_OPENED, %error, "Redis fails; verdicts are not shared until it answers again");
            }
        } else {
            tracing::debug!(target: TRACING_TARGET, %error, "a Redis operation failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_probes_one_at_a_time() {
        let breaker = Breaker::new();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            assert!(breaker.allows());
            breaker.failed(&"down");
        }
        breaker.succeeded();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            breaker.failed(&"down");
        }
        assert!(!breaker.is_open(), "a success resets the count");
        breaker.failed(&"down");
        assert!(breaker.is_open());
        assert!(!breaker.allows());
        // After the cool-down (moved back rather than waited for), one probe.
        breaker.open_until.store(1, Ordering::Release);
        assert!(breaker.allows());
        assert!(!breaker.allows(), "one probe at a time");
        breaker.failed(&"still down");
        assert!(
            breaker.is_open() && !breaker.allows(),
            "a failed probe reopens"
        );
        breaker.open_until.store(1, Ordering::Release);
        assert!(breaker.allows());
        breaker.succeeded();
        assert!(!breaker.is_open() && breaker.allows() && breaker.allows());
    }
}
