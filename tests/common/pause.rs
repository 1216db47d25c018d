//! Pausing the layer at a known point: a global `tracing` layer that, when an event
//! carrying the armed pause point (its `pause_point` field, one of
//! `composio_auth::testing::pause_point`) is emitted, blocks the emitting thread
//! until the test resumes it. This forces an interleaving instead of hoping a race finds it: the
//! test knows the layer is exactly there, does what must not slip in, then resumes.
//!
//! One process-wide subscriber: tests that use it take [`Points::serial`] so that
//! they run one at a time.

use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing_subscriber::layer::{Context, SubscriberExt};

#[derive(Default)]
struct State {
    /// The pause point to pause at (once), if armed.
    armed: Option<&'static str>,
    /// A thread is paused at the armed point.
    paused: bool,
    /// Every pause point passed, for waits on counts.
    seen: Vec<String>,
}

pub struct Points {
    state: Mutex<State>,
    changed: Condvar,
    serial: Mutex<()>,
}

struct PauseLayer(&'static Points);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PauseLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let Some(point) = super::pause_point_of(event) else {
            return;
        };
        let points = self.0;
        let mut state = points.lock();
        let pause = state.armed == Some(point.as_str());
        state.seen.push(point);
        if pause {
            state.armed = None;
            state.paused = true;
            points.changed.notify_all();
            while state.paused {
                state = points
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
        } else {
            points.changed.notify_all();
        }
    }
}

impl Points {
    /// The process-wide pause points (installs the subscriber on first use).
    pub fn get() -> &'static Points {
        static POINTS: OnceLock<&'static Points> = OnceLock::new();
        POINTS.get_or_init(|| {
            let points: &'static Points = Box::leak(Box::new(Points {
                state: Mutex::default(),
                changed: Condvar::new(),
                serial: Mutex::new(()),
            }));
            let subscriber = tracing_subscriber::registry()
                .with(tracing_subscriber::filter::LevelFilter::TRACE)
                .with(PauseLayer(points));
            tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
            points
        })
    }

    /// Held by a test for its whole run: tests using pause points run one at a time.
    pub fn serial(&self) -> MutexGuard<'_, ()> {
        let guard = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        *self.lock() = State::default();
        guard
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next event at this pause point blocks its thread until [`resume`].
    pub fn arm(&self, point: &'static str) {
        self.lock().armed = Some(point);
    }

    /// Blocks until a thread is paused at the armed point (panics after `limit`).
    pub fn wait_paused(&self, limit: Duration) {
        self.wait_until(limit, "a thread paused at the armed point", |s| s.paused);
    }

    /// Lets the paused thread go on.
    pub fn resume(&self) {
        self.lock().paused = false;
        self.changed.notify_all();
    }

    /// How many events at this pause point were seen.
    pub fn count(&self, point: &str) -> usize {
        self.lock().seen.iter().filter(|p| *p == point).count()
    }

    /// Blocks until `n` events at this pause point were seen (panics after `limit`).
    pub fn wait_count(&self, point: &str, n: usize, limit: Duration) {
        self.wait_until(limit, point, |s| {
            s.seen.iter().filter(|p| *p == point).count() >= n
        });
    }

    fn wait_until(&self, limit: Duration, what: &str, done: impl Fn(&State) -> bool) {
        let deadline = Instant::now() + limit;
        let mut state = self.lock();
        while !done(&state) {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("waited {limit:?} for {what}"));
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
