//! The verdict table over real TCP: an axum app behind the layer, called by a real
//! HTTP client, verifying keys against the loopback stand-in.

use crate::common;

use axum::http::StatusCode;
use common::{serve, setup, Client, ALICE, BOB};
use composio_auth::testing::{Reply, StandIn};
use composio_auth::{ComposioAuthLayer, CredentialHeader, SessionInfo, DEFAULT_SESSION_PATH};
use serde_json::json;

fn assert_local_401(answer: &common::Answer, code: i64, slug: &str) {
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
    assert_eq!(answer.headers["content-type"], "application/json");
    assert!(answer.headers.contains_key("www-authenticate"));
    let envelope = answer.envelope();
    assert_eq!(envelope.error.code, code);
    assert_eq!(envelope.error.slug.as_deref(), Some(slug));
    assert_eq!(envelope.error.status, 401);
}

#[tokio::test]
async fn no_credential_is_401_without_calling_composio() {
    let (composio, _, client) = setup(|b| b).await;
    let answer = client.get("/me", &[]).await;
    assert_local_401(&answer, 906, "Auth_NoAuthProvided");
    assert_eq!(answer.envelope().error.message, "No API key provided");
    assert_eq!(composio.calls(), 0);
}

#[tokio::test]
async fn local_envelopes_carry_the_inbound_request_id() {
    let (_, _, client) = setup(|b| b).await;
    let answer = client.get("/me", &[("x-request-id", "req-42")]).await;
    assert_eq!(
        answer.envelope().error.request_id.as_deref(),
        Some("req-42")
    );
    let answer = client.get("/me", &[]).await;
    assert_eq!(answer.envelope().error.request_id, None);
}

