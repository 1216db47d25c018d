//! The fleet's protocol for one verification: on a local miss, consult Redis and
//! adopt a verdict another replica recorded, or take the fleet-wide lease, verify,
//! and record the verdict for the others. A session between `ttl` and `ttl +
//! stale_if_error` found in Redis is only a fallback for a verification that is
//! undecided, as a local stale session is.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;

use super::scripts::{ConsultReply, Lease};
use super::stored::{stored_body, wall_ms, Entry, RedisClock, Stamp, StoredVerdict};
use super::{Fleet, FleetVerdict, Share};
use crate::verifier::credential::Subject;
use crate::verifier::instruments::FleetResult;
use crate::verifier::session::{Age, SessionInfo};
use crate::verifier::upstream::{classify, Called, UpstreamReply, Verdict};
use crate::TRACING_TARGET;

/// The first pause between two looks at another replica's lease.
const FIRST_PAUSE: Duration = Duration::from_millis(2);
/// The longest pause between two looks at another replica's lease.
const LONGEST_PAUSE: Duration = Duration::from_millis(50);

/// What consulting Redis allows a flight to write afterwards: its entry, the
/// generation it read, its lease token (empty when this replica holds no lease),
/// and Redis's clock as it read it.
struct WriteBack {
    entry: Entry,
    gen: Vec<u8>,
    token: String,
    clock: RedisClock,
}

impl WriteBack {
    fn new(entry: Entry, reply: &ConsultReply<'_>, token: String, clock: RedisClock) -> Self {
        Self {
            entry,
            gen: reply.gen.to_vec(),
            token,
            clock,
        }
    }

    /// `to_record`'s reply stamped and sealed, if what is left of its life is worth
    /// recording.
    fn seal(&self, to_record: ToRecord) -> Option<Sealed> {
        let ToRecord {
            reply,
            kept,
            sent_at,
        } = to_record;
        let left = kept
            .checked_sub(sent_at.elapsed())
            .filter(|left| !left.is_zero())?;
        let body = stored_body(reply.status, reply.body);
        let plain = StoredVerdict {
            status: reply.status,
            stamp: Stamp {
                redis_ms: self.clock.at(sent_at),
                wall_ms: wall_ms(sent_at),
            },
            body: &body,
        }
        .encode();
        Some(Sealed {
            value: self.entry.seal(&self.gen, &plain)?,
            px_ms: left.as_millis().max(1) as u64,
        })
    }
}

/// A reply that decided, to record: kept `kept` after its call was sent at
/// `sent_at`.
struct ToRecord {
    reply: UpstreamReply,
    kept: Duration,
    sent_at: Instant,
}

/// A value ready for Redis, and how long Redis keeps it.
struct Sealed {
    value: Vec<u8>,
    px_ms: u64,
}

/// A verdict read from Redis: its age, and when its call was sent (on this
/// machine's clock).
struct InRedis {
    verdict: Verdict,
    age: Duration,
    sent_at: Instant,
}

/// What consulting Redis gave.
enum Consulted {
    /// A verdict to adopt, and the lease to give back if this consult took it.
    Found {
        verdict: Verdict,
        sent_at: Instant,
        release: Option<WriteBack>,
    },
    /// Verify, then write back (if Redis was reachable). `stale`: a session from
    /// Redis past its `ttl` but inside its `stale_if_error` window, to serve only if
    /// the verification is undecided.
    Verify {
        write_back: Option<WriteBack>,
        stale: Option<SessionInfo>,
    },
}

/// A wait for another replica's verdict: pauses that double up to
/// [`LONGEST_PAUSE`], until the lease wait is over.
struct LeaseWait {
    deadline: tokio::time::Instant,
    pause: Duration,
}

impl LeaseWait {
    fn new(wait: Duration) -> Self {
        Self {
            deadline: tokio::time::Instant::now() + wait,
            pause: FIRST_PAUSE,
        }
    }

    /// Pauses before the next look; `false` (at once) when the wait is over.
    async fn pause(&mut self) -> bool {
        if self.pause == FIRST_PAUSE {
            tracing::debug!(target: TRACING_TARGET, pause_point = crate::verifier::pause_point::LEASE_HELD_ELSEWHERE, "another replica holds the lease; waiting for its verdict");
        }
        let now = tokio::time::Instant::now();
        if now >= self.deadline {
            tracing::debug!(target: TRACING_TARGET, "another replica's verification takes too long; verifying here");
            return false;
        }
        tokio::time::sleep(self.pause.min(self.deadline - now)).await;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        true
    }
}

