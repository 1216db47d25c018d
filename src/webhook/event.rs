//! The payload side of a verified webhook delivery: [`WebhookEvent`].
//!
//! Composio signs three payload shapes (V1, V2, V3; see its "Webhook verification"
//! docs). The version is read from the payload's shape, V3 first, then V2, then V1,
//! as Composio's TypeScript SDK does, never from the `x-composio-webhook-version`
//! header. The body is parsed once; the ids the accessors return are extracted then,
//! so the accessors are cheap and never fail. Unknown fields are always accepted.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::verifier::session::WebhookVersion;

/// The event type of every V1 and V2 delivery, and of V3 trigger messages.
const TRIGGER_MESSAGE: &str = "composio.trigger.message";
/// V3: Composio disabled a trigger (`data` describes the trigger).
const TRIGGER_DISABLED: &str = "composio.trigger.disabled";
/// V3: a connected account expired (`data` is the connected account).
const ACCOUNT_EXPIRED: &str = "composio.connected_account.expired";
/// What every V3 event type starts with.
const V3_PREFIX: &str = "composio.";

/// What [`WebhookEvent::data`] answers should the member be missing (it never is:
/// `parse` refuses such payloads).
static NULL: Value = Value::Null;

/// A verified Composio webhook delivery: its signed headers and its parsed payload.
///
/// The webhook layer inserts it into the request's extensions once the signature,
/// the timestamp and the payload's shape have been checked, so handlers take it as
/// `Extension<WebhookEvent>`. Cloning it is one reference-count increment.
///
/// Composio sends three payload shapes; the version is detected from the payload
/// itself ([`version`](Self::version)) and the accessors answer the same questions
/// for all three:
///
/// | accessor | V3 | V2 | V1 |
/// |---|---|---|---|
/// | [`event_type`](Self::event_type) | `type` | `"composio.trigger.message"` | `"composio.trigger.message"` |
/// | [`trigger_slug`](Self::trigger_slug) | `metadata.trigger_slug` | `type`, upper-cased | `trigger_name` |
/// | [`trigger_id`](Self::trigger_id) | `metadata.trigger_id` | `data.trigger_nano_id` | `trigger_id` |
/// | [`connected_account_id`](Self::connected_account_id) | `metadata.connected_account_id` | `data.connection_nano_id` | `connection_id` |
/// | [`user_id`](Self::user_id) | `metadata.user_id` | `data.user_id` | none |
/// | [`data`](Self::data) | `data` | `data` | `payload` |
///
/// Two V3 events about something other than a trigger message carry their ids in
/// `data` instead (`metadata` holds only the project and organisation):
/// `composio.trigger.disabled` (`data.trigger_name`, `data.id` is the trigger's id,
/// `data.connected_account_id`, `data.user_id`) and
/// `composio.connected_account.expired` (`data` is the connected account: `data.id`
/// is its id, `data.user_id` its deprecated user id, usually absent; no trigger).
/// An id that is missing, `null`, empty or not a string is `None`.
///
/// ```
/// use composio_auth::WebhookEvent;
///
/// #[derive(serde::Deserialize)]
/// struct Push {
///     r#ref: String,
/// }
///
/// fn handle(event: &WebhookEvent) -> Result<String, serde_json::Error> {
///     match (event.event_type(), event.trigger_slug()) {
///         ("composio.trigger.message", Some("GITHUB_PUSH_EVENT")) => {
///             let push: Push = event.data_as()?;
///             let user = event.user_id().unwrap_or("-");
///             // event.id() is stable across retries: deduplicate on it.
///             Ok(format!("{user} pushed to {} ({})", push.r#ref, event.id()))
///         }
///         (other, _) => Ok(format!("ignored {other}")),
///     }
/// }
/// ```
///
/// Its `Debug` output shows the id, version, event type, trigger slug and the body's
/// length, never the body, the data or the user id (they can hold users' content).
#[derive(Clone)]
pub struct WebhookEvent {
    inner: Arc<Inner>,
}

