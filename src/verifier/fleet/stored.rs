//! What the fleet stores in Redis for a key, and under which Redis keys: the
//! sealed verdict and the clocks it is stamped with.
//!
//! Every Redis key the fleet uses, what it holds and how long it lives: see the
//! crate's `guide::replicas`.
//!
//! **What a replica trusts.** Nothing Redis says unsealed decides a verdict. A
//! value seals, with the reply, when its call was sent (on Redis's clock and on
//! the writer's wall clock, see [`Stamp`]); its associated data is its Redis key,
//! its epoch and the key's generation. So a value is adopted as decided only while
//! it is younger than its kind's TTL by those clocks, whatever its `PTTL` says, and
//! a value written back after an invalidation (another generation) or an
//! `invalidate_all` (another epoch) is a miss.
//!
//! **A user key's scopes** have entries of their own (value and lease), in the
//! key's hash slot, but share the key's generation: one `FORGET` of the key gives
//! it a new generation, which every scope's value was not sealed with, so all of
//! them are misses from then on, without being named.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::StatusCode;

use super::seal::ValueCipher;
use super::Fleet;
use crate::verifier::credential::{CredentialHeader, Scope, Subject};

/// How far the replicas' wall clocks may disagree with each other before a verdict
/// read from Redis looks older on them than on Redis's clock (see [`Stamp::age`]).
pub(crate) const CLOCK_ALLOWANCE: Duration = Duration::from_secs(1);

/// When a verdict's upstream call was sent, on two clocks: Redis's (estimated
/// from the `TIME` read by the consult before it) and the recording replica's wall
/// clock. Sealed with the verdict, so Redis cannot rewrite it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) redis_ms: u64,
    pub(super) wall_ms: u64,
}

impl Stamp {
    const LEN: usize = 16;

    /// The verdict's age now: on Redis's clock, and never less than on the wall
    /// clocks less [`CLOCK_ALLOWANCE`], so that a Redis clock set back (or a
    /// failover to a server whose clock is behind) does not make old verdicts
    /// young. Replica clocks further apart than the allowance make verdicts look
    /// older: more upstream calls, never a longer life.
    pub(super) fn age(&self, redis_now_ms: u64, wall_now_ms: u64) -> Duration {
        let on_redis = redis_now_ms.saturating_sub(self.redis_ms);
        let on_walls = wall_now_ms
            .saturating_sub(self.wall_ms)
            .saturating_sub(CLOCK_ALLOWANCE.as_millis() as u64);
        Duration::from_millis(on_redis.max(on_walls))
    }
}

/// Redis's clock as a consult read it, and when its reply arrived here.
#[derive(Clone, Copy)]
pub(super) struct RedisClock {
    pub(super) ms: u64,
    pub(super) read_at: Instant,
}

impl RedisClock {
    /// Redis's clock at `instant`, estimated from this reading: early by at most
    /// the round trip, so verdicts stamped with it look older, never younger.
    pub(super) fn at(&self, instant: Instant) -> u64 {
        match instant.checked_duration_since(self.read_at) {
            Some(later) => self.ms.saturating_add(later.as_millis() as u64),
            None => self
                .ms
                .saturating_sub(self.read_at.duration_since(instant).as_millis() as u64),
        }
    }
}

/// This machine's wall clock at `instant`, in Unix milliseconds.
pub(super) fn wall_ms(instant: Instant) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(instant.elapsed()).as_millis() as u64
}

/// What a value's plaintext holds: Composio's status, the [`Stamp`], the body.
/// (`Debug` only in tests: the body holds the project's webhook secret.)
#[cfg_attr(test, derive(Debug))]
#[derive(PartialEq, Eq)]
pub(super) struct StoredVerdict<'a> {
    pub(super) status: StatusCode,
    pub(super) stamp: Stamp,
    pub(super) body: &'a [u8],
}

impl<'a> StoredVerdict<'a> {
    /// The plaintext: status, stamp, body.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut plain = Vec::with_capacity(2 + Stamp::LEN + self.body.len());
        plain.extend_from_slice(&self.status.as_u16().to_be_bytes());
        plain.extend_from_slice(&self.stamp.redis_ms.to_be_bytes());
        plain.extend_from_slice(&self.stamp.wall_ms.to_be_bytes());
        plain.extend_from_slice(self.body);
        plain
    }

    /// The inverse of [`encode`](Self::encode).
    pub(super) fn decode(plain: &'a [u8]) -> Option<Self> {
        let (status, rest) = plain.split_first_chunk::<2>()?;
        let (redis_ms, rest) = rest.split_first_chunk::<8>()?;
        let (wall_ms, body) = rest.split_first_chunk::<8>()?;
        Some(Self {
            status: StatusCode::from_u16(u16::from_be_bytes(*status)).ok()?,
            stamp: Stamp {
                redis_ms: u64::from_be_bytes(*redis_ms),
                wall_ms: u64::from_be_bytes(*wall_ms),
            },
            body,
        })
    }
}

