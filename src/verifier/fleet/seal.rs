//! What the fleet's secrets make: the Redis key of a verdict, the encryption of what
//! Redis stores, and the seal on invalidation messages.
//!
//! - **Redis keys** are an HMAC-SHA256 under the pepper of (base URL, credential
//!   header, API key), and for a user key's scope, of those and its two selectors,
//!   each length-prefixed so no two inputs share an encoding. A Redis reader
//!   without the pepper cannot test a guessed key (or scope) against them.
//! - **Values** are ChaCha20-Poly1305 ciphertexts under a key derived with
//!   HKDF-SHA256 from the API key itself (salt: the pepper), with the Redis key as
//!   associated data: reading one needs the API key; moving one to another Redis key
//!   or altering a byte makes it fail to open, which is a miss, never a session.
//! - **Invalidation messages** carry the replica-local digest of a key (which every
//!   replica computes alike, its SipHash key being derived from the pepper too), or
//!   the epoch an `invalidate_all` started, sealed under a pepper-derived key: a
//!   Redis reader learns nothing from them, and a Redis writer without the pepper
//!   cannot forge one.
//!
//! Each sealed value starts with a version byte; a value of another version is a
//! miss.

use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::verifier::credential::{CredentialHeader, Scope};
use crate::verifier::digest::Digest;

/// The first byte of every sealed value and message.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// HKDF `info` strings: one per use, so no derived key serves two purposes.
const VALUE_INFO: &[u8] = b"composio-auth/v1 verdict";
const MESSAGE_INFO: &[u8] = b"composio-auth/v1 invalidation";
const LOCAL_DIGEST_INFO: &[u8] = b"composio-auth/v1 local digest";

/// The fleet's secrets, derived once from the pepper.
pub(crate) struct Sealer {
    /// HMAC-SHA256 keyed with the pepper, cloned per fleet digest.
    mac: Hmac<Sha256>,
    pepper: Box<[u8]>,
    messages: ChaCha20Poly1305,
    local_digest_secret: (u64, u64),
}

/// A key's fleet digest: HMAC-SHA256(pepper, base URL, header, key).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct FleetDigest([u8; 32]);

impl FleetDigest {
    /// Lowercase hex, for Redis key names.
    pub(crate) fn hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for byte in self.0 {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The cipher of one API key's values.
pub(crate) struct ValueCipher(ChaCha20Poly1305);

impl Sealer {
    pub(crate) fn new(pepper: &[u8]) -> Self {
        let derive = |info: &[u8]| {
            let mut okm = [0u8; 32];
            Hkdf::<Sha256>::new(None, pepper)
                .expand(info, &mut okm)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            okm
        };
        let local = derive(LOCAL_DIGEST_INFO);
        let half = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        Self {
            mac: <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(pepper)
                .expect("HMAC takes keys of any length"),
            pepper: pepper.into(),
            messages: ChaCha20Poly1305::new(&Key::from(derive(MESSAGE_INFO))),
            local_digest_secret: (half(&local[..8]), half(&local[8..16])),
        }
    }

    /// The SipHash key of every replica's local digests.
    pub(crate) fn local_digest_secret(&self) -> (u64, u64) {
        self.local_digest_secret
    }

    pub(crate) fn fleet_digest(
        &self,
        base_url: &str,
        header: CredentialHeader,
        key: &[u8],
    ) -> FleetDigest {
        self.mac_of(&[base_url.as_bytes(), header.as_str().as_bytes(), key])
    }

    /// A user key's scope's fleet digest: HMAC-SHA256(pepper, base URL, header,
    /// key, org, project).
    pub(crate) fn scope_digest(
        &self,
        base_url: &str,
        header: CredentialHeader,
        key: &[u8],
        scope: Scope<'_>,
    ) -> FleetDigest {
        let header = header.as_str().as_bytes();
        self.mac_of(&[base_url.as_bytes(), header, key, scope.org, scope.project])
    }

    fn mac_of(&self, parts: &[&[u8]]) -> FleetDigest {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        FleetDigest(mac.finalize().into_bytes().into())
    }

    /// The cipher of `key`'s values: HKDF-SHA256(ikm = key, salt = pepper).
    pub(crate) fn value_cipher(&self, key: &[u8]) -> ValueCipher {
        let mut okm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&self.pepper), key)
            .expand(VALUE_INFO, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        ValueCipher(ChaCha20Poly1305::new(&Key::from(okm)))
    }

    /// Seals a local digest for an invalidation message on `stream`.
    pub(crate) fn seal_digest(&self, stream: &str, digest: &Digest) -> Option<Vec<u8>> {
        seal(&self.messages, stream.as_bytes(), digest.as_bytes())
    }

    /// The local digest an invalidation message carries, if it is authentic.
    pub(crate) fn open_digest(&self, stream: &str, sealed: &[u8]) -> Option<Digest> {
        let bytes = open(&self.messages, stream.as_bytes(), sealed)?;
        Some(Digest::from_bytes(bytes.try_into().ok()?))
    }

    /// Seals the epoch an `invalidate_all` started, for its message on `stream`.
    pub(crate) fn seal_epoch(&self, stream: &str, epoch: u64) -> Option<Vec<u8>> {
        seal(&self.messages, &epoch_context(stream), &epoch.to_be_bytes())
    }

    /// The epoch an `invalidate_all` message carries, if it is authentic.
    pub(crate) fn open_epoch(&self, stream: &str, sealed: &[u8]) -> Option<u64> {
        let bytes = open(&self.messages, &epoch_context(stream), sealed)?;
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }
}

impl ValueCipher {
    /// `plaintext` sealed, bound to `context` (where it is stored, and in which
    /// epoch and generation); `None` only if the operating system has no randomness
    /// to give.
    pub(crate) fn seal(&self, context: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
        seal(&self.0, context, plaintext)
    }

