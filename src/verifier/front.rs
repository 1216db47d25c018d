//! A per-thread front for the session tier: sessions this thread served recently,
//! checked without touching moka (which reads the clock, records the read and does
//! housekeeping on every `get`).
//!
//! A slot serves a session only while all of these hold: same cache, same digest,
//! the session is younger than the point where moka would report it due for refresh
//! (or expired), and nothing newer is known about its key since the slot was filled
//! (its stripe's revocation count has not moved: no invalidation, no refusal). Past
//! the refresh point reads go to moka again, which starts the refresh-ahead and
//! applies expiry. So the front answers what moka would, with one exception inside
//! the TTL promise: a session moka evicted for capacity that a request still holds
//! (keeping it alive) is served from a slot until its refresh point, unless its key
//! is revoked meanwhile.
//!
//! A slot holds its session weakly: it never keeps a session alive that the cache
//! and every request have dropped, so memory stays bounded by the cache's capacity
//! (plus, per thread, [`SLOTS`] small dead pointers at most), and nothing of an
//! invalidated entry or a dropped layer stays reachable from a front.
//!
//! Slots are direct-mapped; an occupant still good is never displaced, so keys that
//! collide do not thrash: the later one simply goes to moka.

use std::cell::RefCell;
use std::time::Instant;

use crate::verifier::digest::Digest;
use crate::verifier::session::{SessionInfo, WeakSession};

/// Slots per thread (64 KiB, allocated on first use).
const SLOTS: usize = 1024;

struct Slot {
    cache: u64,
    digest: Digest,
    /// The key's revocation count when the slot was filled.
    mark: u64,
    fresh_until: Instant,
    session: WeakSession,
}

impl Slot {
    /// The slot's session, if it is still good for `cache` at `mark` and `now`.
    fn session(&self, cache: u64, mark: u64, now: Instant) -> Option<SessionInfo> {
        if self.cache != cache || self.mark != mark || now >= self.fresh_until {
            return None;
        }
        self.session.upgrade()
    }
}

thread_local! {
    static FRONT: RefCell<Box<[Option<Slot>]>> = RefCell::new((0..SLOTS).map(|_| None).collect());
}

/// The session in this thread's slot for `digest`, if it is still good at the key's
/// revocation count `mark` and at `now`. A slot found no longer good is emptied.
#[inline]
pub(crate) fn get(cache: u64, digest: &Digest, mark: u64, now: Instant) -> Option<SessionInfo> {
    FRONT.with(|front| {
        let mut front = front.try_borrow_mut().ok()?;
        let slot = &mut front[digest.slot(SLOTS)];
        let occupant = slot.as_ref().filter(|s| s.digest == *digest)?;
        let session = occupant.session(cache, mark, now);
        if session.is_none() {
            *slot = None;
        }
        session
    })
}

/// Offers `session` to this thread's slot for `digest`; taken if the slot is free or
/// its occupant is no longer good.
pub(crate) fn offer(
    cache: u64,
    digest: Digest,
    mark: u64,
    now: Instant,
    fresh_until: Instant,
    session: &SessionInfo,
) {
    FRONT.with(|front| {
        let Ok(mut front) = front.try_borrow_mut() else {
            return;
        };
        let slot = &mut front[digest.slot(SLOTS)];
        if slot.as_ref().is_some_and(|s| {
            s.digest != digest
                && s.cache == cache
                && now < s.fresh_until
                && s.session.upgrade().is_some()
        }) {
            return;
        }
        *slot = Some(Slot {
            cache,
            digest,
            mark,
            fresh_until,
            session: session.downgrade(),
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn session() -> SessionInfo {
        SessionInfo::for_tests()
    }

    /// A cache id no real cache uses (they count up from zero).
    const CACHE: u64 = u64::MAX;

    #[test]
    fn a_slot_serves_its_session_until_the_refresh_point() {
        let (digest, session, now) = (Digest::from_bytes([9; 16]), session(), Instant::now());
        offer(
            CACHE,
            digest,
            0,
            now,
            now + Duration::from_secs(1),
            &session,
        );
        assert!(get(CACHE, &digest, 0, now).is_some_and(|s| s.same_entry(&session)));
        assert!(get(CACHE - 1, &digest, 0, now).is_none(), "another cache");
        assert!(get(CACHE, &digest, 0, now + Duration::from_secs(1)).is_none());
        // A slot found no longer good was emptied.
        assert!(get(CACHE, &digest, 0, now).is_none());
    }

    #[test]
    fn a_slot_never_serves_a_session_of_a_revoked_key() {
        let (digest, session, now) = (Digest::from_bytes([10; 16]), session(), Instant::now());
        offer(
            CACHE,
            digest,
            7,
            now,
            now + Duration::from_secs(60),
            &session,
        );
        assert!(get(CACHE, &digest, 8, now).is_none());
        assert!(get(CACHE, &digest, 7, now).is_none(), "emptied");
    }

    #[test]
    fn a_slot_keeps_no_session_alive() {
        let (digest, session, now) = (Digest::from_bytes([11; 16]), session(), Instant::now());
        let weak = session.downgrade();
        offer(
            CACHE,
            digest,
            0,
            now,
            now + Duration::from_secs(60),
            &session,
        );
        drop(session);
        assert!(weak.upgrade().is_none(), "the slot kept the session alive");
        assert!(get(CACHE, &digest, 0, now).is_none());
    }
}
