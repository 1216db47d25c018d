//! Envoy's gRPC `Check` (`--grpc-listen`) with a tonic client built from
//! `envoy-types` (Envoy is not installable here): the verdicts, the identity
//! headers as non-appending options, `headers_to_remove`, policies from
//! `context_extensions`, and a user key's scopes from the client's headers.

mod support;

use envoy_types::ext_authz::v3::pb::{CheckResponse, HeaderAppendAction, HttpResponse};
use support::{
    check, client, composio, in_scope, mode_of, Server, SocketDir, ADMIN, MEMBER, NO_PROJECT,
    SCOPE_A, SCOPE_B, USER, USER_KEYS,
};

fn code(answer: &CheckResponse) -> i32 {
    answer.status.as_ref().map_or(-1, |s| s.code)
}

/// One header option of an answer: name, value, whether it overwrites, whether
/// the deprecated `append` is true (or unset).
type Option4 = (String, String, bool, bool);

/// The allowed answer's headers, and its `headers_to_remove`.
fn ok_headers(answer: &CheckResponse) -> (Vec<Option4>, Vec<String>) {
    let Some(HttpResponse::OkResponse(ok)) = &answer.http_response else {
        panic!("not an ok_response: {answer:?}");
    };
    let headers = ok
        .headers
        .iter()
        .map(|option| {
            let header = option.header.clone().unwrap();
            #[allow(deprecated)]
            let append = option.append.as_ref().is_none_or(|a| a.value);
            let overwrite =
                option.append_action == i32::from(HeaderAppendAction::OverwriteIfExistsOrAdd);
            (header.key, header.value, overwrite, append)
        })
        .collect();
    (headers, ok.headers_to_remove.clone())
}

/// The denied answer: HTTP status, headers, body.
fn denied(answer: &CheckResponse) -> (i32, Vec<(String, String)>, String) {
    let Some(HttpResponse::DeniedResponse(denied)) = &answer.http_response else {
        panic!("not a denied_response: {answer:?}");
    };
    let headers = denied
        .headers
        .iter()
        .map(|o| {
            let h = o.header.clone().unwrap();
            (h.key, h.value)
        })
        .collect();
    (
        denied.status.as_ref().map_or(0, |s| s.code),
        headers,
        denied.body.clone(),
    )
}

#[tokio::test]
async fn check_allows_with_identity_headers_that_replace_the_clients() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &["--grpc-listen", "127.0.0.1:0"]);
    let grpc = server.grpc.unwrap();
    let answer = check(
        grpc,
        &[
            ("x-api-key", ADMIN),
            ("x-composio-member-email", "boss@corp"),
        ],
        &[],
    )
    .await;
    assert_eq!(code(&answer), 0);
    let (headers, removed) = ok_headers(&answer);
    assert!(headers.contains(&(
        "x-composio-member-email".to_owned(),
        "alice@example.com".to_owned(),
        true,
        false
    )));
    assert!(headers
        .iter()
        .all(|(_, _, overwrite, append)| *overwrite && !*append));
    assert!(headers
        .iter()
        .all(|(_, value, _, _)| !value.contains(ADMIN)));
    assert!(removed.is_empty(), "{removed:?}");

    // No project: no project header.
    let answer = check(grpc, &[("x-api-key", NO_PROJECT)], &[]).await;
    let (headers, _) = ok_headers(&answer);
    assert!(headers
        .iter()
        .all(|(name, ..)| name != "x-composio-project-id"));
    assert_eq!(composio.calls(), 2);
}

#[tokio::test]
async fn check_denies_as_verify_does() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &["--grpc-listen", "127.0.0.1:0"]);
    let grpc = server.grpc.unwrap();

    let answer = check(grpc, &[], &[]).await;
    assert_eq!(code(&answer), 16);
    let (status, headers, body) = denied(&answer);
    assert_eq!(status, 401);
    let direct = client().get(server.url("/verify")).send().await.unwrap();
    let challenge = direct.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(headers.contains(&("www-authenticate".to_owned(), challenge)));
    assert_eq!(body, direct.text().await.unwrap());

    // The route's policy from context_extensions: a member on an admin route.
    let answer = check(grpc, &[("x-api-key", MEMBER)], &[("role", "admin,owner")]).await;
    assert_eq!(code(&answer), 7);
    assert_eq!(denied(&answer).0, 403);
    let answer = check(grpc, &[("x-api-key", MEMBER)], &[("role", "owner, member")]).await;
    assert_eq!(code(&answer), 0);
    // An unknown name: 500, never an allow.
    let answer = check(grpc, &[("x-api-key", ADMIN)], &[("rol", "admin")]).await;
    assert_eq!((code(&answer), denied(&answer).0), (13, 500));
}

#[tokio::test]
async fn check_is_unavailable_when_composio_cannot_decide() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let server = Server::start(
        &nowhere,
        &["--grpc-listen", "127.0.0.1:0", "--timeout", "2s"],
    );
    let answer = check(server.grpc.unwrap(), &[("x-api-key", ADMIN)], &[]).await;
    assert_eq!(code(&answer), 14);
    let (status, headers, _) = denied(&answer);
    assert_eq!(status, 503);
    assert!(headers.iter().any(|(name, _)| name == "retry-after"));
}

