//! The verdict cache: what the layer remembers about keys it has seen.
//!
//! - Two moka tiers with capacities of their own: valid sessions (`ttl`, plus the
//!   `stale_if_error` window) and rejections (`negative_ttl`), so a flood of bad keys
//!   can never evict a valid session.
//! - Keyed by a keyed 128-bit digest of the base URL, the credential header and the
//!   key (see `digest.rs`); the key itself is never stored.
//! - Lookups are synchronous (`moka::sync::Cache::get`, after the per-thread front in
//!   `front.rs`): a hit costs no `await` and no allocation.
//! - A verdict's age counts from the moment its upstream request was sent, not from
//!   its insertion: the `Expiry` below gives each entry what is left of its lifetime.
//! - When something newer is known about a key (an invalidation, or a refusal of a
//!   key that had a session), the key's [`Revocations`] stripe is bumped before the
//!   call returns. A per-thread front slot and a stale session remember the stripe's
//!   count from when they were read, and are not served once it moved: so no front
//!   and no `stale_if_error` serves a verdict from before, even for a session moka
//!   had already evicted that some request still holds. (Marking the sessions
//!   themselves through moka's eviction listener cost about 1.5 KiB per cached
//!   session.)
//!
//! Writes ([`VerdictCache::settle`], [`VerdictCache::remove`],
//! [`VerdictCache::clear`]) are made only by `verification.rs`, under the lock of
//! its in-flight map, which is what orders a verdict against an invalidation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use crate::verifier::credential::{Credential, CredentialHeader};
use crate::verifier::digest::{Digest, DigestHasher, Digester};
use crate::verifier::envelope::Refusal;
use crate::verifier::front;
use crate::verifier::session::{Age, SessionInfo};
use crate::verifier::upstream::Verdict;

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

impl CachePolicy {
    /// How long a session may be kept after its verification: `ttl +
    /// stale_if_error`.
    pub(crate) fn session_life(&self) -> Duration {
        self.ttl + self.stale_if_error
    }

    /// How long a verdict is served as decided: a session's `ttl`, a rejection's
    /// `negative_ttl` (by the verdict's kind: a 200 for a deleted key is a
    /// rejection).
    #[cfg(feature = "redis")]
    pub(crate) fn fresh_for(&self, verdict: &Verdict) -> Duration {
        match verdict {
            Verdict::Allowed(_) => self.ttl,
            _ => self.negative_ttl,
        }
    }

    /// How long a verdict is kept: a session also for its `stale_if_error` window
    /// (a fallback while Composio cannot decide, never a verdict).
    #[cfg(feature = "redis")]
    pub(crate) fn kept_for(&self, verdict: &Verdict) -> Duration {
        match verdict {
            Verdict::Allowed(_) => self.session_life(),
            _ => self.negative_ttl,
        }
    }

    /// The longest any verdict is kept.
    pub(crate) fn longest_life(&self) -> Duration {
        self.session_life().max(self.negative_ttl)
    }
}

/// How many verdicts a layer's cache holds, from
/// [`ComposioAuthLayer::cached`](crate::ComposioAuthLayer::cached).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CachedVerdicts {
    /// Valid sessions (including those kept only for `stale_if_error`).
    pub sessions: u64,
    /// Rejections.
    pub rejections: u64,
}

/// What the cache finds for a digest.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// A verdict to answer with.
    Hit(Cached),
    /// Nothing usable: verify. `stale` is a session past `ttl` but inside the
    /// `stale_if_error` window, to serve if the verification is undecided.
    Miss { stale: Option<Stale> },
}

/// A cached verdict.
#[derive(Debug)]
pub(crate) enum Cached {
    /// A valid session younger than `ttl`. `refresh` is set for the one request that
    /// should start a refresh-ahead.
    Fresh { session: SessionInfo, refresh: bool },
    /// A cached rejection.
    Rejected(Arc<Refusal>),
}