#[tokio::test]
async fn malformed_keys_are_401_without_calling_composio() {
    let (composio, _, client) = setup(|b| b).await;
    let long = "k".repeat(257);
    for key in ["", "ak with space", long.as_str()] {
        let answer = client.me(key).await;
        assert_local_401(&answer, 801, "APIKey_InvalidAPIKey");
    }
    // Bytes outside visible ASCII (the client sends them raw).
    let response = client
        .http
        .get(format!("http://{}/me", client.addr))
        .header(
            "x-api-key",
            reqwest::header::HeaderValue::from_bytes(b"ak_caf\xc3\xa9").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // 256 visible bytes is a well-formed (if unknown) key: it is asked about.
    assert_eq!(client.me(&"k".repeat(256)).await.status, 401);
    assert_eq!(composio.calls(), 1);
}

#[tokio::test]
async fn ambiguous_credentials_are_401_without_calling_composio() {
    let (composio, _, client) = setup(|b| b).await;
    let twice = client
        .get("/me", &[("x-api-key", ALICE), ("x-api-key", BOB)])
        .await;
    assert_local_401(&twice, 10401, "HTTP_Unauthorized");
    // The second header is not even one this layer accepts: still refused.
    let two = client
        .get("/me", &[("x-api-key", ALICE), ("x-org-api-key", "oak_x")])
        .await;
    assert_local_401(&two, 10401, "HTTP_Unauthorized");
    assert_eq!(composio.calls(), 0);
}

#[tokio::test]
async fn credential_headers_can_be_enabled() {
    let (composio, _, client) = setup(|b| b).await;
    let refused = client.get("/me", &[("x-org-api-key", ALICE)]).await;
    assert_local_401(&refused, 906, "Auth_NoAuthProvided");
    assert!(refused.envelope().error.message.contains("x-org-api-key"));
    assert_eq!(composio.calls(), 0);

    let (composio, _, client) =
        setup(|b| b.credential_headers([CredentialHeader::ApiKey, CredentialHeader::OrgApiKey]))
            .await;
    let answer = client.get("/me", &[("x-org-api-key", ALICE)]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, "alice@example.com");
    // The key went upstream under the header it came in.
    let sent = composio.last_request_headers().unwrap();
    assert_eq!(sent["x-org-api-key"], ALICE);
    assert!(!sent.contains_key("x-api-key"));
}

#[tokio::test]
async fn each_credential_header_goes_to_its_own_session_path() {
    const USER_PATH: &str = "/api/v3.1/auth/session/info";
    let (composio, _, client) = setup(|b| {
        b.credential_headers([CredentialHeader::ApiKey, CredentialHeader::UserApiKey])
            .session_path_for(CredentialHeader::UserApiKey, USER_PATH)
    })
    .await;
    assert_eq!(
        client.get("/me", &[("x-user-api-key", ALICE)]).await.status,
        200
    );
    assert_eq!(
        (
            composio.calls_on(USER_PATH),
            composio.calls_on(DEFAULT_SESSION_PATH)
        ),
        (1, 0)
    );
    assert_eq!(client.me(BOB).await.status, 200);
    assert_eq!(
        (
            composio.calls_on(USER_PATH),
            composio.calls_on(DEFAULT_SESSION_PATH)
        ),
        (1, 1)
    );
    // The same key under the other header is another verdict, verified on its path.
    assert_eq!(client.me(ALICE).await.status, 200);
    assert_eq!(composio.calls_on(DEFAULT_SESSION_PATH), 2);

    let error = common::builder(&composio)
        .session_path_for(CredentialHeader::OrgApiKey, "no-slash")
        .build()
        .unwrap_err()
        .to_string();
    assert!(error.contains("session_path"), "{error}");
}

#[tokio::test]
async fn localhost_is_reached_on_loopback_and_other_local_names_need_https() {
    let composio = common::composio().await;
    let base = format!("http://localhost:{}", composio.addr().port());
    let layer = ComposioAuthLayer::builder()
        .base_url(&base)
        .build()
        .unwrap();
    let client = Client::new(serve(common::app(layer)).await);
    assert_eq!(client.me(ALICE).await.status, 200);
    assert_eq!(composio.calls_for(ALICE), 1);
    for name in ["api.localhost", "localhost.", "localhost.example.com"] {
        let base = format!("http://{name}:{}", composio.addr().port());
        let error = ComposioAuthLayer::builder()
            .base_url(base)
            .build()
            .unwrap_err()
            .to_string();
        assert!(error.contains("must use https"), "{name}: {error}");
    }
}

#[tokio::test]
async fn the_stand_in_refuses_a_revoked_key_whatever_its_default_reply() {
    let (composio, _, client) = setup(|b| b.negative_ttl(std::time::Duration::ZERO)).await;
    composio.set_default_reply(Some(Reply::Session(StandIn::example_document())));
    assert_eq!(client.me("ak_anything_0123456789abc").await.status, 200);
    composio.revoke(ALICE);
    let refused = client.me(ALICE).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.envelope().error.code, 801);
    // Added again, it is valid again (no rejection is cached with `negative_ttl` 0).
    composio.add_session(ALICE, StandIn::example_document());
    assert_eq!(client.me(ALICE).await.status, 200);
    assert_eq!(composio.calls_for(ALICE), 2);
}

#[tokio::test]
async fn a_session_never_holds_the_key() {
    // The reference document echoes a key in `api_key.key`; a user key echoes itself.
    let (composio, layer, _) = setup(|b| b).await;
    let mut document = StandIn::example_document();
    document["api_key"]["key"] = json!(ALICE);
    composio.add_session(ALICE, document);
    let app = axum::Router::new()
        .route(
            "/debug",
            axum::routing::get(|session: SessionInfo| async move {
                // `ApiKey` and `OrgMember` derive `Debug`: every field they hold shows.
                format!("{:?} {:?}", session.api_key, session.org_member)
            }),
        )
        .layer(layer);
    let debug_client = Client::new(serve(app).await);
    let answer = debug_client.get("/debug", &[("x-api-key", ALICE)]).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("Development Key"), "{}", answer.body);
    assert!(!answer.body.contains(ALICE), "{}", answer.body);
    assert!(
        !answer.body.contains("sk_live_abc123xyz456"),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn hide_credential_removes_the_key_before_the_handler_and_is_off_by_default() {
    for hide in [false, true] {
        let composio = common::composio().await;
        let layer = common::builder(&composio)
            .hide_credential(hide)
            .build()
            .unwrap();
        let app = axum::Router::new()
            .route(
                "/sees-key",
                axum::routing::get(|headers: axum::http::HeaderMap| async move {
                    format!("{}", headers.contains_key("x-api-key"))
                }),
            )
            .layer(layer);
        let client = Client::new(serve(app).await);
        // The first request waits for the verification, the second is a cache hit.
        for _ in 0..2 {
            let answer = client.get("/sees-key", &[("x-api-key", ALICE)]).await;
            assert_eq!(answer.status, 200);
            assert_eq!(answer.body, (!hide).to_string(), "hide_credential({hide})");
        }
        assert_eq!(composio.calls_for(ALICE), 1);
    }
}

#[tokio::test]
async fn a_valid_key_reaches_the_handler_with_its_session() {
    let (composio, _, client) = setup(|b| b).await;
    let answer = client.me(ALICE).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "alice@example.com")
    );
    let answer = client.get("/whoami", &[("x-api-key", BOB)]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&answer.body).unwrap(),
        json!({"role": "member"})
    );
    assert_eq!(composio.calls_for(ALICE), 1);
    assert_eq!(composio.calls_for(BOB), 1);
}