impl Fleet {
    /// Decides a key with the fleet: a verdict another replica recorded (if it is
    /// younger than its kind's TTL on clocks Redis cannot rewrite, and outlives
    /// `floor`, the local copy's remaining life when refreshing), or `call`'s,
    /// recorded for the others by the returned [`Share`], to run once the verdict
    /// has been handed out. If `call` is undecided, a session from Redis inside its
    /// `stale_if_error` window is served, marked stale.
    pub(crate) async fn verify<F, Fut>(
        self: &Arc<Self>,
        subject: Subject,
        floor: Duration,
        call: F,
    ) -> FleetVerdict
    where
        F: FnOnce(Subject) -> Fut,
        Fut: Future<Output = Called>,
    {
        let (write_back, stale) = match self.consult(&subject, floor).await {
            Consulted::Found {
                verdict,
                sent_at,
                release,
            } => {
                tracing::debug!(target: TRACING_TARGET, verdict = verdict.kind(), "verdict adopted from Redis");
                self.instruments.fleet_result(FleetResult::Adopted);
                let share = release.map(|write_back| self.share(write_back, None));
                return FleetVerdict {
                    verdict,
                    sent_at,
                    share,
                };
            }
            Consulted::Verify { write_back, stale } => (write_back, stale),
        };
        let leased = write_back.as_ref().is_some_and(|w| !w.token.is_empty());
        self.instruments.fleet_result(if leased {
            FleetResult::Verified
        } else {
            FleetResult::Alone
        });
        let called = call(subject).await;
        let kept = self.lives.kept_for(&called.verdict);
        let sent_at = called.sent_at;
        let to_record = called.reply.map(|reply| ToRecord {
            reply,
            kept,
            sent_at,
        });
        let share = write_back.map(|write_back| self.share(write_back, to_record));
        if let (Verdict::Undecided(_), Some(session)) = (&called.verdict, stale) {
            tracing::debug!(target: TRACING_TARGET, "Composio undecided; a stale session from Redis is the fallback");
            let verified = session.verified();
            return FleetVerdict {
                verdict: Verdict::Allowed(session),
                sent_at: verified,
                share,
            };
        }
        FleetVerdict {
            verdict: called.verdict,
            sent_at,
            share,
        }
    }

    /// The write of `to_record`, or only the lease's release, to run once the
    /// verdict is handed out (sealing included).
    fn share(self: &Arc<Self>, write_back: WriteBack, to_record: Option<ToRecord>) -> Share {
        let fleet = Arc::clone(self);
        Box::pin(async move {
            let sealed = to_record.and_then(|to_record| write_back.seal(to_record));
            fleet.record(write_back, sealed).await;
        })
    }

    async fn consult(&self, subject: &Subject, floor: Duration) -> Consulted {
        let Some(epoch) = self.subscription.epoch(self.links.time_limit()).await else {
            return Consulted::Verify {
                write_back: None,
                stale: None,
            };
        };
        let entry = self.entry(subject, epoch);
        let token = self.random_word();
        let mut lease_wait = LeaseWait::new(self.wait);
        // A value whose PTTL says more than this may be adoptable: a session's
        // stale window is not.
        let hint_ms = floor.max(self.lives.stale_if_error).as_millis() as u64;
        let mut force = false;
        let mut stale = None;
        loop {
            let reply = self.run_consult(&entry, hint_ms, &token, force).await;
            let Some(reply) = reply.as_ref().and_then(ConsultReply::read) else {
                return Consulted::Verify {
                    write_back: None,
                    stale,
                };
            };
            let clock = RedisClock {
                ms: reply.clock_ms,
                read_at: Instant::now(),
            };
            if let Some(found) = self.adoptable(&entry, &reply, clock, floor, &mut stale) {
                let release = (reply.lease == Lease::Taken)
                    .then(|| WriteBack::new(entry, &reply, token, clock));
                return Consulted::Found {
                    verdict: found.verdict,
                    sent_at: found.sent_at,
                    release,
                };
            }
            match reply.lease {
                Lease::Taken => {
                    let write_back = WriteBack::new(entry, &reply, token, clock);
                    return Consulted::Verify {
                        write_back: Some(write_back),
                        stale,
                    };
                }
                // Its PTTL made it look adoptable, but it is not: take the lease.
                Lease::NotTaken => force = true,
                Lease::HeldElsewhere => {
                    if !lease_wait.pause().await {
                        let write_back = WriteBack::new(entry, &reply, String::new(), clock);
                        return Consulted::Verify {
                            write_back: Some(write_back),
                            stale,
                        };
                    }
                }
            }
        }
    }

    /// One run of the consult script; `None` if Redis was not usable.
    async fn run_consult(
        &self,
        entry: &Entry,
        hint_ms: u64,
        token: &str,
        force: bool,
    ) -> Option<Value> {
        let lease_ms = self.lease.as_millis() as u64;
        let invocation = self.scripts.consult(entry, hint_ms, token, lease_ms, force);
        let invocation = &invocation;
        self.links
            .run(|mut link| async move { invocation.invoke_async(&mut link).await })
            .await
    }

