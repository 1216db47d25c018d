//! What Composio says about a key: the session document and the [`SessionInfo`]
//! handle that handlers receive.
//!
//! Field types follow Composio's reference and its documented nullability
//! (`project` and `api_key` may be null, `org_member` never is). Unknown fields are
//! ignored, an unknown `webhook_version` is kept as [`WebhookVersion::Other`], and the
//! document's one secret, `project.webhook_secret`, never appears in `Debug` output.
//! The API key itself, which Composio echoes as `api_key.key`, is not parsed at all:
//! no session, and so no cache entry, ever holds it.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use serde::{Deserialize, Deserializer};

const REDACTED: &str = "[redacted]";

/// The verified session of a request: what Composio answered for its key.
///
/// The layer inserts it into the request's extensions, so handlers take it as
/// `Extension<SessionInfo>` (or, with the `axum` feature, as `SessionInfo` /
/// `Option<SessionInfo>` directly). Cloning it is one reference-count increment; the
/// document's fields are reachable through `Deref`:
///
/// ```
/// # use composio_auth::SessionInfo;
/// fn who(session: &SessionInfo) -> String {
///     let project = session.project.as_ref().map_or("-", |p| p.name.as_str());
///     format!("{} in {project}", session.org_member.email)
/// }
/// ```
#[derive(Clone)]
pub struct SessionInfo {
    state: Arc<SessionState>,
}

struct SessionState {
    /// Boxed, so that what a per-thread front's dead `Weak` keeps allocated is a
    /// few dozen bytes, not the document.
    document: Box<SessionDocument>,
    /// When the upstream request that produced the document was sent: the start of
    /// the session's TTL.
    verified_at: Instant,
    /// How far into its life the cache entry is ([`Age`]), raised by the cache as it
    /// reads the entry; never lowered.
    age: AtomicU8,
    /// Set by the first request that starts a refresh-ahead of this entry, so that one
    /// entry starts at most one.
    refresh_started: AtomicBool,
}

/// How far into its life a cached session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Age {
    /// Younger than the refresh-ahead point.
    Fresh = 0,
    /// Past the refresh-ahead point, still inside its TTL.
    RefreshDue = 1,
    /// Past its TTL (kept only for `stale_if_error`).
    Expired = 2,
}

impl SessionInfo {
    /// Wraps a session document, as verified now.
    ///
    /// The layer builds these from Composio's answers; tests build their own to call
    /// handlers directly.
    #[must_use]
    pub fn new(document: SessionDocument) -> Self {
        Self::verified_at(document, Instant::now())
    }

    /// A session of [`SessionDocument::for_tests`], for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self::new(SessionDocument::for_tests())
    }

    /// A session whose upstream request was sent at `sent_at`.
    pub(crate) fn verified_at(document: SessionDocument, sent_at: Instant) -> Self {
        Self {
            state: Arc::new(SessionState {
                document: Box::new(document),
                verified_at: sent_at,
                age: AtomicU8::new(Age::Fresh as u8),
                refresh_started: AtomicBool::new(false),
            }),
        }
    }

    /// The session document, as Composio answered it.
    #[must_use]
    pub fn document(&self) -> &SessionDocument {
        &self.state.document
    }

    /// When the upstream request that verified this session was sent (the start of
    /// its TTL: a verdict's age counts from the question, not the answer).
    #[must_use]
    pub fn verified(&self) -> Instant {
        self.state.verified_at
    }

    /// How far into its life this session's cache entry is.
    pub(crate) fn age(&self) -> Age {
        match self.state.age.load(Ordering::Relaxed) {
            0 => Age::Fresh,
            1 => Age::RefreshDue,
            _ => Age::Expired,
        }
    }

    /// Records that the entry has reached `age` (ignored if it is already older).
    pub(crate) fn grow_to(&self, age: Age) {
        let age = age as u8;
        // A load first: most reads change nothing and should not write the line.
        if self.state.age.load(Ordering::Relaxed) < age {
            self.state.age.fetch_max(age, Ordering::Relaxed);
        }
    }

    /// Claims the one refresh-ahead of this entry; `true` for the first caller only.
    pub(crate) fn claim_refresh(&self) -> bool {
        !self.state.refresh_started.load(Ordering::Relaxed)
            && !self.state.refresh_started.swap(true, Ordering::AcqRel)
    }

    /// A handle that does not keep the session alive (for the per-thread front).
    pub(crate) fn downgrade(&self) -> WeakSession {
        WeakSession(Arc::downgrade(&self.state))
    }

    /// Whether `self` and `other` are the same verified entry (not just equal documents).
    #[must_use]
    pub fn same_entry(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }
}