#[tokio::test]
async fn hide_credential_asks_envoy_to_remove_the_key() {
    let composio = composio().await;
    let server = Server::start(
        &composio.base_url(),
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--hide-credential",
            "--credential-header",
            "x-api-key",
            "--credential-header",
            "bearer",
        ],
    );
    let grpc = server.grpc.unwrap();
    let answer = check(
        grpc,
        &[
            ("x-api-key", ADMIN),
            ("authorization", "Basic dXNlcjpwdw=="),
        ],
        &[],
    )
    .await;
    assert_eq!(code(&answer), 0);
    assert_eq!(ok_headers(&answer).1, ["x-api-key"]);
    let bearer = format!("Bearer {ADMIN}");
    let answer = check(grpc, &[("authorization", &bearer)], &[]).await;
    assert_eq!(ok_headers(&answer).1, ["authorization"]);
    assert_eq!(composio.calls(), 1);
}

#[tokio::test]
async fn check_reads_a_user_keys_scope_from_the_clients_headers() {
    let composio = composio().await;
    let mut args = vec!["--grpc-listen", "127.0.0.1:0"];
    args.extend(USER_KEYS);
    let server = Server::start(&composio.base_url(), &args);
    let grpc = server.grpc.unwrap();
    let email = |answer: &CheckResponse| {
        assert_eq!(code(answer), 0, "{answer:?}");
        let (headers, _) = ok_headers(answer);
        headers
            .into_iter()
            .find(|(name, ..)| name == "x-composio-member-email")
            .map(|(_, value, ..)| value)
            .unwrap()
    };
    for _ in 0..3 {
        let a = check(grpc, &in_scope(SCOPE_A), &[]).await;
        assert_eq!(email(&a), "ann@example.com");
        let b = check(grpc, &in_scope(SCOPE_B), &[("role", "admin,member")]).await;
        assert_eq!(email(&b), "ben@example.com");
    }
    let default = check(grpc, &[("x-user-api-key", USER)], &[]).await;
    assert_eq!(email(&default), "dave@example.com");
    assert_eq!(composio.calls_for_scope(USER, SCOPE_A.0, SCOPE_A.1), 1);
    assert_eq!(composio.calls_for_scope(USER, SCOPE_B.0, SCOPE_B.1), 1);
    assert_eq!(composio.calls(), 3);

    // One selector without the other: INVALID_ARGUMENT, and Envoy answers the
    // client 400 with the envelope /verify answers.
    for lone in [("x-org-id", SCOPE_A.0), ("x-project-id", SCOPE_A.1)] {
        let headers = [("x-user-api-key", USER), lone];
        let answer = check(grpc, &headers, &[]).await;
        assert_eq!(code(&answer), 3, "{answer:?}");
        let (status, headers_out, body) = denied(&answer);
        assert_eq!(status, 400);
        assert!(headers_out.contains(&("content-type".to_owned(), "application/json".to_owned())));
        let envelope: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(envelope["error"]["status"], 400);
        assert_eq!(envelope["error"]["code"], 10400);
        assert_eq!(envelope["error"]["slug"], "HTTP_BadRequest");
        let direct = client()
            .get(server.url("/verify"))
            .header("x-user-api-key", USER)
            .header(lone.0, lone.1)
            .send()
            .await
            .unwrap();
        assert_eq!(direct.status(), 400);
        assert_eq!(body, direct.text().await.unwrap());
    }
    assert_eq!(composio.calls(), 3, "a lone selector asks nobody");
}

/// `--grpc-listen unix:/path`: the same verdicts over a unix socket (a tonic
/// channel through a `UnixStream` connector), the socket's mode the default, and
/// the socket gone once the server has drained on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_over_a_unix_socket_answers_as_over_tcp() {
    let composio = composio().await;
    let dir = SocketDir::new();
    let grpc = dir.unix("grpc.sock");
    let args = ["--grpc-listen", grpc.as_str()];
    let mut server = Server::start_unix(&composio.base_url(), &dir.join("auth.sock"), &args);
    let socket = server.grpc.clone().unwrap();
    assert_eq!(mode_of(&socket), 0o660);

    let answer = check(socket.clone(), &[("x-api-key", ADMIN)], &[]).await;
    assert_eq!(code(&answer), 0);
    let (headers, _) = ok_headers(&answer);
    assert!(headers.contains(&(
        "x-composio-member-email".to_owned(),
        "alice@example.com".to_owned(),
        true,
        false
    )));
    let bad = [("x-api-key", "ak_not_a_key_0123456789")];
    let answer = check(socket.clone(), &bad, &[]).await;
    assert_eq!(code(&answer), 16);
    let (status, _, body) = denied(&answer);
    assert_eq!(status, 401);
    assert_eq!(body, server.get("/verify", &bad).await.body);
    let answer = check(
        socket.clone(),
        &[("x-api-key", MEMBER)],
        &[("role", "admin")],
    )
    .await;
    assert_eq!((code(&answer), denied(&answer).0), (7, 403));
    assert_eq!(composio.calls(), 3);

    assert!(tokio::task::block_in_place(|| server.terminate()).success());
    assert!(!socket.exists() && !server.addr.exists());
}
