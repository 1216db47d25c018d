//! One verification of a key, from start to verdict: the in-flight map that
//! coalesces concurrent misses, the slot and time budget of the upstream call, and
//! settling the verdict into the cache. Invalidation lives here too, because it is
//! ordered against settling by the same lock.
//!
//! The rules, each enforced in one place below:
//!
//! - **One flight per key.** The first miss for a digest starts a flight: a task
//!   spawned on the caller's runtime, so a client that disconnects neither cancels
//!   nor re-runs it, and its verdict is cached even if every caller has gone. Later
//!   misses on the same runtime join it ([`Verifications::join_or_start`]). Once a
//!   layer serves several runtimes that each may idle (actix-web's workers), its
//!   flights all run on one runtime of its own ([`Verifications::run_on_own_runtime`]),
//!   so every miss joins the key's one flight whichever worker it arrives on.
//! - **Only the key's current flight settles.** A flight settles its verdict into the
//!   cache and leaves the map in one critical section, and only while it is still
//!   the key's flight in the map. [`Verifications::invalidate`] takes the flight out
//!   of the map and empties the cache under the same lock. So after `invalidate`
//!   returns, no request joins a flight that started before it, and no such flight
//!   fills the cache (or, through it, any per-thread front).
//! - **A flight that can never finish is replaced at once.** Its guard lives in the
//!   task's future from the moment it is spawned: if the runtime drops the task
//!   unpolled, the guard takes the flight out of the map. A flight of another
//!   runtime is never joined (that runtime may be idle): it is replaced.
//! - **The fleet first, when there is one.** With a fleet (feature `redis`), a
//!   flight asks Redis before Composio: it adopts a verdict another replica
//!   recorded, or takes the fleet's lease, verifies, settles, and records its
//!   verdict for the others after handing it out (`fleet/protocol.rs`). Invalidations
//!   from other replicas arrive as an [`Invalidation`] and take the same path, under
//!   the same lock, as local ones.
//! - **A budget for every call.** Waiting for one of `max_concurrent_verifications`
//!   slots and the upstream call share one `timeout`; a slot obtained with under a
//!   tenth of it left is given back unused.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::{FutureExt, Shared};
use tokio::runtime::{self, Handle};
use tokio::sync::{oneshot, Semaphore};
use tracing::Instrument;

use crate::verifier::cache::{Cached, Lookup, VerdictCache};
use crate::verifier::credential::{CredentialHeader, Subject};
use crate::verifier::digest::Digest;
use crate::verifier::envelope::Refusal;
use crate::verifier::fleet::{Fleet, FleetVerdict, Invalidation};
use crate::verifier::instruments::Instruments;
use crate::verifier::own_runtime::OwnRuntime;
use crate::verifier::scopes::ScopeIndex;
use crate::verifier::upstream::{Called, Upstream, Verdict};
use crate::TRACING_TARGET;

/// The verdict of a flight, as each waiting request awaits it.
pub(crate) type VerdictFuture = Pin<Box<dyn Future<Output = Verdict> + Send>>;

/// A flight in progress, shared by every request that waits for it.
pub(crate) type Verification = Shared<VerdictFuture>;

/// What a request that missed the cache gets from [`Verifications::join_or_start`].
pub(crate) enum Joined {
    /// A flight to wait for (joined, or just started).
    Waiting(Verification),
    /// A verdict that landed since the request's own lookup.
    Cached(Cached),
    /// No verification can run here (not on a Tokio runtime).
    CannotRun(Refusal),
}

/// The verifications of one layer: what they need (cache, upstream, slots, time
/// budget) and the flights in progress.
pub(crate) struct Verifications {
    flights: Arc<Flights>,
    /// The runtime this layer's flights run on once it has one of its own; kept
    /// here, where no flight holds it, so it goes with the last layer.
    own_runtime: OnceLock<Option<OwnRuntime>>,
}

/// One layer's flights in progress, and what every one of them needs.
struct Flights {
    cache: Arc<VerdictCache>,
    upstream: Upstream,
    budget: Duration,
    permits: Semaphore,
    max_concurrent: usize,
    /// The in-flight map (each key's current flight), and the scopes of user
    /// keys, which it keeps in step with the flights.
    in_flight: Mutex<InFlight>,
    next_flight: AtomicU64,
    instruments: Arc<Instruments>,
    /// The fleet, when replicas share verdicts through Redis.
    fleet: Option<Arc<Fleet>>,
    /// Where flights run, when not on the caller's runtime.
    runtime: OnceLock<Handle>,
}