/// A [`SessionInfo`] that does not keep it alive: once the cache and every request
/// have dropped the session, its document (secrets included) is freed even though a
/// per-thread front still points at it.
pub(crate) struct WeakSession(Weak<SessionState>);

impl WeakSession {
    /// The session, if something else still keeps it alive.
    pub(crate) fn upgrade(&self) -> Option<SessionInfo> {
        self.0.upgrade().map(|state| SessionInfo { state })
    }
}

impl Deref for SessionInfo {
    type Target = SessionDocument;

    fn deref(&self) -> &SessionDocument {
        &self.state.document
    }
}

impl fmt::Debug for SessionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionInfo")
            .field("document", &self.state.document)
            .field("verified_at", &self.state.verified_at)
            .finish()
    }
}

/// The example session document of Composio's API reference, shared by the stand-in
/// (`StandIn::example_document`) and the tests.
#[cfg(any(test, feature = "test-util"))]
pub(crate) const REFERENCE_DOCUMENT: &str = r#"{
  "project": {
    "auto_id": 12345,
    "id": "550e8400-e29b-41d4-a716-446655440000",
    "org_id": "550e8400-e29b-41d4-a716-446655440001",
    "name": "Production API",
    "email": "project-123@composio.dev",
    "nano_id": "proj_abc123xyz456",
    "created_at": "2023-05-16T14:30:00.000Z",
    "updated_at": "2023-05-18T09:15:30.000Z",
    "webhook_url": "https://example.com/webhook",
    "event_webhook_url": "https://example.com/events",
    "webhook_secret": "whsec_a1b2c3d4e5f6g7h8i9j0",
    "triggers_enabled": true,
    "last_subscribed_at": "2023-05-17T10:00:00.000Z",
    "deleted": false,
    "is_new_webhook": true,
    "webhook_version": "V2",
    "org": {"id": "org_abc123xyz456", "name": "Acme Corp", "plan": "BUSINESS"}
  },
  "api_key": {
    "auto_id": 7890,
    "id": "550e8400-e29b-41d4-a716-446655440003",
    "name": "Development Key",
    "project_id": "proj_abc123xyz456",
    "org_member_id": "550e8400-e29b-41d4-a716-446655440002",
    "created_at": "2023-05-01T10:00:00.000Z",
    "updated_at": "2023-05-01T10:00:00.000Z",
    "deleted_at": "string",
    "key": "sk_live_abc123xyz456",
    "deleted": false
  },
  "org_member": {
    "id": "550e8400-e29b-41d4-a716-446655440002",
    "email": "user@example.com",
    "name": "John Doe",
    "role": "admin"
  }
}"#;

/// The `200` answer of `GET /api/v3/auth/session/info`.
#[derive(Clone, Debug, Deserialize)]
#[non_exhaustive]
pub struct SessionDocument {
    /// The project the key belongs to; `null` with org-level credentials.
    pub project: Option<Project>,
    /// The API key itself; `null` with session or user authentication.
    pub api_key: Option<ApiKey>,
    /// The organisation member the credential acts for; never `null`.
    pub org_member: OrgMember,
}

impl SessionDocument {
    /// A minimal document (an organization member; no project, no key), for unit
    /// tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        serde_json::from_value(serde_json::json!({
            "project": null, "api_key": null,
            "org_member": {"id": "m", "email": "a@b.c", "name": "A", "role": "admin"}
        }))
        .expect("a minimal session document")
    }

    /// Whether Composio marks the key or its project as deleted.
    #[must_use]
    pub fn is_deleted(&self) -> bool {
        self.api_key.as_ref().is_some_and(|k| k.deleted)
            || self.project.as_ref().is_some_and(|p| p.deleted)
    }
}

