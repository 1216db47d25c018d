//! `composio-auth-server` over TCP and unix sockets, the real binary against the
//! stand-in: the verdicts a proxy gets, the identity headers, per-route policies
//! on one cache, a user key's scopes, the operators' endpoints, bad input, and a
//! unix socket's mode, stale file and removal.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use composio_auth::ComposioAuthLayer;
use serde_json::Value;
use support::{
    bad_selectors, client, composio, in_scope, mode_of, request, run_to_exit, Server, SocketDir,
    ADMIN, MEMBER, NO_PROJECT, SCOPE_A, SCOPE_B, USER, USER_KEYS,
};

async fn get(server: &Server, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = client().get(server.url(path));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    request.send().await.expect("the server answers")
}

/// GET `path` with `headers` (a name may repeat).
async fn get_with<V: AsRef<str>>(
    server: &Server,
    path: &str,
    headers: &[(&str, V)],
) -> reqwest::Response {
    let mut request = client().get(server.url(path));
    for (name, value) in headers {
        request = request.header(*name, value.as_ref());
    }
    request.send().await.expect("the server answers")
}

#[tokio::test]
async fn allow_is_an_empty_200_with_the_identity_headers() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &[]);
    let allowed = get(&server, "/verify", Some(ADMIN)).await;
    assert_eq!(allowed.status(), 200);
    let headers = allowed.headers().clone();
    assert_eq!(headers["x-composio-member-email"], "alice@example.com");
    assert_eq!(headers["x-composio-member-role"], "admin");
    assert_eq!(headers["x-composio-member-name"], "Alice");
    assert!(headers.contains_key("x-composio-project-id"));
    assert!(headers.contains_key("x-composio-org-id"));
    assert!(headers.contains_key("x-composio-api-key-id"));
    for (name, value) in &headers {
        let value = value.to_str().unwrap();
        assert!(!value.contains(ADMIN), "{name} carries the key");
    }
    assert_eq!(allowed.text().await.unwrap(), "");

    // A null project: no project or org headers at all; a non-ASCII name,
    // percent-encoded UTF-8.
    let carol = get(&server, "/verify", Some(NO_PROJECT)).await;
    assert_eq!(carol.status(), 200);
    let headers = carol.headers();
    assert!(!headers.contains_key("x-composio-project-id"));
    assert!(!headers.contains_key("x-composio-org-id"));
    assert_eq!(headers["x-composio-member-name"], "Carol%20Zo%C3%AB");
}

#[tokio::test]
async fn deny_is_the_layers_answer_byte_for_byte() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &[]);
    let layer = ComposioAuthLayer::builder()
        .base_url(composio.base_url())
        .build()
        .unwrap();
    for key in [None, Some("ak_not_a_key_0123456789")] {
        let mut headers = axum::http::HeaderMap::new();
        if let Some(key) = key {
            headers.insert("x-api-key", key.parse().unwrap());
        }
        let expected = layer.verify(&headers).await.unwrap_err();
        let answer = get(&server, "/verify", key).await;
        assert_eq!(answer.status().as_u16(), expected.status().as_u16());
        for name in ["content-type", "www-authenticate"] {
            assert_eq!(
                answer.headers()[name].as_bytes(),
                expected.headers()[name].as_bytes()
            );
        }
        let body = answer.text().await.unwrap();
        assert_eq!(body, serde_json::to_string(expected.envelope()).unwrap());
    }
}

#[tokio::test]
async fn composio_down_is_503_with_retry_after() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let server = Server::start(&nowhere, &["--timeout", "2s"]);
    let answer = get(&server, "/verify", Some(ADMIN)).await;
    assert_eq!(answer.status(), 503);
    assert!(answer.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn policies_per_route_share_one_cache() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &[]);
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(get(&server, "/verify?role=admin", Some(MEMBER)).await),
        403
    );
    assert_eq!(
        status(get(&server, "/verify?role=admin&role=member", Some(MEMBER)).await),
        200
    );
    assert_eq!(
        status(get(&server, "/verify?role=member&plan=free", Some(MEMBER)).await),
        403
    );
    assert_eq!(status(get(&server, "/verify", Some(MEMBER)).await), 200);
    // A project policy needs a project: none for an org key.
    assert_eq!(
        status(get(&server, "/verify?project=p", Some(NO_PROJECT)).await),
        403
    );

    // One key on every route and endpoint, 50 requests: one upstream call.
    let paths = [
        "/verify",
        "/verify?role=admin",
        "/ext-authz/anything",
        "/verify?plan=BUSINESS",
    ];
    for n in 0..50 {
        let answer = get(&server, paths[n % paths.len()], Some(ADMIN)).await;
        assert_eq!(answer.status(), 200);
    }
    assert_eq!(composio.calls_for(ADMIN), 1);
}

