//! What a layer admits and how it says no: the `authorize` predicate every valid
//! session must pass, checked on every request (cached or not), its 403, the
//! `WWW-Authenticate` challenge of the layer's 401s, and the count of its answers.

use std::fmt;
use std::sync::Arc;

use http::HeaderValue;

use crate::credential::AcceptedHeaders;
use crate::envelope::{challenge, Rejection};
use crate::instruments::{Answer, Instruments};
use crate::session::SessionInfo;

/// The predicate of [`ComposioAuthBuilder::authorize`](crate::ComposioAuthBuilder::authorize).
pub(crate) type Authorize = Arc<dyn Fn(&SessionInfo) -> bool + Send + Sync>;

/// Whether a valid session may use this service, and the challenge of a 401.
pub(crate) struct Policy {
    authorize: Option<Authorize>,
    /// Rendered per request from this one value.
    forbidden: Rejection,
    /// Names every accepted credential header.
    challenge: HeaderValue,
    instruments: Arc<Instruments>,
}

impl Policy {
    pub(crate) fn new(
        authorize: Option<Authorize>,
        accepted: AcceptedHeaders,
        instruments: Arc<Instruments>,
    ) -> Self {
        Self {
            authorize,
            forbidden: Rejection::forbidden(),
            challenge: challenge(accepted.iter().map(|h| h.as_str())),
            instruments,
        }
    }

    /// Counts a request's answer (feature `metrics`).
    pub(crate) fn answered(&self, answer: Answer) {
        self.instruments.answered(answer);
    }

    /// The `WWW-Authenticate` value of this layer's 401s.
    pub(crate) fn challenge(&self) -> &HeaderValue {
        &self.challenge
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
