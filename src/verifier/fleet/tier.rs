//! The shared tier's operations on Redis, for one layer: consult it on a local miss
//! (adopting a verdict another replica obtained, or taking the fleet-wide lease to
//! verify), record a verdict after verifying, and publish invalidations.
//!
//! What Redis holds per key (all under one hash tag, so one cluster slot):
//!
//! | Redis key | holds | lives |
//! |---|---|---|
//! | `{prefix}{<fleet digest>}:v` | the epoch it was recorded in, and the sealed verdict | what is left of its lifetime |
//! | `{prefix}{<fleet digest>}:lock` | the lease of the replica verifying it | the layer's `timeout` |
//! | `{prefix}{<fleet digest>}:gen` | a random word, replaced by each invalidation | a generous bound on a verification, and at least as long as the value |
//!
//! plus `{prefix}epoch` (bumped by `invalidate_all`: a verdict recorded in an
//! earlier epoch is a miss), `{prefix}incarnation` (see `listener.rs`) and the
//! stream `{prefix}invalidations`. Recording is a compare-and-set against `gen`: a
//! verification that began before an invalidation never writes its verdict back.
//!
//! **What a replica trusts.** Nothing Redis says unsealed decides a verdict. A
//! value seals, with the answer, when its call was sent (on Redis's clock and on
//! the writer's wall clock, see [`Stamp`]); its associated data is its Redis key,
//! its epoch and the key's generation. So a value is adopted as decided only while
//! it is younger than its kind's TTL by those clocks, whatever its `PTTL` says, and
//! a value written back after an invalidation (another generation) or an
//! `invalidate_all` (another epoch) is a miss. A session between `ttl` and `ttl +
//! stale_if_error` is only a fallback for a verification that is undecided, as a
//! local stale session is.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, StatusCode};
use redis::streams::StreamMaxlen;
use redis::{AsyncCommands, Script, ScriptInvocation, Value};

use super::link::{Links, Servers};
use super::seal::{Sealer, ValueCipher};
use super::subscription::Subscription;
use super::Forget;
use crate::verifier::cache::CachePolicy;
use crate::verifier::credential::CredentialHeader;
use crate::verifier::digest::Digest;
use crate::verifier::instruments::{Direction, Instruments, Shared};
use crate::verifier::session::{Age, SessionInfo};
use crate::verifier::upstream::{classify, Answer, Verdict};
use crate::TRACING_TARGET;

/// The first pause between two looks at another replica's lease; it doubles up
/// to 50 ms.
const FIRST_PAUSE: Duration = Duration::from_millis(2);

/// Invalidation messages kept in the stream (approximately): what a replica that
/// was disconnected can catch up on. One that missed more drops its local verdicts.
pub(crate) const STREAM_KEPT: usize = 10_000;

/// Reads a key's value, its generation and Redis's clock, and takes the lease
/// unless the value looks adoptable (its `PTTL` over `hint`: only a hint, since
/// Redis can be made to say anything; the replica decides from what the value
/// seals) or the lease is held. `force` ('1') takes the lease whatever the `PTTL`.
/// KEYS: value, lock, gen. ARGV: hint ms, token, lease ms, force.
/// Returns {code, value ('' for none), seconds, microseconds, gen}, code 1 (looks
/// adoptable), 2 (leased) or 3 (lease held by another).
const CONSULT: &str = r"
local gen = redis.call('GET', KEYS[3]) or ''
local now = redis.call('TIME')
local value = redis.call('GET', KEYS[1]) or ''
local code = 3
if ARGV[4] == '0' and redis.call('PTTL', KEYS[1]) > tonumber(ARGV[1]) then
  code = 1
elseif redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  code = 2
end
return {code, value, now[1], now[2], gen}
";

/// Writes a verdict if no invalidation happened since `gen` was read (keeping
/// `gen` at least as long as the value, which is sealed with it), and gives the
/// lease back if this replica still holds it.
/// KEYS: value, lock, gen. ARGV: gen read, token, value ('' for none), px.
const RECORD: &str = r"
local written = 0
if ARGV[3] ~= '' and (redis.call('GET', KEYS[3]) or '') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  if ARGV[1] ~= '' and redis.call('PTTL', KEYS[3]) < tonumber(ARGV[4]) then
    redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[4])
  end
  written = 1
