//! [`DeliveryFleet`]: once-delivery across replicas (features `webhook` and
//! `redis`), through the [`RedisCache`] the key verifier uses.
//!
//! The local rules of `deliveries.rs` hold across the fleet: the replica that took
//! a delivery's local claim asks Redis too, and
//!
//! - finds it **acknowledged** (an acknowledgement this fleet wrote, checked here):
//!   it answers 2xx without the handler;
//! - **takes its claim** (`SET NX PX` [`LEASE`], a random token): it hands it to
//!   the handler, then acknowledges it (2xx: the acknowledgement written, kept
//!   [`Deliveries::retention`](super::deliveries::Deliveries::retention), and the
//!   claim deleted) or releases the claim (anything else, or the ticket dropped:
//!   the retry goes through). Both are spawned once the ticket ends;
//! - finds it **claimed elsewhere**: it looks again, pausing longer each time up
//!   to [`LONGEST_PAUSE`], until it is acknowledged (2xx at once), released (it
//!   takes the claim) or [`LEASE`] has passed since it began waiting (it handles
//!   it anyway: a claim that outlives its lease, e.g. written without an expiry,
//!   never blocks a delivery). A replica that dies mid-delivery blocks the retry
//!   for what is left of its lease, no longer;
//! - **cannot reach Redis** (or its breaker is open): it handles the delivery with
//!   the local rules only (at-least-once, as Composio promises), logged at `warn`
//!   at most every [`WARN_EVERY`] and at `debug` otherwise.
//!
//! What Redis holds, per delivery, under one hash tag (one cluster slot):
//! `{prefix}wh:{<hex HMAC-SHA256 of the webhook-id>}:claim` (a random token) and
//! `…:ack` (an HMAC-SHA256 of that key's name), both under keys derived from the
//! pepper with HKDF-SHA256 (`info`s of their own: no key serves two purposes). No
//! webhook id, secret or body byte; and a Redis writer without the pepper cannot
//! write an acknowledgement that passes, so it cannot suppress a delivery (holding
//! claims, it delays one by a lease at most).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use redis::{Script, ScriptInvocation, Value};
use sha2::Sha256;

use crate::verifier::fleet::RedisCache;
use crate::verifier::pause_point::DELIVERY_WAITING;
use crate::TRACING_TARGET;

/// How long a claim is held: past it, another replica handles the delivery (a
/// handler still running then may see its delivery handled twice, which
/// Composio's own retry of a request that long would do too).
pub const LEASE: Duration = Duration::from_secs(30);

/// The first pause between two looks at a claim held elsewhere.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause between two looks at a claim held elsewhere.
const LONGEST_PAUSE: Duration = Duration::from_millis(100);

/// The least time between two warnings that deliveries go without Redis.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// HKDF `info` strings of the two keys derived from the pepper.
const NAME_INFO: &[u8] = b"composio-auth/v1 webhook id";
const ACK_INFO: &[u8] = b"composio-auth/v1 webhook acknowledgement";

/// Looks at a delivery: acknowledged (the acknowledgement is refreshed), or takes
/// its claim unless another holds it. KEYS: claim, ack. ARGV: token, lease ms,
/// this fleet's acknowledgement, retention ms. Returns {code, ack ('' for
/// none)}: 1 acknowledged, 2 claim taken, 3 claim held elsewhere.
const CLAIM: &str = r"
local ack = redis.call('GET', KEYS[2]) or ''
if ack == ARGV[3] then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  return {1, ack}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2, ack}
end
return {3, ack}
";

/// Acknowledges a delivery, and deletes its claim if `token` holds it. KEYS:
/// claim, ack. ARGV: token ('' for none), the acknowledgement, retention ms.
const ACKNOWLEDGE: &str = r"
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
";

