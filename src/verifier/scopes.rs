//! [`ScopeIndex`]: the scopes of each user key that this layer knows of, so that
//! forgetting the key forgets every one of them, and a refusal of the key reaches
//! every one of them.
//!
//! A user key with selectors is cached, verified and single-flighted per scope,
//! under the scope's own digest; the index maps the key's digest (the one its
//! requests without selectors use, and invalidations carry) to its scopes'.
//!
//! The rules, kept by `verification.rs`, which touches the index only under the
//! lock of its in-flight map:
//!
//! - **Every scope with a flight in the map or a verdict in the cache is listed**
//!   under its key: listed when its flight starts, before any verdict can land.
//! - **At most [`MAX_SCOPES_PER_KEY`] scopes per key.** Listing one more displaces
//!   the key's oldest, whose flight then settles nothing and whose verdicts are
//!   removed: a key's scopes cannot fill the cache or the index.
//! - **A key's list goes when nothing it lists can be cached any more**: no flight,
//!   and the last verdict settled under it past the longest life a verdict has. A
//!   key refused without selectors has a list too, holding only when its refusal
//!   was learned (so no older session is cached after it): as many as user keys
//!   refused within a verdict's life, each of which cost an upstream call.
//!   Lists are swept when the index has doubled since the last sweep, so the index
//!   stays bounded by the keys with live scopes, at a constant cost per listing.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::verifier::digest::{Digest, DigestHasher};

/// The most scopes (organization and project chosen with `x-org-id` and
/// `x-project-id`) one user key holds in a layer's cache at once. A key used with
/// more sees its least recently started scope forgotten, then verified again when
/// it comes back. Composio's users belong to a few organizations, each with a few
/// projects.
pub const MAX_SCOPES_PER_KEY: usize = 16;

/// The fewest lists the index holds before it sweeps.
const FIRST_SWEEP: usize = 1024;

/// The scopes of each user key, by the key's digest.
pub(crate) struct ScopeIndex {
    keys: HashMap<Digest, Listed, DigestHasher>,
    /// Sweep when this many keys are listed.
    sweep_at: usize,
}

/// One key's scopes, least recently started first; until when a verdict settled
/// under one of them may be cached; and when the call was sent that last learned
/// the key itself is refused (in any scope).
struct Listed {
    scopes: VecDeque<Digest>,
    until: Instant,
    refused_at: Option<Instant>,
}

impl ScopeIndex {
    pub(crate) fn new() -> Self {
        Self {
            keys: HashMap::default(),
            sweep_at: FIRST_SWEEP,
        }
    }

    /// Lists `scope` under `key` (at `now`), and returns the scope it displaces,
    /// if the key already had [`MAX_SCOPES_PER_KEY`]. `in_flight` tells whether a
    /// scope has a flight, for the sweep.
    pub(crate) fn list(
        &mut self,
        key: Digest,
        scope: Digest,
        now: Instant,
        in_flight: impl Fn(&Digest) -> bool,
    ) -> Option<Digest> {
        if self.keys.len() >= self.sweep_at {
            self.sweep(now, in_flight);
        }
        let listed = self.keys.entry(key).or_insert_with(|| Listed {
            scopes: VecDeque::new(),
            until: now,
            refused_at: None,
        });
        if let Some(at) = listed.scopes.iter().position(|s| *s == scope) {
            // Started again: the most recent now, the last to be displaced.
            listed.scopes.remove(at);
            listed.scopes.push_back(scope);
            return None;
        }
        let displaced = (listed.scopes.len() >= MAX_SCOPES_PER_KEY)
            .then(|| listed.scopes.pop_front())
            .flatten();
        listed.scopes.push_back(scope);
        displaced
    }

    /// Records that a verdict of one of `key`'s scopes may be cached until `until`.
    pub(crate) fn keep(&mut self, key: &Digest, until: Instant) {
        if let Some(listed) = self.keys.get_mut(key) {
            listed.until = listed.until.max(until);
        }
    }