/// What the in-flight lock guards: each digest's current flight, and the scopes
/// of each user key (see `scopes.rs`).
struct InFlight {
    flights: HashMap<Digest, Flight>,
    scopes: ScopeIndex,
}

impl InFlight {
    /// Takes `digest`'s flight out of the map: it settles nothing any more, and no
    /// request joins it.
    fn remove(&mut self, digest: &Digest) {
        self.flights.remove(digest);
    }
}

/// A key's flight in the in-flight map.
struct Flight {
    id: u64,
    runtime: runtime::Id,
    verification: Verification,
}

impl Verifications {
    pub(crate) fn new(
        cache: Arc<VerdictCache>,
        upstream: Upstream,
        budget: Duration,
        max_concurrent: usize,
        instruments: Arc<Instruments>,
        fleet: Option<Arc<Fleet>>,
    ) -> Self {
        let flights = Arc::new(Flights {
            cache,
            upstream,
            budget,
            permits: Semaphore::new(max_concurrent),
            max_concurrent,
            in_flight: Mutex::new(InFlight {
                flights: HashMap::new(),
                scopes: ScopeIndex::new(),
            }),
            next_flight: AtomicU64::new(0),
            instruments,
            fleet,
            runtime: OnceLock::new(),
        });
        if let Some(fleet) = &flights.fleet {
            let layer = Arc::downgrade(&flights);
            fleet.bind(Box::new(move |invalidation| {
                let Some(flights) = layer.upgrade() else {
                    return false;
                };
                match invalidation {
                    Invalidation::Keys(digests) => flights.forget(digests),
                    Invalidation::All => flights.forget_all(),
                }
                true
            }));
        }
        Self {
            flights,
            own_runtime: OnceLock::new(),
        }
    }

    /// From now on, runs every flight on a runtime of this layer's own (one
    /// thread), where no caller's runtime can stall it: for a layer whose requests
    /// come from several runtimes, each of which may idle. Flights already running
    /// elsewhere finish there. Idempotent. If the thread cannot be started, flights
    /// stay on the callers' runtimes (logged).
    #[cfg_attr(not(feature = "actix-web"), allow(dead_code))]
    pub(crate) fn run_on_own_runtime(&self) {
        self.own_runtime.get_or_init(|| match OwnRuntime::start() {
            Ok(own) => {
                let _ = self.flights.runtime.set(own.handle().clone());
                Some(own)
            }
            Err(error) => {
                tracing::error!(target: TRACING_TARGET, %error, "composio-auth could not start its verification thread; single flight holds per worker only");
                None
            }
        });
    }

    /// For a request whose lookup missed: the key's flight on this runtime; or a
    /// verdict that landed since the lookup; or a new flight.
    pub(crate) fn join_or_start(&self, digest: Digest, subject: Subject) -> Joined {
        let Some(runtime) = self.flights.runtime() else {
            tracing::error!(target: TRACING_TARGET, "composio-auth needs a Tokio runtime to verify keys");
            return Joined::CannotRun(Refusal::unavailable(
                "composio-auth needs a Tokio runtime",
                None,
            ));
        };
        let mut in_flight = self.flights.in_flight();
        let current = in_flight.flights.get(&digest);
        if let Some(flight) = current.filter(|f| f.runtime == runtime.id()) {
            tracing::debug!(target: TRACING_TARGET, pause_point = crate::verifier::pause_point::JOINED_VERIFICATION, "joining the verification in flight");
            return Joined::Waiting(flight.verification.clone());
        }
        // A flight that ended since the caller's lookup settled under this lock.
        if let Lookup::Hit(cached) = self.flights.cache.lookup(&digest) {
            return Joined::Cached(cached);
        }
        let (verification, task) =
            self.flight(&mut in_flight, &runtime, digest, subject, Duration::ZERO);
        drop(in_flight);
        runtime.spawn(task);
        Joined::Waiting(verification)
    }