/// One delivery, shared by the event's clones.
struct Inner {
    /// The `webhook-id` header.
    id: String,
    /// The `webhook-timestamp` header.
    timestamp: SystemTime,
    /// The `x-composio-delivery-attempt` header.
    attempt: Option<u32>,
    /// The signed bytes.
    body: Bytes,
    /// The body, parsed.
    payload: Value,
    /// What the accessors answer, read from `payload` once.
    fields: Fields,
}

/// The normalized fields of a payload.
struct Fields {
    shape: Shape,
    event_type: Cow<'static, str>,
    trigger_slug: Option<String>,
    trigger_id: Option<String>,
    connected_account_id: Option<String>,
    user_id: Option<String>,
}

/// The payload shapes Composio sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    V1,
    V2,
    V3,
}

impl Shape {
    /// The member that holds the event's data.
    fn data_key(self) -> &'static str {
        match self {
            Self::V1 => "payload",
            Self::V2 | Self::V3 => "data",
        }
    }
}

/// Why a signed body is no event (crate-internal; the caller turns it into a 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PayloadError {
    /// The body is not JSON (or not UTF-8, or has trailing bytes).
    NotJson,
    /// The body is JSON of none of the V1, V2 or V3 shapes.
    UnknownVersion,
}

impl WebhookEvent {
    /// Parses a signed delivery's body. `id` is the `webhook-id` header, `timestamp`
    /// the `webhook-timestamp` (Unix seconds), `attempt` from
    /// `x-composio-delivery-attempt`.
    pub(crate) fn parse(
        id: String,
        timestamp: u64,
        attempt: Option<u32>,
        body: Bytes,
    ) -> Result<Self, PayloadError> {
        let payload: Value = serde_json::from_slice(&body).map_err(|_| PayloadError::NotJson)?;
        let fields = payload
            .as_object()
            .and_then(Fields::read)
            .ok_or(PayloadError::UnknownVersion)?;
        Ok(Self {
            inner: Arc::new(Inner {
                id,
                timestamp: unix_time(timestamp),
                attempt,
                body,
                payload,
                fields,
            }),
        })
    }

    /// The `webhook-id` header: the same on every retry of one delivery, so the key
    /// to deduplicate on. (A V3 payload's own `id` normally equals it; the header is
    /// what was signed and what counts.)
    #[must_use]
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The payload's version, detected from its shape (V3, then V2, then V1), not from
    /// the `x-composio-webhook-version` header. Always `V1`, `V2` or `V3`.
    #[must_use]
    pub fn version(&self) -> WebhookVersion {
        match self.inner.fields.shape {
            Shape::V1 => WebhookVersion::V1,
            Shape::V2 => WebhookVersion::V2,
            Shape::V3 => WebhookVersion::V3,
        }
    }

    /// The event's type: a V3 payload's `type` (`"composio.trigger.message"`,
    /// `"composio.connected_account.expired"`, `"composio.trigger.disabled"`, or any
    /// later `composio.` type); `"composio.trigger.message"` for V1 and V2, which
    /// carry only trigger messages.
    #[must_use]
    pub fn event_type(&self) -> &str {
        &self.inner.fields.event_type
    }

    /// The trigger's slug, e.g. `GITHUB_PUSH_EVENT`: V3 `metadata.trigger_slug` (or
    /// `data.trigger_name` for `composio.trigger.disabled`), V2 the `type` upper-cased,
    /// V1 `trigger_name`. `None` for V3 events about no trigger.
    #[must_use]
    pub fn trigger_slug(&self) -> Option<&str> {
        self.inner.fields.trigger_slug.as_deref()
    }

    /// The trigger instance's id (`ti_...`): V3 `metadata.trigger_id` (or `data.id`
    /// for `composio.trigger.disabled`), V2 `data.trigger_nano_id`, V1 `trigger_id`.
    #[must_use]
    pub fn trigger_id(&self) -> Option<&str> {
        self.inner.fields.trigger_id.as_deref()
    }