end
if redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[2])
end
return written
";

/// Forgets a key fleet-wide: a new `gen` (so no verification in flight records),
/// and no value or lease. KEYS: value, lock, gen. ARGV: new gen, its px.
const FORGET: &str = r"
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[1], KEYS[2])
return 1
";

/// Raises `{prefix}epoch` to a replica's epoch when Redis has a lower one (it was
/// flushed, restarted without persistence, or written to): the fleet's epoch never
/// goes back. KEYS: epoch. ARGV: the replica's epoch. Returns Redis's epoch before.
const RAISE: &str = r"
local epoch = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if epoch < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return epoch
";

/// How far the replicas' wall clocks may disagree with each other before a verdict
/// read from Redis looks older on them than on Redis's clock (see [`Stamp::age`]).
pub(crate) const CLOCK_ALLOWANCE: Duration = Duration::from_secs(1);

/// When a verdict's upstream call was sent, on two clocks: Redis's (estimated
/// from the `TIME` read by the consult before it) and the recording replica's wall
/// clock. Sealed with the verdict, so Redis cannot rewrite it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    redis_ms: u64,
    wall_ms: u64,
}

impl Stamp {
    const LEN: usize = 16;

    /// The verdict's age now: on Redis's clock, and never less than on the wall
    /// clocks less [`CLOCK_ALLOWANCE`], so that a Redis clock set back (or a
    /// failover to a server whose clock is behind) does not make old verdicts
    /// young. Replica clocks further apart than the allowance make verdicts look
    /// older: more upstream calls, never a longer life.
    fn age(&self, redis_now_ms: u64, wall_now_ms: u64) -> Duration {
        let on_redis = redis_now_ms.saturating_sub(self.redis_ms);
        let on_walls = wall_now_ms
            .saturating_sub(self.wall_ms)
            .saturating_sub(CLOCK_ALLOWANCE.as_millis() as u64);
        Duration::from_millis(on_redis.max(on_walls))
    }
}

/// Redis's clock as a consult read it, and when its reply arrived here.
#[derive(Clone, Copy)]
struct RedisClock {
    ms: u64,
    read_at: Instant,
}

impl RedisClock {
    /// Redis's clock at `instant`, estimated from this reading: early by at most
    /// the round trip, so verdicts stamped with it look older, never younger.
    fn at(&self, instant: Instant) -> u64 {
        match instant.checked_duration_since(self.read_at) {
            Some(later) => self.ms.saturating_add(later.as_millis() as u64),
            None => self
                .ms
                .saturating_sub(self.read_at.duration_since(instant).as_millis() as u64),
        }
    }
}

/// This machine's wall clock at `instant`, in Unix milliseconds.
fn wall_ms(instant: Instant) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(instant.elapsed()).as_millis() as u64
}

/// A write to Redis still to make once the verdict has been handed to the
/// requests that wait for it.
pub(crate) type Share = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The shared tier of one layer.
pub(crate) struct Fleet {
    pub(crate) instruments: Arc<Instruments>,
    pub(crate) links: Links,
    pub(crate) sealer: Sealer,
    base_url: String,
    prefix: String,
    pub(crate) stream: String,
    pub(crate) epoch_key: String,
    pub(crate) incarnation_key: String,
    /// The layer's lifetimes (and sizes, unused here).
    lives: CachePolicy,
    /// How long a lease is held: the layer's `timeout`.
    lease: Duration,
    /// How long a replica waits for another's verdict before verifying itself.
    wait: Duration,
    pub(crate) subscription: Subscription,
    scripts: [Script; 4],
    tokens: RandomState,
    next_token: AtomicU64,
    /// Whether something in Redis that this layer did not write was logged at
    /// `warn` yet: once per layer, then at `debug`.
    warned: AtomicBool,
}

/// A key's Redis keys and cipher, in the epoch it is read in.
struct Entry {
    value: String,
    lock: String,
    gen: String,
    cipher: ValueCipher,
    epoch: u64,
}