    /// Starts one background re-verification of a key whose session (verified at
    /// `verified`) nears its TTL, unless the key already has a flight on this
    /// runtime. Nobody waits for it. With a fleet, a fresher verdict another
    /// replica recorded is taken instead of asking Composio.
    pub(crate) fn refresh(&self, digest: Digest, subject: Subject, verified: Instant) {
        let Some(runtime) = self.flights.runtime() else {
            return;
        };
        let mut in_flight = self.flights.in_flight();
        if in_flight
            .flights
            .get(&digest)
            .is_some_and(|f| f.runtime == runtime.id())
        {
            return;
        }
        tracing::debug!(target: TRACING_TARGET, "refreshing a session ahead of its expiry");
        // What the cached session has left: a fleet's verdict must outlive it by a
        // twentieth of a session's life to count as fresher (and not be the same
        // verdict again, read a few milliseconds later).
        let life = self.flights.cache.session_life();
        let floor = life.saturating_sub(verified.elapsed()) + life / 20;
        let (_, task) = self.flight(&mut in_flight, &runtime, digest, subject, floor);
        drop(in_flight);
        runtime.spawn(task);
    }

    /// Registers a new flight for `digest` (replacing any other, which then settles
    /// nothing), listing it under its key if it is a scope's, and returns it with the
    /// task to spawn once the lock is released: a task dropped unspawned takes its
    /// flight out of the map, which needs the lock.
    fn flight(
        &self,
        in_flight: &mut InFlight,
        runtime: &Handle,
        digest: Digest,
        subject: Subject,
        floor: Duration,
    ) -> (Verification, impl Future<Output = ()> + Send + 'static) {
        let key_digest = subject.scope.as_ref().map(|(key, _)| *key);
        if let Some(key) = key_digest {
            self.flights.list_scope(in_flight, key, digest);
        }
        let id = self.flights.next_flight.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        let verdict: VerdictFuture = Box::pin(async move {
            receiver
                .await
                .unwrap_or_else(|_| Verdict::undecided("the verification task failed", None))
        });
        let verification = verdict.shared();
        in_flight.flights.insert(
            digest,
            Flight {
                id,
                runtime: runtime.id(),
                verification: verification.clone(),
            },
        );
        // Created outside the task's body: it is dropped with the task, polled or not.
        let guard = FlightGuard {
            flights: Arc::clone(&self.flights),
            digest,
            user_key: match subject.header {
                CredentialHeader::UserApiKey => Some(key_digest.unwrap_or(digest)),
                _ => None,
            },
            id,
        };
        let header = subject.header;
        // A child of the request's span (e.g. tower-http's `TraceLayer`), so traces
        // show the verification inside the request that started it.
        let span = tracing::debug_span!(
            target: TRACING_TARGET,
            "composio_auth.verification",
            header = header.as_str(),
            outcome = tracing::field::Empty,
            upstream_status = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
        );
        let task = async move {
            let FleetVerdict {
                verdict,
                sent_at,
                share,
            } = guard.flights.verdict_on(subject, floor).await;
            let span = tracing::Span::current();
            span.record("outcome", verdict.kind());
            span.record("latency_ms", sent_at.elapsed().as_secs_f64() * 1e3);
            guard.settle(&verdict, sent_at);
            // Waiters hear the verdict after it is cached: a request that arrives
            // once a waiter has its answer finds the verdict in the cache.
            let _ = sender.send(verdict);
            // Then the other replicas, through Redis.
            if let Some(share) = share {
                share.await;
            }
        }
        .instrument(span);
        (verification, task)
    }

    /// Forgets `digests`: their flights stop being joinable and will settle nothing,
    /// and their cached verdicts are gone (and revoked) before this returns.
    pub(crate) fn invalidate(&self, digests: impl IntoIterator<Item = Digest>) {
        self.flights.forget(digests);
    }

    /// As [`invalidate`](Self::invalidate), for every key.
    pub(crate) fn invalidate_all(&self) {
        self.flights.forget_all();
    }