    /// The connected account's id (`ca_...`): V3 `metadata.connected_account_id` (or
    /// `data.connected_account_id` for `composio.trigger.disabled`, `data.id` for
    /// `composio.connected_account.expired`, whose `data` is the account), V2
    /// `data.connection_nano_id`, V1 `connection_id`.
    #[must_use]
    pub fn connected_account_id(&self) -> Option<&str> {
        self.inner.fields.connected_account_id.as_deref()
    }

    /// The end user the connection belongs to: V3 `metadata.user_id` (or `data.user_id`
    /// for `composio.trigger.disabled` and `composio.connected_account.expired`), V2
    /// `data.user_id`; `None` when it is `null` or absent, and always for V1.
    #[must_use]
    pub fn user_id(&self) -> Option<&str> {
        self.inner.fields.user_id.as_deref()
    }

    /// The signed `webhook-timestamp` of this attempt (it changes on each retry).
    #[must_use]
    pub fn timestamp(&self) -> SystemTime {
        self.inner.timestamp
    }

    /// The `x-composio-delivery-attempt` header (from 1), when Composio sent one.
    #[must_use]
    pub fn attempt(&self) -> Option<u32> {
        self.inner.attempt
    }

    /// The event's data: V3 and V2 `data`, V1 `payload`. For V2 it still holds the
    /// ids that [`trigger_id`](Self::trigger_id) and the others read.
    #[must_use]
    pub fn data(&self) -> &Value {
        let key = self.inner.fields.shape.data_key();
        self.inner.payload.get(key).unwrap_or(&NULL)
    }

    /// [`data`](Self::data) deserialized into `T` (no copy of the JSON is made).
    ///
    /// # Errors
    ///
    /// When the data does not fit `T`.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(self.data())
    }

    /// The whole payload, parsed.
    #[must_use]
    pub fn payload(&self) -> &Value {
        &self.inner.payload
    }

    /// The exact bytes that were signed.
    #[must_use]
    pub fn body(&self) -> &Bytes {
        &self.inner.body
    }
}

impl fmt::Debug for WebhookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookEvent")
            .field("id", &self.id())
            .field("version", &self.version())
            .field("event_type", &self.event_type())
            .field("trigger_slug", &self.trigger_slug())
            .field("body_len", &self.inner.body.len())
            .finish_non_exhaustive()
    }
}

impl Fields {
    /// The fields of a payload of a known shape; `None` for any other object.
    fn read(object: &Map<String, Value>) -> Option<Self> {
        let kind = object
            .get("type")
            .and_then(Value::as_str)
            .filter(|kind| !kind.is_empty());
        if let Some(kind) = kind {
            if is_v3(object, kind) {
                return Some(Self::v3(object, kind));
            }
            if !kind.starts_with(V3_PREFIX) && object.get("data").is_some_and(Value::is_object) {
                return Some(Self::v2(object, kind));
            }
        }
        let trigger_name = object.get("trigger_name").and_then(Value::as_str);
        if trigger_name.is_some_and(|name| !name.is_empty()) && object.contains_key("payload") {
            return Some(Self::v1(object));
        }
        None
    }

    /// V3: the ids from `metadata`, or from `data` for the events that keep them there.
    fn v3(object: &Map<String, Value>, kind: &str) -> Self {
        let metadata = object.get("metadata").and_then(Value::as_object);
        let data = object.get("data").and_then(Value::as_object);
        // Where each id is in `data` when `metadata` lacks it:
        // (trigger slug, trigger id, connected account id, user id).
        let in_data = match kind {
            TRIGGER_DISABLED => [
                Some("trigger_name"),
                Some("id"),
                Some("connected_account_id"),
                Some("user_id"),
            ],
            ACCOUNT_EXPIRED => [None, None, Some("id"), Some("user_id")],
            _ => [None; 4],
        };
        let read = |in_metadata: &str, in_data: Option<&str>| {
            string(metadata, in_metadata).or_else(|| in_data.and_then(|key| string(data, key)))
        };
        Self {
            shape: Shape::V3,
            event_type: Cow::Owned(kind.to_owned()),
            trigger_slug: read("trigger_slug", in_data[0]),
            trigger_id: read("trigger_id", in_data[1]),
            connected_account_id: read("connected_account_id", in_data[2]),
            user_id: read("user_id", in_data[3]),
        }
    }