impl Entry {
    /// What Redis stores: the epoch, then the sealed answer, bound to this entry's
    /// Redis key, its epoch and the key's generation `gen`.
    fn seal(&self, gen: &[u8], plain: &[u8]) -> Option<Vec<u8>> {
        let epoch = self.epoch.to_be_bytes();
        let sealed = self.cipher.seal(&self.context(&epoch, gen), plain)?;
        Some([&epoch[..], &sealed].concat())
    }

    /// The answer in `stored`: `Ok(None)` if it was recorded in another epoch,
    /// `Err` if it does not open (altered, moved, or sealed in another generation).
    fn open(&self, gen: &[u8], stored: &[u8]) -> Result<Option<Vec<u8>>, ()> {
        let (epoch, sealed) = stored.split_first_chunk::<8>().ok_or(())?;
        if u64::from_be_bytes(*epoch) != self.epoch {
            return Ok(None);
        }
        self.cipher
            .open(&self.context(epoch, gen), sealed)
            .map(Some)
            .ok_or(())
    }

    /// `script` with this entry's keys, in the order every script takes them.
    fn keys<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation.key(&self.value).key(&self.lock).key(&self.gen);
        invocation
    }

    fn context(&self, epoch: &[u8; 8], gen: &[u8]) -> Vec<u8> {
        let head = format!("{} {} ", self.value, u64::from_be_bytes(*epoch));
        [head.as_bytes(), gen].concat()
    }
}

/// What a value's plaintext holds: the answer's status, its [`Stamp`], its body.
fn plaintext(status: StatusCode, stamp: Stamp, body: &[u8]) -> Vec<u8> {
    let mut plain = Vec::with_capacity(2 + Stamp::LEN + body.len());
    plain.extend_from_slice(&status.as_u16().to_be_bytes());
    plain.extend_from_slice(&stamp.redis_ms.to_be_bytes());
    plain.extend_from_slice(&stamp.wall_ms.to_be_bytes());
    plain.extend_from_slice(body);
    plain
}

/// The inverse of [`plaintext`].
fn parse_plaintext(plain: &[u8]) -> Option<(StatusCode, Stamp, &[u8])> {
    let (status, rest) = plain.split_first_chunk::<2>()?;
    let (redis_ms, rest) = rest.split_first_chunk::<8>()?;
    let (wall_ms, body) = rest.split_first_chunk::<8>()?;
    let status = StatusCode::from_u16(u16::from_be_bytes(*status)).ok()?;
    let stamp = Stamp {
        redis_ms: u64::from_be_bytes(*redis_ms),
        wall_ms: u64::from_be_bytes(*wall_ms),
    };
    Some((status, stamp, body))
}

/// What consulting Redis allows a flight to write afterwards.
struct Record {
    entry: Entry,
    gen: Vec<u8>,
    /// Empty when this replica does not hold the lease.
    token: String,
    clock: RedisClock,
}

impl Record {
    fn new(entry: Entry, reply: &Reply<'_>, token: String, clock: RedisClock) -> Self {
        Self {
            entry,
            gen: reply.gen.to_vec(),
            token,
            clock,
        }
    }
}

/// What consulting Redis gave.
enum Consulted {
    /// A verdict to adopt, and the lease to give back if this consult took it.
    Found {
        verdict: Verdict,
        sent_at: Instant,
        release: Option<Record>,
    },
    /// Verify, then record (if Redis was reachable). `stale`: a session from Redis
    /// past its `ttl` but inside its `stale_if_error` window, to serve only if the
    /// verification is undecided.
    Verify {
        record: Option<Record>,
        stale: Option<SessionInfo>,
    },
}

impl Consulted {
    const ALONE: Self = Self::Verify {
        record: None,
        stale: None,
    };
}

/// One consult's reply, read strictly.
struct Reply<'a> {
    code: i64,
    value: &'a [u8],
    clock_ms: u64,
    gen: &'a [u8],
}

