//! A per-thread front for the session tier: sessions this thread served recently,
//! checked without touching moka (which reads the clock, records the read and does
//! housekeeping on every `get`).
//!
//! A slot serves a session only while all of these hold: same cache, same digest,
//! no invalidation since the slot was filled (the cache's generation), and the
//! session is younger than the point where moka would report it due for refresh (or
//! expired). Past that point reads go to moka again, which starts the refresh-ahead
//! and applies expiry. So the front answers exactly what moka would, with one
//! exception, inside the TTL promise: a session moka evicted for capacity, then
//! refused by a new verification on another thread, is still served from a front
//! slot until its refresh point.
//!
//! Slots are direct-mapped; an occupant still good is never displaced, so keys that
//! collide do not thrash: the later one simply goes to moka.

use std::cell::RefCell;
use std::time::Instant;

use crate::digest::Digest;
use crate::session::SessionInfo;

/// Slots per thread (about 80 KiB, allocated on first use).
const SLOTS: usize = 1024;

struct Slot {
    cache: u64,
    digest: Digest,
    generation: u64,
    fresh_until: Instant,
    session: SessionInfo,
}

impl Slot {
    fn is_good(&self, cache: u64, generation: u64, now: Instant) -> bool {
        self.cache == cache && self.generation == generation && now < self.fresh_until
    }
}

thread_local! {
    static FRONT: RefCell<Box<[Option<Slot>]>> = RefCell::new((0..SLOTS).map(|_| None).collect());
}

/// The session in this thread's slot for `digest`, if it is still good at `now`.
pub(crate) fn get(
    cache: u64,
    digest: &Digest,
    generation: u64,
    now: Instant,
) -> Option<SessionInfo> {
    FRONT.with(|front| {
        let front = front.try_borrow().ok()?;
        let slot = front[digest.slot(SLOTS)].as_ref()?;
        (slot.digest == *digest && slot.is_good(cache, generation, now))
            .then(|| slot.session.clone())
    })
}

/// Offers `session` to this thread's slot for `digest`; taken if the slot is free or
/// its occupant is no longer good.
pub(crate) fn offer(
    cache: u64,
    digest: Digest,
    generation: u64,
    now: Instant,
    fresh_until: Instant,
    session: &SessionInfo,
) {
    FRONT.with(|front| {
        let Ok(mut front) = front.try_borrow_mut() else {
            return;
        };
        let slot = &mut front[digest.slot(SLOTS)];
        if slot
            .as_ref()
            .is_some_and(|s| s.is_good(cache, generation, now) && s.digest != digest)
        {
            return;
        }
        *slot = Some(Slot {
            cache,
            digest,
            generation,
            fresh_until,
            session: session.clone(),
        });
    });
}
