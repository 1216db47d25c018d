//! [`Deliveries`]: each `webhook-id` reaches the inner service at most once at a
//! time, and never again once it answered 2xx.
//!
//! The rules, each kept in one place below:
//!
//! - **One at a time.** [`Deliveries::claim`] hands a [`Ticket`] to the first
//!   delivery of an id; a copy that arrives while the ticket lives waits for it
//!   (`in_progress`, under its lock), then looks again.
//! - **Acknowledged once, remembered.** A ticket finished with a 2xx records the id
//!   as acknowledged before it leaves `in_progress`, under the same lock: a copy
//!   that wakes finds it, and gets the 2xx without reaching the inner service.
//! - **Anything else lets the next copy through.** A ticket finished otherwise, or
//!   dropped (the request cancelled, the handler panicked), leaves `in_progress`
//!   without a record: the copy waiting, or Composio's retry, is handled.
//! - **Bounded.** Acknowledged ids are kept for [`Deliveries::retention`] from the
//!   last time a copy was seen, at most [`MAX_ACKNOWLEDGED`] of them; ids in
//!   progress are as many as requests in flight.
//!
//! With a fleet (feature `redis`, `shared_cache`), the same rules hold across
//! replicas (`fleet.rs`): a local claim is taken first, so copies on one replica
//! wait here, and only the first asks Redis; a ticket's claim in Redis is
//! acknowledged or released once the ticket has ended here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use moka::sync::Cache;
use tokio::sync::watch;

#[cfg(feature = "redis")]
use crate::verifier::fleet::RedisCache;
#[cfg(feature = "redis")]
use crate::webhook::fleet::{DeliveryFleet, FleetClaim, HeldClaim};

/// The most acknowledged ids a layer remembers; past it the least recently seen
/// are forgotten first (a replay of one of those within the tolerance would be
/// handled again).
pub const MAX_ACKNOWLEDGED: u64 = 100_000;

/// How long acknowledged ids are remembered when the timestamp check is off
/// (tolerance zero): a replay is then possible at any time, and this bounds
/// memory.
pub const RETENTION_WITHOUT_TOLERANCE: Duration = Duration::from_secs(24 * 3600);

/// How far apart two replicas' clocks (or this one's and Composio's) may be.
const CLOCK_ALLOWANCE: Duration = Duration::from_secs(60);

/// The deliveries of one layer: in progress, and acknowledged.
pub(crate) struct Deliveries {
    /// Each id being handled, and how its waiters learn it ended.
    in_progress: Mutex<HashMap<String, watch::Receiver<()>>>,
    acknowledged: Cache<String, ()>,
    /// The fleet's deliveries, with `shared_cache`.
    #[cfg(feature = "redis")]
    fleet: Option<Arc<DeliveryFleet>>,
}

/// What [`Deliveries::claim`] gives a delivery.
pub(crate) enum Claim {
    /// Handle it; finish the ticket with the answer.
    Handle(Ticket),
    /// Already acknowledged: answer 2xx without handling it.
    Acknowledged,
}

/// The right to hand one delivery to the inner service; see the module's rules.
pub(crate) struct Ticket {
    deliveries: Arc<Deliveries>,
    id: String,
    acknowledged: bool,
    /// Its standing in Redis, with a fleet: settled when the ticket ends.
    #[cfg(feature = "redis")]
    held: Option<HeldClaim>,
    /// Dropped with the ticket, which wakes the copies waiting.
    _done: watch::Sender<()>,
}

impl Deliveries {
    /// Deliveries checked against a timestamp `tolerance` (zero: off).
    pub(crate) fn new(tolerance: Duration) -> Self {
        Self::remembering(tolerance, MAX_ACKNOWLEDGED)
    }

    /// As [`new`](Self::new), remembering at most `capacity` acknowledged ids.
    fn remembering(tolerance: Duration, capacity: u64) -> Self {
        Self {
            in_progress: Mutex::new(HashMap::new()),
            acknowledged: Cache::builder()
                .name("composio-auth webhook deliveries")
                .max_capacity(capacity)
                // Least recently seen out first: moka's default admission would
                // refuse every new id once full (ids are looked up, never read).
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_live(Self::retention(tolerance))
                .build(),
            #[cfg(feature = "redis")]
            fleet: None,
        }
    }

    /// As [`new`](Self::new), the same rules holding across the replicas sharing
    /// `cache` (`fleet.rs`).
    #[cfg(feature = "redis")]
    pub(crate) fn shared(tolerance: Duration, cache: &RedisCache) -> Self {
        let fleet = DeliveryFleet::new(cache, Self::retention(tolerance));
        Self {
            fleet: Some(Arc::new(fleet)),
            ..Self::new(tolerance)
        }
    }

    /// How long an acknowledged id is remembered after a copy of it was last seen:
    /// a copy is accepted while its timestamp is within the tolerance of the clock,
    /// and a timestamp may be ahead by as much, so twice the tolerance, plus
    /// [`CLOCK_ALLOWANCE`]; [`RETENTION_WITHOUT_TOLERANCE`] with the check off.
    pub(crate) fn retention(tolerance: Duration) -> Duration {
        if tolerance.is_zero() {
            RETENTION_WITHOUT_TOLERANCE
        } else {
            tolerance * 2 + CLOCK_ALLOWANCE
        }
    }

    /// The claim of a delivery of `id`: waits while another copy is handled here,
    /// then, with a fleet, while one is handled on another replica.
    pub(crate) async fn claim(self: &Arc<Self>, id: &str) -> Claim {
        let claim = self.claim_here(id).await;
        #[cfg(feature = "redis")]
        if let Some(fleet) = &self.fleet {
            if let Claim::Handle(ticket) = claim {
                return Self::claim_in_fleet(fleet, ticket).await;
            }
        }
        claim
    }

