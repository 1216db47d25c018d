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
//! | `{prefix}{<fleet digest>}:gen` | a random word, replaced by each invalidation | a generous bound on a verification |
//!
//! plus `{prefix}epoch` (bumped by `invalidate_all`: a verdict recorded in an
//! earlier epoch is a miss) and the stream `{prefix}invalidations`. Recording is a compare-and-set against `gen`: a
//! verification that began before an invalidation never writes its verdict back.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode};
use redis::streams::StreamMaxlen;
use redis::{AsyncCommands, Script, ScriptInvocation, Value};

use super::link::{Links, Servers};
use super::listener::Subscription;
use super::seal::{Sealer, ValueCipher};
use crate::credential::CredentialHeader;
use crate::digest::Digest;
use crate::instruments::{Direction, Instruments, Shared};
use crate::upstream::{classify, Answer, Verdict};
use crate::verification::Forget;
use crate::TRACING_TARGET;

/// The first pause between two looks at another replica's lease; it doubles up
/// to 50 ms.
const FIRST_PAUSE: Duration = Duration::from_millis(2);

/// Invalidation messages kept in the stream (approximately): what a replica that
/// was disconnected can catch up on. One that missed more drops its local verdicts.
pub(crate) const STREAM_KEPT: usize = 10_000;

/// Reads a key's verdict if it outlives `floor`; else takes the lease if free.
/// KEYS: value, lock, gen. ARGV: floor ms, token, lease ms.
/// Returns {1, value, pttl, gen} | {2, '', 0, gen} (leased) | {3, '', 0, gen} (held).
const CONSULT: &str = r"
local gen = redis.call('GET', KEYS[3]) or ''
local ttl = redis.call('PTTL', KEYS[1])
if ttl > tonumber(ARGV[1]) then
  return {1, redis.call('GET', KEYS[1]), ttl, gen}
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {2, '', 0, gen}
end
return {3, '', 0, gen}
";

/// Writes a verdict if no invalidation happened since `gen` was read, and gives
/// the lease back if this replica still holds it.
/// KEYS: value, lock, gen. ARGV: gen read, token, value ('' for none), px.
const RECORD: &str = r"
local written = 0
if ARGV[3] ~= '' and (redis.call('GET', KEYS[3]) or '') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
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

/// How long a verdict may be kept after its verification, by its kind.
#[derive(Clone, Copy)]
pub(crate) struct Lives {
    /// `ttl + stale_if_error`.
    pub(crate) session: Duration,
    /// `negative_ttl`.
    pub(crate) rejection: Duration,
}

impl Lives {
    fn of(&self, status: StatusCode) -> Duration {
        if status == StatusCode::OK {
            self.session
        } else {
            self.rejection
        }
    }
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
    lives: Lives,
    /// How long a lease is held: the layer's `timeout`.
    lease: Duration,
    /// How long a replica waits for another's verdict before verifying itself.
    wait: Duration,
    pub(crate) subscription: Subscription,
    scripts: [Script; 3],
    tokens: RandomState,
    next_token: AtomicU64,
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
    /// What Redis stores: the epoch, then the sealed answer (bound to this entry's
    /// Redis key and epoch).
    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let epoch = self.epoch.to_be_bytes();
        let sealed = self.cipher.seal(&self.context(&epoch), plain)?;
        Some([&epoch[..], &sealed].concat())
    }

    /// The answer in `stored`: `Ok(None)` if it was recorded in another epoch,
    /// `Err` if it does not open.
    fn open(&self, stored: &[u8]) -> Result<Option<Vec<u8>>, ()> {
        let (epoch, sealed) = stored.split_first_chunk::<8>().ok_or(())?;
        if u64::from_be_bytes(*epoch) != self.epoch {
            return Ok(None);
        }
        self.cipher
            .open(&self.context(epoch), sealed)
            .map(Some)
            .ok_or(())
    }

    /// `script` with this entry's keys, in the order every script takes them.
    fn keys<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation.key(&self.value).key(&self.lock).key(&self.gen);
        invocation
    }

    fn context(&self, epoch: &[u8; 8]) -> String {
        format!("{} {}", self.value, u64::from_be_bytes(*epoch))
    }
}

