//! One request's path through the core, whatever asks: after the credential is
//! found, the cache (and the key's verification on a miss) decides, then the
//! policy. The tower service (`service.rs`, `future.rs`) and
//! [`ComposioAuthLayer::verify`](crate::ComposioAuthLayer::verify) (below) both
//! take it, so both give the same verdict for the same headers.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;

use http::HeaderMap;

use crate::verifier::cache::{age_ms, Cached, Lookup, Stale};
use crate::verifier::credential::{self, CredentialError, CredentialHeader, Subject};
use crate::verifier::digest::Digest;
use crate::verifier::envelope::Refusal;
use crate::verifier::headers::RequestHeaders;
use crate::verifier::instruments::{CacheResult, Outcome};
use crate::verifier::policy::Policy;
use crate::verifier::rejection::{Rejection, RequestId};
use crate::verifier::session::{Age, SessionInfo};
use crate::verifier::state::LayerState;
use crate::verifier::upstream::Verdict;
use crate::verifier::verification::{Joined, Verification};
use crate::TRACING_TARGET;

/// A refusal made for this request, or one shared from the cache or a flight.
pub(crate) enum Refused {
    Made(Refusal),
    Shared(Arc<Refusal>),
}

impl Deref for Refused {
    type Target = Refusal;

    fn deref(&self) -> &Refusal {
        match self {
            Self::Made(refusal) => refusal,
            Self::Shared(refusal) => refusal,
        }
    }
}

/// Where the cache leaves a request.
pub(crate) enum Step {
    /// A valid session, fresh: admit it if the policy does.
    Admit(SessionInfo),
    /// Refuse it now.
    Refuse(Refused),
    /// Wait for the key's verification; `stale` is the fallback if it is undecided.
    Wait {
        verification: Verification,
        stale: Option<Stale>,
    },
}

/// What the cache or a verification's verdict makes of a request, before the
/// policy: admit it (counted as `Outcome`), or refuse it.
pub(crate) enum Resolution {
    Admit(SessionInfo, Outcome),
    Refuse(Refused),
}

impl LayerState {
    /// The cache's answer for the credential carried in `header` (whose digest is
    /// `digest`, a scope's when `scoped`), or its verification: joined or started
    /// on a miss, refresh-ahead started on a hit that is due. `headers` are read
    /// again only on a miss or a refresh.
    #[inline]
    pub(crate) fn step(
        &self,
        header: CredentialHeader,
        digest: Digest,
        scoped: bool,
        headers: &impl RequestHeaders,
    ) -> Step {
        let cached = match self.cache.lookup(&digest) {
            Lookup::Hit(cached) => {
                self.instruments.looked_up(match cached {
                    Cached::Fresh { .. } => CacheResult::Hit,
                    Cached::Rejected(_) => CacheResult::NegativeHit,
                });
                cached
            }
            Lookup::Miss { stale } => match self.missed(header, digest, scoped, headers) {
                Ok(Joined::Waiting(verification)) => {
                    return Step::Wait {
                        verification,
                        stale,
                    }
                }
                Ok(Joined::Cached(cached)) => cached,
                Ok(Joined::CannotRun(refusal)) => return Step::Refuse(Refused::Made(refusal)),
                Err(refusal) => return Step::Refuse(Refused::Shared(refusal)),
            },
        };
        match cached {
            Cached::Fresh { session, refresh } => {
                tracing::trace!(target: TRACING_TARGET, "cache hit");
                if refresh {
                    if let Some(subject) = self.subject(header, scoped, headers) {
                        self.verifications
                            .refresh(digest, subject, session.verified());
                    }
                }
                Step::Admit(session)
            }
            Cached::Rejected(refusal) => {
                tracing::trace!(target: TRACING_TARGET, status = refusal.status().as_u16(), "cached rejection");
                Step::Refuse(Refused::Shared(refusal))
            }
        }
    }

    /// A miss: the cached refusal of a scope's key itself, or the digest's flight.
    fn missed(
        &self,
        header: CredentialHeader,
        digest: Digest,
        scoped: bool,
        headers: &impl RequestHeaders,
    ) -> Result<Joined, Arc<Refusal>> {
        let subject = self.subject(header, scoped, headers);
        let key = subject.as_ref().and_then(|s| s.scope.as_ref());
        if let Some(refusal) = key.and_then(|(key, _)| self.cache.key_refusal(key)) {
            tracing::trace!(target: TRACING_TARGET, "cached refusal of the key of this scope");
            self.instruments.looked_up(CacheResult::NegativeHit);
            return Err(refusal);
        }
        tracing::debug!(target: TRACING_TARGET, pause_point = crate::verifier::pause_point::CACHE_MISS, "cache miss");
        self.instruments.looked_up(CacheResult::Miss);
        match subject {
            Some(subject) => Ok(self.verifications.join_or_start(digest, subject)),
            // The headers changed since the credential was found in them.
            None => Err(Arc::new(CredentialError::Missing.refusal(self.accepted))),
        }
    }

