//! One verifier for every route: `require` makes layers that share everything with
//! the layer they come from, and `verify` runs the layer's whole path for a set of
//! headers, without a request or a tower service. Over real TCP, against the
//! stand-in.

use crate::common;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::routing::get;
use axum::Router;
use common::{builder, composio, serve, within, Answer, Client, ALICE, BOB};
use composio_auth::testing::Reply;
use composio_auth::{ComposioAuthLayer, SessionInfo};

fn is_admin(session: &SessionInfo) -> bool {
    session.org_member.role == "admin"
}

/// `/me` behind `auth`, `/admin` behind `auth.require(is_admin)`.
fn app(auth: &ComposioAuthLayer) -> Router {
    let email = |session: SessionInfo| async move { session.org_member.email.clone() };
    Router::new()
        .route("/admin", get(email))
        .route_layer(auth.require(is_admin))
        .route("/me", get(email))
        .route_layer(auth.clone())
}

#[tokio::test]
async fn one_key_on_a_plain_and_a_required_route_costs_one_upstream_call() {
    let composio = composio().await;
    let auth = builder(&composio).build().unwrap();
    let client = Client::new(serve(app(&auth)).await);
    for _ in 0..20 {
        assert_eq!(client.me(ALICE).await.status, 200);
        let admin = client.get("/admin", &[("x-api-key", ALICE)]).await;
        assert_eq!(admin.status, 200);
        assert_eq!(admin.body, "alice@example.com");
    }
    assert_eq!(composio.calls(), 1);
    // And the layers are one cache: one entry.
    assert_eq!(auth.cached().sessions, 1);
    assert_eq!(auth.require(is_admin).cached().sessions, 1);
}

#[tokio::test]
async fn a_member_on_a_required_route_gets_403_and_stays_cached() {
    let composio = composio().await;
    let auth = builder(&composio).build().unwrap();
    let client = Client::new(serve(app(&auth)).await);
    let refused = client.get("/admin", &[("x-api-key", BOB)]).await;
    assert_eq!(refused.status, 403);
    let envelope = refused.envelope();
    assert_eq!(envelope.error.code, 10403);
    assert_eq!(envelope.error.status, 403);
    // The session stays cached: /me is a hit.
    assert_eq!(client.me(BOB).await.status, 200);
    assert_eq!(composio.calls(), 1);
}

#[tokio::test]
async fn required_predicates_add_up() {
    let composio = composio().await;
    let auth = builder(&composio).build().unwrap();
    let alice_only = auth
        .require(is_admin)
        .require(|s| s.org_member.email.starts_with("alice"));
    let bob_only = auth
        .require(|s| !is_admin(s))
        .require(|s| s.org_member.email.starts_with("bob"));
    let nobody = auth.require(is_admin).require(|s| !is_admin(s));
    let email = |session: SessionInfo| async move { session.org_member.email.clone() };
    // Each route behind its own layer (a `Router::route_layer` covers every route
    // added before it).
    let router = Router::new()
        .route("/alice", get(email).route_layer(alice_only))
        .route("/bob", get(email).route_layer(bob_only))
        .route("/nobody", get(email).route_layer(nobody));
    let client = Client::new(serve(router).await);
    let status = |answer: Answer| answer.status.as_u16();
    for (path, alice, bob) in [
        ("/alice", 200, 403),
        ("/bob", 403, 200),
        ("/nobody", 403, 403),
    ] {
        assert_eq!(
            status(client.get(path, &[("x-api-key", ALICE)]).await),
            alice,
            "{path}"
        );
        assert_eq!(
            status(client.get(path, &[("x-api-key", BOB)]).await),
            bob,
            "{path}"
        );
    }
    assert_eq!(composio.calls(), 2);
}