/// Deletes a delivery's claim if `token` holds it. KEYS: claim. ARGV: token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Runs one script in Redis on the key verifier's kind of connections: within
/// the [`RedisCache`]'s budget, behind its breaker; `None` when Redis was not
/// used or failed.
pub(crate) type RunScript =
    Box<dyn for<'a> Fn(&'a ScriptInvocation<'a>) -> BoxFuture<'a, Option<Value>> + Send + Sync>;

/// One layer's handle on the fleet's deliveries.
pub(crate) struct DeliveryFleet {
    run: RunScript,
    /// HMAC-SHA256 under the key derived for Redis key names.
    names: Hmac<Sha256>,
    /// HMAC-SHA256 under the key derived for acknowledgements.
    acks: Hmac<Sha256>,
    prefix: String,
    retention_ms: u64,
    claim: Script,
    acknowledge: Script,
    release: Script,
    tokens: RandomState,
    next_token: AtomicU64,
    started: Instant,
    /// Milliseconds after `started` (plus one) of the last warning that a
    /// delivery went without Redis; 0: never.
    warned_at: AtomicU64,
    /// Whether something in Redis this fleet did not write was logged at `warn`.
    warned_suspicious: AtomicBool,
}

/// A delivery's standing in Redis, carried by its ticket.
pub(crate) struct HeldClaim {
    claim_key: String,
    ack_key: String,
    /// The claim's token while this replica may hold it; empty when it handles
    /// the delivery without the claim.
    token: String,
    /// Whether Redis could not be reached: handled with local deduplication only.
    unavailable: bool,
}

impl HeldClaim {
    /// Whether the delivery is handled without Redis (unreachable, or its breaker
    /// open): with local deduplication only.
    pub(crate) fn unavailable(&self) -> bool {
        self.unavailable
    }
}

/// What Redis says of a delivery.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FleetClaim {
    /// A replica acknowledged it: answer 2xx without handling it.
    Acknowledged,
    /// Handle it (the [`HeldClaim`] says whether with the claim).
    Handle,
}

/// A wait for the claim another replica holds: pauses that double up to
/// [`LONGEST_PAUSE`], until [`LEASE`] has passed.
struct ClaimWait {
    deadline: tokio::time::Instant,
    pause: Duration,
}

impl ClaimWait {
    fn new() -> Self {
        Self {
            deadline: tokio::time::Instant::now() + LEASE,
            pause: FIRST_PAUSE,
        }
    }

    /// Pauses before the next look; `false` (at once) when the lease has passed.
    async fn pause(&mut self) -> bool {
        if self.pause == FIRST_PAUSE {
            tracing::debug!(target: TRACING_TARGET, pause_point = DELIVERY_WAITING, "another replica is handling this delivery; waiting for its answer");
        }
        let now = tokio::time::Instant::now();
        if now >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.pause.min(self.deadline - now)).await;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        true
    }
}