/// What consulting Redis allows a flight to write afterwards.
struct Record {
    entry: Entry,
    gen: Vec<u8>,
    token: String,
}

impl Record {
    /// `token` is empty when this replica does not hold the lease.
    fn new(entry: Entry, gen: &[u8], token: String) -> Self {
        Self {
            entry,
            gen: gen.to_vec(),
            token,
        }
    }
}

/// What consulting Redis gave.
enum Consulted {
    Found {
        status: StatusCode,
        body: Vec<u8>,
        age: Duration,
    },
    /// Verify, then record (if Redis was reachable).
    Verify(Option<Record>),
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
    pub(crate) lives: Lives,
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
            prefix,
            lives: settings.lives,
            lease: settings.lease,
            wait: settings.wait,
            subscription: Subscription::new(),
            scripts: [CONSULT, RECORD, FORGET].map(Script::new),
            tokens: RandomState::new(),
            next_token: AtomicU64::new(0),
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

    /// A random word (lease tokens, generations); unique, not secret.
    fn random_word(&self) -> String {
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}", self.tokens.hash_one(n))
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

    /// Decides a key with the fleet: a verdict another replica recorded (if it
    /// outlives `floor`, the local copy's remaining life when refreshing), or
    /// `call`'s, recorded for the others by the returned [`Share`], to run once the
    /// verdict has been handed out.
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
        self.subscription.start(self);
        let record = match self.consult(header, key.as_bytes(), floor).await {
            Consulted::Found { status, body, age } => {
                if let Some(sent_at) = Instant::now().checked_sub(age) {
                    match classify(status, None, &body, sent_at) {
                        Verdict::Undecided(_) => {
                            tracing::warn!(target: TRACING_TARGET, "a verdict in Redis does not parse; verifying again");
                        }
                        verdict => {
                            tracing::debug!(target: TRACING_TARGET, verdict = verdict.kind(), "verdict adopted from Redis");
                            self.instruments.shared(Shared::Adopted);
                            return (verdict, sent_at, None);
                        }
                    }
                }
                None
            }
            Consulted::Verify(record) => record,
        };
        let leased = record.as_ref().is_some_and(|r| !r.token.is_empty());
        self.instruments.shared(if leased {
            Shared::Verified
        } else {
            Shared::Alone
        });
        let (verdict, sent_at, answer) = call(key).await;
        let share = record.map(|record| {
            let fleet = Arc::clone(self);
            let answer = answer.map(|answer| (answer, sent_at));
            Box::pin(async move { fleet.record(record, answer).await }) as Share
        });
        (verdict, sent_at, share)
    }

    async fn consult(&self, header: CredentialHeader, key: &[u8], floor: Duration) -> Consulted {
        let Some(epoch) = self.subscription.epoch(self.links.budget()).await else {
            return Consulted::Verify(None);
        };
        let entry = self.entry(header, key, epoch);
        let token = self.random_word();
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut pause = FIRST_PAUSE;
        loop {
            let (entry_ref, token_ref) = (&entry, &token);
            let reply: Option<Value> = self
                .links
                .run(|mut link| async move {
                    entry_ref
                        .keys(&self.scripts[0])
                        .arg(floor.as_millis() as u64)
                        .arg(token_ref)
                        .arg(self.lease.as_millis() as u64)
                        .invoke_async(&mut link)
                        .await
                })
                .await;
            let Some((code, value, pttl, gen)) = reply.as_ref().and_then(consulted) else {
                return Consulted::Verify(None);
            };
            match code {
                1 => {
                    let answer = |plain: Vec<u8>| {
                        let (status, body) = plain.split_first_chunk::<2>()?;
                        let status = StatusCode::from_u16(u16::from_be_bytes(*status)).ok()?;
                        Some((status, body.to_vec()))
                    };
                    let (status, body) = match entry.open(value).map(|p| p.map(answer)) {
                        Ok(Some(Some(answer))) => answer,
                        Ok(None) => {
                            tracing::debug!(target: TRACING_TARGET, "the verdict in Redis predates the last invalidate_all; verifying again");
                            return Consulted::Verify(Some(Record::new(entry, gen, String::new())));
                        }
                        Ok(Some(None)) | Err(()) => {
                            tracing::warn!(target: TRACING_TARGET, "a verdict in Redis does not open (tampered, or another version); verifying again");
                            return Consulted::Verify(Some(Record::new(entry, gen, String::new())));
                        }
                    };
                    let left = Duration::from_millis(pttl);
                    let age = self.lives.of(status).saturating_sub(left);
                    return Consulted::Found { status, body, age };
                }
                2 => return Consulted::Verify(Some(Record::new(entry, gen, token))),
                _ => {
                    if pause == FIRST_PAUSE {
                        tracing::debug!(target: TRACING_TARGET, "another replica holds the lease; waiting for its verdict");
                    }
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        tracing::debug!(target: TRACING_TARGET, "another replica's verification takes too long; verifying here");
                        return Consulted::Verify(Some(Record::new(entry, gen, String::new())));
                    }
                    tokio::time::sleep(pause.min(deadline - now)).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// Records a decided verdict (or none) and gives the lease back.
    async fn record(&self, record: Record, answer: Option<(Answer, Instant)>) {
        let sealed = answer.and_then(|(answer, sent_at)| {
            let left = self
                .lives
                .of(answer.status)
                .checked_sub(sent_at.elapsed())
                .filter(|left| !left.is_zero())?;
            let mut plain = answer.status.as_u16().to_be_bytes().to_vec();
            plain.extend_from_slice(&stored_body(answer.status, answer.body));
            let sealed = record.entry.seal(&plain)?;
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
        let gen_life = self.lives.session.max(self.lives.rejection) + self.lease + self.wait;
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
    /// recorded under an older one), announced on the stream.
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
                self.publish(&[("all", epoch.to_string().into_bytes())])
                    .await
            }
            None => false,
        }
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

/// The reply of [`CONSULT`]: code, value, pttl, gen.
fn consulted(reply: &Value) -> Option<(i64, &[u8], u64, &[u8])> {
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
    match items.as_slice() {
        [code, value, pttl, gen] => Some((
            int(code)?,
            bytes(value).unwrap_or_default(),
            u64::try_from(int(pttl)?).unwrap_or(0),
            bytes(gen).unwrap_or_default(),
        )),
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
        let body = crate::session::REFERENCE_DOCUMENT.as_bytes().to_vec();
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
    fn a_value_opens_only_in_the_epoch_and_under_the_key_it_was_recorded_with() {
        let sealer = Sealer::new(b"a fleet pepper of at least 32 bytes....");
        let entry = |value: &str, epoch| Entry {
            value: value.to_owned(),
            lock: String::new(),
            gen: String::new(),
            cipher: sealer.value_cipher(b"ak_1"),
            epoch,
        };
        let stored = entry("k", 3).seal(b"answer").unwrap();
        assert_eq!(entry("k", 3).open(&stored), Ok(Some(b"answer".to_vec())));
        assert_eq!(
            entry("k", 4).open(&stored),
            Ok(None),
            "another epoch: a quiet miss"
        );
        assert_eq!(entry("other", 3).open(&stored), Err(()));
        let mut relabelled = stored.clone();
        relabelled[..8].copy_from_slice(&4u64.to_be_bytes());
        assert_eq!(
            entry("k", 4).open(&relabelled),
            Err(()),
            "the epoch is authenticated"
        );
        assert_eq!(entry("k", 3).open(&stored[..5]), Err(()));
    }

    #[test]
    fn a_verdicts_age_counts_its_kinds_life() {
        let lives = Lives {
            session: Duration::from_secs(70),
            rejection: Duration::from_secs(10),
        };
        assert_eq!(lives.of(StatusCode::OK), Duration::from_secs(70));
        assert_eq!(lives.of(StatusCode::FORBIDDEN), Duration::from_secs(10));
    }

    #[test]
    fn consult_replies_are_read_strictly() {
        let reply = Value::Array(vec![
            Value::Int(1),
            Value::BulkString(b"v".to_vec()),
            Value::Int(1500),
            Value::BulkString(b"g".to_vec()),
        ]);
        assert_eq!(consulted(&reply), Some((1, &b"v"[..], 1500, &b"g"[..])));
        assert_eq!(consulted(&Value::Nil), None);
        assert_eq!(consulted(&Value::Array(vec![Value::Int(1)])), None);
    }
}
