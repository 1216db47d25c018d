//! Composio's webhook deliveries through the layer (feature `webhook`): Composio's
//! published vectors, every answer in its order, and once-delivery, over real TCP
//! (`axum.rs`), in actix-web (`actix.rs`) and across replicas sharing a real
//! `redis-server` (`fleet.rs`). `fixtures` holds Composio's published fixtures.

#[cfg(feature = "actix-web")]
mod actix;
mod axum;
#[cfg(feature = "redis")]
mod fleet;

pub mod fixtures {
    //! Composio's published webhook fixtures (WEBHOOKS.md): full deliveries re-signed
    //! by Composio with a test secret, and its SDKs' golden signatures.

    use std::time::{SystemTime, UNIX_EPOCH};

    /// The secret the three full fixtures are signed with, at [`FIXTURE_TIME`].
    pub const SECRET: &str = "test-webhook-secret-for-fixtures";
    pub const FIXTURE_TIME: &str = "1738150200";

    /// `(webhook-id, webhook-signature, body)` of the V3, V2 and V1 fixtures.
    pub const V3: (&str, &str, &str) = (
        "msg_fixture_v3_001",
        "v1,GqTsMaDtroeNNR7rDDzEGVTtHfFtIDknXhmkCXss7cA=",
        r#"{"id":"evt_fixture_v3_001","timestamp":"2026-01-29T10:30:00Z","type":"composio.trigger.message","metadata":{"log_id":"log_fixture_001","trigger_slug":"GITHUB_PUSH_EVENT","trigger_id":"ti_fixture_001","connected_account_id":"ca_fixture_001","auth_config_id":"ac_fixture_001","user_id":"user_fixture_001"},"data":{"ref":"refs/heads/main","repository":{"name":"test-repo","full_name":"user/test-repo"},"pusher":{"name":"test-user"},"commits":[{"id":"abc123","message":"Test commit"}]}}"#,
    );
    pub const V2: (&str, &str, &str) = (
        "msg_fixture_v2_001",
        "v1,a/mTZohEnMvzupLGWsiDLhTctk+hgx3Q2r1ACjybkhk=",
        r#"{"type":"github_push_event","timestamp":"2026-01-29T10:30:00Z","log_id":"log_fixture_002","data":{"connection_id":"conn_uuid_fixture_002","connection_nano_id":"ca_fixture_002","trigger_nano_id":"ti_fixture_002","trigger_id":"trigger_uuid_fixture_002","user_id":"user_fixture_002","ref":"refs/heads/main","repository":{"name":"test-repo"}}}"#,
    );
    pub const V1: (&str, &str, &str) = (
        "msg_fixture_v1_001",
        "v1,A/VFbvOJ8JAzXZweWvc+IHaBie19NVKUpQKbeobt5xo=",
        r#"{"trigger_name":"GITHUB_PUSH_EVENT","connection_id":"conn_fixture_001","trigger_id":"trigger_fixture_001","payload":{"ref":"refs/heads/main","commits":[{"id":"def456","message":"Legacy commit"}]},"log_id":"log_fixture_003"}"#,
    );

    /// The SDKs' golden vectors: id, timestamp, body, secret, signature. Their
    /// bodies are no event payload.
    pub const GOLDEN: [(&str, &str, &str, &str, &str); 5] = [
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

    /// Now, in Unix seconds.
    pub fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }
}
