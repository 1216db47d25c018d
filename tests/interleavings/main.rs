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