    /// [`invalidate`](Self::invalidate) here at once, then on every replica sharing
    /// the fleet, if there is one; `false` if Redis could not be reached.
    pub(crate) async fn invalidate_everywhere(
        &self,
        key: &[u8],
        digests: &[(CredentialHeader, Digest)],
    ) -> bool {
        let here = || self.invalidate(digests.iter().map(|(_, digest)| *digest));
        here();
        let Some(fleet) = &self.flights.fleet else {
            return true;
        };
        tracing::debug!(target: TRACING_TARGET, pause_point = crate::verifier::pause_point::INVALIDATED_HERE, "invalidated on this replica; now on the fleet");
        let reached = fleet.invalidate(key, digests).await;
        // A verification that began since `here()` may have read the key's verdict
        // from Redis before it left: it settles nothing either.
        here();
        reached
    }

    /// As [`invalidate_everywhere`](Self::invalidate_everywhere), for every key.
    pub(crate) async fn invalidate_all_everywhere(&self) -> bool {
        self.invalidate_all();
        let Some(fleet) = &self.flights.fleet else {
            return true;
        };
        tracing::debug!(target: TRACING_TARGET, pause_point = crate::verifier::pause_point::INVALIDATED_HERE, "invalidated on this replica; now on the fleet");
        // The new epoch applies here as soon as Redis has it...
        let reached = fleet.invalidate_all().await;
        // ...and a verification that began meanwhile, in the old epoch, settles
        // nothing.
        self.invalidate_all();
        reached
    }
}

impl Flights {
    /// The runtime a flight starting now runs on: the layer's own if it has one,
    /// else the caller's (none outside a runtime).
    fn runtime(&self) -> Option<Handle> {
        match self.runtime.get() {
            Some(own) => Some(own.clone()),
            None => Handle::try_current().ok(),
        }
    }

    /// Forgets `digests` and, for a user key's, every scope of the key.
    /// Lists `digest` under its user key's digest `key`; a scope that this
    /// displaces settles nothing, and its verdicts go.
    fn list_scope(&self, in_flight: &mut InFlight, key: Digest, digest: Digest) {
        let InFlight { flights, scopes } = in_flight;
        let flying = |scope: &Digest| flights.contains_key(scope);
        if let Some(displaced) = scopes.list(key, digest, Instant::now(), flying) {
            flights.remove(&displaced);
            self.cache.remove(&displaced);
        }
    }

    /// The verdict on `subject`: with the fleet (adopted, or verified under its
    /// lease), or from Composio alone.
    async fn verdict_on(&self, subject: Subject, floor: Duration) -> FleetVerdict {
        match &self.fleet {
            Some(fleet) => {
                fleet.listen();
                let call = |subject| self.call_within_budget(subject);
                fleet.verify(subject, floor, call).await
            }
            None => {
                let called = self.call_within_budget(subject).await;
                FleetVerdict {
                    verdict: called.verdict,
                    sent_at: called.sent_at,
                    share: None,
                }
            }
        }
    }

    fn forget(&self, digests: impl IntoIterator<Item = Digest>) {
        let mut in_flight = self.in_flight();
        for digest in digests {
            for scope in in_flight.scopes.take(&digest) {
                in_flight.remove(&scope);
                self.cache.remove(&scope);
            }
            in_flight.remove(&digest);
            self.cache.remove(&digest);
        }
        drop(in_flight);
        self.instruments.entries(|| self.cache.entry_counts());
    }

    fn forget_all(&self) {
        let mut in_flight = self.in_flight();
        in_flight.flights.clear();
        in_flight.scopes.clear();
        self.cache.clear();
        drop(in_flight);
        self.instruments.entries(|| self.cache.entry_counts());
    }

    fn in_flight(&self) -> MutexGuard<'_, InFlight> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a verification slot, then asks Composio, all within the budget.
    /// Returns the verdict, when the upstream request was sent, and Composio's
    /// reply when it decided.
    ///
    /// A slot obtained with less than a tenth of the budget left is given back
    /// unused: under overload, queued verifications would otherwise each start an
    /// upstream call (spending the key owner's rate limit) only to abandon it a
    /// moment later.
    async fn call_within_budget(&self, subject: Subject) -> Called {
        let budget = self.budget;
        let deadline = tokio::time::Instant::now() + budget;
        let no_slot = || {
            tracing::warn!(target: TRACING_TARGET, ?budget, "no verification slot free in time");
            let reason = format!(
                "no verification slot free in time ({} upstream calls in flight)",
                self.max_concurrent
            );
            Called::undecided(reason, Instant::now())
        };
        let permit = match tokio::time::timeout_at(deadline, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Called::undecided("verification slots closed", Instant::now()),
            Err(_) => return no_slot(),
        };
        if deadline.saturating_duration_since(tokio::time::Instant::now()) < budget / 10 {
            return no_slot();
        }
        let sent_at = Instant::now();
        self.instruments.call_started();
        let Subject { header, key, scope } = subject;
        let selectors = scope.map(|(_, selectors)| selectors);
        let call = self.upstream.verify(header, key, selectors, sent_at);
        let called = match tokio::time::timeout_at(deadline, call).await {
            Ok(called) => called,
            Err(_) => {
                tracing::warn!(target: TRACING_TARGET, ?budget, "verification timed out");
                let reason = format!("verification timed out after {budget:?}");
                Called::undecided(reason, sent_at)
            }
        };
        self.instruments.call_ended(&called.verdict, sent_at);
        drop(permit);
        called
    }
}