#[tokio::test]
async fn extractors_fail_closed_and_option_never_fails() {
    let (_, _, client) = setup(|b| b).await;
    // `/maybe` is outside the layer: no session, and no refusal.
    assert_eq!(
        client.get("/maybe", &[("x-api-key", ALICE)]).await.body,
        "none"
    );
    // The `SessionInfo` extractor on a route without the layer answers 401.
    let app = axum::Router::new().route(
        "/unprotected",
        axum::routing::get(
            |s: composio_auth::SessionInfo| async move { s.org_member.email.clone() },
        ),
    );
    let client = Client::new(serve(app).await);
    let answer = client.get("/unprotected", &[("x-api-key", ALICE)]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.envelope().error.code, 906);
}

#[tokio::test]
async fn only_the_credential_header_goes_upstream() {
    let (composio, _, client) = setup(|b| b).await;
    let answer = client
        .get(
            "/me",
            &[
                ("x-api-key", ALICE),
                ("cookie", "session=secret-cookie"),
                ("authorization", "Bearer secret-token"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-request-id", "req-1"),
            ],
        )
        .await;
    assert_eq!(answer.status, 200);
    let sent = composio.last_request_headers().unwrap();
    let mut names: Vec<_> = sent.keys().map(|k| k.as_str().to_owned()).collect();
    names.sort();
    assert_eq!(names, ["accept", "host", "user-agent", "x-api-key"]);
    assert_eq!(sent["x-api-key"], ALICE);
    assert!(sent["user-agent"]
        .to_str()
        .unwrap()
        .starts_with("composio-auth/"));
}

#[tokio::test]
async fn composio_401_and_403_pass_through_with_their_envelope() {
    let (composio, _, client) = setup(|b| b).await;
    let unknown = "ak_unknown_key_0000ESjq";
    let answer = client.me(unknown).await;
    assert_eq!(answer.status, 401);
    assert!(answer.headers.contains_key("www-authenticate"));
    let error = answer.envelope().error;
    assert_eq!(
        (error.code, error.slug.as_deref(), error.status),
        (801, Some("APIKey_InvalidAPIKey"), 401)
    );
    assert_eq!(error.message, "Invalid API key: ak_**ESjq");
    assert_eq!(error.request_id.as_deref(), Some("standin-request"));
    assert!(error.suggested_fix.is_some());
    assert_eq!(error.errors, Some(vec![]));

    let scoped = "ak_scoped_key_without_rights";
    composio.set_reply(
        scoped,
        Reply::envelope(
            403,
            812,
            "APIKey_InsufficientPermissions",
            "Insufficient permissions",
        ),
    );
    let answer = client.me(scoped).await;
    assert_eq!(answer.status, 403);
    let error = answer.envelope().error;
    assert_eq!((error.code, error.status), (812, 403));
    assert_eq!(error.message, "Insufficient permissions");
}

#[tokio::test]
async fn composio_400_and_404_envelopes_become_401() {
    let (composio, _, client) = setup(|b| b).await;
    for (key, status) in [("ak_bad_request_key", 400), ("ak_not_found_key", 404)] {
        composio.set_reply(
            key,
            Reply::envelope(status, 601, "Request_Bad", "Bad key format"),
        );
        let answer = client.me(key).await;
        assert_eq!(answer.status, 401, "{status}");
        let error = answer.envelope().error;
        assert_eq!(
            (error.code, error.status, error.slug.as_deref()),
            (601, 401, Some("Request_Bad"))
        );
        assert_eq!(error.message, "Bad key format");
    }
}

#[tokio::test]
async fn deleted_keys_and_projects_are_401() {
    let (composio, _, client) = setup(|b| b).await;
    let mut key_deleted = StandIn::example_document();
    key_deleted["api_key"]["deleted"] = json!(true);
    composio.add_session("ak_deleted_key", key_deleted);
    let mut project_deleted = StandIn::example_document();
    project_deleted["project"]["deleted"] = json!(true);
    composio.add_session("ak_deleted_project", project_deleted);
    for key in ["ak_deleted_key", "ak_deleted_project"] {
        let answer = client.me(key).await;
        assert_eq!(answer.status, 401, "{key}");
        assert_eq!(
            answer.envelope().error.slug.as_deref(),
            Some("APIKey_InvalidAPIKey")
        );
        // Cached as a rejection.
        assert_eq!(client.me(key).await.status, 401);
        assert_eq!(composio.calls_for(key), 1);
    }
}

#[tokio::test]
async fn require_refusals_are_403_on_every_request_with_the_session_cached() {
    let (composio, _, client) = setup(|b| b.require(|s| s.org_member.role == "admin")).await;
    assert_eq!(client.me(ALICE).await.status, 200);
    for _ in 0..3 {
        let answer = client
            .get("/me", &[("x-api-key", BOB), ("x-request-id", "r-7")])
            .await;
        assert_eq!(answer.status, 403);
        assert!(!answer.headers.contains_key("www-authenticate"));
        let error = answer.envelope().error;
        assert_eq!(
            (error.status, error.slug.as_deref()),
            (403, Some("HTTP_Forbidden"))
        );
        assert_eq!(error.request_id.as_deref(), Some("r-7"));
    }
    assert_eq!(composio.calls_for(BOB), 1);
    assert_eq!(client.me(ALICE).await.status, 200);
    assert_eq!(composio.calls_for(ALICE), 1);
}

#[tokio::test]
async fn the_builders_require_adds_up_like_the_layers() {
    // Each key passes one predicate and fails the other: both must hold.
    let (composio, _, client) = setup(|b| {
        b.require(|s| s.org_member.role == "admin")
            .require(|s| s.org_member.email.starts_with("bob"))
    })
    .await;
    assert_eq!(client.me(ALICE).await.status, 403);
    assert_eq!(client.me(BOB).await.status, 403);
    assert_eq!((composio.calls_for(ALICE), composio.calls_for(BOB)), (1, 1));
}

/// Asserts the documented 503: envelope, `Retry-After`, and nothing cached (a second
/// request asks Composio again). The other faults are in `faults.rs`.
async fn assert_undecided(composio: &StandIn, client: &Client, key: &str, reason: &str) {
    let before = composio.calls_for(key);
    for round in 1..=2 {
        let answer = client.me(key).await;
        assert_eq!(answer.status, 503, "{reason}: {}", answer.body);
        assert_eq!(answer.headers["content-type"], "application/json");
        assert!(answer.headers.contains_key("retry-after"), "{reason}");
        let error = answer.envelope().error;
        assert_eq!((error.status, error.code), (503, 10503));
        let errors = error.errors.unwrap_or_default().join(" ");
        assert!(
            errors.contains(reason),
            "{errors:?} should mention {reason:?}"
        );
        assert_eq!(
            composio.calls_for(key),
            before + round,
            "{reason}: not cached"
        );
    }
}

#[tokio::test]
async fn redirects_are_never_followed() {
    let (composio, _, client) = setup(|b| b).await;
    let elsewhere = common::composio().await;
    let location = format!(
        "{}{}",
        elsewhere.base_url(),
        composio_auth::DEFAULT_SESSION_PATH
    );
    for status in [301, 302, 307, 308] {
        let key = format!("ak_redirected_{status}");
        composio.set_reply(
            &key,
            Reply::Raw {
                status,
                headers: vec![("location".into(), location.clone())],
                body: "".into(),
            },
        );
        assert_undecided(&composio, &client, &key, "redirect").await;
    }
    assert_eq!(elsewhere.calls(), 0);
}