/// The settings a fleet takes from its [`RedisCache`](super::RedisCache) and its layer.
pub(crate) struct FleetSettings {
    pub(crate) instruments: Arc<Instruments>,
    pub(crate) servers: Servers,
    pub(crate) pepper: Box<[u8]>,
    pub(crate) prefix: String,
    pub(crate) budget: Duration,
    pub(crate) wait: Duration,
    pub(crate) base_url: String,
    pub(crate) lives: CachePolicy,
    pub(crate) lease: Duration,
}

impl Fleet {
    pub(crate) fn new(settings: FleetSettings) -> Self {
        let prefix = settings.prefix;
        Self {
            instruments: settings.instruments,
            links: Links::new(settings.servers, settings.budget),
            sealer: Sealer::new(&settings.pepper),
            base_url: settings.base_url,
            stream: format!("{prefix}invalidations"),
            epoch_key: format!("{prefix}epoch"),
            incarnation_key: format!("{prefix}incarnation"),
            prefix,
            lives: settings.lives,
            lease: settings.lease,
            wait: settings.wait,
            subscription: Subscription::new(),
            scripts: [CONSULT, RECORD, FORGET, RAISE].map(Script::new),
            tokens: RandomState::new(),
            next_token: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        }
    }

    /// The SipHash key of this layer's local digests: the same on every replica.
    pub(crate) fn local_digest_secret(&self) -> (u64, u64) {
        self.sealer.local_digest_secret()
    }

    /// The layer's metric handles, the shared tier's included.
    pub(crate) fn instruments(&self) -> Arc<Instruments> {
        Arc::clone(&self.instruments)
    }

    /// Lets the stream's invalidations reach this layer's verifications.
    pub(crate) fn bind(&self, forget: Forget) {
        self.subscription.bind(forget);
    }

