//! The signature of a delivery: `webhook-signature` holds one or more
//! space-separated `v1,<base64>` entries, each an HMAC-SHA256 of
//! `{webhook-id}.{webhook-timestamp}.{raw body}`; any entry made with any of the
//! layer's secrets passes. Entries of other versions are ignored.
//!
//! **The key.** Composio's own verifiers (TypeScript and Python SDKs, CLI) key the
//! HMAC with the secret string's UTF-8 bytes as given. Composio also says its V3
//! payloads follow Standard Webhooks, whose secrets are `whsec_` + base64 of the key;
//! which one Composio's servers use is not confirmed. So each secret is tried as
//! given, and a `whsec_` secret whose rest is base64 also as the decoded key: both
//! readings verify, and neither lets anything through that a holder of the secret
//! could not sign.
//!
//! Comparison is in constant time (`hmac`'s `verify_slice`), entry by entry.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret.
const STANDARD_PREFIX: &str = "whsec_";

/// The HMAC keys the layer's secrets give: one or two per secret.
#[derive(Clone)]
pub(crate) struct Keys(Vec<Hmac<Sha256>>);

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys({} keys, redacted)", self.0.len())
    }
}

impl Keys {
    /// The keys of `secrets` (each non-empty, checked by the builder).
    pub(crate) fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut keys = Vec::new();
        for secret in secrets {
            keys.push(mac(secret.as_bytes()));
            let decoded = secret
                .strip_prefix(STANDARD_PREFIX)
                .and_then(|rest| STANDARD.decode(rest).ok())
                .filter(|key| !key.is_empty());
            if let Some(key) = decoded {
                keys.push(mac(&key));
            }
        }
        Self(keys)
    }

    /// Whether an entry of `signature` (the `webhook-signature` header) is a `v1`
    /// signature of `id.timestamp.body` under one of the keys.
    pub(crate) fn verify(&self, signature: &str, id: &str, timestamp: &str, body: &[u8]) -> bool {
        let macs: Vec<Hmac<Sha256>> = self
            .0
            .iter()
            .map(|key| {
                let mut mac = key.clone();
                for part in [id.as_bytes(), b".", timestamp.as_bytes(), b".", body] {
                    mac.update(part);
                }
                mac
            })
            .collect();
        let mut found = false;
        for entry in signature.split(' ').filter(|e| !e.is_empty()) {
            let Some(encoded) = entry.strip_prefix("v1,") else {
                continue;
            };
            let Ok(tag) = STANDARD.decode(encoded) else {
                continue;
            };
            for mac in &macs {
                // Every key and entry tried: no early exit that times which matched.
                found |= mac.clone().verify_slice(&tag).is_ok();
            }
        }
        found
    }
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// `v1,<base64>` of `id.timestamp.body` under `secret` taken as given: a delivery
/// signed as Composio signs it (for the `testing` helper and tests).
#[cfg_attr(not(feature = "test-util"), allow(dead_code))]
pub(crate) fn sign(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = mac(secret.as_bytes());
    for part in [id.as_bytes(), b".", timestamp.as_bytes(), b".", body] {
        mac.update(part);
    }
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Composio's SDKs' golden vectors (WEBHOOKS.md): id, timestamp, body, secret,
    /// signature.
    const GOLDEN: [(&str, &str, &str, &str, &str); 5] = [
        (
            "msg_test_001",
            "1700000000",
            r#"{"test":"data"}"#,
            "test-secret",
            "v1,4Fay6rvxXDEbH+4oA1fYP2BR/Bwzn3/7ONj40iJQagY=",
        ),
        (
            "msg_test_002",
            "1700000001",
            r#"{"message":"Hello World"}"#,
            "unicode-secret-key",
            "v1,ICmAFUlesRqIFA44bU6Wlce5GszoHjG+w7nurcu5EWc=",
        ),
        (
            "msg_test_003",
            "1700000002",
            r#"{"nested":{"array":[1,2,3],"object":{"key":"value"}}}"#,
            "complex-secret",
            "v1,Vx/pw0yOiRRoxdfifaZ3zBKt4B3KkRKFVr6gLQNJs9Q=",
        ),
        (
            "msg_test_004",
            "1700000003",
            r#"{"data":{}}"#,
            "empty-data-secret",
            "v1,IbLtu+G65OH8Gw7ZFqy38ru+Jrg96yWfueYMMdaFYs0=",
        ),
        (
            "msg_test_005",
            "1700000004",
            r#"{"test":true}"#,
            "secret!@#$%^&*()",
            "v1,kUvMXJ0rouLoROxY70WIzV+zLQGpSRuCXv8evLTPjXg=",
        ),
    ];

    #[test]
    fn the_golden_vectors_verify_and_sign() {
        for (id, timestamp, body, secret, signature) in GOLDEN {
            let keys = Keys::new([secret]);
            assert!(
                keys.verify(signature, id, timestamp, body.as_bytes()),
                "{id}"
            );
            assert_eq!(sign(secret, id, timestamp, body.as_bytes()), signature);
            assert!(!Keys::new(["another"]).verify(signature, id, timestamp, body.as_bytes()));
        }
    }

    #[test]
    fn the_standard_webhooks_reading_verifies_too() {
        let (secret, id, timestamp, body) = (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        let keys = Keys::new([secret]);
        for signature in [
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1,TcxlhK9b6UD6iVI1ZU2tTqp8PEVfYRseNNfa6b+LcUg=",
        ] {
            assert!(keys.verify(signature, id, timestamp, body), "{signature}");
        }
    }

    #[test]
    fn any_matching_entry_passes_and_nothing_else_does() {
        let (id, timestamp, body, secret, signature) = GOLDEN[0];
        let keys = Keys::new(["old-secret", secret]);
        let body = body.as_bytes();
        let several = format!("v1,AAAA v2,whatever {signature}");
        assert!(keys.verify(&several, id, timestamp, body));
        assert!(keys.verify(&format!("  {signature}  "), id, timestamp, body));
        for bad in [
            "",
            "v1,",
            "v1,not base64!",
            "v2,4Fay6rvxXDEbH+4oA1fYP2BR/Bwzn3/7ONj40iJQagY=",
            // The MAC in hex, as the broken 0.3.x SDK sent it.
            "v1,e056b2eabbf15c311b1fee28035758",
            &signature[..signature.len() - 2],
        ] {
            assert!(!keys.verify(bad, id, timestamp, body), "{bad}");
        }
        assert!(!keys.verify(signature, "msg_test_00x", timestamp, body));
        assert!(!keys.verify(signature, id, "1700000001", body));
        assert!(!keys.verify(signature, id, timestamp, br#"{"test": "data"}"#));
        assert_eq!(format!("{keys:?}"), "Keys(2 keys, redacted)");
    }
}