/// Owned by a flight's task: settles the flight, and takes it out of the in-flight
/// map however the task ends (verdict, panic, or a runtime that drops it unpolled).
struct FlightGuard {
    flights: Arc<Flights>,
    digest: Digest,
    /// The key's digest, when this flight is a user key's (one of its scopes', or
    /// its default scope's, whose digest is the key's).
    user_key: Option<Digest>,
    id: u64,
}

impl FlightGuard {
    /// Caches `verdict` and leaves the map, in one critical section, if this is still
    /// the key's flight (no invalidation and no replacement since it started). A
    /// refusal of the key itself also refuses every scope of a user key.
    fn settle(&self, verdict: &Verdict, sent_at: Instant) {
        let mut in_flight = self.flights.in_flight();
        let current = in_flight.flights.get(&self.digest);
        if current.is_none_or(|f| f.id != self.id) {
            tracing::debug!(target: TRACING_TARGET, pause_point = crate::verifier::pause_point::VERDICT_NOT_CACHED, verdict = verdict.kind(), "verdict not cached: invalidated or replaced while in flight");
            return;
        }
        match self.user_key {
            Some(key) => self.settle_user_key(&mut in_flight, key, verdict, sent_at),
            None => self.flights.cache.settle(&self.digest, verdict, sent_at),
        }
        in_flight.remove(&self.digest);
        drop(in_flight);
        self.flights
            .instruments
            .entries(|| self.flights.cache.entry_counts());
        tracing::trace!(target: TRACING_TARGET, verdict = verdict.kind(), "verdict settled");
    }

    /// [`settle`](Self::settle) for a user key's flight (a scope's, or the key's
    /// default one), whose key's digest is `key`: newer news wins across the key's
    /// scopes. A session from a call sent before the key's latest refusal (learned
    /// in any scope) is not cached; a refusal of the key reaches the key and its
    /// scopes, but no session verified after the refusal's call was sent.
    fn settle_user_key(
        &self,
        in_flight: &mut InFlight,
        key: Digest,
        verdict: &Verdict,
        sent_at: Instant,
    ) {
        let cache = &self.flights.cache;
        let now = Instant::now();
        let until = now + cache.longest_life();
        let InFlight { flights, scopes } = in_flight;
        let refused_since = scopes.refused_at(&key).is_some_and(|at| at > sent_at);
        match verdict {
            Verdict::Allowed(_) if refused_since => {
                tracing::debug!(target: TRACING_TARGET, pause_point = crate::verifier::pause_point::VERDICT_NOT_CACHED, "session not cached: its key was refused since its call was sent");
            }
            Verdict::Rejected(refusal) if refusal.refuses_key() => {
                let flying = |digest: &Digest| flights.contains_key(digest);
                scopes.refuse(key, sent_at, (now, until), flying);
                let digests = [&self.digest, &key];
                let distinct = if self.digest == key { 1 } else { 2 };
                cache.refuse_sessions_before(&digests[..distinct], verdict, sent_at);
                cache.drop_sessions_before(scopes.scopes(&key), sent_at);
            }
            _ => cache.settle(&self.digest, verdict, sent_at),
        }
        if self.digest != key {
            scopes.keep(&key, until);
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut in_flight = self.flights.in_flight();
        if in_flight
            .flights
            .get(&self.digest)
            .is_some_and(|f| f.id == self.id)
        {
            in_flight.remove(&self.digest);
        }
    }
}
