//! What the cache holds instead of a key: a keyed 128-bit PRF of it.
//!
//! `digest = SipHash-1-3-128(k, base URL || 0 || header || key)`, where `k` is a
//! 128-bit secret drawn from the operating system's randomness for each layer (as
//! std's `HashMap` keys its SipHash-1-3). The prefix is absorbed once per layer and
//! header; a request pays for its key's bytes only (a few nanoseconds on any CPU, no
//! SHA instructions needed). A user key with selectors has a digest per scope:
//! `SipHash-1-3-128(k, base URL || 0 || 0x80 | header || len(key) || key ||
//! len(org) || org || project)`, lengths as 8 bytes, so no scope's encoding is
//! another's, or a bare key's.
//!
//! Why this is enough here. A digest never leaves the process: it only has to keep
//! distinct keys apart in this layer's cache, against an attacker who does not know
//! `k`. Within a layer, the encoding is injective (the prefix has one fixed length
//! per header; the key's length is part of SipHash's finalisation), so two keys can
//! share a digest only by a collision of the PRF's 128-bit output: for an attacker
//! without `k`, each forged key has a 2^-128 chance of landing on a given victim's
//! digest, and the whole cache (at most millions of entries) has a collision
//! probability below 2^-80. Outputs also look random to such an attacker, so the
//! cache can index entries by the digest's first 8 bytes without hashing them again
//! ([`DigestHasher`]) and without handing an attacker control over which bucket a
//! key lands in. Someone who can read the process's memory sees the digests and `k`,
//! and can test guessed keys offline; Composio keys carry about 120 random bits,
//! which no guessing reaches (and such a reader sees the sessions anyway). What the
//! cache never holds is the key itself.
//!
//! With a fleet (feature `redis`), `k` is derived from the fleet's
//! pepper with HKDF instead (`fleet/seal.rs`): every replica then computes the same
//! digest for a key, so an invalidation message can name the local entry to drop.
//! Such a digest still never reaches Redis in the clear (messages carry it sealed),
//! and `k` is as secret as the pepper. Redis names its own entries with an
//! HMAC-SHA256 under the pepper, computed only on a local miss, never on a hit.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::verifier::credential::{CredentialHeader, Scope};

/// SipHash-1-3-128 of (base URL, header, key) under a per-layer secret (with a
/// fleet, one derived from the pepper).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Digest([u8; 16]);

impl Digest {
    #[cfg(any(test, feature = "redis"))]
    pub(crate) fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    #[cfg(feature = "redis")]
    pub(crate) fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// A slot index below `slots` (a power of two), from bits the hash does not use.
    pub(crate) fn slot(&self, slots: usize) -> usize {
        usize::from(u16::from_ne_bytes([self.0[8], self.0[9]])) & (slots - 1)
    }

