//! The verdict cache: what the layer remembers about keys it has seen.
//!
//! - Two moka tiers with budgets of their own: valid sessions (`ttl`, plus the
//!   `stale_if_error` window) and rejections (`negative_ttl`), so a flood of bad keys
//!   can never evict a valid session.
//! - Keyed by a salted SHA-256 digest of the base URL, the credential header and the
//!   key (see `digest.rs`); the key itself is never stored.
//! - Lookups are synchronous (`moka::sync::Cache::get`): a hit costs no `await` and no
//!   allocation.
//! - Misses are coalesced: the first request for a digest starts one verification
//!   task, later ones join it. The task is spawned, so a client that disconnects
//!   neither cancels nor re-runs the verification for the others, and the verdict is
//!   cached even if every caller has gone.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::Shared;
use moka::sync::Cache;
use moka::Expiry;

use crate::credential::CredentialHeader;
use crate::digest::{Digest, DigestHasher, Digester};
use crate::envelope::Rejection;
use crate::front;
use crate::session::{Age, SessionInfo};
use crate::verify::Verdict;

/// A verification in flight, awaited by every request for its digest.
pub(crate) type Verification = Shared<Pin<Box<dyn Future<Output = Verdict> + Send>>>;

/// Fraction of the TTL after which a hit starts one background re-verification.
const REFRESH_AHEAD_AT: f64 = 0.8;

/// Sizes and lifetimes of the cache, validated by the builder.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CachePolicy {
    pub(crate) ttl: Duration,
    pub(crate) negative_ttl: Duration,
    pub(crate) stale_if_error: Duration,
    pub(crate) max_capacity: u64,
    pub(crate) negative_max_capacity: u64,
    pub(crate) refresh_ahead: bool,
}

/// What the cache knows about a digest.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// A valid session younger than `ttl`. `refresh` is set for the one request that
    /// should start a refresh-ahead.
    Fresh { session: SessionInfo, refresh: bool },
    /// A cached rejection.
    Rejected(Arc<Rejection>),
    /// Nothing usable: verify. `stale` is a session past `ttl` but inside the
    /// `stale_if_error` window, to serve if the verification is undecided.
    Miss { stale: Option<SessionInfo> },
}

pub(crate) struct VerdictCache {
    /// Unique per cache, for the per-thread front.
    id: u64,
    /// How long after its verification a session is served without asking moka.
    fresh_for: Duration,
    policy: CachePolicy,
    digester: Digester,
    sessions: Cache<Digest, SessionInfo, DigestHasher>,
    rejections: Cache<Digest, Arc<Rejection>, DigestHasher>,
    in_flight: Mutex<HashMap<Digest, Verification>>,
    /// Bumped by every invalidation; a verification that started before one does not
    /// leave its verdict in the cache.
    generation: AtomicU64,
}

impl VerdictCache {
    pub(crate) fn new(policy: CachePolicy, base_url: &str) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let refresh_after = if policy.refresh_ahead {
            policy.ttl.mul_f64(REFRESH_AHEAD_AT)
        } else {
            policy.ttl
        };
        let sessions = Cache::builder()
            .name("composio-auth sessions")
            .max_capacity(policy.max_capacity)
            .time_to_live(policy.ttl + policy.stale_if_error)
            .expire_after(AgeWatch {
                // Without refresh-ahead, entries go from fresh to expired directly.
                refresh_after,
                ttl: policy.ttl,
            })
            .build_with_hasher(DigestHasher::default());
        let rejections = Cache::builder()
            .name("composio-auth rejections")
            .max_capacity(policy.negative_max_capacity)
            .time_to_live(policy.negative_ttl.max(Duration::from_millis(1)))
            .build_with_hasher(DigestHasher::default());
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            fresh_for: refresh_after,
            policy,
            digester: Digester::new(base_url),
            sessions,
            rejections,
            in_flight: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    pub(crate) fn digest(&self, header: CredentialHeader, key: &[u8]) -> Digest {
        self.digester.digest(header, key)
    }

