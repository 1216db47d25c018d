//! The webhook guard (feature `webhook`): Composio's signed deliveries, verified
//! and handed to the inner service once, knowing no framework (like
//! `src/verifier/`). Its files, and a delivery's path through them: ARCHITECTURE.md.

pub(crate) mod check;
pub(crate) mod deliveries;
pub(crate) mod event;
#[cfg(feature = "redis")]
pub(crate) mod fleet;
pub(crate) mod instruments;
pub(crate) mod rejection;
pub(crate) mod signature;
pub(crate) mod state;
