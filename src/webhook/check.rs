//! [`Rules`]: what a delivery must satisfy, checked in the order the answers are
//! documented (`WebhookRejection`): the method, the three headers and the
//! timestamp before the body is read; then the body's size, the signature and the
//! payload.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method};

use crate::webhook::event::{PayloadError, WebhookEvent};
use crate::webhook::rejection::{Reason, WebhookRejection};
use crate::webhook::signature::Keys;

/// Longest `webhook-id` accepted, in bytes (Composio's are `msg_` and a UUID: 40).
pub const MAX_WEBHOOK_ID_LEN: usize = 256;

/// Longest `webhook-signature` accepted, in bytes (one entry is 47).
const MAX_SIGNATURE_LEN: usize = 4096;

/// The rules of one layer: its keys, its tolerance and its body limit.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    pub(crate) keys: Keys,
    pub(crate) tolerance: Duration,
    pub(crate) max_body_bytes: usize,
}

/// What a delivery's headers say, read before its body.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) id: String,
    timestamp: String,
    seconds: u64,
    signature: String,
    attempt: Option<u32>,
}

impl Rules {
    /// The method and headers of a delivery, checked at `now`.
    pub(crate) fn headers(
        &self,
        method: &Method,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<Delivery, WebhookRejection> {
        if method != Method::POST {
            return Err(WebhookRejection::new(Reason::Method));
        }
        let delivery = read_headers(headers).ok_or(WebhookRejection::new(Reason::Headers))?;
        if !self.tolerance.is_zero() {
            let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            if now.abs_diff(delivery.seconds) > self.tolerance.as_secs() {
                return Err(WebhookRejection::new(Reason::Timestamp));
            }
        }
        Ok(delivery)
    }

    /// The delivery whose headers are `delivery`, with its whole `body`: its size,
    /// its signature, its payload.
    pub(crate) fn body(
        &self,
        delivery: Delivery,
        body: Bytes,
    ) -> Result<WebhookEvent, WebhookRejection> {
        if body.len() > self.max_body_bytes {
            return Err(WebhookRejection::new(Reason::TooLarge));
        }
        let Delivery {
            id,
            timestamp,
            seconds,
            signature,
            attempt,
        } = delivery;
        if !self.keys.verify(&signature, &id, &timestamp, &body) {
            return Err(WebhookRejection::new(Reason::Signature));
        }
        WebhookEvent::parse(id, seconds, attempt, body).map_err(|error| {
            let (PayloadError::NotJson | PayloadError::UnknownVersion) = error;
            WebhookRejection::new(Reason::Payload)
        })
    }
}

/// The three headers, each present once, non-empty and well formed; and the
/// delivery attempt, if it is a number.
fn read_headers(headers: &HeaderMap) -> Option<Delivery> {
    let id = one(headers, "webhook-id")?;
    let timestamp = one(headers, "webhook-timestamp")?;
    let signature = one(headers, "webhook-signature")?;
    let visible = |s: &str| s.bytes().all(|b| (0x21..=0x7E).contains(&b));
    let well_formed = id.len() <= MAX_WEBHOOK_ID_LEN
        && visible(id)
        && (1..=20).contains(&timestamp.len())
        && timestamp.bytes().all(|b| b.is_ascii_digit())
        && signature.len() <= MAX_SIGNATURE_LEN
        && signature
            .bytes()
            .all(|b| b == b' ' || (0x21..=0x7E).contains(&b));
    if !well_formed {
        return None;
    }
    let attempt = one(headers, "x-composio-delivery-attempt").and_then(|a| a.parse().ok());
    Some(Delivery {
        id: id.to_owned(),
        seconds: timestamp.parse().ok()?,
        timestamp: timestamp.to_owned(),
        signature: signature.to_owned(),
        attempt,
    })
}

/// The one non-empty value of `name`, as text.
fn one<'a>(headers: &'a HeaderMap, name: &'static str) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::signature::sign;

    const SECRET: &str = "test-webhook-secret-for-fixtures";
    const BODY: &str = r#"{"trigger_name":"GITHUB_PUSH_EVENT","connection_id":"c","trigger_id":"t","payload":{},"log_id":"l"}"#;

