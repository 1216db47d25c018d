//! Interleavings forced by pausing the layer at a named pause point
//! (`composio_auth::testing::pause_point`, through `common::pause`). The pause layer
//! is the process's global `tracing` subscriber, so these tests are a binary of their
//! own: a test elsewhere in the process could pass an armed point and be held in
//! place of the thread the test means. Every test here takes `Points::serial`: one
//! that does not pause still passes pause points another may have armed.

#[path = "../common/mod.rs"]
mod common;

#[cfg(feature = "redis")]
mod fleet;
mod replica;

use std::time::Duration;

use tokio::runtime::{Builder, Runtime};

/// Generous bound on waits that are expected to take milliseconds.
const WAIT: Duration = Duration::from_secs(10);

/// A runtime of its own for one side of an interleaving (requests, the upstream,
/// an invalidation), so that a thread paused in one blocks nothing of the others.
fn multi_thread() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