#[tokio::test]
async fn invalidate_on_a_required_layer_reaches_every_route() {
    let composio = composio().await;
    let auth = builder(&composio).build().unwrap();
    let admin = auth.require(is_admin);
    let client = Client::new(serve(app(&auth)).await);
    assert_eq!(client.me(ALICE).await.status, 200);
    assert_eq!(
        client.get("/admin", &[("x-api-key", ALICE)]).await.status,
        200
    );
    composio.revoke(ALICE);
    admin.invalidate(ALICE).await.unwrap();
    assert_eq!(client.me(ALICE).await.status, 401);
    assert_eq!(
        client.get("/admin", &[("x-api-key", ALICE)]).await.status,
        401
    );
    // And invalidate_all from the plain one reaches the required one.
    assert_eq!(
        client.get("/admin", &[("x-api-key", BOB)]).await.status,
        403
    );
    composio.revoke(BOB);
    auth.invalidate_all().await.unwrap();
    assert_eq!(
        client.get("/admin", &[("x-api-key", BOB)]).await.status,
        401
    );
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

/// `verify` gives what the layer answers over HTTP for the same headers: the same
/// status, the same headers the layer sets and the same body, byte for byte.
async fn same_as_the_layer(
    auth: &ComposioAuthLayer,
    client: &Client,
    path: &str,
    pairs: &[(&str, &str)],
) {
    let served = client.get(path, pairs).await;
    let verified = auth.verify(&headers(pairs)).await;
    match verified {
        Ok(session) => {
            assert_eq!(served.status, 200, "{pairs:?}");
            assert_eq!(served.body, session.org_member.email);
        }
        Err(rejection) => {
            assert_eq!(rejection.status(), served.status, "{pairs:?}");
            for name in ["content-type", "www-authenticate", "retry-after"] {
                assert_eq!(
                    rejection.headers().get(name).map(|v| v.to_str().unwrap()),
                    served.headers.get(name).map(|v| v.to_str().unwrap()),
                    "{name} for {pairs:?}"
                );
            }
            assert_eq!(*rejection.envelope(), served.envelope(), "{pairs:?}");
            // axum's IntoResponse gives the same answer as into_http_response.
            let axum = axum::response::IntoResponse::into_response(rejection.clone());
            assert_eq!(axum.status(), served.status, "{pairs:?}");
            assert_eq!(axum.headers(), rejection.headers(), "{pairs:?}");
            let axum = http_body_util::BodyExt::collect(axum.into_body())
                .await
                .unwrap()
                .to_bytes();
            assert_eq!(axum, served.body.as_bytes(), "{pairs:?}");
            let response = rejection.into_http_response();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            assert_eq!(body, served.body.as_bytes(), "{pairs:?}");
        }
    }
}

#[tokio::test]
async fn verify_gives_the_layers_verdicts() {
    let composio = composio().await;
    let auth = builder(&composio).build().unwrap();
    let client = Client::new(serve(app(&auth)).await);
    let id = ("x-request-id", "req-7");
    // A valid key, an admin route, a refused key, no key, two keys.
    same_as_the_layer(&auth, &client, "/me", &[("x-api-key", ALICE)]).await;
    let admin = auth.require(is_admin);
    same_as_the_layer(&admin, &client, "/admin", &[("x-api-key", BOB), id]).await;
    same_as_the_layer(
        &auth,
        &client,
        "/me",
        &[("x-api-key", "ak_unknown_key_000000000")],
    )
    .await;
    same_as_the_layer(&auth, &client, "/me", &[id]).await;
    same_as_the_layer(
        &auth,
        &client,
        "/me",
        &[("x-api-key", ALICE), ("x-org-api-key", BOB), id],
    )
    .await;
    // Composio cannot decide.
    composio.fail_with(Reply::rate_limited(7));
    same_as_the_layer(
        &auth,
        &client,
        "/me",
        &[("x-api-key", "ak_undecided_key_0000000"), id],
    )
    .await;
    let undecided = auth
        .verify(&headers(&[("x-api-key", "ak_undecided_key_0000001")]))
        .await;
    let undecided = undecided.unwrap_err();
    assert_eq!(undecided.status(), 503);
    assert_eq!(undecided.headers()["retry-after"], "7");
}

#[tokio::test]
async fn concurrent_verifications_of_one_cold_key_make_one_upstream_call() {
    let composio = composio().await;
    let auth = builder(&composio).build().unwrap();
    composio.hold();
    let alice = headers(&[("x-api-key", ALICE)]);
    let waiting: Vec<_> = (0..16).map(|_| tokio::spawn(auth.verify(&alice))).collect();
    within("the first call", composio.wait_for_calls(1)).await;
    composio.release();
    for verification in waiting {
        let session = verification.await.unwrap().expect("admitted");
        assert_eq!(session.org_member.email, "alice@example.com");
    }
    assert_eq!(composio.calls(), 1);
    // The headers were read when `verify` was called: nothing borrowed, nothing
    // changed.
    assert!(!alice["x-api-key"].is_sensitive());
}

/// `/me` answers the member's email and which credential headers reached it.
fn bearer_app(auth: ComposioAuthLayer) -> Router {
    Router::new()
        .route(
            "/me",
            get(|session: SessionInfo, headers: HeaderMap| async move {
                let seen = |name: &str| {
                    if headers.contains_key(name) {
                        "seen"
                    } else {
                        "-"
                    }
                };
                format!(
                    "{} authorization={} x-api-key={}",
                    session.org_member.email,
                    seen("authorization"),
                    seen("x-api-key")
                )
            }),
        )
        .layer(auth)
}

#[tokio::test]
async fn a_bearer_token_is_the_same_key_as_in_x_api_key() {
    use composio_auth::CredentialHeader;
    let composio = composio().await;
    let auth = builder(&composio)
        .credential_headers([CredentialHeader::ApiKey, CredentialHeader::Bearer])
        .build()
        .unwrap();
    let client = Client::new(serve(bearer_app(auth.clone())).await);
    let bearer = format!("Bearer {ALICE}");
    let answer = client.get("/me", &[("authorization", &bearer)]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        "alice@example.com authorization=seen x-api-key=-"
    );
    // Composio was asked as for x-api-key.
    let asked = composio.last_request_headers().unwrap();
    assert_eq!(asked["x-api-key"], ALICE);
    assert!(!asked.contains_key("authorization"));
    // The same key in x-api-key is the same cache entry; the scheme in any case.
    assert_eq!(client.me(ALICE).await.status, 200);
    let lower = format!("bearer {ALICE}");
    assert_eq!(
        client.get("/me", &[("authorization", &lower)]).await.status,
        200
    );
    assert_eq!(composio.calls(), 1);
    assert_eq!(auth.cached().sessions, 1);
    // Invalidating the key forgets it however it was sent.
    composio.revoke(ALICE);
    auth.invalidate(ALICE).await.unwrap();
    assert_eq!(
        client
            .get("/me", &[("authorization", &bearer)])
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn a_bearer_token_with_another_credential_is_ambiguous_and_other_schemes_are_none() {
    use composio_auth::CredentialHeader;
    let composio = composio().await;
    let auth = builder(&composio)
        .credential_headers([CredentialHeader::ApiKey, CredentialHeader::Bearer])
        .build()
        .unwrap();
    let client = Client::new(serve(bearer_app(auth)).await);
    let bearer = format!("Bearer {ALICE}");
    let both = client
        .get("/me", &[("authorization", &bearer), ("x-api-key", ALICE)])
        .await;
    assert_eq!(both.status, 401);
    assert_eq!(both.envelope().error.code, 10401);
    let basic = client
        .get("/me", &[("authorization", "Basic dXNlcjpwYXNz")])
        .await;
    assert_eq!(basic.status, 401);
    assert_eq!(basic.envelope().error.code, 906);
    let challenge = basic.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        challenge,
        r#"ApiKey realm="composio", header="x-api-key", Bearer realm="composio""#
    );
    // Another scheme beside a key is not a second credential.
    let beside = client
        .get(
            "/me",
            &[
                ("authorization", "Basic dXNlcjpwYXNz"),
                ("x-api-key", ALICE),
            ],
        )
        .await;
    assert_eq!(beside.status, 200);
    assert_eq!(composio.calls(), 1);
}

#[tokio::test]
async fn without_bearer_authorization_is_left_alone_and_hide_credential_removes_it() {
    use composio_auth::CredentialHeader;
    let composio = composio().await;
    let plain = Client::new(serve(bearer_app(builder(&composio).build().unwrap())).await);
    let bearer = format!("Bearer {ALICE}");
    // Not a credential: no key (906), and beside x-api-key it reaches the app.
    let alone = plain.get("/me", &[("authorization", &bearer)]).await;
    assert_eq!(alone.status, 401);
    assert_eq!(alone.envelope().error.code, 906);
    let beside = plain
        .get("/me", &[("authorization", &bearer), ("x-api-key", ALICE)])
        .await;
    assert_eq!(beside.status, 200);
    assert_eq!(
        beside.body,
        "alice@example.com authorization=seen x-api-key=seen"
    );
    // Bearer accepted and hidden: the app sees neither.
    let hidden = builder(&composio)
        .credential_headers([CredentialHeader::Bearer])
        .hide_credential(true)
        .build()
        .unwrap();
    let hidden = Client::new(serve(bearer_app(hidden)).await);
    let answer = hidden.get("/me", &[("authorization", &bearer)]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "alice@example.com authorization=- x-api-key=-");
    // x-api-key on a layer that takes only Bearer: not accepted, and said so.
    let refused = hidden.me(ALICE).await;
    assert_eq!(refused.status, 401);
    let fix = refused.envelope().error.suggested_fix.unwrap_or_default();
    assert!(fix.contains("Authorization: Bearer"), "{fix}");
}
