//! A user key's scopes (`x-org-id` and `x-project-id`): each its own verdict,
//! cached, single-flighted and invalidated with its key; selectors checked before
//! anyone is asked; a refusal of the key covering every scope; selectors beside any
//! other credential ignored and never sent on.

use crate::common;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use common::{app, builder, composio, serve, Client, ALICE};
use composio_auth::limits::MAX_SCOPES_PER_KEY;
use composio_auth::testing::{Reply, StandIn};
use composio_auth::{ComposioAuthLayer, CredentialHeader};
use tower::ServiceExt;

/// A user key with a default project and two scopes, each its own member.
const USER: &str = "uak_user_0123456789abcdefghijklmnopqrstuvwxyz01";
const A: (&str, &str) = ("org_a0123456789", "proj_a0123456789");
const B: (&str, &str) = ("org_b0123456789", "proj_b0123456789");

/// The stand-in of `common::composio`, where USER's default project belongs to
/// default@, scope A to a@ and scope B to b@.
async fn composio_with_scopes() -> StandIn {
    let composio = composio().await;
    let document = |email| StandIn::document_for(email, "User", "admin");
    composio.add_session(USER, document("default@example.com"));
    composio.add_scoped_session(USER, A.0, A.1, document("a@example.com"));
    composio.add_scoped_session(USER, B.0, B.1, document("b@example.com"));
    composio
}

fn layer(composio: &StandIn) -> ComposioAuthLayer {
    builder(composio)
        .credential_headers([CredentialHeader::ApiKey, CredentialHeader::UserApiKey])
        .build()
        .unwrap()
}

async fn setup() -> (StandIn, ComposioAuthLayer, Client) {
    let composio = composio_with_scopes().await;
    let layer = layer(&composio);
    let client = Client::new(serve(app(layer.clone())).await);
    (composio, layer, client)
}

/// GET /me with USER in the scope `(org, project)`.
async fn me_in(client: &Client, key: &str, (org, project): (&str, &str)) -> common::Answer {
    let headers = [
        ("x-user-api-key", key),
        ("x-org-id", org),
        ("x-project-id", project),
    ];
    client.get("/me", &headers).await
}

async fn me_as_user(client: &Client) -> common::Answer {
    client.get("/me", &[("x-user-api-key", USER)]).await
}

#[tokio::test]
async fn one_user_key_in_two_scopes_is_two_sessions_and_two_calls_each_then_cached() {
    let (composio, layer, client) = setup().await;
    for _ in 0..5 {
        assert_eq!(me_in(&client, USER, A).await.body, "a@example.com");
        assert_eq!(me_in(&client, USER, B).await.body, "b@example.com");
    }
    assert_eq!(composio.calls_for_scope(USER, A.0, A.1), 1);
    assert_eq!(composio.calls_for_scope(USER, B.0, B.1), 1);
    // Without selectors, the key's own default project, verified once too.
    for _ in 0..3 {
        assert_eq!(me_as_user(&client).await.body, "default@example.com");
    }
    assert_eq!(composio.calls_for(USER), 3);
    assert_eq!(layer.cached().sessions, 3);
    // The selectors were sent on, and only with the scoped calls.
    assert_eq!(composio.calls_with_selectors(), 2);
}

#[tokio::test]
async fn concurrent_requests_share_one_call_per_scope_never_one_for_two_scopes() {
    let (composio, _, client) = setup().await;
    composio.hold();
    let requests: Vec<_> = [A, B, A, B, A, B]
        .into_iter()
        .map(|scope| {
            let client = client.clone();
            tokio::spawn(async move { (scope, me_in(&client, USER, scope).await.body) })
        })
        .collect();
    composio.wait_for_calls(2).await;
    composio.release();
    for request in requests {
        let (scope, body) = request.await.unwrap();
        let expected = if scope == A {
            "a@example.com"
        } else {
            "b@example.com"
        };
        assert_eq!(body, expected);
    }
    assert_eq!(composio.calls(), 2);
}