    /// V2: the slug is the lower-case `type`, the ids are in `data`.
    fn v2(object: &Map<String, Value>, kind: &str) -> Self {
        let data = object.get("data").and_then(Value::as_object);
        Self {
            shape: Shape::V2,
            event_type: Cow::Borrowed(TRIGGER_MESSAGE),
            trigger_slug: Some(kind.to_uppercase()),
            trigger_id: string(data, "trigger_nano_id"),
            connected_account_id: string(data, "connection_nano_id"),
            user_id: string(data, "user_id"),
        }
    }

    /// V1: everything at the top level, no user id.
    fn v1(object: &Map<String, Value>) -> Self {
        let object = Some(object);
        Self {
            shape: Shape::V1,
            event_type: Cow::Borrowed(TRIGGER_MESSAGE),
            trigger_slug: string(object, "trigger_name"),
            trigger_id: string(object, "trigger_id"),
            connected_account_id: string(object, "connection_id"),
            user_id: None,
        }
    }
}

/// Whether an object with a non-empty string `type` has the V3 shape: a
/// `composio.<something>` type, a `metadata` object and a `data` member.
fn is_v3(object: &Map<String, Value>, kind: &str) -> bool {
    kind.len() > V3_PREFIX.len()
        && kind.starts_with(V3_PREFIX)
        && object.get("metadata").is_some_and(Value::is_object)
        && object.contains_key("data")
}

/// `object[key]` when it is a non-empty string.
fn string(object: Option<&Map<String, Value>>, key: &str) -> Option<String> {
    object?
        .get(key)?
        .as_str()
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
}