    /// The per-thread front first (one clock read), then moka, whose entries carry an
    /// [`Age`] that [`AgeWatch`] brings up to date inside `get` from the time moka
    /// reads anyway.
    pub(crate) fn lookup(&self, digest: &Digest) -> Lookup {
        // Read before moka: see `invalidate` for why this order keeps the front exact.
        let generation = self.generation.load(Ordering::SeqCst);
        let now = Instant::now();
        if let Some(session) = front::get(self.id, digest, generation, now) {
            return Lookup::Fresh {
                session,
                refresh: false,
            };
        }
        if let Some(session) = self.sessions.get(digest) {
            return match session.age() {
                Age::Fresh => {
                    let fresh_until = session.verified() + self.fresh_for;
                    front::offer(self.id, *digest, generation, now, fresh_until, &session);
                    Lookup::Fresh {
                        session,
                        refresh: false,
                    }
                }
                Age::RefreshDue => {
                    let refresh = session.claim_refresh();
                    Lookup::Fresh { session, refresh }
                }
                // moka keeps sessions `ttl + stale_if_error`: this one is usable stale.
                Age::Expired => Lookup::Miss {
                    stale: Some(session),
                },
            };
        }
        if let Some(rejection) = self.rejections.get(digest) {
            return Lookup::Rejected(rejection);
        }
        Lookup::Miss { stale: None }
    }

    /// The verification in flight for `digest`; or, if a verdict landed since the
    /// caller's lookup, that lookup; or a new verification made by `start`.
    ///
    /// `recheck` is off for a refresh-ahead, which starts although the entry is fresh.
    pub(crate) fn join_or_start(
        &self,
        digest: &Digest,
        recheck: bool,
        start: impl FnOnce(u64) -> Verification,
    ) -> Result<Verification, Lookup> {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // An entry whose result is already out belongs to a task that never ran (its
        // runtime shut down before polling it): replace it.
        if let Some(verification) = in_flight.get(digest).filter(|v| v.peek().is_none()) {
            tracing::debug!(target: crate::TRACING_TARGET, "joining the verification in flight");
            return Ok(verification.clone());
        }
        // A verification that finished between the caller's lookup and this lock
        // has cached its verdict (it inserts before it leaves `in_flight`).
        if recheck {
            match self.lookup(digest) {
                found @ (Lookup::Fresh { .. } | Lookup::Rejected(_)) => return Err(found),
                Lookup::Miss { .. } => {}
            }
        }
        let verification = start(self.generation.load(Ordering::SeqCst));
        in_flight.insert(*digest, verification.clone());
        Ok(verification)
    }

    /// Caches a verification's verdict, unless an invalidation happened since the
    /// verification started. Called by the verification task before it leaves
    /// `in_flight` (see [`InFlight`]).
    pub(crate) fn settle(&self, digest: &Digest, verdict: &Verdict, generation: u64) {
        match verdict {
            Verdict::Allowed(session) => {
                self.rejections.invalidate(digest);
                self.sessions.insert(*digest, session.clone());
            }
            Verdict::Rejected(rejection) => {
                self.sessions.invalidate(digest);
                if !self.policy.negative_ttl.is_zero() {
                    self.rejections.insert(*digest, rejection.clone());
                }
            }
            Verdict::Undecided(_) => return,
        }
        // Either this load sees the invalidation, or the invalidation's removal comes
        // after the insert above: no stale verdict survives either way.
        if self.generation.load(Ordering::SeqCst) != generation {
            self.sessions.invalidate(digest);
            self.rejections.invalidate(digest);
        }
    }

    pub(crate) fn in_flight(self: &Arc<Self>, digest: Digest) -> InFlight {
        InFlight {
            cache: Arc::clone(self),
            digest,
        }
    }

    /// Bumps the generation before and after removing: the first bump keeps a
    /// verification in flight from re-filling the cache (see `settle`), the second
    /// voids any per-thread front slot filled from an entry read while it was being
    /// removed.
    pub(crate) fn invalidate(&self, digests: impl IntoIterator<Item = Digest>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for digest in digests {
            self.sessions.invalidate(&digest);
            self.rejections.invalidate(&digest);
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// As [`invalidate`](Self::invalidate), for every entry.
    pub(crate) fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.sessions.invalidate_all();
        self.rejections.invalidate_all();
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Sessions and rejections held now (after pending maintenance).
    pub(crate) fn entry_counts(&self) -> (u64, u64) {
        self.sessions.run_pending_tasks();
        self.rejections.run_pending_tasks();
        (self.sessions.entry_count(), self.rejections.entry_count())
    }

    /// A session is stale-usable if younger than `ttl + stale_if_error`.
    pub(crate) fn usable_stale(&self, session: &SessionInfo) -> bool {
        session.verified().elapsed() < self.policy.ttl + self.policy.stale_if_error
    }
}

/// Brings a session's [`Age`] up to date each time moka reads it, from moka's own
/// reading of the clock and the entry's insertion time. Changes no expiry.
struct AgeWatch {
    refresh_after: Duration,
    ttl: Duration,
}

impl Expiry<Digest, SessionInfo> for AgeWatch {
    fn expire_after_read(
        &self,
        _digest: &Digest,
        session: &SessionInfo,
        read_at: Instant,
        duration_until_expiry: Option<Duration>,
        last_modified_at: Instant,
    ) -> Option<Duration> {
        let age = read_at.saturating_duration_since(last_modified_at);
        if age >= self.ttl {
            session.grow_to(Age::Expired);
        } else if age >= self.refresh_after {
            session.grow_to(Age::RefreshDue);
        }
        duration_until_expiry
    }
}

/// Held by a verification task: removes the task's entry from `in_flight` when the
/// task ends, however it ends (verdict, panic, or runtime shutdown).
pub(crate) struct InFlight {
    cache: Arc<VerdictCache>,
    digest: Digest,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.cache
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.digest);
    }
}

