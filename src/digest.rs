//! What the cache holds instead of a key: a salted SHA-256 digest.
//!
//! `SHA-256(block || key)`, where `block` is one 64-byte block made of a random
//! per-layer salt, the SHA-256 of the base URL and the credential header. The block is
//! compressed once, when the layer is built, so a request pays for one compression
//! (keys up to 55 bytes) instead of two. The salt makes digests unpredictable outside
//! the process, which lets the cache index entries by the digest's first eight bytes
//! without hashing them again ([`DigestHasher`]) and without handing an attacker
//! control over which bucket a key lands in.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};

use sha2::{Digest as _, Sha256};

use crate::credential::CredentialHeader;

/// SHA-256 of (salt, base URL, header, key).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Digest([u8; 32]);

impl Digest {
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl Digest {
    /// A slot index below `slots` (a power of two), from bits the hash does not use.
    pub(crate) fn slot(&self, slots: usize) -> usize {
        usize::from(u16::from_ne_bytes([self.0[8], self.0[9]])) & (slots - 1)
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
    /// SHA-256 states that have absorbed the prefix block, one per credential header.
    prefixes: [Sha256; 3],
}

impl Digester {
    pub(crate) fn new(base_url: &str) -> Self {
        let random = RandomState::new();
        let mut salt = [0u8; 16];
        salt[..8].copy_from_slice(&random.hash_one(0u8).to_ne_bytes());
        salt[8..].copy_from_slice(&random.hash_one(1u8).to_ne_bytes());
        Self::with_salt(base_url, salt)
    }

    fn with_salt(base_url: &str, salt: [u8; 16]) -> Self {
        let url: [u8; 32] = Sha256::digest(base_url.as_bytes()).into();
        let prefix = |header: CredentialHeader| {
            let mut block = [0u8; 64];
            block[..16].copy_from_slice(&salt);
            block[16..48].copy_from_slice(&url);
            block[48] = header as u8;
            Sha256::new_with_prefix(block)
        };
        Self {
            prefixes: CredentialHeader::ALL.map(prefix),
        }
    }

    pub(crate) fn digest(&self, header: CredentialHeader, key: &[u8]) -> Digest {
        let mut hasher = self.prefixes[header as usize].clone();
        hasher.update(key);
        Digest(hasher.finalize().into())
    }
}

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

    #[test]
    fn digest_is_sha256_of_the_prefix_block_and_the_key() {
        let digester = Digester::with_salt("https://a", [7; 16]);
        let mut block = [0u8; 64];
        block[..16].copy_from_slice(&[7; 16]);
        block[16..48].copy_from_slice(&Sha256::digest(b"https://a"));
        block[48] = CredentialHeader::OrgApiKey as u8;
        let expected: [u8; 32] = Sha256::new_with_prefix(block)
            .chain_update(b"oak_1")
            .finalize()
            .into();
        assert_eq!(
            digester.digest(CredentialHeader::OrgApiKey, b"oak_1").0,
            expected
        );
    }

    #[test]
    fn digests_separate_salts_base_urls_headers_and_keys() {
        let a = Digester::new("https://a");
        let d = |digester: &Digester, header, key: &[u8]| digester.digest(header, key);
        let key = b"ak_1";
        assert_eq!(
            d(&a, CredentialHeader::ApiKey, key),
            d(&a, CredentialHeader::ApiKey, key)
        );
        assert_ne!(
            d(&a, CredentialHeader::ApiKey, key),
            d(&Digester::new("https://b"), CredentialHeader::ApiKey, key)
        );
        assert_ne!(
            d(&a, CredentialHeader::ApiKey, key),
            d(&Digester::new("https://a"), CredentialHeader::ApiKey, key)
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
        let digest = Digest([0xab; 32]);
        assert_eq!(
            DigestHasher::default().hash_one(digest),
            u64::from_ne_bytes([0xab; 8])
        );
        assert!(!format!("{digest:?}").contains("abababab ab"));
    }
}
