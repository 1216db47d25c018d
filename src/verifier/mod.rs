//! The verifier: everything that decides a key's verdict, knowing no framework.
//! A request's path through it: `credential.rs` finds the one key, `decision.rs`
//! takes it from there (`cache.rs` and the thread's `front.rs`, on a miss
//! `verification.rs` and `upstream.rs`, with `fleet/` when replicas share Redis),
//! and `policy.rs` admits the session or not; `envelope.rs` and `rejection.rs` say
//! no. The adapters (`crate::adapters`) and `ComposioAuthLayer::verify` call it.

pub(crate) mod cache;
pub(crate) mod credential;
pub(crate) mod decision;
pub(crate) mod digest;
pub(crate) mod envelope;
pub(crate) mod fleet;
pub(crate) mod front;
pub(crate) mod headers;
pub(crate) mod instruments;
pub(crate) mod own_runtime;
pub(crate) mod per_runtime;
pub(crate) mod policy;
pub(crate) mod rejection;
pub(crate) mod session;
pub(crate) mod upstream;
pub(crate) mod verification;