#[tokio::test]
async fn an_unknown_policy_parameter_is_a_500_never_an_allow() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &[]);
    let answer = get(&server, "/verify?rol=admin", Some(ADMIN)).await;
    assert_eq!(answer.status(), 500);
    assert!(answer
        .text()
        .await
        .unwrap()
        .contains("unknown policy parameter \"rol\""));
    assert_eq!(composio.calls(), 0);
}

#[tokio::test]
async fn ext_authz_ignores_the_clients_path_and_query() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &[]);
    // What Envoy sends by default: Host, Method, Path (the client's, appended),
    // the allowed headers, Content-Length: 0.
    let answer = client()
        .post(server.url("/ext-authz/verify?role=admin&rol=x"))
        .header("x-api-key", MEMBER)
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-composio-member-role"], "member");
    let answer = client()
        .post(server.url("/ext-authz"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
}

#[tokio::test]
async fn a_user_key_in_two_scopes_is_two_identities_each_verified_once() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &USER_KEYS);
    let email = |answer: &reqwest::Response| {
        assert_eq!(answer.status(), 200, "{:?}", answer.headers());
        answer.headers()["x-composio-member-email"].clone()
    };
    // /verify, and Envoy's HTTP ext_authz (the selectors are among its
    // allowed_headers): the same verdicts from the same cache.
    for path in ["/verify", "/ext-authz/orders", "/verify?role=member"] {
        for _ in 0..3 {
            let a = get_with(&server, path, &in_scope(SCOPE_A)).await;
            assert_eq!(email(&a), "ann@example.com", "{path}");
            let b = get_with(&server, path, &in_scope(SCOPE_B)).await;
            assert_eq!(email(&b), "ben@example.com", "{path}");
        }
    }
    assert_eq!(composio.calls_for_scope(USER, SCOPE_A.0, SCOPE_A.1), 1);
    assert_eq!(composio.calls_for_scope(USER, SCOPE_B.0, SCOPE_B.1), 1);
    // Without selectors: the key's own default project.
    let default = get_with(&server, "/verify", &[("x-user-api-key", USER)]).await;
    assert_eq!(email(&default), "dave@example.com");
    assert_eq!(composio.calls_for(USER), 3);
    assert_eq!(composio.calls_with_selectors(), 2);

    // A scope Composio does not know (its 404): a 401 with Composio's envelope,
    // cached for that scope.
    let elsewhere = in_scope(("org_elsewhere0123", "proj_elsewhere0123"));
    for _ in 0..2 {
        let refused = get_with(&server, "/verify", &elsewhere).await;
        assert_eq!(refused.status(), 401);
        let envelope: Value = refused.json().await.unwrap();
        assert_eq!(envelope["error"]["request_id"], "standin-request");
    }
    assert_eq!(composio.calls_for(USER), 4);
}

#[tokio::test]
async fn a_selector_that_chooses_no_scope_is_a_400_envelope_asking_nobody() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &USER_KEYS);
    let layer = ComposioAuthLayer::builder()
        .base_url(composio.base_url())
        .credential_headers([
            composio_auth::CredentialHeader::ApiKey,
            composio_auth::CredentialHeader::UserApiKey,
        ])
        .build()
        .unwrap();
    for headers in bad_selectors() {
        let mut map = axum::http::HeaderMap::new();
        for (name, value) in &headers {
            map.append(*name, value.parse().unwrap());
        }
        let expected = layer.verify(&map).await.unwrap_err();
        for path in ["/verify", "/ext-authz/orders"] {
            let answer = get_with(&server, path, &headers).await;
            assert_eq!(answer.status(), 400, "{path} {headers:?}");
            assert_eq!(answer.headers()["content-type"], "application/json");
            let body = answer.text().await.unwrap();
            assert_eq!(body, serde_json::to_string(expected.envelope()).unwrap());
            let envelope: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(envelope["error"]["status"], 400);
            assert_eq!(envelope["error"]["code"], 10400);
            assert_eq!(envelope["error"]["slug"], "HTTP_BadRequest");
        }
    }
    assert_eq!(composio.calls(), 0);
    assert_eq!(composio.calls_with_selectors(), 0);
}

