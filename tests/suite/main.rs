//! The integration suite that can share one process: every test here leaves the
//! process as it found it (no global allocator, environment variable, global
//! `tracing` subscriber or metrics recorder), so the files are modules of one test
//! binary, linked once. Tests that need a process of their own are the other
//! binaries of `tests/`: `allocations` and `memory` (a counting global allocator),
//! `env` (the process environment), `soak` (the process's RSS) and `interleavings`
//! (a global subscriber that pauses threads).
//!
//! Run one file's tests with a filter: `cargo test --all-features --test suite caching::`
//! (the fleet's: `fleet::`, with feature `redis` and `redis-server` installed).

#[path = "../common/mod.rs"]
mod common;

mod actix;
mod architecture;
mod caching;
mod composition;
mod faults;
#[cfg(feature = "redis")]
mod fleet;
mod floods;
mod grpc;
mod http;
#[cfg(feature = "metrics")]
mod metrics;
mod promises;
mod protocol;
mod routes;
mod scopes;
mod secrets;
#[cfg(feature = "webhook")]
mod webhooks;