/// Age of a session, for logs.
pub(crate) fn age_ms(session: &SessionInfo) -> u128 {
    Instant::now()
        .saturating_duration_since(session.verified())
        .as_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::session::SessionDocument;
    use futures_util::FutureExt;

    fn policy() -> CachePolicy {
        CachePolicy {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            stale_if_error: Duration::ZERO,
            max_capacity: 100,
            negative_max_capacity: 100,
            refresh_ahead: true,
        }
    }

    fn document() -> SessionDocument {
        serde_json::from_value(serde_json::json!({
            "project": null, "api_key": null,
            "org_member": {"id": "m", "email": "a@b.c", "name": "A", "role": "admin"}
        }))
        .unwrap()
    }

    fn ready(verdict: Verdict) -> Verification {
        let future: Pin<Box<dyn Future<Output = Verdict> + Send>> =
            Box::pin(async move { verdict });
        future.shared()
    }

    #[test]
    fn settle_then_lookup() {
        let cache = VerdictCache::new(policy(), "u");
        let (good, bad, unsure) = (
            Digest::from_bytes([1; 32]),
            Digest::from_bytes([2; 32]),
            Digest::from_bytes([3; 32]),
        );
        let session = SessionInfo::new(document());
        cache.settle(&good, &Verdict::Allowed(session.clone()), 0);
        cache.settle(&bad, &Verdict::Rejected(Arc::new(Rejection::deleted())), 0);
        cache.settle(&unsure, &Verdict::undecided("down", None), 0);
        assert!(
            matches!(cache.lookup(&good), Lookup::Fresh { session: s, refresh: false } if s.same_entry(&session))
        );
        assert!(matches!(cache.lookup(&bad), Lookup::Rejected(_)));
        assert!(matches!(
            cache.lookup(&unsure),
            Lookup::Miss { stale: None }
        ));
    }

    #[test]
    fn a_verdict_from_before_an_invalidation_is_not_kept() {
        let cache = VerdictCache::new(policy(), "u");
        let generation = cache.generation.load(Ordering::SeqCst);
        cache.invalidate([Digest::from_bytes([1; 32])]);
        cache.settle(
            &Digest::from_bytes([1; 32]),
            &Verdict::Allowed(SessionInfo::new(document())),
            generation,
        );
        assert!(matches!(
            cache.lookup(&Digest::from_bytes([1; 32])),
            Lookup::Miss { .. }
        ));
    }

    #[test]
    fn a_rejection_replaces_a_session_and_back() {
        let cache = VerdictCache::new(policy(), "u");
        let d = Digest::from_bytes([1; 32]);
        cache.settle(&d, &Verdict::Allowed(SessionInfo::new(document())), 0);
        cache.settle(&d, &Verdict::Rejected(Arc::new(Rejection::deleted())), 0);
        assert!(matches!(cache.lookup(&d), Lookup::Rejected(_)));
        cache.settle(&d, &Verdict::Allowed(SessionInfo::new(document())), 0);
        assert!(matches!(cache.lookup(&d), Lookup::Fresh { .. }));
    }

    #[test]
    fn zero_negative_ttl_caches_no_rejection() {
        let cache = VerdictCache::new(
            CachePolicy {
                negative_ttl: Duration::ZERO,
                ..policy()
            },
            "u",
        );
        cache.settle(
            &Digest::from_bytes([1; 32]),
            &Verdict::Rejected(Arc::new(Rejection::deleted())),
            0,
        );
        assert!(matches!(
            cache.lookup(&Digest::from_bytes([1; 32])),
            Lookup::Miss { stale: None }
        ));
    }

    #[test]
    fn aged_sessions_ask_for_refresh_once_then_go_stale() {
        let cache = VerdictCache::new(policy(), "u");
        let d = Digest::from_bytes([1; 32]);
        let session = SessionInfo::new(document());
        cache.settle(&d, &Verdict::Allowed(session.clone()), 0);
        // (Aged before any lookup: a fresh lookup would put it in this thread's front.)
        session.grow_to(Age::RefreshDue);
        assert!(matches!(
            cache.lookup(&d),
            Lookup::Fresh { refresh: true, .. }
        ));
        assert!(matches!(
            cache.lookup(&d),
            Lookup::Fresh { refresh: false, .. }
        ));
        session.grow_to(Age::Expired);
        assert!(matches!(cache.lookup(&d), Lookup::Miss { stale: Some(_) }));
    }

    #[test]
    fn the_front_serves_fresh_sessions_until_an_invalidation() {
        let cache = VerdictCache::new(policy(), "u");
        let d = Digest::from_bytes([2; 32]);
        let session = SessionInfo::new(document());
        cache.settle(&d, &Verdict::Allowed(session.clone()), 0);
        assert!(matches!(cache.lookup(&d), Lookup::Fresh { .. }));
        // Served from the front now: moka's own ageing is not consulted...
        session.grow_to(Age::Expired);
        assert!(
            matches!(cache.lookup(&d), Lookup::Fresh { session: s, .. } if s.same_entry(&session))
        );
        // ...until an invalidation, which the front obeys at once.
        cache.invalidate([d]);
        assert!(matches!(cache.lookup(&d), Lookup::Miss { stale: None }));
        // Another cache never sees this one's front.
        let other = VerdictCache::new(policy(), "u");
        assert!(matches!(other.lookup(&d), Lookup::Miss { stale: None }));
    }

    #[test]
    fn moka_reads_age_the_entry() {
        let watch = AgeWatch {
            refresh_after: Duration::from_secs(8),
            ttl: Duration::from_secs(10),
        };
        let session = SessionInfo::new(document());
        let d = Digest::from_bytes([1; 32]);
        let inserted = Instant::now();
        let read = |secs| {
            watch.expire_after_read(
                &d,
                &session,
                inserted + Duration::from_secs(secs),
                Some(Duration::from_secs(1)),
                inserted,
            )
        };
        assert_eq!(read(1), Some(Duration::from_secs(1)), "expiry unchanged");
        assert_eq!(session.age(), Age::Fresh);
        read(8);
        assert_eq!(session.age(), Age::RefreshDue);
        read(10);
        assert_eq!(session.age(), Age::Expired);
    }

    #[test]
    fn concurrent_misses_share_one_verification_until_it_leaves() {
        let cache = Arc::new(VerdictCache::new(policy(), "u"));
        let d = Digest::from_bytes([7; 32]);
        let mut starts = 0;
        let first = cache.join_or_start(&d, true, |_| {
            starts += 1;
            ready(Verdict::undecided("x", None))
        });
        let second = cache.join_or_start(&d, true, |_| {
            starts += 1;
            ready(Verdict::undecided("x", None))
        });
        assert_eq!(starts, 1);
        assert!(first.unwrap().ptr_eq(&second.unwrap()));
        drop(cache.in_flight(d));
        let third = cache.join_or_start(&d, true, |_| {
            starts += 1;
            ready(Verdict::undecided("x", None))
        });
        assert!(third.is_ok());
        assert_eq!(starts, 2);
    }

    #[test]
    fn a_verdict_that_landed_meanwhile_is_used() {
        let cache = VerdictCache::new(policy(), "u");
        cache.settle(
            &Digest::from_bytes([1; 32]),
            &Verdict::Allowed(SessionInfo::new(document())),
            0,
        );
        let found = cache.join_or_start(&Digest::from_bytes([1; 32]), true, |_| {
            unreachable!("must not start")
        });
        assert!(matches!(found, Err(Lookup::Fresh { .. })));
    }

    #[test]
    fn rejections_cannot_evict_sessions() {
        let cache = VerdictCache::new(
            CachePolicy {
                max_capacity: 10,
                negative_max_capacity: 10,
                ..policy()
            },
            "u",
        );
        cache.settle(
            &Digest::from_bytes([0; 32]),
            &Verdict::Allowed(SessionInfo::new(document())),
            0,
        );
        let rejection = Arc::new(Rejection::deleted());
        for i in 0..1000u32 {
            let mut d = [0; 32];
            d[..4].copy_from_slice(&i.to_be_bytes());
            d[31] = 1;
            let d = Digest::from_bytes(d);
            cache.settle(&d, &Verdict::Rejected(rejection.clone()), 0);
        }
        let (sessions, rejections) = cache.entry_counts();
        assert_eq!(sessions, 1);
        assert!(rejections <= 10, "{rejections}");
        assert!(matches!(
            cache.lookup(&Digest::from_bytes([0; 32])),
            Lookup::Fresh { .. }
        ));
    }
}