    /// What [`seal`](Self::seal) sealed under this key and `context`, or `None`.
    pub(crate) fn open(&self, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        open(&self.0, context, sealed)
    }
}

/// The associated data of an epoch message: never that of a digest message.
fn epoch_context(stream: &str) -> Vec<u8> {
    [stream.as_bytes(), b" all"].concat()
}

fn seal(cipher: &ChaCha20Poly1305, aad: &[u8], msg: &[u8]) -> Option<Vec<u8>> {
    let nonce = Nonce::try_generate().ok()?;
    let ciphertext = cipher.encrypt(&nonce, Payload { msg, aad }).ok()?;
    let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    sealed.push(VERSION);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    Some(sealed)
}

fn open(cipher: &ChaCha20Poly1305, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let (&version, rest) = sealed.split_first()?;
    if version != VERSION || rest.len() < NONCE_LEN {
        return None;
    }
    let (nonce, msg) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_from(nonce).ok()?;
    cipher.decrypt(&nonce, Payload { msg, aad }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PEPPER: &[u8] = b"a fleet pepper of at least 32 bytes....";

    #[test]
    fn a_value_opens_only_with_its_api_key_and_redis_key() {
        let sealer = Sealer::new(PEPPER);
        let sealed = sealer
            .value_cipher(b"ak_one")
            .seal(b"k1", b"document")
            .unwrap();
        assert_eq!(
            sealer
                .value_cipher(b"ak_one")
                .open(b"k1", &sealed)
                .as_deref(),
            Some(&b"document"[..])
        );
        assert!(sealer
            .value_cipher(b"ak_two")
            .open(b"k1", &sealed)
            .is_none());
        assert!(sealer
            .value_cipher(b"ak_one")
            .open(b"k2", &sealed)
            .is_none());
        let other_pepper = Sealer::new(b"another fleet pepper of 32 bytes or more");
        assert!(other_pepper
            .value_cipher(b"ak_one")
            .open(b"k1", &sealed)
            .is_none());
        assert!(!sealed.windows(8).any(|w| w == b"document"));
    }

    #[test]
    fn a_tampered_or_foreign_value_does_not_open() {
        let cipher = Sealer::new(PEPPER).value_cipher(b"ak_one");
        let sealed = cipher.seal(b"k", b"document").unwrap();
        for at in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[at] ^= 1;
            assert!(cipher.open(b"k", &tampered).is_none(), "byte {at}");
        }
        for truncated in 0..sealed.len() {
            assert!(cipher.open(b"k", &sealed[..truncated]).is_none());
        }
    }

    #[test]
    fn invalidation_messages_carry_the_digest_sealed() {
        let sealer = Sealer::new(PEPPER);
        let digest = Digest::from_bytes(*b"0123456789abcdef");
        let sealed = sealer.seal_digest("stream", &digest).unwrap();
        assert!(!sealed.windows(16).any(|w| w == b"0123456789abcdef"));
        assert_eq!(sealer.open_digest("stream", &sealed), Some(digest));
        assert_eq!(sealer.open_digest("other stream", &sealed), None);
        let other = Sealer::new(b"another fleet pepper of 32 bytes or more");
        assert_eq!(other.open_digest("stream", &sealed), None);
    }

    #[test]
    fn epoch_messages_are_sealed_and_never_read_as_digests() {
        let sealer = Sealer::new(PEPPER);
        let sealed = sealer.seal_epoch("stream", 7).unwrap();
        assert_eq!(sealer.open_epoch("stream", &sealed), Some(7));
        assert_eq!(sealer.open_epoch("other stream", &sealed), None);
        assert_eq!(sealer.open_digest("stream", &sealed), None);
        let other = Sealer::new(b"another fleet pepper of 32 bytes or more");
        assert_eq!(other.open_epoch("stream", &sealed), None);
        let digest = sealer
            .seal_digest("stream", &Digest::from_bytes([7; 16]))
            .unwrap();
        assert_eq!(sealer.open_epoch("stream", &digest), None);
        assert_eq!(sealer.open_epoch("stream", b"7"), None, "a bare number");
    }

    #[test]
    fn replicas_with_one_pepper_agree_and_others_do_not() {
        let (a, b) = (Sealer::new(PEPPER), Sealer::new(PEPPER));
        let other = Sealer::new(b"another fleet pepper of 32 bytes or more");
        let d = |s: &Sealer| s.fleet_digest("https://x", CredentialHeader::ApiKey, b"ak_1");
        assert!(d(&a) == d(&b));
        assert!(d(&a) != d(&other));
        assert_eq!(a.local_digest_secret(), b.local_digest_secret());
        assert_ne!(a.local_digest_secret(), other.local_digest_secret());
        assert_eq!(d(&a).hex().len(), 64);
        let scope = |org: &'static [u8]| Scope {
            org,
            project: b"proj_1",
        };
        let s = |s: &Sealer, org| {
            s.scope_digest(
                "https://x",
                CredentialHeader::UserApiKey,
                b"uak_1",
                scope(org),
            )
        };
        assert!(s(&a, b"org_1") == s(&b, b"org_1"));
        assert!(s(&a, b"org_1") != s(&a, b"org_2"));
        assert!(s(&a, b"org_1") != s(&other, b"org_1"));
        assert!(
            s(&a, b"org_1") != a.fleet_digest("https://x", CredentialHeader::UserApiKey, b"uak_1")
        );
    }

    proptest! {
        #[test]
        fn distinct_inputs_never_share_a_fleet_digest(
            base in "[a-z:/.]{0,12}", key in proptest::collection::vec(any::<u8>(), 0..24),
            other_base in "[a-z:/.]{0,12}", other_key in proptest::collection::vec(any::<u8>(), 0..24),
            header in 0usize..3, other_header in 0usize..3,
        ) {
            let sealer = Sealer::new(PEPPER);
            let h = CredentialHeader::ALL;
            let one = sealer.fleet_digest(&base, h[header], &key);
            let two = sealer.fleet_digest(&other_base, h[other_header], &other_key);
            prop_assert_eq!(one == two, (base, header, key) == (other_base, other_header, other_key));
        }
    }
}
