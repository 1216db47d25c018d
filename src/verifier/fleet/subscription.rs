//! Where a layer's subscription to the fleet's invalidations stands: the state the
//! subscription task (`listener.rs`) keeps and the layer's verifications read (the
//! epoch to share in, whether to share at all), and how an invalidation reaches
//! the layer's verifications.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::{Forget, Invalidation};

/// Where the subscription stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Status {
    /// Never connected yet: verifications wait (up to Redis's time limit) for it.
    Starting,
    /// Subscribed; the epoch is known.
    Listening,
    /// Disconnected: verifications do not share until it is back.
    Down,
}

pub(crate) struct Subscription {
    forget: OnceLock<Forget>,
    /// Whether a verification went on without the fleet while not subscribed: its
    /// verdict may predate an invalidation this replica never heard.
    pub(super) verified_alone: AtomicBool,
    pub(super) status: watch::Sender<Status>,
    pub(super) epoch: AtomicU64,
    position: Mutex<Position>,
}

pub(super) struct Position {
    pub(super) running: bool,
    /// The id of the last message applied (or the stream's end when it caught up).
    pub(super) last: Option<(u64, u64)>,
    /// The Redis dataset it was read from (`{prefix}incarnation`).
    pub(super) incarnation: Option<String>,
}

impl Subscription {
    pub(crate) fn new() -> Self {
        Self {
            forget: OnceLock::new(),
            verified_alone: AtomicBool::new(false),
            status: watch::Sender::new(Status::Starting),
            epoch: AtomicU64::new(0),
            position: Mutex::new(Position {
                running: false,
                last: None,
                incarnation: None,
            }),
        }
    }

    pub(crate) fn bind(&self, forget: Forget) {
        let _ = self.forget.set(forget);
    }

    pub(super) fn position(&self) -> std::sync::MutexGuard<'_, Position> {
        self.position.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The epoch to read and record under, once subscribed; `None` while not (after
    /// waiting up to `limit` for a first connection).
    pub(crate) async fn epoch(&self, limit: Duration) -> Option<u64> {
        let mut status = self.status.subscribe();
        if *status.borrow() == Status::Starting {
            let _ = tokio::time::timeout(limit, status.wait_for(|s| *s != Status::Starting)).await;
        }
        let listening = *status.borrow() == Status::Listening;
        if !listening {
            self.verified_alone.store(true, Ordering::Release);
        }
        listening.then(|| self.epoch.load(Ordering::Acquire))
    }

    /// Reads and records in `epoch` from now on (this replica just started it),
    /// unless a later one is known already.
    pub(crate) fn enter_epoch(&self, epoch: u64) {
        self.epoch.fetch_max(epoch, Ordering::AcqRel);
    }

    pub(super) fn apply(&self, invalidation: Invalidation) -> bool {
        self.forget.get().is_some_and(|forget| forget(invalidation))
    }

    /// Whether the layer is still there (an empty invalidation tells).
    pub(super) fn layer_is_alive(&self) -> bool {
        self.apply(Invalidation::Keys(Vec::new()))
    }
}
