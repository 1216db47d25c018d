//! The replica's subscription to the fleet's invalidations: one task per layer that
//! reads the Redis Stream `{prefix}invalidations` from the last message it saw, so a
//! replica that was disconnected replays what it missed when it reconnects.
//!
//! When it cannot prove it missed nothing (its first connection, a stream trimmed
//! past its position, at reconnect or while following it, a Redis that restarted or
//! was flushed, which `{prefix}incarnation` tells even when the stream's new ids
//! look continuous, an epoch that moved without a message) it forgets every local
//! verdict instead: a possibly revoked session is never served from a gap.
//!
//! The epoch it applies never goes back: an `invalidate_all` message (sealed, so
//! only a replica with the pepper can write one) for an epoch at or below the
//! current one changes nothing, and a Redis whose `{prefix}epoch` is behind the
//! replica's (flushed, restarted, or written to) is raised to it, and the epoch is
//! announced again for replicas that read the lower one.
//!
//! The replica shares (reads or records verdicts in Redis) only while subscribed:
//! only then does it know the current epoch and hear every invalidation.
//!
//! Like the flights, the task runs on a request's runtime; if that runtime goes
//! away, the next verification starts another, which resumes from the same
//! position.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, RedisResult};

use super::link::Link;
use super::publish::STREAM_KEPT;
use super::subscription::Status;
use super::{Fleet, Invalidation};
use crate::verifier::instruments::Direction;
use crate::TRACING_TARGET;

/// How long one read blocks waiting for messages.
const BLOCK: Duration = Duration::from_secs(1);
/// Messages read at once.
const BATCH: usize = 256;
/// Longest pause between two attempts to reconnect.
const MAX_PAUSE: Duration = Duration::from_secs(1);

impl Fleet {
    /// Starts this layer's subscription task on the current runtime unless it runs
    /// (a verification calls this before it asks the fleet).
    pub(crate) fn listen(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut position = self.subscription.position();
            if position.running {
                return;
            }
            position.running = true;
        }
        let guard = Running(Arc::clone(self));
        runtime.spawn(async move { guard.listen().await });
    }
}

/// The subscription task's hold on its fleet; marks it stopped however the task ends.
struct Running(Arc<Fleet>);

impl Drop for Running {
    fn drop(&mut self) {
        if *self.0.subscription.status.borrow() != Status::Starting {
            self.set(Status::Down);
        }
        self.0.subscription.position().running = false;
    }
}

impl Running {
    /// Moves the subscription to `status`; the one it had.
    fn set(&self, status: Status) -> Status {
        let fleet = &self.0;
        fleet.instruments.subscribed(status == Status::Listening);
        fleet.subscription.status.send_replace(status)
    }

