//! [`WebhookState`]: what every service and `verify` call of one
//! `ComposioWebhookLayer` shares, and a delivery's path through it, whatever
//! framework it comes through.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Method};

#[cfg(feature = "redis")]
use crate::verifier::fleet::RedisCache;
use crate::webhook::check::{Delivery, Rules};
use crate::webhook::deliveries::{Claim, Deliveries};
use crate::webhook::event::WebhookEvent;
use crate::webhook::instruments::{Delivered, DeliveryCounters};
use crate::webhook::rejection::WebhookRejection;
use crate::TRACING_TARGET;

/// One layer's rules, deliveries and metric handles.
pub(crate) struct WebhookState {
    pub(crate) rules: Rules,
    pub(crate) deliveries: Arc<Deliveries>,
    counters: DeliveryCounters,
}

impl WebhookState {
    pub(crate) fn new(rules: Rules) -> Self {
        let deliveries = Arc::new(Deliveries::new(rules.tolerance));
        Self::with(rules, deliveries)
    }

    fn with(rules: Rules, deliveries: Arc<Deliveries>) -> Self {
        Self {
            rules,
            deliveries,
            counters: DeliveryCounters::new(),
        }
    }

    /// As [`new`](Self::new), once-delivery holding across the replicas that
    /// share `cache` (`fleet.rs`).
    #[cfg(feature = "redis")]
    pub(crate) fn shared(rules: Rules, cache: &RedisCache) -> Self {
        let deliveries = Arc::new(Deliveries::shared(rules.tolerance, cache));
        Self::with(rules, deliveries)
    }

    /// The method and headers of a delivery, checked now (before its body is read).
    pub(crate) fn headers(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Delivery, WebhookRejection> {
        let checked = self.rules.headers(method, headers, SystemTime::now());
        self.counted(checked)
    }

    /// The delivery with its whole body: signature and payload.
    pub(crate) fn event(
        &self,
        delivery: Delivery,
        body: Bytes,
    ) -> Result<WebhookEvent, WebhookRejection> {
        let checked = self.rules.body(delivery, body);
        self.counted(checked)
    }

    /// `checked`, its rejection counted and logged.
    pub(crate) fn counted<T>(
        &self,
        checked: Result<T, WebhookRejection>,
    ) -> Result<T, WebhookRejection> {
        checked.map_err(|rejection| self.refused(rejection))
    }

    /// A rejection of this layer's, counted and logged (at `debug`: deliveries
    /// come from outside).
    pub(crate) fn refused(&self, rejection: WebhookRejection) -> WebhookRejection {
        tracing::debug!(target: TRACING_TARGET, reason = rejection.reason().as_str(), status = rejection.status().as_u16(), "webhook delivery refused");
        tracing::Span::current().record("outcome", rejection.reason().as_str());
        self.counters.rejected(rejection.reason());
        rejection
    }

    /// What became of a verified delivery: counted, and the span's `outcome`.
    pub(crate) fn delivered(&self, result: Delivered) {
        tracing::Span::current().record("outcome", result.as_str());
        self.counters.delivered(result);
    }

    /// The claim of a verified delivery: handle it, or answer 2xx at once.
    pub(crate) async fn claim(&self, event: &WebhookEvent) -> Claim {
        let claim = self.deliveries.claim(event.id()).await;
        match &claim {
            Claim::Acknowledged => {
                tracing::debug!(target: TRACING_TARGET, "webhook delivery already acknowledged; answered without the handler");
                self.delivered(Delivered::Duplicate);
            }
            #[cfg(feature = "redis")]
            Claim::Handle(ticket) if ticket.redis_unavailable() => self.redis_unavailable(),
            Claim::Handle(_) => {}
        }
        claim
    }

    /// A delivery handled with local deduplication only: the fleet's Redis could
    /// not be reached (logged by `fleet.rs`, at `warn` at most once a minute).
    #[cfg(feature = "redis")]
    fn redis_unavailable(&self) {
        self.counters.redis_unavailable();
    }
}