    /// Records that a call sent at `sent_at` learned that `key` is refused, which
    /// matters until `until` (the longest a verdict settled now is cached).
    pub(crate) fn refuse(
        &mut self,
        key: Digest,
        sent_at: Instant,
        (now, until): (Instant, Instant),
        in_flight: impl Fn(&Digest) -> bool,
    ) {
        if self.keys.len() >= self.sweep_at {
            self.sweep(now, in_flight);
        }
        let listed = self.keys.entry(key).or_insert_with(|| Listed {
            scopes: VecDeque::new(),
            until,
            refused_at: None,
        });
        listed.refused_at = listed.refused_at.max(Some(sent_at));
        listed.until = listed.until.max(until);
    }

    /// When the call was sent that last learned `key` is refused, if one did.
    pub(crate) fn refused_at(&self, key: &Digest) -> Option<Instant> {
        self.keys.get(key).and_then(|listed| listed.refused_at)
    }

    /// The scopes listed under `key`.
    pub(crate) fn scopes(&self, key: &Digest) -> impl Iterator<Item = &Digest> {
        self.keys.get(key).into_iter().flat_map(|l| l.scopes.iter())
    }

    /// Takes `key`'s list out of the index: its scopes.
    pub(crate) fn take(&mut self, key: &Digest) -> VecDeque<Digest> {
        self.keys
            .remove(key)
            .map(|listed| listed.scopes)
            .unwrap_or_default()
    }

    pub(crate) fn clear(&mut self) {
        self.keys.clear();
    }

    /// Drops the lists whose scopes have no flight and no verdict that may still
    /// be cached.
    fn sweep(&mut self, now: Instant, in_flight: impl Fn(&Digest) -> bool) {
        self.keys
            .retain(|_, listed| listed.until > now || listed.scopes.iter().any(&in_flight));
        self.sweep_at = (self.keys.len() * 2).max(FIRST_SWEEP);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn digest(n: u32) -> Digest {
        let mut bytes = [0; 16];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        Digest::from_bytes(bytes)
    }

    #[test]
    fn a_key_holds_its_scopes_up_to_the_limit_then_displaces_the_least_recently_started() {
        let (mut index, now) = (ScopeIndex::new(), Instant::now());
        let key = digest(0);
        for n in 1..=MAX_SCOPES_PER_KEY as u32 {
            assert_eq!(index.list(key, digest(n), now, |_| false), None);
        }
        assert_eq!(
            index.list(key, digest(1), now, |_| false),
            None,
            "listed once"
        );
        // 1 was started again: 2 is now the least recently started.
        assert_eq!(
            index.list(key, digest(100), now, |_| false),
            Some(digest(2))
        );
        assert_eq!(index.scopes(&key).count(), MAX_SCOPES_PER_KEY);
        assert!(!index.scopes(&key).any(|s| *s == digest(2)));
        assert_eq!(index.take(&key).len(), MAX_SCOPES_PER_KEY);
        assert_eq!(index.scopes(&key).count(), 0);
    }

    #[test]
    fn a_sweep_keeps_only_keys_with_a_flight_or_a_verdict_still_cached() {
        let (mut index, now) = (ScopeIndex::new(), Instant::now());
        let later = now + Duration::from_secs(60);
        for n in 0..FIRST_SWEEP as u32 {
            index.list(digest(n), digest(n + 1_000_000), now, |_| false);
        }
        index.keep(&digest(1), later);
        // The next listing sweeps: of the others, only the one in flight stays.
        let flying = digest(2 + 1_000_000);
        index.list(digest(5_000_000), digest(5_000_001), now, |s| *s == flying);
        assert_eq!(index.len(), 3);
        assert_eq!(index.scopes(&digest(1)).count(), 1);
        assert_eq!(index.scopes(&digest(2)).count(), 1);
        assert_eq!(index.sweep_at, FIRST_SWEEP);
    }
}