    /// A random word (lease tokens, generations, incarnations); unique, not secret.
    pub(crate) fn random_word(&self) -> String {
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}", self.tokens.hash_one(n))
    }

    /// Logs something found in Redis that no replica with this pepper wrote (or
    /// that was altered since): at `warn` the first time for this layer, then at
    /// `debug`, so a Redis writer cannot flood the logs. Never a verdict.
    pub(crate) fn suspicious(&self, what: &'static str) {
        if self.warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(target: TRACING_TARGET, "{what}");
        } else {
            tracing::warn!(target: TRACING_TARGET, "{what} (logged at warn once; further ones at debug)");
        }
    }

    fn entry(&self, header: CredentialHeader, key: &[u8], epoch: u64) -> Entry {
        let tag = self.sealer.fleet_digest(&self.base_url, header, key).hex();
        let prefix = &self.prefix;
        Entry {
            value: format!("{prefix}{{{tag}}}:v"),
            lock: format!("{prefix}{{{tag}}}:lock"),
            gen: format!("{prefix}{{{tag}}}:gen"),
            cipher: self.sealer.value_cipher(key),
            epoch,
        }
    }

    /// Decides a key with the fleet: a verdict another replica recorded (if it is
    /// younger than its kind's TTL on clocks Redis cannot rewrite, and outlives
    /// `floor`, the local copy's remaining life when refreshing), or `call`'s,
    /// recorded for the others by the returned [`Share`], to run once the verdict
    /// has been handed out. If `call` is undecided, a session from Redis inside its
    /// `stale_if_error` window is served, marked stale.
    pub(crate) async fn verify<F, Fut>(
        self: &Arc<Self>,
        header: CredentialHeader,
        key: HeaderValue,
        floor: Duration,
        call: F,
    ) -> (Verdict, Instant, Option<Share>)
    where
        F: FnOnce(HeaderValue) -> Fut,
        Fut: Future<Output = (Verdict, Instant, Option<Answer>)>,
    {
        let (record, stale) = match self.consult(header, key.as_bytes(), floor).await {
            Consulted::Found {
                verdict,
                sent_at,
                release,
            } => {
                tracing::debug!(target: TRACING_TARGET, verdict = verdict.kind(), "verdict adopted from Redis");
                self.instruments.shared(Shared::Adopted);
                let share = release.map(|record| {
                    let fleet = Arc::clone(self);
                    Box::pin(async move { fleet.record(record, None).await }) as Share
                });
                return (verdict, sent_at, share);
            }
            Consulted::Verify { record, stale } => (record, stale),
        };
        let leased = record.as_ref().is_some_and(|r| !r.token.is_empty());
        self.instruments.shared(if leased {
            Shared::Verified
        } else {
            Shared::Alone
        });
        let (verdict, sent_at, answer) = call(key).await;
        let kept = self.lives.kept_for(&verdict);
        let share = record.map(|record| {
            let fleet = Arc::clone(self);
            let answer = answer.map(|answer| (answer, kept, sent_at));
            Box::pin(async move { fleet.record(record, answer).await }) as Share
        });
        if let (Verdict::Undecided(_), Some(session)) = (&verdict, stale) {
            tracing::debug!(target: TRACING_TARGET, "Composio undecided; a stale session from Redis is the fallback");
            let verified = session.verified();
            return (Verdict::Allowed(session), verified, share);
        }
        (verdict, sent_at, share)
    }

    async fn consult(&self, header: CredentialHeader, key: &[u8], floor: Duration) -> Consulted {
        let Some(epoch) = self.subscription.epoch(self.links.budget()).await else {
            return Consulted::ALONE;
        };
        let entry = self.entry(header, key, epoch);
        let token = self.random_word();
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut pause = FIRST_PAUSE;
        // A value whose PTTL says more than this may be adoptable: a session's
        // stale window is not.
        let hint = floor.max(self.lives.stale_if_error).as_millis() as u64;
        let mut force = false;
        let mut stale = None;
        loop {
            let (entry_ref, token_ref) = (&entry, &token);
            let reply: Option<Value> = self
                .links
                .run(|mut link| async move {
                    entry_ref
                        .keys(&self.scripts[0])
                        .arg(hint)
                        .arg(token_ref)
                        .arg(self.lease.as_millis() as u64)
                        .arg(if force { "1" } else { "0" })
                        .invoke_async(&mut link)
                        .await
                })
                .await;
            let Some(reply) = reply.as_ref().and_then(consulted) else {
                return Consulted::Verify {
                    record: None,
                    stale,
                };
            };
            let clock = RedisClock {
                ms: reply.clock_ms,
                read_at: Instant::now(),
            };
            if let Some((verdict, age, sent_at)) = self.read(&entry, &reply, clock) {
                if age < self.lives.fresh_for(&verdict)
                    && self.lives.kept_for(&verdict).saturating_sub(age) > floor
                {
                    let release =
                        (reply.code == 2).then(|| Record::new(entry, &reply, token, clock));
                    return Consulted::Found {
                        verdict,
                        sent_at,
                        release,
                    };
                }
                match verdict {
                    // Past its TTL, inside its stale window: a fallback only, and
                    // only for a request (a refresh has a fresher local session).
                    Verdict::Allowed(session)
                        if floor.is_zero() && age < self.lives.session_life() =>
                    {
                        session.grow_to(Age::Expired);
                        stale = Some(session);
                    }
                    // Past its lifetime by more than a writer's reading of
                    // Redis's clock can be early (one operation's budget): no
                    // replica wrote that expiry.
                    verdict if age > self.lives.kept_for(&verdict) + self.links.budget() => {
                        self.suspicious("a verdict in Redis is older than its lifetime (its expiry was extended in Redis); verifying again");
                    }
                    _ => {}
                }
            }
            match reply.code {
                2 => {
                    return Consulted::Verify {
                        record: Some(Record::new(entry, &reply, token, clock)),
                        stale,
                    }
                }
                // Its PTTL made it look adoptable, but it is not: take the lease.
                1 => force = true,
                _ => {
                    if pause == FIRST_PAUSE {
                        tracing::debug!(target: TRACING_TARGET, "another replica holds the lease; waiting for its verdict");
                    }
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        tracing::debug!(target: TRACING_TARGET, "another replica's verification takes too long; verifying here");
                        return Consulted::Verify {
                            record: Some(Record::new(entry, &reply, String::new(), clock)),
                            stale,
                        };
                    }
                    tokio::time::sleep(pause.min(deadline - now)).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// The verdict a consult's value holds, its age, and when its call was sent
    /// (on this machine's clock); `None` if there is none to use.
    fn read(
        &self,
        entry: &Entry,
        reply: &Reply<'_>,
        clock: RedisClock,
    ) -> Option<(Verdict, Duration, Instant)> {
        if reply.value.is_empty() {
            return None;
        }
        let plain = match entry.open(reply.gen, reply.value) {
            Ok(Some(plain)) => plain,
            Ok(None) => {
                tracing::debug!(target: TRACING_TARGET, "the verdict in Redis predates the last invalidate_all; verifying again");
                return None;
            }
            Err(()) => {
                self.suspicious("a verdict in Redis does not open (altered, written back after an invalidation, or from another version); verifying again");
                return None;
            }
        };
        let Some((status, stamp, body)) = parse_plaintext(&plain) else {
            self.suspicious("a verdict in Redis does not parse; verifying again");
            return None;
        };
        let age = stamp.age(clock.ms, wall_ms(clock.read_at));
        let sent_at = clock.read_at.checked_sub(age)?;
        match classify(status, None, body, sent_at) {
            Verdict::Undecided(_) => {
                self.suspicious("a verdict in Redis does not parse; verifying again");
                None
            }
            verdict => Some((verdict, age, sent_at)),
        }
    }

    /// Records a decided verdict (kept for `kept` after `sent_at`), or none, and
    /// gives the lease back.
    async fn record(&self, record: Record, answer: Option<(Answer, Duration, Instant)>) {
        let sealed = answer.and_then(|(answer, kept, sent_at)| {
            let left = kept
                .checked_sub(sent_at.elapsed())
                .filter(|left| !left.is_zero())?;
            let stamp = Stamp {
                redis_ms: record.clock.at(sent_at),
                wall_ms: wall_ms(sent_at),
            };
            let body = stored_body(answer.status, answer.body);
            let plain = plaintext(answer.status, stamp, &body);
            let sealed = record.entry.seal(&record.gen, &plain)?;
            Some((sealed, left.as_millis().max(1) as u64))
        });
        if sealed.is_none() && record.token.is_empty() {
            return;
        }
        let (value, px) = sealed.unwrap_or_default();
        let entry = &record.entry;
        let written: Option<i64> = self
            .links
            .run(|mut link| async move {
                entry
                    .keys(&self.scripts[1])
                    .arg(&record.gen)
                    .arg(&record.token)
                    .arg(value)
                    .arg(px)
                    .invoke_async(&mut link)
                    .await
            })
            .await;
        tracing::debug!(target: TRACING_TARGET, written = written == Some(1), "verdict recorded in Redis");
    }

    /// Forgets a key on every replica: its Redis entries (under each header), then
    /// a message on the stream carrying its local digests. `false` if Redis could
    /// not be reached.
    pub(crate) async fn invalidate(&self, key: &[u8], keys: &[(CredentialHeader, Digest)]) -> bool {
        let gen_life = self.lives.longest_life() + self.lease + self.wait;
        for (header, _) in keys {
            // The one value key of every epoch.
            let entry = &self.entry(*header, key, 0);
            let gen = self.random_word();
            let forgotten: Option<i64> = self
                .links
                .run(|mut link| async move {
                    entry
                        .keys(&self.scripts[2])
                        .arg(gen)
                        .arg(gen_life.as_millis() as u64)
                        .invoke_async(&mut link)
                        .await
                })
                .await;
            if forgotten.is_none() {
                return false;
            }
        }
        let mut fields = Vec::with_capacity(keys.len());
        for (n, (_, digest)) in keys.iter().enumerate() {
            let Some(sealed) = self.sealer.seal_digest(&self.stream, digest) else {
                return false;
            };
            fields.push((format!("d{n}"), sealed));
        }
        self.publish(&fields).await
    }

    /// Forgets every key on every replica: a new epoch (no replica reads a verdict
    /// recorded under an older one), announced on the stream, sealed.
    pub(crate) async fn invalidate_all(&self) -> bool {
        let epoch: Option<u64> = self
            .links
            .run(|mut link| async move {
                redis::cmd("INCR")
                    .arg(&self.epoch_key)
                    .query_async(&mut link)
                    .await
            })
            .await;
        match epoch {
            Some(epoch) => {
                self.subscription.enter_epoch(epoch);
                self.announce_epoch(epoch).await
            }
            None => false,
        }
    }

    /// Tells every replica that verdicts of epochs before `epoch` are void.
    pub(crate) async fn announce_epoch(&self, epoch: u64) -> bool {
        match self.sealer.seal_epoch(&self.stream, epoch) {
            Some(sealed) => self.publish(&[("all", sealed)]).await,
            None => false,
        }
    }

    /// Raises Redis's epoch to `epoch` if it is lower; Redis's epoch before.
    pub(crate) async fn raise_epoch(
        &self,
        link: &mut super::link::Link,
        epoch: u64,
    ) -> redis::RedisResult<u64> {
        self.scripts[3]
            .key(&self.epoch_key)
            .arg(epoch)
            .invoke_async(link)
            .await
    }

    async fn publish<F: redis::ToRedisArgs + Send + Sync>(&self, fields: &[(F, Vec<u8>)]) -> bool {
        let id: Option<String> = self
            .links
            .run(|mut link| async move {
                link.xadd_maxlen(&self.stream, StreamMaxlen::Approx(STREAM_KEPT), "*", fields)
                    .await
            })
            .await;
        if id.is_some() {
            self.instruments.invalidation(Direction::Sent);
        }
        id.is_some()
    }
}

/// The reply of [`CONSULT`]: code, value, Redis's clock (seconds, microseconds),
/// gen.
fn consulted(reply: &Value) -> Option<Reply<'_>> {
    let Value::Array(items) = reply else {
        return None;
    };
    fn bytes(value: &Value) -> Option<&[u8]> {
        match value {
            Value::BulkString(b) => Some(b.as_slice()),
            _ => None,
        }
    }
    fn int(value: &Value) -> Option<i64> {
        match value {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }
    fn number(value: &Value) -> Option<u64> {
        std::str::from_utf8(bytes(value)?).ok()?.parse().ok()
    }
    match items.as_slice() {
        [code, value, seconds, micros, gen] => Some(Reply {
            code: int(code)?,
            value: bytes(value).unwrap_or_default(),
            clock_ms: number(seconds)?
                .checked_mul(1000)?
                .checked_add(number(micros)? / 1000)?,
            gen: bytes(gen).unwrap_or_default(),
        }),
        _ => None,
    }
}

/// What Redis keeps of an answer: a session document without `api_key.key` (the
/// key itself, which nothing reads), or the envelope as Composio sent it.
fn stored_body(status: StatusCode, body: Vec<u8>) -> Vec<u8> {
    if status != StatusCode::OK {
        return body;
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(mut document) => {
            if let Some(api_key) = document.get_mut("api_key").and_then(|k| k.as_object_mut()) {
                api_key.remove("key");
            }
            serde_json::to_vec(&document).unwrap_or(body)
        }
        Err(_) => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_document_drops_the_key_itself() {
        let body = crate::verifier::session::REFERENCE_DOCUMENT
            .as_bytes()
            .to_vec();
        assert!(String::from_utf8_lossy(&body).contains("\"key\""));
        let stored = stored_body(StatusCode::OK, body);
        let document: serde_json::Value = serde_json::from_slice(&stored).unwrap();
        assert!(document["api_key"].get("key").is_none());
        assert!(document["api_key"].get("id").is_some());
        match classify(StatusCode::OK, None, &stored, Instant::now()) {
            Verdict::Allowed(_) => {}
            other => panic!("{}", other.kind()),
        }
        let envelope = br#"{"error":{"message":"m","code":1}}"#.to_vec();
        assert_eq!(
            stored_body(StatusCode::UNAUTHORIZED, envelope.clone()),
            envelope
        );
    }

    #[test]
    fn a_value_opens_only_in_the_epoch_generation_and_key_it_was_recorded_with() {
        let sealer = Sealer::new(b"a fleet pepper of at least 32 bytes....");
        let entry = |value: &str, epoch| Entry {
            value: value.to_owned(),
            lock: String::new(),
            gen: String::new(),
            cipher: sealer.value_cipher(b"ak_1"),
            epoch,
        };
        let stored = entry("k", 3).seal(b"g1", b"answer").unwrap();
        assert_eq!(
            entry("k", 3).open(b"g1", &stored),
            Ok(Some(b"answer".to_vec()))
        );
        assert_eq!(
            entry("k", 4).open(b"g1", &stored),
            Ok(None),
            "another epoch: a quiet miss"
        );
        assert_eq!(entry("other", 3).open(b"g1", &stored), Err(()));
        assert_eq!(
            entry("k", 3).open(b"g2", &stored),
            Err(()),
            "another generation"
        );
        assert_eq!(entry("k", 3).open(b"", &stored), Err(()));
        let mut relabelled = stored.clone();
        relabelled[..8].copy_from_slice(&4u64.to_be_bytes());
        assert_eq!(
            entry("k", 4).open(b"g1", &relabelled),
            Err(()),
            "the epoch is authenticated"
        );
        assert_eq!(entry("k", 3).open(b"g1", &stored[..5]), Err(()));
    }

    #[test]
    fn a_value_carries_its_stamp_and_answer() {
        let stamp = Stamp {
            redis_ms: 1_700_000_000_123,
            wall_ms: 1_700_000_000_456,
        };
        let plain = plaintext(StatusCode::OK, stamp, b"{}");
        assert_eq!(
            parse_plaintext(&plain),
            Some((StatusCode::OK, stamp, &b"{}"[..]))
        );
        assert_eq!(parse_plaintext(&plain[..17]), None);
        assert_eq!(parse_plaintext(&[0, 1]), None, "status 1 is no status");
    }

    #[test]
    fn a_verdicts_age_is_the_older_of_redis_clock_and_the_wall_clocks_less_the_allowance() {
        let stamp = Stamp {
            redis_ms: 10_000,
            wall_ms: 50_000,
        };
        // Clocks in agreement: Redis's clock decides.
        assert_eq!(stamp.age(10_600, 50_600), Duration::from_millis(600));
        // A Redis clock set back by an hour (or a value from its future): the wall
        // clocks bound the age from below, less the allowance.
        let allowance = CLOCK_ALLOWANCE.as_millis() as u64;
        assert_eq!(
            stamp.age(5_000, 50_000 + 3_000 + allowance),
            Duration::from_millis(3_000)
        );
        // A reader whose wall clock is behind the writer's: Redis's clock decides.
        assert_eq!(stamp.age(12_000, 40_000), Duration::from_millis(2_000));
        // Never negative.
        assert_eq!(stamp.age(0, 0), Duration::ZERO);
    }

    #[test]
    fn redis_clock_estimates_are_never_late() {
        let read_at = Instant::now();
        let clock = RedisClock { ms: 1_000, read_at };
        assert_eq!(clock.at(read_at), 1_000);
        assert_eq!(clock.at(read_at + Duration::from_millis(250)), 1_250);
        if let Some(before) = read_at.checked_sub(Duration::from_millis(300)) {
            assert_eq!(clock.at(before), 700);
        }
    }

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

    #[test]
    fn consult_replies_are_read_strictly() {
        let bulk = |b: &[u8]| Value::BulkString(b.to_vec());
        let reply = Value::Array(vec![
            Value::Int(1),
            bulk(b"v"),
            bulk(b"1700000000"),
            bulk(b"123456"),
            bulk(b"g"),
        ]);
        let read = consulted(&reply).unwrap();
        assert_eq!(
            (read.code, read.value, read.clock_ms, read.gen),
            (1, &b"v"[..], 1_700_000_000_123, &b"g"[..])
        );
        assert!(consulted(&Value::Nil).is_none());
        assert!(consulted(&Value::Array(vec![Value::Int(1)])).is_none());
        let garbled = Value::Array(vec![
            Value::Int(1),
            bulk(b"v"),
            bulk(b"soon"),
            bulk(b"0"),
            bulk(b"g"),
        ]);
        assert!(consulted(&garbled).is_none());
    }
}