/// `secs` after the Unix epoch, saturating (roughly) where the platform's
/// `SystemTime` ends instead of panicking. The layer's tolerance check refuses such
/// timestamps anyway.
fn unix_time(secs: u64) -> SystemTime {
    let mut secs = secs;
    loop {
        if let Some(time) = UNIX_EPOCH.checked_add(Duration::from_secs(secs)) {
            return time;
        }
        secs /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;
    use serde_json::json;

    const V3_BODY: &str = r#"{"id":"evt_fixture_v3_001","timestamp":"2026-01-29T10:30:00Z","type":"composio.trigger.message","metadata":{"log_id":"log_fixture_001","trigger_slug":"GITHUB_PUSH_EVENT","trigger_id":"ti_fixture_001","connected_account_id":"ca_fixture_001","auth_config_id":"ac_fixture_001","user_id":"user_fixture_001"},"data":{"ref":"refs/heads/main","repository":{"name":"test-repo","full_name":"user/test-repo"},"pusher":{"name":"test-user"},"commits":[{"id":"abc123","message":"Test commit"}]}}"#;
    const V2_BODY: &str = r#"{"type":"github_push_event","timestamp":"2026-01-29T10:30:00Z","log_id":"log_fixture_002","data":{"connection_id":"conn_uuid_fixture_002","connection_nano_id":"ca_fixture_002","trigger_nano_id":"ti_fixture_002","trigger_id":"trigger_uuid_fixture_002","user_id":"user_fixture_002","ref":"refs/heads/main","repository":{"name":"test-repo"}}}"#;
    const V1_BODY: &str = r#"{"trigger_name":"GITHUB_PUSH_EVENT","connection_id":"conn_fixture_001","trigger_id":"trigger_fixture_001","payload":{"ref":"refs/heads/main","commits":[{"id":"def456","message":"Legacy commit"}]},"log_id":"log_fixture_003"}"#;
    const FIXTURE_TIME: u64 = 1_738_150_200;

    fn parse(body: &str) -> Result<WebhookEvent, PayloadError> {
        parse_bytes(body.as_bytes())
    }

    fn parse_bytes(body: &[u8]) -> Result<WebhookEvent, PayloadError> {
        let body = Bytes::copy_from_slice(body);
        WebhookEvent::parse("msg_test".to_owned(), FIXTURE_TIME, None, body)
    }

    fn parse_value(value: &Value) -> Result<WebhookEvent, PayloadError> {
        parse(&value.to_string())
    }

    fn fixture(id: &str, body: &str, attempt: Option<u32>) -> WebhookEvent {
        let body = Bytes::copy_from_slice(body.as_bytes());
        WebhookEvent::parse(id.to_owned(), FIXTURE_TIME, attempt, body).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn v3_fixture() {
        let event = fixture("msg_fixture_v3_001", V3_BODY, Some(2));
        assert_eq!(event.id(), "msg_fixture_v3_001");
        assert_eq!(event.version(), WebhookVersion::V3);
        assert_eq!(event.event_type(), "composio.trigger.message");
        assert_eq!(event.trigger_slug(), Some("GITHUB_PUSH_EVENT"));
        assert_eq!(event.trigger_id(), Some("ti_fixture_001"));
        assert_eq!(event.connected_account_id(), Some("ca_fixture_001"));
        assert_eq!(event.user_id(), Some("user_fixture_001"));
        assert_eq!(event.timestamp(), at(FIXTURE_TIME));
        assert_eq!(event.attempt(), Some(2));
        let data = json!({"ref": "refs/heads/main",
            "repository": {"name": "test-repo", "full_name": "user/test-repo"},
            "pusher": {"name": "test-user"},
            "commits": [{"id": "abc123", "message": "Test commit"}]});
        assert_eq!(event.data(), &data);
        let payload: Value = serde_json::from_str(V3_BODY).unwrap();
        assert_eq!(event.payload(), &payload);
        // The header is the id, not the payload's own `id`.
        assert_eq!(event.payload()["id"], "evt_fixture_v3_001");
        assert_eq!(event.body().as_ref(), V3_BODY.as_bytes());
    }

    #[test]
    fn v2_fixture() {
        let event = fixture("msg_fixture_v2_001", V2_BODY, None);
        assert_eq!(event.id(), "msg_fixture_v2_001");
        assert_eq!(event.version(), WebhookVersion::V2);
        assert_eq!(event.event_type(), "composio.trigger.message");
        assert_eq!(event.trigger_slug(), Some("GITHUB_PUSH_EVENT"));
        assert_eq!(event.trigger_id(), Some("ti_fixture_002"));
        assert_eq!(event.connected_account_id(), Some("ca_fixture_002"));
        assert_eq!(event.user_id(), Some("user_fixture_002"));
        assert_eq!(event.timestamp(), at(FIXTURE_TIME));
        assert_eq!(event.attempt(), None);
        let data = json!({"connection_id": "conn_uuid_fixture_002",
            "connection_nano_id": "ca_fixture_002", "trigger_nano_id": "ti_fixture_002",
            "trigger_id": "trigger_uuid_fixture_002", "user_id": "user_fixture_002",
            "ref": "refs/heads/main", "repository": {"name": "test-repo"}});
        assert_eq!(event.data(), &data);
        let payload: Value = serde_json::from_str(V2_BODY).unwrap();
        assert_eq!(event.payload(), &payload);
        assert_eq!(event.body().as_ref(), V2_BODY.as_bytes());
    }

    #[test]
    fn v1_fixture() {
        let event = fixture("msg_fixture_v1_001", V1_BODY, Some(1));
        assert_eq!(event.id(), "msg_fixture_v1_001");
        assert_eq!(event.version(), WebhookVersion::V1);
        assert_eq!(event.event_type(), "composio.trigger.message");
        assert_eq!(event.trigger_slug(), Some("GITHUB_PUSH_EVENT"));
        assert_eq!(event.trigger_id(), Some("trigger_fixture_001"));
        assert_eq!(event.connected_account_id(), Some("conn_fixture_001"));
        assert_eq!(event.user_id(), None);
        assert_eq!(event.timestamp(), at(FIXTURE_TIME));
        assert_eq!(event.attempt(), Some(1));
        let data = json!({"ref": "refs/heads/main",
            "commits": [{"id": "def456", "message": "Legacy commit"}]});
        assert_eq!(event.data(), &data);
        let payload: Value = serde_json::from_str(V1_BODY).unwrap();
        assert_eq!(event.payload(), &payload);
        assert_eq!(event.body().as_ref(), V1_BODY.as_bytes());
    }

    #[test]
    fn v3_null_user_id_is_none() {
        let mut value: Value = serde_json::from_str(V3_BODY).unwrap();
        value["metadata"]["user_id"] = Value::Null;
        let event = parse_value(&value).unwrap();
        assert_eq!(event.user_id(), None);
        assert_eq!(event.trigger_id(), Some("ti_fixture_001"));
    }

    #[test]
    fn v3_connected_account_expired() {
        let value = json!({
            "id": "msg_expired", "timestamp": "2026-01-29T10:30:00Z",
            "type": "composio.connected_account.expired",
            "metadata": {"project_id": "pr_1", "org_id": "org_1"},
            "data": {"id": "ca_expired", "status": "EXPIRED",
                "toolkit": {"slug": "github"},
                "auth_config": {"id": "ac_1", "auth_scheme": "OAUTH2",
                    "is_composio_managed": true, "is_disabled": false}}
        });
        let event = parse_value(&value).unwrap();
        assert_eq!(event.version(), WebhookVersion::V3);
        assert_eq!(event.event_type(), "composio.connected_account.expired");
        assert_eq!(event.trigger_slug(), None);
        assert_eq!(event.trigger_id(), None);
        assert_eq!(event.connected_account_id(), Some("ca_expired"));
        assert_eq!(event.user_id(), None);
        assert_eq!(event.data()["status"], "EXPIRED");
    }

    #[test]
    fn v3_connected_account_expired_with_its_deprecated_user_id() {
        let value = json!({"type": "composio.connected_account.expired",
            "metadata": {"project_id": "pr_1", "org_id": "org_1"},
            "data": {"id": "ca_expired", "user_id": "user_1"}});
        let event = parse_value(&value).unwrap();
        assert_eq!(event.connected_account_id(), Some("ca_expired"));
        assert_eq!(event.user_id(), Some("user_1"));
    }

    #[test]
    fn v3_trigger_disabled() {
        let value = json!({
            "id": "msg_disabled", "timestamp": "2026-01-29T10:30:00Z",
            "type": "composio.trigger.disabled",
            "metadata": {"project_id": "pr_1"},
            "data": {"id": "ti_disabled", "connected_account_id": "ca_disabled",
                "trigger_name": "GITHUB_COMMIT_EVENT", "user_id": null,
                "trigger_config": {"owner": "acme", "repo": "app"},
                "disabled_at": "2026-01-29T10:29:00Z",
                "disabled_reason": "Connected account expired"}
        });
        let event = parse_value(&value).unwrap();
        assert_eq!(event.version(), WebhookVersion::V3);
        assert_eq!(event.event_type(), "composio.trigger.disabled");
        assert_eq!(event.trigger_slug(), Some("GITHUB_COMMIT_EVENT"));
        assert_eq!(event.trigger_id(), Some("ti_disabled"));
        assert_eq!(event.connected_account_id(), Some("ca_disabled"));
        assert_eq!(event.user_id(), None);
        assert_eq!(event.data()["disabled_reason"], "Connected account expired");

        let mut value = value;
        value["data"]["user_id"] = json!("user_1");
        assert_eq!(parse_value(&value).unwrap().user_id(), Some("user_1"));
    }

    #[test]
    fn v3_unknown_composio_type_is_accepted() {
        let value = json!({"type": "composio.something.new", "metadata": {},
            "data": [1, 2]});
        let event = parse_value(&value).unwrap();
        assert_eq!(event.version(), WebhookVersion::V3);
        assert_eq!(event.event_type(), "composio.something.new");
        assert_eq!(event.trigger_slug(), None);
        assert_eq!(event.connected_account_id(), None);
        assert_eq!(event.data(), &json!([1, 2]));
    }

    #[test]
    fn golden_vector_bodies_are_no_known_version() {
        let bodies = [
            r#"{"test":"data"}"#,
            r#"{"message":"Hello World"}"#,
            r#"{"nested":{"array":[1,2,3],"object":{"key":"value"}}}"#,
            r#"{"data":{}}"#,
            r#"{"test":true}"#,
        ];
        for body in bodies {
            assert_eq!(
                parse(body).err(),
                Some(PayloadError::UnknownVersion),
                "{body}"
            );
        }
    }

    #[test]
    fn other_shapes_are_no_known_version() {
        let values = [
            json!([]),
            json!([{"trigger_name": "X", "payload": {}}]),
            json!(null),
            json!("composio.trigger.message"),
            json!(42),
            json!({}),
            // V3 without metadata, with metadata not an object, without data.
            json!({"type": "composio.trigger.message", "data": {}}),
            json!({"type": "composio.trigger.message", "metadata": [], "data": {}}),
            json!({"type": "composio.trigger.message", "metadata": {}}),
            // Nothing after the prefix.
            json!({"type": "composio.", "metadata": {}, "data": {}}),
            // V2 with data not an object, with an empty or non-string type.
            json!({"type": "github_push_event", "data": []}),
            json!({"type": "", "data": {}}),
            json!({"type": 3, "data": {}}),
            // V1 without payload, with a non-string or empty trigger_name.
            json!({"trigger_name": "GITHUB_PUSH_EVENT"}),
            json!({"trigger_name": 1, "payload": {}}),
            json!({"trigger_name": "", "payload": {}}),
        ];
        for value in values {
            assert_eq!(
                parse_value(&value).err(),
                Some(PayloadError::UnknownVersion),
                "{value}"
            );
        }
    }

    #[test]
    fn non_json_is_refused_as_such() {
        let bodies: [&[u8]; 7] = [
            b"",
            b"   ",
            b"not json",
            b"{",
            br#"{"type":"x","data":{}} trailing"#,
            b"\xff\xfe",
            b"{\"trigger_name\":\"\xff\",\"payload\":{}}",
        ];
        for body in bodies {
            assert_eq!(
                parse_bytes(body).err(),
                Some(PayloadError::NotJson),
                "{body:?}"
            );
        }
    }

    #[test]
    fn shapes_are_tried_v3_then_v2_then_v1() {
        let mut both: Value = serde_json::from_str(V3_BODY).unwrap();
        both["trigger_name"] = json!("OTHER");
        both["payload"] = json!({});
        assert_eq!(parse_value(&both).unwrap().version(), WebhookVersion::V3);

        let mut both: Value = serde_json::from_str(V2_BODY).unwrap();
        both["trigger_name"] = json!("OTHER");
        both["payload"] = json!({});
        let event = parse_value(&both).unwrap();
        assert_eq!(event.version(), WebhookVersion::V2);
        assert_eq!(event.trigger_slug(), Some("GITHUB_PUSH_EVENT"));

        // A composio type that is no V3 falls through to V1, never to V2.
        let value = json!({"type": "composio.trigger.message", "data": {},
            "trigger_name": "GITHUB_PUSH_EVENT", "payload": null});
        let event = parse_value(&value).unwrap();
        assert_eq!(event.version(), WebhookVersion::V1);
        assert_eq!(event.data(), &Value::Null);
    }

    #[test]
    fn wrong_typed_ids_are_none() {
        let value = json!({"type": "github_push_event", "data": {
            "trigger_nano_id": 7, "connection_nano_id": "", "user_id": null}});
        let event = parse_value(&value).unwrap();
        assert_eq!(event.trigger_id(), None);
        assert_eq!(event.connected_account_id(), None);
        assert_eq!(event.user_id(), None);
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Push {
        r#ref: String,
        commits: Vec<Commit>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Commit {
        id: String,
        message: String,
    }

    #[test]
    fn data_as_deserializes_the_data() {
        let event = fixture("msg_fixture_v1_001", V1_BODY, None);
        let push: Push = event.data_as().unwrap();
        let commit = Commit {
            id: "def456".into(),
            message: "Legacy commit".into(),
        };
        assert_eq!(
            push,
            Push {
                r#ref: "refs/heads/main".into(),
                commits: vec![commit]
            }
        );

        let event = fixture("msg_fixture_v3_001", V3_BODY, None);
        assert_eq!(event.data_as::<Push>().unwrap().commits[0].id, "abc123");
        assert!(event.data_as::<Vec<u8>>().is_err());
    }

    #[test]
    fn debug_shows_no_content() {
        let event = fixture("msg_fixture_v3_001", V3_BODY, Some(3));
        let debug = format!("{event:?}");
        for shown in [
            "msg_fixture_v3_001",
            "V3",
            "composio.trigger.message",
            "GITHUB_PUSH_EVENT",
        ] {
            assert!(debug.contains(shown), "{debug}");
        }
        assert!(
            debug.contains(&format!("body_len: {}", V3_BODY.len())),
            "{debug}"
        );
        for hidden in [
            "refs/heads/main",
            "Test commit",
            "user_fixture_001",
            "ca_fixture_001",
        ] {
            assert!(!debug.contains(hidden), "{debug}");
        }
    }

    #[test]
    fn clones_share_one_allocation() {
        let event = fixture("msg_fixture_v2_001", V2_BODY, None);
        let clone = event.clone();
        assert!(Arc::ptr_eq(&event.inner, &clone.inner));
    }

    /// Compiles only for a type that can go in a request's extensions.
    fn extension<T: Clone + Send + Sync + 'static>(_: &T) -> bool {
        true
    }

    #[test]
    fn fits_in_request_extensions() {
        assert!(extension(&fixture("msg_fixture_v2_001", V2_BODY, None)));
    }

    #[test]
    fn huge_timestamps_do_not_panic() {
        let body = Bytes::from_static(V1_BODY.as_bytes());
        let event = WebhookEvent::parse("msg".into(), u64::MAX, None, body).unwrap();
        assert!(event.timestamp() > at(FIXTURE_TIME));
    }

    /// Exercises every accessor; none may panic.
    fn touch(event: &WebhookEvent) {
        let _ = (
            event.id(),
            event.version(),
            event.event_type(),
            event.trigger_slug(),
        );
        let _ = (
            event.trigger_id(),
            event.connected_account_id(),
            event.user_id(),
        );
        let _ = (
            event.timestamp(),
            event.attempt(),
            event.data(),
            event.payload(),
        );
        let _ = (event.body(), event.data_as::<Value>(), format!("{event:?}"));
    }

    /// JSON made of the keys and strings the shape rules look at.
    fn json_value() -> impl Strategy<Value = Value> {
        let key = prop::sample::select(vec![
            "type",
            "data",
            "metadata",
            "payload",
            "trigger_name",
            "trigger_id",
            "trigger_slug",
            "connected_account_id",
            "user_id",
            "id",
            "x",
        ]);
        let text = prop::sample::select(vec![
            "",
            "composio.",
            "composio.trigger.message",
            "composio.trigger.disabled",
            "composio.connected_account.expired",
            "github_push_event",
            "ß",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            text.prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..6).prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(
            body in prop::collection::vec(any::<u8>(), 0..256),
            timestamp in any::<u64>(),
            attempt in any::<Option<u32>>(),
        ) {
            let body = Bytes::from(body);
            if let Ok(event) = WebhookEvent::parse("msg".into(), timestamp, attempt, body) {
                touch(&event);
            }
        }

        #[test]
        fn any_json_parses_or_is_an_unknown_version(value in json_value()) {
            match parse_value(&value) {
                Ok(event) => {
                    touch(&event);
                    let version = event.version();
                    let known = [WebhookVersion::V1, WebhookVersion::V2, WebhookVersion::V3];
                    prop_assert!(known.contains(&version));
                }
                Err(error) => prop_assert_eq!(error, PayloadError::UnknownVersion),
            }
        }
    }
}
