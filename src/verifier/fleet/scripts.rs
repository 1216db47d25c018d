//! The Lua scripts the fleet runs in Redis, each by name with its arguments in
//! order, and the strict reading of what they return.

use redis::{Script, ScriptInvocation, Value};

use super::stored::Entry;

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
const RAISE_EPOCH: &str = r"
local epoch = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if epoch < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return epoch
";

/// The fleet's scripts, loaded by hash (and sent whole when Redis lacks them).
pub(super) struct Scripts {
    consult: Script,
    record: Script,
    forget: Script,
    raise_epoch: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            consult: Script::new(CONSULT),
            record: Script::new(RECORD),
            forget: Script::new(FORGET),
            raise_epoch: Script::new(RAISE_EPOCH),
        }
    }

    /// [`CONSULT`] on `entry`: look, and take the lease under `token` for `lease_ms`
    /// unless the value's `PTTL` is over `hint_ms` (and `force` is not set).
    pub(super) fn consult(
        &self,
        entry: &Entry,
        hint_ms: u64,
        token: &str,
        lease_ms: u64,
        force: bool,
    ) -> ScriptInvocation<'_> {
        let mut invocation = on_entry(&self.consult, entry);
        invocation
            .arg(hint_ms)
            .arg(token)
            .arg(lease_ms)
            .arg(if force { "1" } else { "0" });
        invocation
    }

    /// [`RECORD`] on `entry`: write `value` (none if empty) for `px_ms` if the
    /// generation is still `gen`, and give back the lease `token` holds (none if
    /// empty).
    pub(super) fn record(
        &self,
        entry: &Entry,
        gen: &[u8],
        token: &str,
        value: &[u8],
        px_ms: u64,
    ) -> ScriptInvocation<'_> {
        let mut invocation = on_entry(&self.record, entry);
        invocation.arg(gen).arg(token).arg(value).arg(px_ms);
        invocation
    }

    /// [`FORGET`] on `entry`: the new generation `gen`, kept `px_ms`.
    pub(super) fn forget(&self, entry: &Entry, gen: &str, px_ms: u64) -> ScriptInvocation<'_> {
        let mut invocation = on_entry(&self.forget, entry);
        invocation.arg(gen).arg(px_ms);
        invocation
    }

    /// [`RAISE_EPOCH`] of the Redis key `epoch_key` to `epoch`.
    pub(super) fn raise_epoch(&self, epoch_key: &str, epoch: u64) -> ScriptInvocation<'_> {
        let mut invocation = self.raise_epoch.prepare_invoke();
        invocation.key(epoch_key).arg(epoch);
        invocation
    }
}

/// `script` with `entry`'s Redis keys, in the order every per-key script takes
/// them: value, lock, gen.
fn on_entry<'a>(script: &'a Script, entry: &Entry) -> ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    invocation
        .key(&entry.value_key)
        .key(&entry.lock_key)
        .key(&entry.gen_key);
    invocation
}

/// What [`CONSULT`] did about the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lease {
    /// Not taken: the value's `PTTL` says it may be adoptable (code 1).
    NotTaken,
    /// Taken by this consult (code 2).
    Taken,
    /// Held by another replica (code 3, and any other).
    HeldElsewhere,
}

/// One [`CONSULT`] reply, read strictly.
pub(super) struct ConsultReply<'a> {
    pub(super) lease: Lease,
    /// The sealed value, empty when there is none.
    pub(super) value: &'a [u8],
    /// Redis's clock, in Unix milliseconds.
    pub(super) clock_ms: u64,
    /// The key's generation, empty when there is none.
    pub(super) gen: &'a [u8],
}

impl<'a> ConsultReply<'a> {
    /// The reply in `reply`: code, value, Redis's clock (seconds, microseconds),
    /// gen; `None` if it has another shape.
    pub(super) fn read(reply: &'a Value) -> Option<Self> {
        let Value::Array(items) = reply else {
            return None;
        };
        match items.as_slice() {
            [code, value, seconds, micros, gen] => Some(Self {
                lease: match int(code)? {
                    1 => Lease::NotTaken,
                    2 => Lease::Taken,
                    _ => Lease::HeldElsewhere,
                },
                value: bytes(value).unwrap_or_default(),
                clock_ms: number(seconds)?
                    .checked_mul(1000)?
                    .checked_add(number(micros)? / 1000)?,
                gen: bytes(gen).unwrap_or_default(),
            }),
            _ => None,
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
        let read = ConsultReply::read(&reply).unwrap();
        assert_eq!(
            (read.lease, read.value, read.clock_ms, read.gen),
            (Lease::NotTaken, &b"v"[..], 1_700_000_000_123, &b"g"[..])
        );
        assert!(ConsultReply::read(&Value::Nil).is_none());
        assert!(ConsultReply::read(&Value::Array(vec![Value::Int(1)])).is_none());
        let garbled = Value::Array(vec![
            Value::Int(1),
            bulk(b"v"),
            bulk(b"soon"),
            bulk(b"0"),
            bulk(b"g"),
        ]);
        assert!(ConsultReply::read(&garbled).is_none());
    }
}