#[tokio::test]
async fn selectors_beside_a_project_key_are_ignored_and_never_forwarded() {
    let composio = composio().await;
    for args in [&[][..], &USER_KEYS[..]] {
        let server = Server::start(&composio.base_url(), args);
        let beside = |(org, project)| {
            [
                ("x-api-key", ADMIN),
                ("x-org-id", org),
                ("x-project-id", project),
            ]
        };
        for headers in [
            &beside(SCOPE_A)[..],
            &beside(SCOPE_B)[..],
            // Even a lone or malformed one.
            &[("x-api-key", ADMIN), ("x-org-id", "not an id")][..],
        ] {
            let answer = get_with(&server, "/verify", headers).await;
            assert_eq!(answer.status(), 200, "{args:?} {headers:?}");
            assert_eq!(
                answer.headers()["x-composio-member-email"],
                "alice@example.com"
            );
        }
    }
    // One call per server: one cache entry for the key, whatever the selectors.
    assert_eq!(composio.calls_for(ADMIN), 2);
    assert_eq!(composio.calls_with_selectors(), 0);
}

#[tokio::test]
async fn healthz_and_metrics() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &[]);
    assert_eq!(get(&server, "/healthz", None).await.status(), 200);
    assert_eq!(get(&server, "/verify", Some(ADMIN)).await.status(), 200);
    let metrics = get(&server, "/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("composio_auth_requests_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn only_the_admin_listener_invalidates() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &["--admin-listen", "127.0.0.1:0"]);
    assert_eq!(get(&server, "/verify", Some(ADMIN)).await.status(), 200);
    composio.revoke(ADMIN);
    // A client on the proxies' listener cannot reach it.
    let refused = client()
        .post(server.url("/invalidate"))
        .body(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404);
    assert_eq!(get(&server, "/verify", Some(ADMIN)).await.status(), 200);

    let admin = server.admin.unwrap();
    let done = client()
        .post(format!("http://{admin}/invalidate"))
        .body(format!("{ADMIN}\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 204);
    assert_eq!(get(&server, "/verify", Some(ADMIN)).await.status(), 401);
    assert_eq!(composio.calls_for(ADMIN), 2);
    let empty = client()
        .post(format!("http://{admin}/invalidate"))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 400);
    let all = client()
        .post(format!("http://{admin}/invalidate-all"))
        .send()
        .await
        .unwrap();
    assert_eq!(all.status(), 204);
}

/// Writes `request` on a fresh connection and reads the status line.
fn raw_status(server: &Server, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The server may answer (and close) before all of a huge request is written.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let mut buffer = [0; 4096];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().unwrap_or_default().to_owned()
}

