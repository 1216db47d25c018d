//! The last step before the inner service: the `authorize` predicate every valid
//! session must pass, checked on every request (cached or not), and its 403.

use std::fmt;
use std::sync::Arc;

use crate::envelope::Rejection;
use crate::session::SessionInfo;

/// The predicate of [`ComposioAuthBuilder::authorize`](crate::ComposioAuthBuilder::authorize).
pub(crate) type Authorize = Arc<dyn Fn(&SessionInfo) -> bool + Send + Sync>;

/// Whether a valid session may use this service.
pub(crate) struct Policy {
    authorize: Option<Authorize>,
    /// Rendered per request from this one value.
    forbidden: Rejection,
}

impl Policy {
    pub(crate) fn new(authorize: Option<Authorize>) -> Self {
        Self {
            authorize,
            forbidden: Rejection::forbidden(),
        }
    }

    /// The rejection for `session`, if the predicate refuses it.
    pub(crate) fn refusal(&self, session: &SessionInfo) -> Option<&Rejection> {
        let authorize = self.authorize.as_ref()?;
        (!authorize(session)).then_some(&self.forbidden)
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field(
                "authorize",
                &self.authorize.as_ref().map(|_| "Fn(&SessionInfo) -> bool"),
            )
            .finish_non_exhaustive()
    }
}