/// What Redis keeps of a reply's body: a session document without `api_key.key`
/// (the key itself, which nothing reads), or the envelope as Composio sent it.
pub(super) fn stored_body(status: StatusCode, body: Vec<u8>) -> Vec<u8> {
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

/// A key's Redis keys and cipher, in the epoch it is read in.
pub(super) struct Entry {
    pub(super) value_key: String,
    pub(super) lock_key: String,
    pub(super) gen_key: String,
    cipher: ValueCipher,
    epoch: u64,
    /// A user key's scope's entry, which an invalidation of the key voids by its
    /// generation alone (a key's own value is deleted).
    scoped: bool,
}

impl Entry {
    /// What Redis stores: the epoch, the generation (its length in one byte, then
    /// it), then the sealed plaintext, bound to this entry's Redis key, its epoch
    /// and the key's generation `gen`. `None` for a generation over 255 bytes
    /// (which no replica writes).
    pub(super) fn seal(&self, gen: &[u8], plain: &[u8]) -> Option<Vec<u8>> {
        let epoch = self.epoch.to_be_bytes();
        let gen_len = u8::try_from(gen.len()).ok()?;
        let sealed = self.cipher.seal(&self.context(&epoch, gen), plain)?;
        Some([&epoch[..], &[gen_len], gen, &sealed].concat())
    }

    /// The plaintext in `stored`: `Ok(None)` if it was recorded in another epoch,
    /// or (a scope's) in another generation; `Err` if it does not open (altered,
    /// moved, or a key's own value written back after an invalidation deleted it).
    pub(super) fn open(&self, gen: &[u8], stored: &[u8]) -> Result<Option<Vec<u8>>, ()> {
        let (epoch, rest) = stored.split_first_chunk::<8>().ok_or(())?;
        let (&gen_len, rest) = rest.split_first().ok_or(())?;
        let (stored_gen, sealed) = rest.split_at_checked(usize::from(gen_len)).ok_or(())?;
        if u64::from_be_bytes(*epoch) != self.epoch {
            return Ok(None);
        }
        if stored_gen != gen {
            return if self.scoped { Ok(None) } else { Err(()) };
        }
        self.cipher
            .open(&self.context(epoch, gen), sealed)
            .map(Some)
            .ok_or(())
    }

    fn context(&self, epoch: &[u8; 8], gen: &[u8]) -> Vec<u8> {
        let head = format!("{} {} ", self.value_key, u64::from_be_bytes(*epoch));
        [head.as_bytes(), gen].concat()
    }
}

impl Fleet {
    /// The entry of `key` carried in `header`, read in `epoch`.
    pub(super) fn key_entry(&self, header: CredentialHeader, key: &[u8], epoch: u64) -> Entry {
        let tag = self.sealer.fleet_digest(&self.base_url, header, key).hex();
        let prefix = &self.prefix;
        Entry {
            value_key: format!("{prefix}{{{tag}}}:v"),
            lock_key: format!("{prefix}{{{tag}}}:lock"),
            gen_key: format!("{prefix}{{{tag}}}:gen"),
            cipher: self.sealer.value_cipher(key),
            epoch,
            scoped: false,
        }
    }

    /// The entry of what `subject` asks about, read in `epoch`: its key's, or its
    /// scope's (beside the key's, under the key's generation).
    pub(super) fn entry(&self, subject: &Subject, epoch: u64) -> Entry {
        let (header, key) = (subject.header, subject.key.as_bytes());
        let mut entry = self.key_entry(header, key, epoch);
        if let Some((_, selectors)) = &subject.scope {
            let scope = Scope {
                org: selectors.org.as_bytes(),
                project: selectors.project.as_bytes(),
            };
            let tag = self.sealer.scope_digest(&self.base_url, header, key, scope);
            let item = entry.value_key.trim_end_matches(":v");
            let item = format!("{item}:s:{}", tag.hex());
            entry.value_key = format!("{item}:v");
            entry.lock_key = format!("{item}:lock");
            entry.scoped = true;
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verifier::fleet::seal::Sealer;
    use crate::verifier::upstream::{classify, Verdict};

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
        let scoped_entry = |value: &str, epoch, scoped| Entry {
            value_key: value.to_owned(),
            lock_key: String::new(),
            gen_key: String::new(),
            cipher: sealer.value_cipher(b"ak_1"),
            epoch,
            scoped,
        };
        let entry = |value: &str, epoch| scoped_entry(value, epoch, false);
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
            "a key's value of another generation: written back"
        );
        assert_eq!(entry("k", 3).open(b"", &stored), Err(()));
        assert_eq!(
            scoped_entry("k", 3, true).open(b"g2", &stored),
            Ok(None),
            "a scope's value of another generation: a quiet miss"
        );
        let mut relabelled = stored.clone();
        relabelled[..8].copy_from_slice(&4u64.to_be_bytes());
        assert_eq!(
            entry("k", 4).open(b"g1", &relabelled),
            Err(()),
            "the epoch is authenticated"
        );
        let mut regenerated = stored.clone();
        regenerated[9..11].copy_from_slice(b"g2");
        assert_eq!(
            entry("k", 3).open(b"g2", &regenerated),
            Err(()),
            "the generation is authenticated"
        );
        assert!(entry("k", 3).seal(&[b'g'; 256], b"answer").is_none());
        assert_eq!(entry("k", 3).open(b"g1", &stored[..5]), Err(()));
    }

    #[test]
    fn a_value_carries_its_stamp_and_reply() {
        let stored = StoredVerdict {
            status: StatusCode::OK,
            stamp: Stamp {
                redis_ms: 1_700_000_000_123,
                wall_ms: 1_700_000_000_456,
            },
            body: b"{}",
        };
        let plain = stored.encode();
        assert_eq!(StoredVerdict::decode(&plain), Some(stored));
        assert_eq!(StoredVerdict::decode(&plain[..17]), None);
        assert_eq!(
            StoredVerdict::decode(&[0, 1]),
            None,
            "status 1 is no status"
        );
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
}