// Multi-threaded: `raw_status` blocks its thread, and the stand-in runs here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_answer_and_never_a_crash() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &[]);
    // A 64 KiB key: not a key.
    let long = "k".repeat(64 * 1024);
    let answer = get(&server, "/verify", Some(&long)).await;
    assert_eq!(answer.status(), 401);
    // 10,000 headers: refused by the HTTP server.
    let mut many = b"GET /verify HTTP/1.1\r\nHost: a\r\n".to_vec();
    for n in 0..10_000 {
        many.extend_from_slice(format!("x-h{n}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let status = raw_status(&server, &many);
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    // A key that is not UTF-8.
    let odd =
        b"GET /verify HTTP/1.1\r\nHost: a\r\nx-api-key: ak_\xff\xfe_0123456789\r\n\r\n".to_vec();
    assert!(raw_status(&server, &odd).starts_with("HTTP/1.1 401"));
    // A body announced and never sent: answered without reading it.
    let body = format!(
        "POST /verify HTTP/1.1\r\nHost: a\r\nx-api-key: {ADMIN}\r\nContent-Length: 10000000\r\n\r\n"
    );
    assert!(raw_status(&server, body.as_bytes()).starts_with("HTTP/1.1 200"));
    // Still serving.
    assert_eq!(get(&server, "/healthz", None).await.status(), 200);
    assert_eq!(composio.calls(), 1);
}

#[test]
fn bad_flags_are_one_line_and_exit_2_without_secrets() {
    let cases: [&[&str]; 4] = [
        &["--ttl", "soon"],
        &["--listen", "not-an-address"],
        &["--redis-url", "redis://:hunter2@127.0.0.1:6379"],
        &["--credential-header", "x-secret-header"],
    ];
    for args in cases {
        let (code, stderr) = run_to_exit(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("composio-auth-server: "), "{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
    // A pepper file that is too short: the library's error, never the pepper.
    let dir = std::env::temp_dir().join(format!("composio-auth-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pepper = dir.join("pepper");
    std::fs::write(&pepper, "short-pepper-hunter3").unwrap();
    let (code, stderr) = run_to_exit(&[
        "--redis-url",
        "redis://:hunter2@127.0.0.1:6379",
        "--redis-pepper-file",
        pepper.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        !stderr.contains("hunter2") && !stderr.contains("hunter3"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_demo_makes_its_requests_and_exits_0() {
    let (code, stderr) = run_to_exit(&["--demo", "--exit"]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn help_never_prints_a_redis_url_from_the_environment() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_composio-auth-server"))
        .arg("--help")
        .env("COMPOSIO_AUTH_REDIS_URL", "redis://:hunter2@127.0.0.1:6379")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("COMPOSIO_AUTH_REDIS_URL"));
    assert!(!help.contains("hunter2"), "{help}");
}

#[tokio::test]
async fn a_closed_stdout_never_stops_the_server() {
    let port = support::proxy::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_composio-auth-server"))
        .args(["--demo", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Nobody reads what it prints: every line it writes fails.
    drop(child.stdout.take());
    let url = format!("http://127.0.0.1:{port}/verify");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        match client()
            .get(&url)
            .header("x-api-key", "ak_demo_alice_0123456789")
            .send()
            .await
        {
            Ok(answer) => break answer,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => panic!("the server never answered: {error}"),
        }
    };
    assert_eq!(answer.status(), 200);
    assert!(child.try_wait().unwrap().is_none(), "the server stopped");
    let _ = child.kill();
    let _ = child.wait();
}

// Unix sockets: `--listen unix:/path` and the admin listener on one, their mode
// (`--socket-mode`), the stale file a crash leaves, bad paths and modes, and
// the file removed at exit.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_unix_socket_the_server_answers_and_removes_it_at_exit() {
    let composio = composio().await;
    let dir = SocketDir::new();
    let admin = dir.unix("admin.sock");
    let args = ["--admin-listen", admin.as_str()];
    let mut server = Server::start_unix(&composio.base_url(), &dir.join("auth.sock"), &args);
    let admin = server.admin.clone().unwrap();
    // The default mode.
    assert_eq!(mode_of(&server.addr), 0o660);
    assert_eq!(mode_of(&admin), 0o660);

    let allowed = server.get("/verify", &[("x-api-key", ADMIN)]).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.headers["x-composio-member-email"],
        "alice@example.com"
    );
    assert_eq!(allowed.headers["x-composio-member-role"], "admin");
    assert!(allowed.headers.contains_key("x-composio-project-id"));
    for (name, value) in &allowed.headers {
        assert!(
            !value.to_str().unwrap().contains(ADMIN),
            "{name} carries the key"
        );
    }
    assert_eq!(allowed.body, "");
    let refused = server
        .get("/verify", &[("x-api-key", "ak_not_a_key_0123456789")])
        .await;
    assert_eq!(refused.status, 401);
    assert!(refused.headers.contains_key("www-authenticate"));
    let envelope: Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(envelope["error"]["code"], 801);
    assert_eq!(server.get("/verify", &[]).await.status, 401);
    for probe in ["/healthz", "/readyz"] {
        let answer = server.get(probe, &[]).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, "ok"),
            "{probe}"
        );
    }

    // The admin socket invalidates.
    composio.revoke(ADMIN);
    let done = request(&admin, "POST", "/invalidate", &[], ADMIN).await;
    assert_eq!(done.status, 204);
    let revoked = server.get("/verify", &[("x-api-key", ADMIN)]).await;
    assert_eq!(revoked.status, 401);
    assert_eq!(composio.calls_for(ADMIN), 2);

    let status = tokio::task::block_in_place(|| server.terminate());
    assert!(status.success(), "{status}");
    assert!(!server.addr.exists(), "the socket outlived the server");
    assert!(!admin.exists(), "the admin socket outlived the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_mode_sets_every_sockets_permissions_and_sigint_removes_them() {
    let composio = composio().await;
    let dir = SocketDir::new();
    let admin = dir.unix("admin.sock");
    let args = ["--socket-mode", "600", "--admin-listen", admin.as_str()];
    let mut server = Server::start_unix(&composio.base_url(), &dir.join("auth.sock"), &args);
    let admin = server.admin.clone().unwrap();
    assert_eq!(mode_of(&server.addr), 0o600);
    assert_eq!(mode_of(&admin), 0o600);
    assert_eq!(server.get("/healthz", &[]).await.status, 200);
    server.signal("INT");
    assert!(tokio::task::block_in_place(|| server.wait()).success());
    assert!(!server.addr.exists() && !admin.exists());

    let args = ["--socket-mode", "0666"];
    let server = Server::start_unix(&composio.base_url(), &dir.join("open.sock"), &args);
    assert_eq!(mode_of(&server.addr), 0o666);
    assert_eq!(server.get("/healthz", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_but_a_live_one_or_another_file_is_refused() {
    let composio = composio().await;
    let dir = SocketDir::new();
    // A crash's leftover: a socket file nobody listens on.
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(UnixStream::connect(&stale).is_err());
    let server = Server::start_unix(&composio.base_url(), &stale, &[]);
    let allowed = server.get("/verify", &[("x-api-key", ADMIN)]).await;
    assert_eq!(allowed.status, 200);
    drop(server);

    // Another process listens on it: exit 2, its socket as it was.
    let live = dir.join("live.sock");
    let _listener = UnixListener::bind(&live).unwrap();
    let inode = std::fs::metadata(&live).unwrap().ino();
    let refused = |name: &str, why: &str| {
        let (code, stderr) = run_to_exit(&["--listen", &dir.unix(name)]);
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains(why), "{name}: {stderr}");
    };
    refused("live.sock", "already in use");
    assert_eq!(std::fs::metadata(&live).unwrap().ino(), inode);
    UnixStream::connect(&live).expect("the socket still listens");

    // Not a socket: a file, a directory, a link (to a stale socket): each left
    // as it is.
    std::fs::write(dir.join("file.sock"), "keep me").unwrap();
    refused("file.sock", "not a socket");
    assert_eq!(
        std::fs::read_to_string(dir.join("file.sock")).unwrap(),
        "keep me"
    );
    std::fs::create_dir(dir.join("dir.sock")).unwrap();
    refused("dir.sock", "not a socket");
    assert!(dir.join("dir.sock").is_dir());
    let target = dir.join("target.sock");
    drop(UnixListener::bind(&target).unwrap());
    std::os::unix::fs::symlink(&target, dir.join("link.sock")).unwrap();
    refused("link.sock", "not a socket");
    assert!(dir.join("link.sock").is_symlink() && target.exists());
}

#[test]
fn bad_unix_addresses_and_socket_modes_are_one_line_and_exit_2() {
    let dir = SocketDir::new();
    std::fs::write(dir.join("file"), "").unwrap();
    let too_long = format!("unix:/tmp/{}", "s".repeat(103));
    assert_eq!(too_long.len() - "unix:".len(), 108);
    let (missing, not_a_dir) = (dir.unix("missing/auth.sock"), dir.unix("file/auth.sock"));
    // Beside a good --listen, bound first: a failure after it removes it.
    let ok = dir.unix("ok.sock");
    let missing_admin = dir.unix("missing/admin.sock");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--listen", &missing], "no directory"),
        (vec!["--listen", &not_a_dir], "not a directory"),
        (vec!["--listen", &too_long], "at most 107 bytes"),
        (vec!["--listen", "unix:"], "path"),
        (vec!["--listen", &ok, "--grpc-listen", "unix:"], "path"),
        (
            vec!["--listen", &ok, "--admin-listen", &missing_admin],
            "no directory",
        ),
        (vec!["--listen", &ok, "--socket-mode", "999"], "octal"),
        (vec!["--listen", &ok, "--socket-mode", "rw"], "octal"),
        (
            vec!["--listen", &ok, "--socket-mode", "1777"],
            "at most 0777",
        ),
        (
            vec!["--listen", &ok, "--socket-mode", "10000"],
            "at most 0777",
        ),
    ];
    for (args, why) in &cases {
        let (code, stderr) = run_to_exit(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("composio-auth-server: "), "{stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
        // Bound before the failure, or never: no socket left behind.
        assert!(!dir.join("ok.sock").exists(), "{args:?} left the socket");
    }
}
