//! The verifier: everything that decides a key's verdict, knowing no framework
//! (and naming nothing of the adapters, the layer or the bodies). Its files, and a
//! request's path through them: ARCHITECTURE.md.

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
pub(crate) mod pause_point;
pub(crate) mod per_runtime;
pub(crate) mod policy;
pub(crate) mod rejection;
pub(crate) mod scopes;
pub(crate) mod session;
pub(crate) mod state;
pub(crate) mod upstream;
pub(crate) mod verification;