/// A Composio project (`project` in the session document).
#[derive(Clone, Deserialize)]
#[non_exhaustive]
pub struct Project {
    /// Numeric id.
    pub auto_id: i64,
    /// Project id (UUID).
    pub id: String,
    /// Organisation id.
    pub org_id: String,
    /// Display name.
    pub name: String,
    /// The project's email address.
    pub email: String,
    /// Short id (`proj_...`); `api_key.project_id` refers to it.
    pub nano_id: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Last update time, RFC 3339.
    pub updated_at: String,
    /// Trigger webhook URL.
    pub webhook_url: Option<String>,
    /// Event webhook URL.
    pub event_webhook_url: Option<String>,
    /// Secret that signs webhook deliveries. Redacted in `Debug`.
    pub webhook_secret: Option<String>,
    /// Whether triggers are enabled.
    pub triggers_enabled: bool,
    /// Last trigger subscription time, RFC 3339.
    pub last_subscribed_at: Option<String>,
    /// Whether the project is deleted (the layer rejects such sessions).
    pub deleted: bool,
    /// Deprecated by Composio; `false` when absent.
    #[serde(default)]
    pub is_new_webhook: bool,
    /// Webhook payload version.
    pub webhook_version: WebhookVersion,
    /// The organisation that owns the project.
    pub org: Org,
}

impl fmt::Debug for Project {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Project")
            .field("auto_id", &self.auto_id)
            .field("id", &self.id)
            .field("org_id", &self.org_id)
            .field("name", &self.name)
            .field("email", &self.email)
            .field("nano_id", &self.nano_id)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("webhook_url", &self.webhook_url)
            .field("event_webhook_url", &self.event_webhook_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| REDACTED),
            )
            .field("triggers_enabled", &self.triggers_enabled)
            .field("last_subscribed_at", &self.last_subscribed_at)
            .field("deleted", &self.deleted)
            .field("is_new_webhook", &self.is_new_webhook)
            .field("webhook_version", &self.webhook_version)
            .field("org", &self.org)
            .finish()
    }
}

/// The organisation of a project (`project.org`).
#[derive(Clone, Debug, Deserialize)]
#[non_exhaustive]
pub struct Org {
    /// Organisation id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Billing plan, e.g. `BUSINESS`.
    pub plan: String,
}

/// Webhook payload version of a project. Values Composio adds later parse as
/// [`WebhookVersion::Other`] instead of failing the document.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebhookVersion {
    /// `"V1"`
    V1,
    /// `"V2"`
    V2,
    /// `"V3"`
    V3,
    /// Any other value, kept as sent.
    Other(String),
}

impl<'de> Deserialize<'de> for WebhookVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        Ok(match value.as_str() {
            "V1" => Self::V1,
            "V2" => Self::V2,
            "V3" => Self::V3,
            _ => Self::Other(value),
        })
    }
}

/// The API key of the session (`api_key` in the session document), without the key
/// itself: Composio echoes it as `api_key.key`, but the layer never parses it, so no
/// session (and no cache entry) holds it. A handler that needs the key reads the
/// request's credential header.
#[derive(Clone, Debug, Deserialize)]
#[non_exhaustive]
pub struct ApiKey {
    /// Numeric id.
    pub auto_id: i64,
    /// Key id (UUID); safe to log, unlike the key.
    pub id: String,
    /// Display name of the key.
    pub name: String,
    /// The project's nano id.
    pub project_id: String,
    /// The member who created the key.
    pub org_member_id: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Last update time, RFC 3339.
    pub updated_at: String,
    /// Deletion time, RFC 3339.
    pub deleted_at: Option<String>,
    /// Whether the key is deleted (the layer rejects such sessions).
    pub deleted: bool,
}