    /// What a verification of the credential in `header` of `headers` asks about.
    fn subject(
        &self,
        header: CredentialHeader,
        scoped: bool,
        headers: &impl RequestHeaders,
    ) -> Option<Subject> {
        let key = credential::key_in(headers, header)?;
        let verified_as = header.verified_as();
        let scope = match scoped {
            true => {
                let selectors = credential::selectors_in(headers)?;
                Some((self.cache.digest(verified_as, key.as_bytes()), selectors))
            }
            false => None,
        };
        Some(Subject {
            header: verified_as,
            key,
            scope,
        })
    }
}

impl Resolution {
    /// What `verdict` makes of a request that waited for it with `stale` as its
    /// fallback.
    pub(crate) fn of(verdict: Verdict, stale: Option<Stale>) -> Self {
        match verdict {
            // A session past its TTL that a flight hands out: the fleet's
            // fallback while Composio is undecided, served as a stale one.
            Verdict::Allowed(session) if session.age() == Age::Expired => {
                tracing::warn!(
                    target: TRACING_TARGET,
                    age_ms = age_ms(&session),
                    "Composio undecided; serving a stale session from the fleet"
                );
                Self::Admit(session, Outcome::Stale)
            }
            Verdict::Allowed(session) => Self::Admit(session, Outcome::Allowed),
            Verdict::Rejected(refusal) => Self::Refuse(Refused::Shared(refusal)),
            Verdict::Undecided(refusal) => match stale.and_then(Stale::usable) {
                Some(session) => {
                    tracing::warn!(
                        target: TRACING_TARGET,
                        age_ms = age_ms(&session),
                        reason = ?refusal.body().errors,
                        "Composio undecided; serving a stale session"
                    );
                    Self::Admit(session, Outcome::Stale)
                }
                None => Self::Refuse(Refused::Shared(refusal)),
            },
        }
    }
}

/// [`ComposioAuthLayer::verify`](crate::ComposioAuthLayer::verify): the headers are
/// read now; the returned future waits for a verification if there is one.
pub(crate) fn verify(
    state: &Arc<LayerState>,
    policy: &Arc<Policy>,
    headers: &HeaderMap,
) -> impl Future<Output = Result<SessionInfo, Rejection>> + Send + 'static {
    let (_, decided) = decide(state, policy, headers);
    async move {
        match decided {
            Decided::Now(verdict) => verdict,
            Decided::Later(verdict) => verdict.await,
        }
    }
}

/// The verdict on a request's headers: now (a cache hit, a refusal) or once a
/// verification ends.
pub(crate) enum Decided<F> {
    Now(Result<SessionInfo, Rejection>),
    Later(F),
}

/// As [`verify`], for an adapter: the verdict now when the cache has it (no future
/// to box), and the header that carries the credential, if there is one (the
/// header [`hide_credential`](crate::ComposioAuthBuilder::hide_credential) removes
/// from a request that is admitted).
pub(crate) fn decide(
    state: &Arc<LayerState>,
    policy: &Arc<Policy>,
    headers: &impl RequestHeaders,
) -> (
    Option<CredentialHeader>,
    Decided<impl Future<Output = Result<SessionInfo, Rejection>> + Send + 'static>,
) {
    let (carrier, step) = match credential::find(headers, state.accepted) {
        Ok(credential) => {
            let digest = state.cache.digest_of(&credential);
            let scoped = credential.scope.is_some();
            let header = credential.header;
            (Some(header), state.step(header, digest, scoped, headers))
        }
        Err(error) => {
            tracing::debug!(target: TRACING_TARGET, ?error, "no usable credential");
            (
                None,
                Step::Refuse(Refused::Made(error.refusal(state.accepted))),
            )
        }
    };
    let resolution = match step {
        Step::Admit(session) => Resolution::Admit(session, Outcome::Allowed),
        Step::Refuse(refused) => Resolution::Refuse(refused),
        Step::Wait {
            verification,
            stale,
        } => {
            // Read now: the future borrows nothing.
            let request_id = RequestId::of(headers);
            let policy = Arc::clone(policy);
            let verdict = async move {
                let resolution = Resolution::of(verification.await, stale);
                judge(&policy, resolution, || request_id)
            };
            return (carrier, Decided::Later(verdict));
        }
    };
    let verdict = judge(policy, resolution, || RequestId::of(headers));
    (carrier, Decided::Now(verdict))
}

/// What the policy makes of `resolution`, counted and, when refused, rendered
/// (with the request's id, read only then).
fn judge(
    policy: &Policy,
    resolution: Resolution,
    request_id: impl FnOnce() -> RequestId,
) -> Result<SessionInfo, Rejection> {
    let refused = match resolution {
        Resolution::Admit(session, outcome) => match policy.admits(&session, outcome) {
            None => return Ok(session),
            Some(forbidden) => Refused::Made(forbidden.clone()),
        },
        Resolution::Refuse(refused) => refused,
    };
    policy.refused(&refused);
    Err(Rejection::new(&refused, &request_id(), policy.challenge()))
}