    fn rules(tolerance: u64) -> Rules {
        Rules {
            keys: Keys::new([SECRET]),
            tolerance: Duration::from_secs(tolerance),
            max_body_bytes: 1024,
        }
    }

    fn headers(id: &str, timestamp: &str, signature: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in [
            ("webhook-id", id),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", signature),
        ] {
            map.insert(name, value.parse().unwrap());
        }
        map
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn check(rules: &Rules, map: &HeaderMap, now: u64, body: &str) -> Result<WebhookEvent, Reason> {
        let delivery = rules
            .headers(&Method::POST, map, at(now))
            .map_err(|r| r.reason())?;
        rules
            .body(delivery, Bytes::copy_from_slice(body.as_bytes()))
            .map_err(|r| r.reason())
    }

    #[test]
    fn a_signed_delivery_within_the_tolerance_verifies() {
        let signature = sign(SECRET, "msg_1", "1000", BODY.as_bytes());
        let map = headers("msg_1", "1000", &signature);
        let event = check(&rules(300), &map, 1000, BODY).unwrap();
        assert_eq!(event.id(), "msg_1");
        for now in [700, 1300] {
            assert!(check(&rules(300), &map, now, BODY).is_ok(), "{now}");
        }
        for now in [699, 1301] {
            assert_eq!(
                check(&rules(300), &map, now, BODY).unwrap_err(),
                Reason::Timestamp
            );
        }
        assert!(
            check(&rules(0), &map, 1_000_000, BODY).is_ok(),
            "the check off"
        );
    }

    #[test]
    fn the_checks_run_in_their_documented_order() {
        let signature = sign(SECRET, "msg_1", "1000", BODY.as_bytes());
        let rules = rules(300);
        let map = headers("msg_1", "1000", &signature);
        let refused = rules.headers(&Method::GET, &HeaderMap::new(), at(1000));
        assert_eq!(refused.unwrap_err().reason(), Reason::Method);
        for bad in [
            headers("", "1000", &signature),
            headers("msg 1", "1000", &signature),
            headers("msg_1", "10e3", &signature),
            headers("msg_1", "-1000", &signature),
            headers("msg_1", "1000", ""),
            HeaderMap::new(),
        ] {
            assert_eq!(
                check(&rules, &bad, 1000, BODY).unwrap_err(),
                Reason::Headers,
                "{bad:?}"
            );
        }
        let mut twice = map.clone();
        twice.append("webhook-id", "msg_2".parse().unwrap());
        assert_eq!(
            check(&rules, &twice, 1000, BODY).unwrap_err(),
            Reason::Headers
        );
        // Outside the tolerance, even with a bad signature.
        let bad_signature = headers("msg_1", "1000", "v1,AAAA");
        assert_eq!(
            check(&rules, &bad_signature, 2000, BODY).unwrap_err(),
            Reason::Timestamp
        );
        assert_eq!(
            check(&rules, &bad_signature, 1000, BODY).unwrap_err(),
            Reason::Signature
        );
        let long = format!("{{\"a\":\"{}\"}}", "x".repeat(1100));
        assert_eq!(
            check(&rules, &bad_signature, 1000, &long).unwrap_err(),
            Reason::TooLarge
        );
        let not_json = sign(SECRET, "msg_1", "1000", b"not json");
        let map = headers("msg_1", "1000", &not_json);
        assert_eq!(
            check(&rules, &map, 1000, "not json").unwrap_err(),
            Reason::Payload
        );
    }

    #[test]
    fn a_body_of_exactly_the_limit_is_read() {
        let body = format!(r#"{{"trigger_name":"T","payload":"{}"}}"#, "x".repeat(990));
        let rules = Rules {
            max_body_bytes: body.len(),
            ..rules(300)
        };
        let map = headers(
            "msg_1",
            "1000",
            &sign(SECRET, "msg_1", "1000", body.as_bytes()),
        );
        assert!(check(&rules, &map, 1000, &body).is_ok());
    }
}
