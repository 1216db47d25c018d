//! One value per Tokio runtime, for what a runtime drives: a pooled connection is
//! polled by the runtime that opened it, so a connection shared by two runtimes
//! would stall one runtime's calls whenever the other, idle, runtime never polls it.
//! Used for the HTTP clients (`upstream.rs`) and the Redis connections
//! (`fleet/link.rs`).

use std::sync::{Mutex, PoisonError};

use tokio::runtime;

/// Runtimes whose value is kept; the least recently added goes first.
const KEPT: usize = 8;

/// The id of the runtime this runs on, or `None` outside any.
pub(crate) fn current() -> Option<runtime::Id> {
    runtime::Handle::try_current().ok().map(|h| h.id())
}

/// Values keyed by the runtime that made them, at most [`KEPT`].
pub(crate) struct PerRuntime<T> {
    by_runtime: Mutex<Vec<(runtime::Id, T)>>,
}

impl<T: Clone> PerRuntime<T> {
    pub(crate) fn new() -> Self {
        Self {
            by_runtime: Mutex::new(Vec::new()),
        }
    }

    /// The value of runtime `id`, if one is kept.
    pub(crate) fn get(&self, id: runtime::Id) -> Option<T> {
        let by_runtime = self
            .by_runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        by_runtime
            .iter()
            .find(|(runtime, _)| *runtime == id)
            .map(|(_, value)| value.clone())
    }

    /// Keeps `value` for runtime `id` (replacing its previous one), dropping the
    /// oldest value when [`KEPT`] are kept already.
    pub(crate) fn set(&self, id: runtime::Id, value: T) {
        let mut by_runtime = self
            .by_runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        by_runtime.retain(|(runtime, _)| *runtime != id);
        if by_runtime.len() == KEPT {
            by_runtime.remove(0);
        }
        by_runtime.push((id, value));
    }

    /// Forgets the value of runtime `id` (e.g. a broken connection).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn forget(&self, id: runtime::Id) {
        let mut by_runtime = self
            .by_runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        by_runtime.retain(|(runtime, _)| *runtime != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_runtime_and_at_most_eight() {
        let values = PerRuntime::new();
        let runtimes: Vec<_> = (0..9)
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
            })
            .collect();
        for (n, rt) in runtimes.iter().enumerate() {
            values.set(rt.handle().id(), n);
        }
        assert_eq!(values.get(runtimes[0].handle().id()), None);
        assert_eq!(values.get(runtimes[8].handle().id()), Some(8));
        values.set(runtimes[8].handle().id(), 80);
        assert_eq!(values.get(runtimes[8].handle().id()), Some(80));
        values.forget(runtimes[8].handle().id());
        assert_eq!(values.get(runtimes[8].handle().id()), None);
        assert_eq!(values.get(runtimes[1].handle().id()), Some(1));
    }
}