#[tokio::test]
async fn a_lone_repeated_or_malformed_selector_is_a_400_and_asks_nobody() {
    let (composio, layer, client) = setup().await;
    let long = "o".repeat(129);
    let cases: [&[(&str, &str)]; 5] = [
        &[("x-user-api-key", USER), ("x-org-id", A.0)],
        &[("x-user-api-key", USER), ("x-project-id", A.1)],
        &[
            ("x-user-api-key", USER),
            ("x-org-id", A.0),
            ("x-org-id", B.0),
            ("x-project-id", A.1),
        ],
        &[
            ("x-user-api-key", USER),
            ("x-org-id", &long),
            ("x-project-id", A.1),
        ],
        &[
            ("x-user-api-key", USER),
            ("x-org-id", ""),
            ("x-project-id", A.1),
        ],
    ];
    for headers in cases {
        let answer = client.get("/me", headers).await;
        assert_eq!(answer.status, 400, "{headers:?}");
        let error = answer.envelope().error;
        assert_eq!(
            (error.status, error.slug.as_deref()),
            (400, Some("HTTP_BadRequest"))
        );
        assert!(error.message.contains("x-org-id"), "{}", error.message);
    }
    assert_eq!(composio.calls(), 0);
    // The same through `verify`, and as gRPC's INVALID_ARGUMENT.
    let mut headers = HeaderMap::new();
    headers.insert("x-user-api-key", USER.parse().unwrap());
    headers.insert("x-project-id", A.1.parse().unwrap());
    let rejection = layer.verify(&headers).await.unwrap_err();
    assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
    let grpc = Request::post("/svc/Method")
        .header("content-type", "application/grpc")
        .header("x-user-api-key", USER)
        .header("x-org-id", A.0)
        .body(Body::empty())
        .unwrap();
    let answer = app(layer.clone()).oneshot(grpc).await.unwrap();
    assert_eq!(answer.headers()["grpc-status"], "3");
    assert_eq!(composio.calls(), 0);
}

#[tokio::test]
async fn verify_reads_the_scope_as_the_layer_does() {
    let (composio, layer, _) = setup().await;
    let mut headers = HeaderMap::new();
    headers.insert("x-user-api-key", USER.parse().unwrap());
    headers.insert("x-org-id", B.0.parse().unwrap());
    headers.insert("x-project-id", B.1.parse().unwrap());
    let session = layer.verify(&headers).await.unwrap();
    assert_eq!(session.org_member.email, "b@example.com");
    headers.remove("x-org-id");
    headers.remove("x-project-id");
    let session = layer.verify(&headers).await.unwrap();
    assert_eq!(session.org_member.email, "default@example.com");
    assert_eq!(composio.calls(), 2);
}

#[tokio::test]
async fn selectors_beside_a_project_key_are_ignored_and_never_sent_on() {
    let (composio, layer, client) = setup().await;
    let with = |org, project| {
        [
            ("x-api-key", ALICE),
            ("x-org-id", org),
            ("x-project-id", project),
        ]
    };
    assert_eq!(
        client.get("/me", &with(A.0, A.1)).await.body,
        "alice@example.com"
    );
    assert_eq!(
        client.get("/me", &with(B.0, B.1)).await.body,
        "alice@example.com"
    );
    // Even a lone or malformed one.
    let lone = [("x-api-key", ALICE), ("x-org-id", "not an id")];
    assert_eq!(client.get("/me", &lone).await.status, 200);
    assert_eq!(client.me(ALICE).await.status, 200);
    assert_eq!(composio.calls_for(ALICE), 1, "one cache entry");
    assert_eq!(composio.calls_with_selectors(), 0);
    assert_eq!(layer.cached().sessions, 1);
}

#[tokio::test]
async fn composio_refusing_a_scope_is_a_401_with_its_envelope_cached_for_that_scope_only() {
    let (composio, _, client) = setup().await;
    let elsewhere = ("org_elsewhere0123", "proj_elsewhere0123");
    let uuid = (
        "123e4567-e89b-12d3-a456-426614174000",
        "123e4567-e89b-12d3-a456-426614174001",
    );
    for scope in [elsewhere, uuid] {
        for _ in 0..3 {
            let answer = me_in(&client, USER, scope).await;
            assert_eq!(answer.status, 401, "{scope:?}: {}", answer.body);
            let error = answer.envelope().error;
            assert_eq!(error.status, 401);
            assert_eq!(
                error.request_id.as_deref(),
                Some("standin-request"),
                "Composio's own"
            );
        }
        assert_eq!(
            composio.calls_for_scope(USER, scope.0, scope.1),
            1,
            "cached"
        );
    }
    // The key itself is not refused: its other scopes and its default project work.
    assert_eq!(me_in(&client, USER, A).await.body, "a@example.com");
    assert_eq!(me_as_user(&client).await.body, "default@example.com");
}