    /// A stripe index below `stripes` (a power of two), from bits neither the hash
    /// nor [`Digest::slot`] uses.
    pub(crate) fn stripe(&self, stripes: usize) -> usize {
        usize::from(u16::from_ne_bytes([self.0[10], self.0[11]])) & (stripes - 1)
    }
}

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_ne_bytes(first));
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A digest is not a secret, but nothing needs more than its first bytes.
        write!(
            f,
            "Digest({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// Makes the digests of one layer.
pub(crate) struct Digester {
    /// SipHash states keyed with the layer's secret that have absorbed the prefix,
    /// one per credential header.
    prefixes: [SipHasher13; 3],
    /// The same for a user key's scopes.
    scoped_prefix: SipHasher13,
}

impl Digester {
    /// Digests under `secret`, or (`None`) under a random secret of this layer's own,
    /// seeded from the operating system's randomness.
    pub(crate) fn new(base_url: &str, secret: Option<(u64, u64)>) -> Self {
        let secret = secret.unwrap_or_else(|| {
            let random = RandomState::new();
            (random.hash_one(0u8), random.hash_one(1u8))
        });
        Self::with_secret(base_url, secret)
    }

    fn with_secret(base_url: &str, (k0, k1): (u64, u64)) -> Self {
        let prefix = |tag: u8| {
            let mut hasher = SipHasher13::new_with_keys(k0, k1);
            hasher.write(base_url.as_bytes());
            hasher.write(&[0, tag]);
            hasher
        };
        Self {
            prefixes: CredentialHeader::ALL.map(|header| prefix(header as u8)),
            scoped_prefix: prefix(SCOPED | CredentialHeader::UserApiKey as u8),
        }
    }

    #[inline]
    pub(crate) fn digest(&self, header: CredentialHeader, key: &[u8]) -> Digest {
        let mut hasher = self.prefixes[header as usize];
        hasher.write(key);
        Digest(u128::from(hasher.finish128()).to_le_bytes())
    }

    /// The digest of a user key's `scope`.
    #[inline]
    pub(crate) fn scoped_digest(&self, key: &[u8], scope: Scope<'_>) -> Digest {
        let mut hasher = self.scoped_prefix;
        for part in [key, scope.org] {
            hasher.write(&(part.len() as u64).to_le_bytes());
            hasher.write(part);
        }
        hasher.write(scope.project);
        Digest(u128::from(hasher.finish128()).to_le_bytes())
    }
}

/// The bit that marks a scoped digest's prefix.
const SCOPED: u8 = 0x80;

/// Uses the first eight bytes of a [`Digest`] as its hash: they already are one.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Digest`; folds anything else in, FNV-style.
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl BuildHasher for DigestHasher {
    type Hasher = Self;

    fn build_hasher(&self) -> Self {
        Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn digest_is_siphash13_128_of_the_prefix_and_the_key() {
        let digester = Digester::with_secret("https://a", (7, 9));
        let mut reference = SipHasher13::new_with_keys(7, 9);
        reference.write(b"https://a\0\x02oak_1");
        let expected = u128::from(reference.finish128()).to_le_bytes();
        assert_eq!(CredentialHeader::OrgApiKey as u8, 2);
        assert_eq!(
            digester.digest(CredentialHeader::OrgApiKey, b"oak_1").0,
            expected
        );
    }

    #[test]
    fn digests_separate_secrets_base_urls_headers_and_keys() {
        let a = Digester::new("https://a", None);
        let d = |digester: &Digester, header, key: &[u8]| digester.digest(header, key);
        let key = b"ak_1";
        assert_eq!(
            d(&a, CredentialHeader::ApiKey, key),
            d(&a, CredentialHeader::ApiKey, key)
        );
        assert_ne!(
            d(&a, CredentialHeader::ApiKey, key),
            d(
                &Digester::new("https://a", None),
                CredentialHeader::ApiKey,
                key
            ),
            "another layer, another secret"
        );
        let same_secret = |url| Digester::with_secret(url, (1, 2));
        assert_ne!(
            d(&same_secret("https://a"), CredentialHeader::ApiKey, key),
            d(&same_secret("https://b"), CredentialHeader::ApiKey, key)
        );
        assert_ne!(
            d(&a, CredentialHeader::ApiKey, key),
            d(&a, CredentialHeader::OrgApiKey, key)
        );
        assert_ne!(
            d(&a, CredentialHeader::ApiKey, key),
            d(&a, CredentialHeader::ApiKey, b"ak_2")
        );
    }

    #[test]
    fn the_hash_is_the_first_eight_bytes() {
        let digest = Digest([0xab; 16]);
        assert_eq!(
            DigestHasher::default().hash_one(digest),
            u64::from_ne_bytes([0xab; 8])
        );
        assert!(!format!("{digest:?}").contains("abababab ab"));
    }

    #[test]
    fn a_scope_has_a_digest_of_its_own() {
        let digester = Digester::with_secret("https://a", (7, 9));
        let scope = |org: &'static [u8], project: &'static [u8]| Scope { org, project };
        let key = b"uak_1";
        let one = digester.scoped_digest(key, scope(b"org_1", b"proj_1"));
        assert_eq!(one, digester.scoped_digest(key, scope(b"org_1", b"proj_1")));
        for other in [
            digester.scoped_digest(key, scope(b"org_1", b"proj_2")),
            digester.scoped_digest(key, scope(b"org_2", b"proj_1")),
            digester.scoped_digest(key, scope(b"org_1p", b"roj_1")),
            digester.scoped_digest(b"uak_2", scope(b"org_1", b"proj_1")),
            digester.digest(CredentialHeader::UserApiKey, key),
        ] {
            assert_ne!(one, other);
        }
    }

    fn header() -> impl Strategy<Value = CredentialHeader> {
        prop::sample::select(CredentialHeader::ALL.to_vec())
    }

    proptest! {
        /// Distinct (base URL, header, key) triples never share a digest, even
        /// under one secret (where only the encoding keeps them apart), and keys
        /// that are prefixes of each other or split differently stay apart.
        #[test]
        fn distinct_inputs_never_share_a_digest(
            urls in prop::collection::vec("https://[a-z]{0,6}(/[a-z0-9]{0,4})?", 1..3),
            inputs in prop::collection::vec((header(), prop::collection::vec(any::<u8>(), 0..40)), 1..40),
        ) {
            let mut seen = std::collections::HashMap::new();
            for url in &urls {
                let digester = Digester::with_secret(url, (42, 43));
                for (header, key) in &inputs {
                    let digest = digester.digest(*header, key).0;
                    let input = (url.clone(), *header as u8, key.clone(), None);
                    if let Some(previous) = seen.insert(digest, input.clone()) {
                        prop_assert_eq!(previous, input);
                    }
                    // The same bytes cut into a key and a scope, many ways.
                    for org in 0..=key.len().min(4) {
                        for project in org..=key.len().min(org + 4) {
                            let scope = Scope { org: &key[org..project], project: &key[project..] };
                            let digest = digester.scoped_digest(&key[..org], scope).0;
                            let input = (url.clone(), 0x80, key[..org].to_vec(), Some((scope.org.to_vec(), scope.project.to_vec())));
                            if let Some(previous) = seen.insert(digest, input.clone()) {
                                prop_assert_eq!(previous, input);
                            }
                        }
                    }
                }
            }
        }
    }
}