    async fn listen(&self) {
        let fleet = &self.0;
        let limit = fleet.links.time_limit();
        let mut pause = Duration::from_millis(20);
        loop {
            let connected = tokio::time::timeout(
                limit * 4,
                fleet.links.servers().connect(limit, Some(BLOCK + limit)),
            )
            .await;
            let outcome = match connected {
                Ok(Ok(link)) => {
                    pause = Duration::from_millis(20);
                    self.follow(link).await
                }
                Ok(Err(error)) => Err(error),
                Err(_) => Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no connection within the time limit",
                ))),
            };
            match outcome {
                Ok(()) => return, // the layer is gone
                Err(error) => {
                    let was = self.set(Status::Down);
                    if was != Status::Down {
                        tracing::warn!(target: TRACING_TARGET, pause_point = crate::verifier::pause_point::SUBSCRIPTION_LOST, error = ?error.kind(), "no subscription to the fleet's invalidations (Redis unreachable or refusing); verdicts are not shared until it is back");
                    }
                }
            }
            if !fleet.subscription.layer_is_alive() {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// Catches up, then applies messages as they come. `Ok` once the layer is gone.
    async fn follow(&self, mut link: Link) -> RedisResult<()> {
        let fleet = &self.0;
        let subscription = &fleet.subscription;
        let was = *subscription.status.borrow();
        let mut last = self.catch_up(&mut link).await?;
        if was == Status::Down {
            tracing::info!(target: TRACING_TARGET, pause_point = crate::verifier::pause_point::SUBSCRIPTION_RESTORED, "subscribed to the fleet's invalidations again; sharing verdicts resumes");
        }
        tracing::debug!(target: TRACING_TARGET, "subscribed to the fleet's invalidations");
        let options = StreamReadOptions::default()
            .block(BLOCK.as_millis() as usize)
            .count(BATCH);
        loop {
            let reply: Option<StreamReadReply> = link
                .xread_options(&[&fleet.stream], &[id_text(last)], &options)
                .await?;
            let messages: Vec<StreamId> = reply
                .into_iter()
                .flat_map(|r| r.keys)
                .flat_map(|k| k.ids)
                .collect();
            if messages.is_empty() {
                if !subscription.layer_is_alive() {
                    return Ok(());
                }
                continue;
            }
            let before = last;
            for message in &messages {
                let Some(id) = parse_id(&message.id) else {
                    continue;
                };
                if !self.apply(message) {
                    return Ok(());
                }
                last = id;
            }
            // XREAD resumes after a trimmed gap without a word: if the stream now
            // starts after `before`, messages after it may be gone unread. Checked
            // after applying (no delay for what arrived), and before the position
            // moves, so a reconnect in between sees the same gap.
            if self.first_id(&mut link).await? > Some(before) {
                tracing::warn!(target: TRACING_TARGET, "the stream of invalidations was trimmed past this replica's position while it read; forgetting every local verdict");
                if !subscription.apply(Invalidation::All) {
                    return Ok(());
                }
            }
            subscription.position().last = Some(last);
            if !subscription.layer_is_alive() {
                return Ok(());
            }
        }
    }

    /// The id of the stream's first message, `None` when it is empty or absent.
    async fn first_id(&self, link: &mut Link) -> RedisResult<Option<(u64, u64)>> {
        let first: StreamRangeReply = link.xrange_count(&self.0.stream, "-", "+", 1).await?;
        Ok(first.ids.first().and_then(|m| parse_id(&m.id)))
    }

    /// The Redis dataset's incarnation: a random word the first replica to ask
    /// writes, gone when Redis is flushed or restarts without persistence.
    async fn incarnation(&self, link: &mut Link) -> RedisResult<String> {
        let fleet = &self.0;
        let _: Option<String> = redis::cmd("SET")
            .arg(&fleet.incarnation_key)
            .arg(fleet.random_word())
            .arg("NX")
            .query_async(link)
            .await?;
        let incarnation: Option<String> = link.get(&fleet.incarnation_key).await?;
        Ok(incarnation.unwrap_or_default())
    }

    /// Finds where to read from, and forgets every local verdict unless the stream
    /// still holds everything since the last message applied, in the same Redis
    /// dataset and epoch.
    async fn catch_up(&self, link: &mut Link) -> RedisResult<(u64, u64)> {
        let fleet = &self.0;
        let subscription = &fleet.subscription;
        let first = self.first_id(link).await?;
        let incarnation = self.incarnation(link).await?;
        let ours = subscription.epoch.load(Ordering::Acquire);
        let epoch = fleet.raise_epoch(link, ours).await?;
        let (known, known_incarnation) = {
            let position = subscription.position();
            (position.last, position.incarnation.clone())
        };
        let continuous = matches!((known, first), (Some(last), Some(first)) if first <= last)
            && known_incarnation.as_deref() == Some(incarnation.as_str())
            && epoch == ours;
        if continuous {
            self.set(Status::Listening);
            return Ok(known.unwrap_or_default());
        }
        if epoch < ours {
            // Redis's epoch was behind ours (and is ours now): replicas that read
            // the lower one hear the current one.
            tracing::warn!(target: TRACING_TARGET, "Redis's epoch was behind this replica's (Redis flushed, restarted, or written to); restored");
            if !fleet.announce_epoch(ours).await {
                tracing::debug!(target: TRACING_TARGET, "the restored epoch could not be announced; replicas hear it at their next catch-up");
            }
        }
        // Where to read from: the end of the stream, marked by a message of our own
        // (so the stream exists and a later check has a first id to compare).
        let end: String = link
            .xadd_maxlen(
                &fleet.stream,
                redis::streams::StreamMaxlen::Approx(STREAM_KEPT),
                "*",
                &[("hello", "1")],
            )
            .await?;
        let end = parse_id(&end).unwrap_or_default();
        subscription.epoch.fetch_max(epoch, Ordering::AcqRel);
        {
            let mut position = subscription.position();
            position.last = Some(end);
            position.incarnation = Some(incarnation);
        }
        if known.is_some() {
            tracing::warn!(target: TRACING_TARGET, "invalidations may have been missed (Redis restarted, flushed, or trimmed the stream); forgetting every local verdict");
        }
        // Listening first: what Redis holds now is current, and a verification that
        // reads it meanwhile is voided with the rest just below. On a first
        // subscription, local verdicts exist only if some verification went on
        // without the fleet; verifications waiting for it are left alone.
        self.set(Status::Listening);
        if known.is_some() || subscription.verified_alone.swap(false, Ordering::AcqRel) {
            subscription.apply(Invalidation::All);
        }
        Ok(end)
    }

    /// Applies one message; `false` once the layer is gone.
    fn apply(&self, message: &StreamId) -> bool {
        let fleet = &self.0;
        let subscription = &fleet.subscription;
        if message.contains_key("hello") {
            // A replica marking where it starts reading: no invalidation.
            return true;
        }
        tracing::debug!(target: TRACING_TARGET, pause_point = crate::verifier::pause_point::INVALIDATION_RECEIVED, "invalidation received from the fleet");
        fleet.instruments.invalidation(Direction::Received);
        if let Some(sealed) = message.get::<Vec<u8>>("all") {
            let Some(epoch) = fleet.sealer.open_epoch(&fleet.stream, &sealed) else {
                fleet.suspicious(
                    "an invalidate_all message does not open (another pepper, or forged); ignored",
                );
                return subscription.layer_is_alive();
            };
            // Concurrent invalidate_all calls (INCR, then XADD) and retries can
            // land out of order; a replayed message is an old one: the epoch only
            // goes forward.
            let before = subscription.epoch.fetch_max(epoch, Ordering::AcqRel);
            if epoch <= before {
                tracing::debug!(target: TRACING_TARGET, epoch, current = before, "an invalidate_all for an epoch already applied; nothing to do");
                return subscription.layer_is_alive();
            }
            return subscription.apply(Invalidation::All);
        }
        let digests = (0..3)
            .filter_map(|n| message.get::<Vec<u8>>(&format!("d{n}")))
            .filter_map(|sealed| {
                let digest = fleet.sealer.open_digest(&fleet.stream, &sealed);
                if digest.is_none() {
                    fleet.suspicious("an invalidation message does not open (another pepper, or forged); ignored");
                }
                digest
            })
            .collect();
        subscription.apply(Invalidation::Keys(digests))
    }
}

fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn id_text((ms, seq): (u64, u64)) -> String {
    format!("{ms}-{seq}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_numerically() {
        assert!(parse_id("9-5") < parse_id("10-0"));
        assert!(parse_id("10-2") < parse_id("10-10"));
        assert_eq!(parse_id("x"), None);
        assert_eq!(id_text((12, 3)), "12-3");
    }
}
