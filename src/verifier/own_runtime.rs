//! A Tokio runtime a layer owns, on one thread of its own, for its verifications
//! when its requests come from several runtimes (actix-web runs one per worker).
//!
//! A flight runs on one runtime, and a request on another runtime cannot join it
//! safely (that runtime may idle and never drive it; `verification.rs`). With all
//! flights here, every worker joins the same flight: one upstream call per key,
//! one refresh-ahead per hot key, one pool of upstream connections. What it costs:
//! one thread (idle between misses), and on a miss one hand-over between threads;
//! a hit never comes here.

use std::io;
use std::thread;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// The runtime and its thread; dropping it stops both (flights in progress end
/// undecided for whoever still waits).
#[cfg_attr(not(feature = "actix-web"), allow(dead_code))]
pub(crate) struct OwnRuntime {
    handle: Handle,
    /// Dropped to let the thread end.
    _stop: oneshot::Sender<()>,
}

#[cfg_attr(not(feature = "actix-web"), allow(dead_code))]
impl OwnRuntime {
    /// The thread's name, as `top` and debuggers show it.
    pub(crate) const THREAD_NAME: &'static str = "composio-auth";

    /// Starts the thread and its runtime.
    pub(crate) fn start() -> io::Result<Self> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        thread::Builder::new()
            .name(Self::THREAD_NAME.to_owned())
            .spawn(move || {
                // Ends when the sender is dropped; the runtime is dropped here, on
                // its own thread, outside any asynchronous context.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }

    /// Where to spawn.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_tasks_on_its_own_thread_and_stops_when_dropped() {
        let own = OwnRuntime::start().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        own.handle().spawn(async move {
            let _ = sender.send(thread::current().name().map(str::to_owned));
        });
        assert_eq!(
            receiver.recv().unwrap().as_deref(),
            Some(OwnRuntime::THREAD_NAME)
        );

        // A task that never ends is dropped with the runtime.
        let (dropped, on_drop) = std::sync::mpsc::channel::<()>();
        own.handle().spawn(async move {
            let _dropped = dropped;
            std::future::pending::<()>().await;
        });
        drop(own);
        assert!(on_drop.recv().is_err(), "the pending task was dropped");
    }
}
