//! The webhook guard's metrics (feature `metrics`), through the `metrics` facade,
//! registered when the layer is built: a delivery only bumps atomics. No label
//! carries an id, a body byte or a secret. The metrics: the crate's
//! `guide::metrics`. Without the feature every method here is empty.

use crate::webhook::rejection::Reason;

/// What became of a verified delivery: the `result` label of
/// `composio_auth_webhook_deliveries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// The handler answered 2xx: acknowledged.
    Handled,
    /// The handler answered otherwise (or failed): Composio retries.
    Failed,
    /// A copy of an acknowledged delivery, answered 200 without the handler.
    Duplicate,
}

impl Delivered {
    #[cfg(feature = "metrics")]
    const ALL: [Self; 3] = [Self::Handled, Self::Failed, Self::Duplicate];

    /// The label, and the span's `outcome`.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Handled => "handled",
            Self::Failed => "failed",
            Self::Duplicate => "duplicate",
        }
    }
}

/// One layer's webhook metric handles.
pub(crate) struct DeliveryCounters {
    #[cfg(feature = "metrics")]
    delivered: [metrics::Counter; 3],
    #[cfg(feature = "metrics")]
    rejected: [metrics::Counter; 7],
    #[cfg(feature = "metrics")]
    redis_unavailable: metrics::Counter,
}

impl DeliveryCounters {
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            delivered: Delivered::ALL.map(|result| {
                metrics::counter!("composio_auth_webhook_deliveries_total", "result" => result.as_str())
            }),
            #[cfg(feature = "metrics")]
            rejected: Reason::ALL.map(|reason| {
                metrics::counter!("composio_auth_webhook_rejections_total", "reason" => reason.as_str())
            }),
            #[cfg(feature = "metrics")]
            redis_unavailable: metrics::counter!("composio_auth_webhook_redis_unavailable_total"),
        }
    }

    /// A verified delivery's end.
    #[inline]
    pub(crate) fn delivered(&self, result: Delivered) {
        #[cfg(feature = "metrics")]
        self.delivered[result as usize].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = result;
    }

    /// A delivery refused for `reason`.
    #[inline]
    pub(crate) fn rejected(&self, reason: Reason) {
        #[cfg(feature = "metrics")]
        self.rejected[reason as usize].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = reason;
    }

    /// A delivery handled with local deduplication only: the fleet's Redis could
    /// not be reached.
    #[inline]
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn redis_unavailable(&self) {
        #[cfg(feature = "metrics")]
        self.redis_unavailable.increment(1);
    }
}

impl std::fmt::Debug for DeliveryCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeliveryCounters")
    }
}