/// The organisation member the credential acts for (`org_member`).
#[derive(Clone, Debug, Deserialize)]
#[non_exhaustive]
pub struct OrgMember {
    /// Member id (UUID).
    pub id: String,
    /// Email address.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role in the organisation, e.g. `admin`.
    pub role: String,
    /// User id; sent by newer payloads only.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Free-form metadata; sent by newer payloads only.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reference() -> serde_json::Value {
        serde_json::from_str(REFERENCE_DOCUMENT).unwrap()
    }

    fn parse(value: serde_json::Value) -> Result<SessionDocument, serde_json::Error> {
        serde_json::from_value(value)
    }

    #[test]
    fn parses_the_reference_example() {
        let doc = parse(reference()).unwrap();
        let project = doc.project.as_ref().unwrap();
        assert_eq!(project.name, "Production API");
        assert_eq!(project.webhook_version, WebhookVersion::V2);
        assert_eq!(project.org.plan, "BUSINESS");
        assert_eq!(doc.api_key.as_ref().unwrap().name, "Development Key");
        assert_eq!(doc.org_member.email, "user@example.com");
        assert!(!doc.is_deleted());
    }

    #[test]
    fn project_and_api_key_may_be_null() {
        let mut value = reference();
        value["project"] = json!(null);
        value["api_key"] = json!(null);
        let doc = parse(value).unwrap();
        assert!(doc.project.is_none() && doc.api_key.is_none());
        assert_eq!(doc.org_member.role, "admin");
    }

    #[test]
    fn org_member_is_required() {
        let mut value = reference();
        value["org_member"] = json!(null);
        assert!(parse(value.clone()).is_err());
        value.as_object_mut().unwrap().remove("org_member");
        assert!(parse(value).is_err());
    }

    #[test]
    fn the_key_is_never_held_whatever_its_field_is_named() {
        // `ApiKey`'s `Debug` is derived: it shows every field the session holds.
        let mut value = reference();
        value["api_key"]["api_key"] = json!("ak_older_payload_key");
        let debug = format!("{:?}", SessionInfo::new(parse(value).unwrap()).api_key);
        assert!(debug.contains("Development Key"), "{debug}");
        assert!(!debug.contains("sk_live_abc123xyz456"), "{debug}");
        assert!(!debug.contains("ak_older_payload_key"), "{debug}");
        let mut value = reference();
        value["api_key"].as_object_mut().unwrap().remove("key");
        assert!(parse(value).unwrap().api_key.is_some());
    }

    #[test]
    fn unknown_fields_and_webhook_versions_are_accepted() {
        let mut value = reference();
        value["project"]["webhook_version"] = json!("V9");
        value["project"]["brand_new_field"] = json!({"nested": [1, 2]});
        value["org_member"]["user_id"] = json!("user_1");
        value["org_member"]["metadata"] = json!({"team": "infra"});
        value["project"]["org"]["org_members"] = json!([{"id": "m"}]);
        value["extra_top_level"] = json!(true);
        let doc = parse(value).unwrap();
        let project = doc.project.unwrap();
        assert_eq!(project.webhook_version, WebhookVersion::Other("V9".into()));
        assert_eq!(doc.org_member.user_id.as_deref(), Some("user_1"));
        assert_eq!(doc.org_member.metadata.unwrap()["team"], "infra");
    }

    #[test]
    fn deprecated_is_new_webhook_may_be_absent() {
        let mut value = reference();
        value["project"]
            .as_object_mut()
            .unwrap()
            .remove("is_new_webhook");
        assert!(!parse(value).unwrap().project.unwrap().is_new_webhook);
    }

    #[test]
    fn wrong_types_fail_the_parse() {
        let mut value = reference();
        value["org_member"]["email"] = json!(42);
        assert!(parse(value).is_err());
    }

    #[test]
    fn deleted_key_or_project_is_reported() {
        let mut value = reference();
        value["api_key"]["deleted"] = json!(true);
        assert!(parse(value).unwrap().is_deleted());
        let mut value = reference();
        value["project"]["deleted"] = json!(true);
        assert!(parse(value).unwrap().is_deleted());
    }

    #[test]
    fn debug_redacts_secrets() {
        let session = SessionInfo::new(parse(reference()).unwrap());
        let debug = format!("{session:?} {:#?}", session.document());
        assert!(!debug.contains("sk_live_abc123xyz456"), "{debug}");
        assert!(!debug.contains("whsec_a1b2c3d4e5f6g7h8i9j0"), "{debug}");
        assert!(debug.contains(REDACTED));
        assert!(debug.contains("Production API"));
    }

    #[test]
    fn clones_share_one_allocation() {
        let session = SessionInfo::new(parse(reference()).unwrap());
        let clone = session.clone();
        assert!(session.same_entry(&clone));
        assert_eq!(Arc::strong_count(&session.state), 2);
        assert!(!session.same_entry(&SessionInfo::new(session.document().clone())));
    }

    #[test]
    fn age_only_grows() {
        let session = SessionInfo::new(parse(reference()).unwrap());
        assert_eq!(session.age(), Age::Fresh);
        session.grow_to(Age::RefreshDue);
        session.grow_to(Age::Fresh);
        assert_eq!(session.clone().age(), Age::RefreshDue);
        session.grow_to(Age::Expired);
        assert_eq!(session.age(), Age::Expired);
    }

    #[test]
    fn refresh_is_claimed_once() {
        let session = SessionInfo::new(parse(reference()).unwrap());
        assert!(session.claim_refresh());
        assert!(!session.clone().claim_refresh());
    }
}