/// A session past its TTL, kept for `stale_if_error`.
#[derive(Debug)]
pub(crate) struct Stale {
    session: SessionInfo,
    /// The end of its `stale_if_error` window.
    until: Instant,
    revocations: Arc<Revocations>,
    /// Its key's revocation count when it was read.
    mark: u64,
    digest: Digest,
}

impl Stale {
    /// The session, if it may still be served now: inside its window, and nothing
    /// newer is known about its key (no refusal, no invalidation) since it was read.
    pub(crate) fn usable(self) -> Option<SessionInfo> {
        let unchanged = self.revocations.mark(&self.digest) == self.mark;
        (Instant::now() < self.until && unchanged).then_some(self.session)
    }
}

/// Per stripe of digests, how many times a verdict was revoked (invalidated, or a
/// session refused). Striped so that the count is bounded memory and one atomic
/// load on a hit; a revocation also voids the front slots of the other keys in its
/// stripe (one in [`Revocations::STRIPES`]), which then read moka once.
#[derive(Debug)]
pub(crate) struct Revocations {
    counts: Box<[AtomicU64]>,
}

impl Revocations {
    const STRIPES: usize = 4096;

    fn new() -> Self {
        Self {
            counts: (0..Self::STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn stripe(&self, digest: &Digest) -> &AtomicU64 {
        &self.counts[digest.stripe(Self::STRIPES)]
    }

    /// The count for `digest` now.
    #[inline]
    pub(crate) fn mark(&self, digest: &Digest) -> u64 {
        self.stripe(digest).load(Ordering::SeqCst)
    }

    /// Records that what was known about `digest` is void.
    fn revoke(&self, digest: &Digest) {
        self.stripe(digest).fetch_add(1, Ordering::SeqCst);
    }

    fn revoke_all(&self) {
        for count in self.counts.iter() {
            count.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A rejected verdict's refusal, and when the call that produced it was sent.
#[derive(Clone)]
struct CachedRejection {
    refusal: Arc<Refusal>,
    sent_at: Instant,
}

pub(crate) struct VerdictCache {
    /// Unique per cache, for the per-thread front.
    id: u64,
    /// How long after its verification a session is served without asking moka.
    fresh_for: Duration,
    policy: CachePolicy,
    digester: Digester,
    sessions: Cache<Digest, SessionInfo, DigestHasher>,
    rejections: Cache<Digest, CachedRejection, DigestHasher>,
    revocations: Arc<Revocations>,
}

impl VerdictCache {
    #[cfg(test)]
    pub(crate) fn new(policy: CachePolicy, base_url: &str) -> Self {
        Self::keyed(policy, base_url, None)
    }

    /// A cache whose digests are keyed with `secret` (shared by a fleet's replicas),
    /// or with a random secret of its own.
    pub(crate) fn keyed(policy: CachePolicy, base_url: &str, secret: Option<(u64, u64)>) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let refresh_after = if policy.refresh_ahead {
            policy.ttl.mul_f64(REFRESH_AHEAD_AT)
        } else {
            policy.ttl
        };
        let sessions = Cache::builder()
            .name("composio-auth sessions")
            .max_capacity(policy.max_capacity)
            .expire_after(SessionLife {
                // Without refresh-ahead, entries go from fresh to expired directly.
                refresh_after,
                ttl: policy.ttl,
                kept: policy.session_life(),
            })
            .build_with_hasher(DigestHasher::default());
        let rejections = Cache::builder()
            .name("composio-auth rejections")
            .max_capacity(policy.negative_max_capacity)
            .expire_after(RejectionLife {
                negative_ttl: policy.negative_ttl,
            })
            .build_with_hasher(DigestHasher::default());
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            fresh_for: refresh_after,
            policy,
            digester: Digester::new(base_url, secret),
            sessions,
            rejections,
            revocations: Arc::new(Revocations::new()),
        }
    }

    /// How long a session may be kept after its verification: `ttl +
    /// stale_if_error`.
    pub(crate) fn session_life(&self) -> Duration {
        self.policy.session_life()
    }

    #[inline]
    pub(crate) fn digest(&self, header: CredentialHeader, key: &[u8]) -> Digest {
        self.digester.digest(header, key)
    }

    /// The digest `credential`'s verdict is cached under: its scope's for a user
    /// key with selectors, else its key's (as the header it is verified as).
    #[inline]
    pub(crate) fn digest_of(&self, credential: &Credential<'_>) -> Digest {
        match credential.scope {
            Some(scope) => self.digester.scoped_digest(credential.key, scope),
            None => self.digest(credential.header.verified_as(), credential.key),
        }
    }

    /// The cached refusal of the key whose digest is `key`, if Composio refused
    /// the key itself (not only one of its scopes): it covers every scope.
    pub(crate) fn key_refusal(&self, key: &Digest) -> Option<Arc<Refusal>> {
        self.rejections
            .get(key)
            .map(|cached| cached.refusal)
            .filter(|refusal| refusal.refuses_key())
    }

    /// Settles `refusal` (a refusal of the key itself, from a call sent at
    /// `sent_at`) under each of `digests` whose session, if any, was verified
    /// before that call: a newer session is newer news.
    pub(crate) fn refuse_sessions_before(
        &self,
        digests: &[&Digest],
        refusal: &Verdict,
        sent_at: Instant,
    ) {
        for digest in digests.iter().copied() {
            let newer = self
                .sessions
                .get(digest)
                .is_some_and(|s| s.verified() > sent_at);
            if !newer {
                self.settle(digest, refusal, sent_at);
            }
        }
    }

    /// Drops the sessions of `scopes` verified before `sent_at` (and revokes them):
    /// the scopes of a key Composio refused in a call sent then.
    pub(crate) fn drop_sessions_before<'a>(
        &self,
        scopes: impl IntoIterator<Item = &'a Digest>,
        sent_at: Instant,
    ) {
        for scope in scopes {
            if self
                .sessions
                .get(scope)
                .is_some_and(|s| s.verified() <= sent_at)
            {
                self.remove_session(scope);
            }
        }
    }

    /// The longest a verdict settled now may stay cached.
    pub(crate) fn longest_life(&self) -> Duration {
        self.policy.longest_life()
    }

    /// The per-thread front first (one clock read), then moka, whose entries carry an
    /// [`Age`] that [`SessionLife`] brings up to date inside `get` from the time moka
    /// reads anyway.
    #[inline]
    pub(crate) fn lookup(&self, digest: &Digest) -> Lookup {
        // Read before moka: a revocation bumps it after removing, so a session read
        // from moka before the removal is offered to the front with the old count.
        let mark = self.revocations.mark(digest);
        let now = Instant::now();
        match front::get(self.id, digest, mark, now) {
            Some(session) => Lookup::Hit(Cached::Fresh {
                session,
                refresh: false,
            }),
            None => self.lookup_behind_front(digest, mark, now),
        }
    }

    /// Moka, then the rejections: what [`VerdictCache::lookup`] does when this
    /// thread's front has nothing for `digest`.
    fn lookup_behind_front(&self, digest: &Digest, mark: u64, now: Instant) -> Lookup {
        if let Some(session) = self.sessions.get(digest) {
            return match session.age() {
                Age::Fresh => {
                    let fresh_until = session.verified() + self.fresh_for;
                    front::offer(self.id, *digest, mark, now, fresh_until, &session);
                    Lookup::Hit(Cached::Fresh {
                        session,
                        refresh: false,
                    })
                }
                Age::RefreshDue => {
                    let refresh = session.claim_refresh();
                    Lookup::Hit(Cached::Fresh { session, refresh })
                }
                // moka keeps sessions `ttl + stale_if_error`: this one is usable stale.
                Age::Expired => {
                    let until = session.verified() + self.policy.session_life();
                    let stale = Stale {
                        session,
                        until,
                        revocations: Arc::clone(&self.revocations),
                        mark,
                        digest: *digest,
                    };
                    Lookup::Miss { stale: Some(stale) }
                }
            };
        }
        if let Some(cached) = self.rejections.get(digest) {
            return Lookup::Hit(Cached::Rejected(cached.refusal));
        }
        Lookup::Miss { stale: None }
    }

    /// Caches the verdict of a call sent at `sent_at`. A refusal revokes the key's
    /// session at once (even with `negative_ttl` zero); an undecided verdict changes
    /// nothing.
    pub(crate) fn settle(&self, digest: &Digest, verdict: &Verdict, sent_at: Instant) {
        match verdict {
            Verdict::Allowed(session) => {
                self.rejections.invalidate(digest);
                self.sessions.insert(*digest, session.clone());
            }
            Verdict::Rejected(refusal) => {
                self.remove_session(digest);
                if !self.policy.negative_ttl.is_zero() {
                    let cached = CachedRejection {
                        refusal: Arc::clone(refusal),
                        sent_at,
                    };
                    self.rejections.insert(*digest, cached);
                }
            }
            Verdict::Undecided(_) => {}
        }
    }

    /// Forgets what is cached for `digest`, and revokes it: no front or stale
    /// session read before this call is served after it.
    pub(crate) fn remove(&self, digest: &Digest) {
        self.sessions.invalidate(digest);
        self.rejections.invalidate(digest);
        self.revocations.revoke(digest);
    }

    /// Drops the session of a key Composio refused, and revokes it if there was one.
    fn remove_session(&self, digest: &Digest) {
        if self.sessions.remove(digest).is_some() {
            self.revocations.revoke(digest);
        }
    }

    /// Forgets every entry and revokes every key; moka has released every session
    /// before this returns.
    pub(crate) fn clear(&self) {
        // One by one rather than `invalidate_all`, which moka applies lazily.
        let digests: Vec<Digest> = self.sessions.iter().map(|(digest, _)| *digest).collect();
        for digest in &digests {
            self.sessions.invalidate(digest);
        }
        // A backstop for anything the scan could not see.
        self.sessions.invalidate_all();
        self.rejections.invalidate_all();
        self.sessions.run_pending_tasks();
        self.rejections.run_pending_tasks();
        self.revocations.revoke_all();
    }

    /// Sessions and rejections held now (after pending maintenance).
    pub(crate) fn entry_counts(&self) -> CachedVerdicts {
        self.sessions.run_pending_tasks();
        self.rejections.run_pending_tasks();
        CachedVerdicts {
            sessions: self.sessions.entry_count(),
            rejections: self.rejections.entry_count(),
        }
    }
}

/// The lifetime of a session entry: `ttl + stale_if_error` from the moment its call
/// was sent. Also brings the session's [`Age`] up to date each time moka reads it,
/// from moka's own reading of the clock.
struct SessionLife {
    refresh_after: Duration,
    ttl: Duration,
    kept: Duration,
}

impl Expiry<Digest, SessionInfo> for SessionLife {
    fn expire_after_create(
        &self,
        _digest: &Digest,
        session: &SessionInfo,
        created_at: Instant,
    ) -> Option<Duration> {
        let age = created_at.saturating_duration_since(session.verified());
        Some(self.kept.saturating_sub(age))
    }

    /// A newer verdict replacing an entry brings its own lifetime.
    fn expire_after_update(
        &self,
        digest: &Digest,
        session: &SessionInfo,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(digest, session, updated_at)
    }

    fn expire_after_read(
        &self,
        _digest: &Digest,
        session: &SessionInfo,
        read_at: Instant,
        duration_until_expiry: Option<Duration>,
        _last_modified_at: Instant,
    ) -> Option<Duration> {
        let age = read_at.saturating_duration_since(session.verified());
        if age >= self.ttl {
            session.grow_to(Age::Expired);
        } else if age >= self.refresh_after {
            session.grow_to(Age::RefreshDue);
        }
        duration_until_expiry
    }
}

/// The lifetime of a rejection entry: `negative_ttl` from the moment its call was
/// sent.
struct RejectionLife {
    negative_ttl: Duration,
}

impl Expiry<Digest, CachedRejection> for RejectionLife {
    fn expire_after_create(
        &self,
        _digest: &Digest,
        cached: &CachedRejection,
        created_at: Instant,
    ) -> Option<Duration> {
        let age = created_at.saturating_duration_since(cached.sent_at);
        Some(self.negative_ttl.saturating_sub(age))
    }

    fn expire_after_update(
        &self,
        digest: &Digest,
        cached: &CachedRejection,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(digest, cached, updated_at)
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
    use crate::verifier::digest::Digest;
    use crate::verifier::session::SessionDocument;

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
        SessionDocument::for_tests()
    }

    fn digest(n: u8) -> Digest {
        Digest::from_bytes([n; 16])
    }

    fn allowed(session: &SessionInfo) -> Verdict {
        Verdict::Allowed(session.clone())
    }

    fn refused() -> Verdict {
        Verdict::Rejected(Arc::new(Refusal::deleted()))
    }

    fn is_fresh(lookup: Lookup, session: &SessionInfo) -> bool {
        matches!(lookup, Lookup::Hit(Cached::Fresh { session: s, .. }) if s.same_entry(session))
    }

    fn is_miss(lookup: Lookup) -> bool {
        matches!(lookup, Lookup::Miss { stale: None })
    }

    #[test]
    fn settle_then_lookup() {
        let cache = VerdictCache::new(policy(), "u");
        let now = Instant::now();
        let session = SessionInfo::new(document());
        cache.settle(&digest(1), &allowed(&session), now);
        cache.settle(&digest(2), &refused(), now);
        cache.settle(&digest(3), &Verdict::undecided("down", None), now);
        assert!(is_fresh(cache.lookup(&digest(1)), &session));
        assert!(matches!(
            cache.lookup(&digest(2)),
            Lookup::Hit(Cached::Rejected(_))
        ));
        assert!(is_miss(cache.lookup(&digest(3))));
    }

    #[test]
    fn a_refusal_revokes_the_session_and_a_session_replaces_a_refusal() {
        let cache = VerdictCache::new(policy(), "u");
        let session = SessionInfo::new(document());
        cache.settle(&digest(1), &allowed(&session), Instant::now());
        let mark = cache.revocations.mark(&digest(1));
        cache.settle(&digest(1), &refused(), Instant::now());
        assert!(cache.revocations.mark(&digest(1)) > mark);
        assert!(matches!(
            cache.lookup(&digest(1)),
            Lookup::Hit(Cached::Rejected(_))
        ));
        let next = SessionInfo::new(document());
        cache.settle(&digest(1), &allowed(&next), Instant::now());
        assert!(is_fresh(cache.lookup(&digest(1)), &next));
        // Refusing a key that had no session revokes nothing.
        let mark = cache.revocations.mark(&digest(2));
        cache.settle(&digest(2), &refused(), Instant::now());
        assert_eq!(cache.revocations.mark(&digest(2)), mark);
    }

    #[test]
    fn zero_negative_ttl_caches_no_rejection_but_still_revokes_the_session() {
        let cache = VerdictCache::new(
            CachePolicy {
                negative_ttl: Duration::ZERO,
                ..policy()
            },
            "u",
        );
        let session = SessionInfo::new(document());
        cache.settle(&digest(1), &allowed(&session), Instant::now());
        let mark = cache.revocations.mark(&digest(1));
        cache.settle(&digest(1), &refused(), Instant::now());
        assert!(cache.revocations.mark(&digest(1)) > mark);
        assert!(is_miss(cache.lookup(&digest(1))));
    }

    #[test]
    fn aged_sessions_ask_for_refresh_once_then_go_stale() {
        let cache = VerdictCache::new(
            CachePolicy {
                stale_if_error: Duration::from_secs(60),
                ..policy()
            },
            "u",
        );
        let session = SessionInfo::new(document());
        cache.settle(&digest(1), &allowed(&session), Instant::now());
        // (Aged before any lookup: a fresh lookup would put it in this thread's front.)
        session.grow_to(Age::RefreshDue);
        assert!(matches!(
            cache.lookup(&digest(1)),
            Lookup::Hit(Cached::Fresh { refresh: true, .. })
        ));
        assert!(matches!(
            cache.lookup(&digest(1)),
            Lookup::Hit(Cached::Fresh { refresh: false, .. })
        ));
        session.grow_to(Age::Expired);
        let Lookup::Miss { stale: Some(stale) } = cache.lookup(&digest(1)) else {
            panic!("expected a stale session");
        };
        assert!(stale.usable().is_some_and(|s| s.same_entry(&session)));
    }

    /// The stale session `lookup` finds for a key whose session has expired.
    fn stale(cache: &VerdictCache, d: Digest) -> Stale {
        match cache.lookup(&d) {
            Lookup::Miss { stale: Some(stale) } => stale,
            other => panic!("expected a stale session, got {other:?}"),
        }
    }

    #[test]
    fn a_stale_session_is_not_usable_once_its_key_is_revoked_or_its_window_over() {
        let cache = VerdictCache::new(
            CachePolicy {
                stale_if_error: Duration::from_secs(60),
                ..policy()
            },
            "u",
        );
        let session = SessionInfo::new(document());
        cache.settle(&digest(1), &allowed(&session), Instant::now());
        session.grow_to(Age::Expired);
        assert!(stale(&cache, digest(1)).usable().is_some());
        let mut over = stale(&cache, digest(1));
        over.until = Instant::now();
        assert!(over.usable().is_none(), "window over");
        // Read before a refusal: not served after it.
        let before = stale(&cache, digest(1));
        cache.settle(&digest(1), &refused(), Instant::now());
        assert!(before.usable().is_none(), "something newer is known");
        // Read before an invalidation: likewise.
        cache.settle(&digest(2), &allowed(&session), Instant::now());
        let before = stale(&cache, digest(2));
        cache.remove(&digest(2));
        assert!(before.usable().is_none());
    }

    #[test]
    fn a_verdict_ages_from_its_question_not_its_insertion() {
        let cache = VerdictCache::new(policy(), "u");
        let ttl = policy().ttl;
        // Sent a TTL ago (a slow answer): inserted now, but already expired.
        let old = SessionInfo::verified_at(document(), Instant::now() - ttl);
        cache.settle(&digest(1), &allowed(&old), Instant::now() - ttl);
        assert!(is_miss(cache.lookup(&digest(1))));
        // Sent 0.9 TTL ago: due for refresh on its first read.
        let aged = SessionInfo::verified_at(document(), Instant::now() - ttl.mul_f64(0.9));
        cache.settle(&digest(2), &allowed(&aged), Instant::now());
        assert!(matches!(
            cache.lookup(&digest(2)),
            Lookup::Hit(Cached::Fresh { refresh: true, .. })
        ));
        // A rejection from a call sent `negative_ttl` ago is not kept either.
        cache.settle(
            &digest(3),
            &refused(),
            Instant::now() - policy().negative_ttl,
        );
        assert!(is_miss(cache.lookup(&digest(3))));
    }

    #[test]
    fn the_front_serves_fresh_sessions_until_the_key_is_removed() {
        let cache = VerdictCache::new(policy(), "u");
        let (one, two) = (SessionInfo::new(document()), SessionInfo::new(document()));
        cache.settle(&digest(1), &allowed(&one), Instant::now());
        cache.settle(&digest(2), &allowed(&two), Instant::now());
        assert!(is_fresh(cache.lookup(&digest(1)), &one));
        assert!(is_fresh(cache.lookup(&digest(2)), &two));
        // Served from the front now: moka's own ageing is not consulted...
        one.grow_to(Age::Expired);
        two.grow_to(Age::Expired);
        assert!(is_fresh(cache.lookup(&digest(1)), &one));
        // ...until the key is removed, which the front obeys at once...
        cache.remove(&digest(1));
        assert!(is_miss(cache.lookup(&digest(1))));
        // ...for that key only: the other key is still served by the front.
        assert!(is_fresh(cache.lookup(&digest(2)), &two));
        // Another cache never sees this one's front.
        let other = VerdictCache::new(policy(), "u");
        assert!(is_miss(other.lookup(&digest(2))));
    }

    #[test]
    fn clear_revokes_every_key() {
        let cache = VerdictCache::new(
            CachePolicy {
                stale_if_error: Duration::from_secs(60),
                ..policy()
            },
            "u",
        );
        let stale_sessions: Vec<Stale> = (0..20)
            .map(|i| {
                let session = SessionInfo::new(document());
                cache.settle(&digest(i), &allowed(&session), Instant::now());
                session.grow_to(Age::Expired);
                stale(&cache, digest(i))
            })
            .collect();
        cache.settle(&digest(99), &refused(), Instant::now());
        cache.clear();
        assert!(stale_sessions.into_iter().all(|s| s.usable().is_none()));
        assert_eq!(cache.entry_counts(), CachedVerdicts::default());
    }

    #[test]
    fn an_evicted_session_a_request_still_holds_is_not_served_after_an_invalidation() {
        let cache = VerdictCache::new(
            CachePolicy {
                max_capacity: 1,
                ..policy()
            },
            "u",
        );
        let held = SessionInfo::new(document());
        cache.settle(&digest(1), &allowed(&held), Instant::now());
        assert!(is_fresh(cache.lookup(&digest(1)), &held)); // in this thread's front
        cache.settle(
            &digest(2),
            &allowed(&SessionInfo::new(document())),
            Instant::now(),
        );
        cache.entry_counts(); // moka evicts one of the two
                              // Whichever moka kept, the front still has `held`, alive because it is held.
        assert!(is_fresh(cache.lookup(&digest(1)), &held));
        cache.remove(&digest(1));
        assert!(is_miss(cache.lookup(&digest(1))));
    }

    #[test]
    fn session_life_counts_from_the_question() {
        let life = SessionLife {
            refresh_after: Duration::from_secs(8),
            ttl: Duration::from_secs(10),
            kept: Duration::from_secs(15),
        };
        let sent = Instant::now();
        let session = SessionInfo::verified_at(document(), sent);
        let d = digest(1);
        let at = |secs| sent + Duration::from_secs(secs);
        assert_eq!(
            life.expire_after_create(&d, &session, at(4)),
            Some(Duration::from_secs(11))
        );
        assert_eq!(
            life.expire_after_update(&d, &session, at(20), Some(Duration::from_secs(9))),
            Some(Duration::ZERO)
        );
        let read = |secs| {
            life.expire_after_read(&d, &session, at(secs), Some(Duration::from_secs(1)), at(0))
        };
        assert_eq!(read(1), Some(Duration::from_secs(1)), "expiry unchanged");
        assert_eq!(session.age(), Age::Fresh);
        read(8);
        assert_eq!(session.age(), Age::RefreshDue);
        read(10);
        assert_eq!(session.age(), Age::Expired);
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
        let session = SessionInfo::new(document());
        cache.settle(&digest(0), &allowed(&session), Instant::now());
        for i in 0..1000u32 {
            let mut d = [0; 16];
            d[..4].copy_from_slice(&i.to_be_bytes());
            d[15] = 1;
            cache.settle(&Digest::from_bytes(d), &refused(), Instant::now());
        }
        let counts = cache.entry_counts();
        assert_eq!(counts.sessions, 1);
        assert!(counts.rejections <= 10, "{counts:?}");
        assert!(is_fresh(cache.lookup(&digest(0)), &session));
    }
}
