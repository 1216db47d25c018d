//! Invalidations going out to the fleet: a key forgotten in Redis and announced on
//! the stream, or a new epoch that voids every verdict recorded before it.

use redis::streams::StreamMaxlen;
use redis::AsyncCommands;

use super::link::Link;
use super::Fleet;
use crate::verifier::credential::CredentialHeader;
use crate::verifier::digest::Digest;
use crate::verifier::instruments::Direction;

/// Invalidation messages kept in the stream (approximately): what a replica that
/// was disconnected can catch up on. One that missed more drops its local verdicts.
pub(crate) const STREAM_KEPT: usize = 10_000;

impl Fleet {
    /// Forgets a key on every replica: its Redis entries (under each header; a new
    /// generation voids its scopes' too), then a message on the stream carrying its
    /// local digests (each replica forgets the key's scopes with it). `false` if Redis could
    /// not be reached.
    pub(crate) async fn invalidate(&self, key: &[u8], keys: &[(CredentialHeader, Digest)]) -> bool {
        let gen_life_ms = (self.lives.longest_life() + self.lease + self.wait).as_millis() as u64;
        for (header, _) in keys {
            // The one value key of every epoch.
            let entry = self.key_entry(*header, key, 0);
            let gen = self.random_word();
            let invocation = self.scripts.forget(&entry, &gen, gen_life_ms);
            let invocation = &invocation;
            let forgotten: Option<i64> = self
                .links
                .run(|mut link| async move { invocation.invoke_async(&mut link).await })
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
    pub(crate) async fn raise_epoch(&self, link: &mut Link, epoch: u64) -> redis::RedisResult<u64> {
        self.scripts
            .raise_epoch(&self.epoch_key, epoch)
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