    /// With the local claim `ticket`, the claim of its delivery in the fleet.
    #[cfg(feature = "redis")]
    async fn claim_in_fleet(fleet: &DeliveryFleet, mut ticket: Ticket) -> Claim {
        let held = ticket.held.insert(fleet.held(&ticket.id));
        match fleet.claim(held).await {
            FleetClaim::Handle => Claim::Handle(ticket),
            FleetClaim::Acknowledged => {
                // Acknowledged elsewhere: remembered here, nothing to write.
                ticket.held = None;
                ticket.finish(true);
                Claim::Acknowledged
            }
        }
    }

    /// The claim of a delivery of `id` on this replica.
    async fn claim_here(self: &Arc<Self>, id: &str) -> Claim {
        loop {
            let mut running = {
                let mut in_progress = self.in_progress();
                if self.acknowledged.contains_key(id) {
                    // Seen again: remembered from now on.
                    self.acknowledged.insert(id.to_owned(), ());
                    return Claim::Acknowledged;
                }
                match in_progress.get(id) {
                    Some(running) => running.clone(),
                    None => {
                        let (done, running) = watch::channel(());
                        in_progress.insert(id.to_owned(), running);
                        return Claim::Handle(Ticket {
                            deliveries: Arc::clone(self),
                            id: id.to_owned(),
                            acknowledged: false,
                            #[cfg(feature = "redis")]
                            held: None,
                            _done: done,
                        });
                    }
                }
            };
            tracing::debug!(target: crate::TRACING_TARGET, pause_point = crate::verifier::pause_point::DELIVERY_WAITING, "a copy of this delivery is being handled; waiting for its answer");
            // Ends when the ticket is dropped.
            let _ = running.changed().await;
        }
    }

    fn in_progress(&self) -> MutexGuard<'_, HashMap<String, watch::Receiver<()>>> {
        self.in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Ticket {
    /// Whether the delivery goes without the fleet's Redis (unreachable, or its
    /// breaker open): deduplicated on this replica only.
    #[cfg(feature = "redis")]
    pub(crate) fn redis_unavailable(&self) -> bool {
        self.held.as_ref().is_some_and(HeldClaim::unavailable)
    }

    /// Ends the delivery: acknowledged when the inner service answered 2xx.
    pub(crate) fn finish(mut self, acknowledged: bool) {
        self.acknowledged = acknowledged;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let deliveries = &self.deliveries;
        {
            let mut in_progress = deliveries.in_progress();
            if self.acknowledged {
                deliveries.acknowledged.insert(self.id.clone(), ());
            }
            in_progress.remove(&self.id);
        }
        // Then in Redis: a copy on another replica waits on the claim till then.
        #[cfg(feature = "redis")]
        if let (Some(fleet), Some(held)) = (&deliveries.fleet, self.held.take()) {
            fleet.settle(held, self.acknowledged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn ticket(claim: Claim) -> Ticket {
        match claim {
            Claim::Handle(ticket) => ticket,
            Claim::Acknowledged => panic!("expected to handle it"),
        }
    }

    #[tokio::test]
    async fn a_copy_waits_for_the_first_then_follows_its_answer() {
        let deliveries = Arc::new(Deliveries::new(Duration::from_secs(300)));
        let first = ticket(deliveries.claim("msg_1").await);
        let mut copy = Box::pin(deliveries.claim("msg_1"));
        assert!((&mut copy).now_or_never().is_none(), "waits");
        // Another id is not held up.
        ticket(deliveries.claim("msg_2").now_or_never().unwrap()).finish(false);
        first.finish(false);
        // The first failed: the copy handles it, acknowledges it...
        ticket(copy.await).finish(true);
        // ...and every later copy is answered without it.
        assert!(matches!(
            deliveries.claim("msg_1").await,
            Claim::Acknowledged
        ));
        assert_eq!(
            Deliveries::retention(Duration::from_secs(300)),
            Duration::from_secs(660)
        );
        assert_eq!(
            Deliveries::retention(Duration::ZERO),
            RETENTION_WITHOUT_TOLERANCE
        );
    }

    #[tokio::test]
    async fn a_full_memory_forgets_the_least_recently_seen_id_and_remembers_the_new_one() {
        let deliveries = Arc::new(Deliveries::remembering(Duration::from_secs(300), 10));
        for n in 0..10 {
            ticket(deliveries.claim(&format!("msg_{n}")).await).finish(true);
        }
        // msg_0 seen again: the most recent now.
        assert!(matches!(
            deliveries.claim("msg_0").await,
            Claim::Acknowledged
        ));
        for n in 10..15 {
            ticket(deliveries.claim(&format!("msg_{n}")).await).finish(true);
            deliveries.acknowledged.run_pending_tasks();
        }
        for n in [0, 10, 14] {
            let claim = deliveries.claim(&format!("msg_{n}")).await;
            assert!(matches!(claim, Claim::Acknowledged), "msg_{n} remembered");
        }
        // The least recently seen ones went first.
        ticket(deliveries.claim("msg_1").await).finish(false);
    }

    #[tokio::test]
    async fn a_ticket_dropped_unfinished_lets_the_next_copy_through() {
        let deliveries = Arc::new(Deliveries::new(Duration::from_secs(300)));
        drop(ticket(deliveries.claim("msg_1").await));
        ticket(deliveries.claim("msg_1").await).finish(true);
        assert!(matches!(
            deliveries.claim("msg_1").await,
            Claim::Acknowledged
        ));
    }
}
