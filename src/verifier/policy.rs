//! What a layer admits and how it says no: the predicates every valid session must
//! pass (the builder's `require`, then each `require`), checked on every request
//! (cached or not), their 403, the `WWW-Authenticate` challenge of the layer's
//! 401s, and the count of each request's outcome.

use std::fmt;
use std::sync::Arc;

use http::HeaderValue;

use crate::verifier::credential::AcceptedHeaders;
use crate::verifier::envelope::{challenge, Refusal};
use crate::verifier::instruments::{Instruments, Outcome};
use crate::verifier::session::SessionInfo;
use crate::TRACING_TARGET;

/// The predicate of [`ComposioAuthBuilder::require`](crate::ComposioAuthBuilder::require).
pub(crate) type Predicate = Arc<dyn Fn(&SessionInfo) -> bool + Send + Sync>;

/// Whether a valid session may use this service, and the challenge of a 401.
pub(crate) struct Policy {
    /// Every one must hold.
    predicates: Vec<Predicate>,
    /// Rendered per request from this one value.
    forbidden: Refusal,
    /// Names every accepted credential header.
    challenge: HeaderValue,
    instruments: Arc<Instruments>,
}

impl Policy {
    pub(crate) fn new(
        predicates: Vec<Predicate>,
        accepted: AcceptedHeaders,
        instruments: Arc<Instruments>,
    ) -> Self {
        Self {
            predicates,
            forbidden: Refusal::forbidden(),
            challenge: challenge(accepted.iter().map(|h| h.as_str())),
            instruments,
        }
    }

    /// Whether `session` may go on: `None` if every predicate holds (and the
    /// request is counted as `outcome`), else the 403 to answer with (counted when
    /// it is, by [`refused`](Self::refused)).
    #[inline]
    pub(crate) fn admits(&self, session: &SessionInfo, outcome: Outcome) -> Option<&Refusal> {
        let admitted = self.predicates.iter().all(|predicate| predicate(session));
        if admitted {
            self.instruments.answered(outcome);
            return None;
        }
        tracing::debug!(target: TRACING_TARGET, "a predicate refused the session");
        Some(&self.forbidden)
    }

    /// Logs and counts a request refused with `refusal`.
    pub(crate) fn refused(&self, refusal: &Refusal) {
        tracing::debug!(target: TRACING_TARGET, status = refusal.status().as_u16(), slug = ?refusal.body().slug, "rejected");
        self.instruments
            .answered(Outcome::of_status(refusal.status()));
    }

    /// The `WWW-Authenticate` value of this layer's 401s.
    pub(crate) fn challenge(&self) -> &HeaderValue {
        &self.challenge
    }

    /// This policy and `predicate` too.
    pub(crate) fn requiring(&self, predicate: Predicate) -> Self {
        let mut predicates = self.predicates.clone();
        predicates.push(predicate);
        Self {
            predicates,
            forbidden: self.forbidden.clone(),
            challenge: self.challenge.clone(),
            instruments: Arc::clone(&self.instruments),
        }
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("predicates", &self.predicates.len())
            .finish_non_exhaustive()
    }
}