impl DeliveryFleet {
    /// The fleet of `cache`, acknowledgements kept `retention`.
    pub(crate) fn new(cache: &RedisCache, retention: Duration) -> Self {
        let derive = |info: &[u8]| {
            let mut okm = [0u8; 32];
            Hkdf::<Sha256>::new(None, &cache.pepper)
                .expand(info, &mut okm)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&okm)
                .expect("HMAC takes keys of any length")
        };
        Self {
            run: cache.script_runner(),
            names: derive(NAME_INFO),
            acks: derive(ACK_INFO),
            prefix: cache.prefix.clone(),
            retention_ms: millis(retention),
            claim: Script::new(CLAIM),
            acknowledge: Script::new(ACKNOWLEDGE),
            release: Script::new(RELEASE),
            tokens: RandomState::new(),
            next_token: AtomicU64::new(0),
            started: Instant::now(),
            warned_at: AtomicU64::new(0),
            warned_suspicious: AtomicBool::new(false),
        }
    }

    /// The Redis standing of a delivery of `id`, before Redis is asked: its keys,
    /// and a new token (so that a claim taken by a look whose answer never
    /// arrives, the request cancelled, is released with the ticket).
    pub(crate) fn held(&self, id: &str) -> HeldClaim {
        let mut names = self.names.clone();
        names.update(id.as_bytes());
        let digest = names.finalize().into_bytes();
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        HeldClaim {
            claim_key: format!("{}wh:{{{hex}}}:claim", self.prefix),
            ack_key: format!("{}wh:{{{hex}}}:ack", self.prefix),
            token: format!("{:016x}", self.tokens.hash_one(n)),
            unavailable: false,
        }
    }

    /// This fleet's acknowledgement of the delivery whose ack key is `ack_key`.
    fn acknowledgement(&self, ack_key: &str) -> Hmac<Sha256> {
        let mut acks = self.acks.clone();
        acks.update(ack_key.as_bytes());
        acks
    }

    /// Asks Redis about `held`'s delivery, waiting while another replica holds
    /// its claim. `held` keeps its token only if this replica took the claim.
    pub(crate) async fn claim(&self, held: &mut HeldClaim) -> FleetClaim {
        let acknowledgement = self.acknowledgement(&held.ack_key);
        let expected = acknowledgement.clone().finalize().into_bytes();
        let mut wait = ClaimWait::new();
        let mut reported = false;
        loop {
            let mut invocation = self.claim.prepare_invoke();
            invocation
                .key(&held.claim_key)
                .key(&held.ack_key)
                .arg(&held.token)
                .arg(millis(LEASE))
                .arg(expected.as_slice())
                .arg(self.retention_ms);
            let Some((code, ack)) = (self.run)(&invocation).await.as_ref().and_then(read) else {
                self.unavailable();
                // The token stays: the script may have run and taken the claim, which
                // the ticket then releases (its writes are token-guarded).
                held.unavailable = true;
                return FleetClaim::Handle;
            };
            if !ack.is_empty() && acknowledgement.clone().verify_slice(&ack).is_ok() {
                return FleetClaim::Acknowledged;
            }
            if (!ack.is_empty() || code == 1) && !std::mem::replace(&mut reported, true) {
                self.suspicious("an acknowledgement in Redis was not written by this fleet (altered, or written without the pepper); handling the delivery");
            }
            match code {
                2 => return FleetClaim::Handle,
                3 if wait.pause().await => {}
                3 => {
                    self.suspicious(
                        "a delivery's claim in Redis outlived its lease; handling the delivery",
                    );
                    held.token.clear();
                    return FleetClaim::Handle;
                }
                // Redis says acknowledged, with an acknowledgement that is not.
                _ => {
                    held.token.clear();
                    return FleetClaim::Handle;
                }
            }
        }
    }

    /// Ends `held`'s delivery in Redis, spawned on this Tokio runtime (nothing
    /// outside one): acknowledged, or its claim released.
    pub(crate) fn settle(self: &Arc<Self>, held: HeldClaim, acknowledged: bool) {
        if !acknowledged && held.token.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(target: TRACING_TARGET, "a webhook delivery ended outside a Tokio runtime; its claim in Redis lapses with its lease");
            return;
        };
        let fleet = Arc::clone(self);
        runtime.spawn(async move { fleet.write(held, acknowledged).await });
    }

    async fn write(&self, held: HeldClaim, acknowledged: bool) {
        let invocation = if acknowledged {
            let acknowledgement = self.acknowledgement(&held.ack_key);
            let mut invocation = self.acknowledge.prepare_invoke();
            invocation
                .key(&held.claim_key)
                .key(&held.ack_key)
                .arg(&held.token)
                .arg(acknowledgement.finalize().into_bytes().as_slice())
                .arg(self.retention_ms);
            invocation
        } else {
            let mut invocation = self.release.prepare_invoke();
            invocation.key(&held.claim_key).arg(&held.token);
            invocation
        };
        let written = (self.run)(&invocation).await.is_some();
        tracing::debug!(target: TRACING_TARGET, acknowledged, written, "webhook delivery settled in Redis");
        if !written {
            // A lost acknowledgement leaves the claim to its lease, and copies on
            // other replicas are handled again after it: said, as any Redis outage.
            self.unavailable();
        }
    }

    /// A delivery handled without Redis: logged at `warn` at most every
    /// [`WARN_EVERY`], else at `debug`.
    fn unavailable(&self) {
        let now = millis(self.started.elapsed()) + 1;
        let last = self.warned_at.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= millis(WARN_EVERY);
        if due
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(target: TRACING_TARGET, "Redis cannot be reached: webhook deliveries are deduplicated on this replica only (at-least-once) until it answers again (logged at warn once a minute)");
        } else {
            tracing::debug!(target: TRACING_TARGET, "Redis cannot be reached: webhook delivery deduplicated on this replica only");
        }
    }

    /// Something in Redis this fleet did not write: at `warn` the first time for
    /// this layer, then at `debug`, so a Redis writer cannot flood the logs.
    fn suspicious(&self, what: &'static str) {
        if self.warned_suspicious.swap(true, Ordering::Relaxed) {
            tracing::debug!(target: TRACING_TARGET, "{what}");
        } else {
            tracing::warn!(target: TRACING_TARGET, "{what} (logged at warn once; further ones at debug)");
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A [`CLAIM`] reply, read strictly: its code and acknowledgement.
fn read(reply: &Value) -> Option<(i64, Vec<u8>)> {
    let Value::Array(items) = reply else {
        return None;
    };
    match items.as_slice() {
        [Value::Int(code), Value::BulkString(ack)] => Some((*code, ack.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEPPER: &str = "a fleet pepper of at least 32 bytes....";

    fn fleet(pepper: &str) -> DeliveryFleet {
        let cache = RedisCache::new("redis://127.0.0.1:1", pepper)
            .unwrap()
            .prefix("p:");
        DeliveryFleet::new(&cache, Duration::from_secs(660))
    }

    #[test]
    fn keys_and_acknowledgements_name_no_id_and_need_the_pepper() {
        let (a, b, other) = (
            fleet(PEPPER),
            fleet(PEPPER),
            fleet("another fleet pepper of 32 bytes or more"),
        );
        let held = a.held("msg_secret_id");
        assert!(held.claim_key.starts_with("p:wh:{") && held.claim_key.ends_with("}:claim"));
        assert_eq!(held.claim_key.replace(":claim", ":ack"), held.ack_key);
        assert!(!held.claim_key.contains("msg_secret_id"));
        assert_eq!(
            b.held("msg_secret_id").ack_key,
            held.ack_key,
            "replicas agree"
        );
        assert_ne!(other.held("msg_secret_id").ack_key, held.ack_key);
        assert_ne!(a.held("msg_other").ack_key, held.ack_key);
        assert_ne!(
            a.held("msg_secret_id").token,
            held.token,
            "a token per claim"
        );
        let ack = |f: &DeliveryFleet, key: &str| f.acknowledgement(key).finalize().into_bytes();
        assert_eq!(ack(&a, &held.ack_key), ack(&b, &held.ack_key));
        assert_ne!(ack(&a, &held.ack_key), ack(&other, &held.ack_key));
        assert_ne!(
            ack(&a, &held.ack_key),
            ack(&a, &a.held("msg_other").ack_key)
        );
        // The acknowledgement is not the name's MAC: the two keys differ.
        let mut names = a.names.clone();
        names.update(held.ack_key.as_bytes());
        assert_ne!(names.finalize().into_bytes(), ack(&a, &held.ack_key));
    }

    #[test]
    fn claim_replies_are_read_strictly() {
        let reply = Value::Array(vec![Value::Int(2), Value::BulkString(Vec::new())]);
        assert_eq!(read(&reply), Some((2, Vec::new())));
        assert_eq!(read(&Value::Nil), None);
        assert_eq!(read(&Value::Array(vec![Value::Int(1)])), None);
        let garbled = Value::Array(vec![Value::BulkString(b"1".to_vec()), Value::Nil]);
        assert_eq!(read(&garbled), None);
    }
}