    /// The verdict in a consult's value, if it may be adopted: younger than its
    /// kind's TTL, and outliving `floor`. Else a session inside its stale window
    /// goes to `stale` (for a request, not a refresh), and a verdict older than
    /// any replica would have kept it is logged.
    fn adoptable(
        &self,
        entry: &Entry,
        reply: &ConsultReply<'_>,
        clock: RedisClock,
        floor: Duration,
        stale: &mut Option<SessionInfo>,
    ) -> Option<InRedis> {
        let found = self.read(entry, reply, clock)?;
        let kept = self.lives.kept_for(&found.verdict);
        if found.age < self.lives.fresh_for(&found.verdict)
            && kept.saturating_sub(found.age) > floor
        {
            return Some(found);
        }
        let InRedis { verdict, age, .. } = found;
        match verdict {
            // Past its TTL, inside its stale window: a fallback only, and only for
            // a request (a refresh has a fresher local session).
            Verdict::Allowed(session) if floor.is_zero() && age < self.lives.session_life() => {
                session.grow_to(Age::Expired);
                *stale = Some(session);
            }
            // Past its lifetime by more than a writer's reading of Redis's clock can
            // be early (one operation's time limit): no replica wrote that expiry.
            _ if age > kept + self.links.time_limit() => {
                self.suspicious("a verdict in Redis is older than its lifetime (its expiry was extended in Redis); verifying again");
            }
            _ => {}
        }
        None
    }

    /// The verdict a consult's value holds, its age, and when its call was sent
    /// (on this machine's clock); `None` if there is none to use.
    fn read(&self, entry: &Entry, reply: &ConsultReply<'_>, clock: RedisClock) -> Option<InRedis> {
        if reply.value.is_empty() {
            return None;
        }
        let plain = match entry.open(reply.gen, reply.value) {
            Ok(Some(plain)) => plain,
            Ok(None) => {
                tracing::debug!(target: TRACING_TARGET, "the verdict in Redis predates an invalidation; verifying again");
                return None;
            }
            Err(()) => {
                self.suspicious("a verdict in Redis does not open (altered, written back after an invalidation, or from another version); verifying again");
                return None;
            }
        };
        let Some(stored) = StoredVerdict::decode(&plain) else {
            self.suspicious("a verdict in Redis does not parse; verifying again");
            return None;
        };
        let age = stored.stamp.age(clock.ms, wall_ms(clock.read_at));
        let sent_at = clock.read_at.checked_sub(age)?;
        match classify(stored.status, None, stored.body, sent_at) {
            Verdict::Undecided(_) => {
                self.suspicious("a verdict in Redis does not parse; verifying again");
                None
            }
            verdict => Some(InRedis {
                verdict,
                age,
                sent_at,
            }),
        }
    }

    /// Writes `sealed` back (if any) and gives the lease back (if held).
    async fn record(&self, write_back: WriteBack, sealed: Option<Sealed>) {
        if sealed.is_none() && write_back.token.is_empty() {
            return;
        }
        let (value, px_ms) = sealed.map_or((Vec::new(), 0), |s| (s.value, s.px_ms));
        let WriteBack {
            entry, gen, token, ..
        } = &write_back;
        let invocation = self.scripts.record(entry, gen, token, &value, px_ms);
        let invocation = &invocation;
        let written: Option<i64> = self
            .links
            .run(|mut link| async move { invocation.invoke_async(&mut link).await })
            .await;
        tracing::debug!(target: TRACING_TARGET, written = written == Some(1), "verdict recorded in Redis");
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use crate::verifier::cache::CachePolicy;
    use crate::verifier::upstream::classify;

    use super::*;

    #[test]
    fn a_verdicts_lives_follow_its_kind_not_its_status() {
        let lives = CachePolicy {
            ttl: Duration::from_secs(60),
            stale_if_error: Duration::from_secs(10),
            negative_ttl: Duration::from_secs(5),
            max_capacity: 1,
            negative_max_capacity: 1,
            refresh_ahead: false,
        };
        let allowed = classify(
            StatusCode::OK,
            None,
            crate::verifier::session::REFERENCE_DOCUMENT.as_bytes(),
            Instant::now(),
        );
        assert_eq!(lives.fresh_for(&allowed), Duration::from_secs(60));
        assert_eq!(lives.kept_for(&allowed), Duration::from_secs(70));
        // A 200 whose key is deleted is a rejection: kept for `negative_ttl`.
        let mut deleted: serde_json::Value =
            serde_json::from_str(crate::verifier::session::REFERENCE_DOCUMENT).unwrap();
        deleted["api_key"]["deleted"] = serde_json::Value::Bool(true);
        let deleted = classify(
            StatusCode::OK,
            None,
            &serde_json::to_vec(&deleted).unwrap(),
            Instant::now(),
        );
        assert_eq!(deleted.kind(), "rejected");
        assert_eq!(lives.fresh_for(&deleted), Duration::from_secs(5));
        assert_eq!(lives.kept_for(&deleted), Duration::from_secs(5));
        assert_eq!(lives.longest_life(), Duration::from_secs(70));
    }
}