#[tokio::test]
async fn a_refusal_of_the_key_covers_every_scope_so_random_selectors_cost_no_calls() {
    let composio = composio_with_scopes().await;
    let layer = layer(&composio);
    let client = Client::new(serve(app(layer.clone())).await);
    let bad = "uak_revoked_0123456789abcdefghijklmnopqrstuvw";
    assert_eq!(me_in(&client, bad, A).await.status, 401);
    assert_eq!(composio.calls(), 1);
    for n in 0..20 {
        let (org, project) = (format!("org_random{n}"), format!("proj_random{n}"));
        let answer = me_in(&client, bad, (&org, &project)).await;
        assert_eq!(answer.status, 401);
    }
    assert_eq!(
        client.get("/me", &[("x-user-api-key", bad)]).await.status,
        401
    );
    assert_eq!(
        composio.calls(),
        1,
        "one call for the key, whatever the scopes"
    );

    // A key refused in one scope is refused at once in the scopes it had sessions in.
    assert_eq!(me_in(&client, USER, A).await.status, 200);
    composio.revoke(USER);
    assert_eq!(me_in(&client, USER, B).await.status, 401);
    let calls = composio.calls();
    assert_eq!(
        me_in(&client, USER, A).await.status,
        401,
        "A's session dropped"
    );
    assert_eq!(me_as_user(&client).await.status, 401);
    assert_eq!(composio.calls(), calls);
}

#[tokio::test]
async fn invalidating_a_user_key_forgets_every_scope() {
    let (composio, layer, client) = setup().await;
    for _ in 0..2 {
        me_in(&client, USER, A).await;
        me_in(&client, USER, B).await;
        me_as_user(&client).await;
    }
    assert_eq!(composio.calls_for(USER), 3);
    layer.invalidate(USER).await.unwrap();
    assert_eq!(layer.cached().sessions, 0);
    assert_eq!(me_in(&client, USER, A).await.body, "a@example.com");
    assert_eq!(me_in(&client, USER, B).await.body, "b@example.com");
    assert_eq!(me_as_user(&client).await.body, "default@example.com");
    assert_eq!(composio.calls_for(USER), 6);
}

#[tokio::test]
async fn a_scope_in_flight_when_its_key_is_invalidated_caches_nothing() {
    let (composio, layer, client) = setup().await;
    composio.hold();
    let first = tokio::spawn({
        let client = client.clone();
        async move { me_in(&client, USER, A).await.status }
    });
    composio.wait_for_calls(1).await;
    layer.invalidate(USER).await.unwrap();
    composio.release();
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(me_in(&client, USER, A).await.status, 200);
    assert_eq!(composio.calls_for_scope(USER, A.0, A.1), 2, "asked again");
}

#[tokio::test]
async fn a_key_holds_a_bounded_number_of_scopes() {
    let (composio, layer, client) = setup().await;
    let scope = |n: usize| (format!("org_many{n}"), format!("proj_many{n}"));
    for n in 0..=MAX_SCOPES_PER_KEY {
        let (org, project) = scope(n);
        let document = StandIn::document_for(&format!("m{n}@example.com"), "M", "member");
        composio.add_scoped_session(USER, &org, &project, document);
        let answer = me_in(&client, USER, (&org, &project)).await;
        assert_eq!(answer.body, format!("m{n}@example.com"));
    }
    assert_eq!(layer.cached().sessions, MAX_SCOPES_PER_KEY as u64);
    // The first one was displaced by the last: asked again; the second was not.
    let (org, project) = scope(0);
    me_in(&client, USER, (&org, &project)).await;
    assert_eq!(composio.calls_for_scope(USER, &org, &project), 2);
    let (org, project) = scope(2);
    me_in(&client, USER, (&org, &project)).await;
    assert_eq!(composio.calls_for_scope(USER, &org, &project), 1);
}

#[tokio::test]
async fn a_403_in_one_scope_refuses_the_key_in_every_scope_as_a_401_does() {
    let (composio, _, client) = setup().await;
    composio.set_scoped_reply(
        USER,
        B.0,
        B.1,
        Reply::envelope(
            403,
            2206,
            "Organization_InsufficientPermissions",
            "suspended",
        ),
    );
    let answer = me_in(&client, USER, B).await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.envelope().error.code, 2206);
    // Composio's 401 and 403 refuse the key itself (guide::verdicts): for
    // `negative_ttl`, in every scope, without asking.
    assert_eq!(me_in(&client, USER, A).await.status, 403);
    assert_eq!(me_as_user(&client).await.status, 403);
    assert_eq!(composio.calls(), 1);
}
