//! The proxy recipes the README links (`server/recipes/`) with the real proxies
//! (Debian's nginx 1.22 and Caddy 2.6.2) in front of the real server and an app
//! that shows what it receives.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use composio_auth::testing::StandIn;
use serde_json::Value;
use support::proxy::{alive_in_group, echo_app, recipes, Proxy, CADDY_RECIPE, NGINX_RECIPES};
use support::{
    client, composio, in_scope, Address, Server, SocketDir, ADMIN, MEMBER, NO_PROJECT, SCOPE_A,
    SCOPE_B, USER, USER_KEYS,
};

/// Every file under `dir`, as a path relative to `root`.
fn files_under(root: &Path, dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(root, &path));
        } else {
            let relative = path.strip_prefix(root).unwrap();
            files.push(relative.to_str().unwrap().to_owned());
        }
    }
    files
}

#[test]
fn the_readme_links_every_recipe_file_and_the_tests_run_those_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(
        readme.len() < 10 * 1024,
        "README.md is {} bytes",
        readme.len()
    );
    // Markdown links into recipes/: "](recipes/...)".
    let linked: BTreeSet<&str> = readme
        .match_indices("](recipes/")
        .map(|(at, _)| readme[at + 2..].split(')').next().unwrap())
        .collect();
    for link in &linked {
        assert!(
            dir.join(link).is_file(),
            "README links {link}: no such file"
        );
    }
    let shipped = files_under(&dir, &recipes());
    assert!(shipped.len() >= 6, "{shipped:?}");
    for file in &shipped {
        assert!(linked.contains(file.as_str()), "README never links {file}");
    }
    // What the proxies of these tests run is what the README links.
    for file in NGINX_RECIPES.iter().chain([&CADDY_RECIPE]) {
        assert!(
            linked.contains(format!("recipes/{file}").as_str()),
            "{file}"
        );
    }
    // Linked, not copied: no three lines of a recipe in a row appear in the
    // README (a copy would drift from the file the tests run).
    for file in &shipped {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        for window in lines.windows(3) {
            assert!(
                !readme.contains(&window.join("\n")),
                "README copies {file}: {window:?}"
            );
        }
    }
}

/// GET `path` through the proxy with `headers`.
async fn through(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("nginx answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_admits_refuses_and_never_lets_a_client_spoof_identity() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &[]);
    let nginx = Proxy::nginx(server.addr, echo_app().await);
    every_verdict_through(&nginx, &server, &composio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_admits_refuses_and_never_lets_a_client_spoof_identity() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &[]);
    let caddy = Proxy::caddy(server.addr, echo_app().await);
    every_verdict_through(&caddy, &server, &composio).await;
}

/// Each verdict row through `proxy`, the identity the app sees,
/// spoofing, the admin route's policy, and one upstream call per key.
async fn every_verdict_through<A: Address>(proxy: &Proxy, server: &Server<A>, composio: &StandIn) {
    // Allowed: the app sees the server's identity, not the client's.
    let spoofed = [
        ("x-api-key", ADMIN),
        ("x-composio-member-email", "boss@corp"),
        ("x-composio-member-role", "owner"),
    ];
    let answer = through(proxy, "/orders", &spoofed).await;
    assert_eq!(answer.status(), 200, "{}", proxy.log());
    let seen: Value = answer.json().await.unwrap();
    assert_eq!(seen["x-composio-member-email"], "alice@example.com");
    assert_eq!(seen["x-composio-member-role"], "admin");
    assert_eq!(seen["x-composio-member-name"], "Alice");

    // A session without a project: no project header reaches the app, spoofed
    // or not.
    let spoofed = [("x-api-key", NO_PROJECT), ("x-composio-project-id", "evil")];
    let seen: Value = through(proxy, "/orders", &spoofed)
        .await
        .json()
        .await
        .unwrap();
    assert!(seen.get("x-composio-project-id").is_none(), "{seen}");
    assert_eq!(seen["x-composio-member-name"], "Carol%20Zo%C3%AB");

    // Refused: the server's own envelope and challenge, not proxy's HTML.
    let direct = server.get("/verify", &[]).await;
    let direct_challenge = direct.headers["www-authenticate"].clone();
    let direct_body = direct.body;
    let refused = through(proxy, "/orders", &[]).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], direct_challenge);
    assert_eq!(refused.headers()["content-type"], "application/json");
    assert_eq!(refused.text().await.unwrap(), direct_body);
    let bad = through(
        proxy,
        "/orders",
        &[("x-api-key", "ak_not_a_key_0123456789")],
    )
    .await;
    assert_eq!(bad.status(), 401);
    let envelope: Value = bad.json().await.unwrap();
    assert_eq!(envelope["error"]["code"], 801);

    // The admin location's policy: a member gets 403 10403, an admin gets in.
    let member = through(proxy, "/admin/users", &[("x-api-key", MEMBER)]).await;
    assert_eq!(member.status(), 403);
    let envelope: Value = member.json().await.unwrap();
    assert_eq!(envelope["error"]["code"], 10403);
    let admin = through(proxy, "/admin/users", &[("x-api-key", ADMIN)]).await;
    assert_eq!(admin.status(), 200);

    // The member's session is cached: /orders is a hit.
    assert_eq!(
        through(proxy, "/orders", &[("x-api-key", MEMBER)])
            .await
            .status(),
        200
    );
    assert_eq!(composio.calls_for(MEMBER), 1);
    assert_eq!(composio.calls_for(ADMIN), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_passes_a_user_keys_scope_and_its_400_through() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &USER_KEYS);
    let nginx = Proxy::nginx(server.addr, echo_app().await);
    scopes_through(&nginx, &server, &composio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_passes_a_user_keys_scope_and_its_400_through() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &USER_KEYS);
    let caddy = Proxy::caddy(server.addr, echo_app().await);
    scopes_through(&caddy, &server, &composio).await;
}

/// A user key's selectors through `proxy`: each scope's identity reaches the app,
/// verified once; a lone selector reaches the client as the server's 400.
async fn scopes_through<A: Address>(proxy: &Proxy, server: &Server<A>, composio: &StandIn) {
    for _ in 0..3 {
        for (scope, email) in [(SCOPE_A, "ann@example.com"), (SCOPE_B, "ben@example.com")] {
            let mut headers = in_scope(scope).to_vec();
            headers.push(("x-composio-member-email", "boss@corp"));
            let answer = through(proxy, "/orders", &headers).await;
            assert_eq!(answer.status(), 200, "{}", proxy.log());
            let seen: Value = answer.json().await.unwrap();
            assert_eq!(seen["x-composio-member-email"], email);
        }
    }
    assert_eq!(composio.calls_for_scope(USER, SCOPE_A.0, SCOPE_A.1), 1);
    assert_eq!(composio.calls_for_scope(USER, SCOPE_B.0, SCOPE_B.1), 1);

    // One selector without the other: the server's 400 and envelope, never
    // nginx's 500 made a 503 "could not verify".
    for lone in [("x-org-id", SCOPE_A.0), ("x-project-id", SCOPE_A.1)] {
        let headers = [("x-user-api-key", USER), lone];
        let direct = server.get("/verify", &headers).await;
        assert_eq!(direct.status, 400);
        let direct_body = direct.body;
        let answer = through(proxy, "/orders", &headers).await;
        assert_eq!(answer.status(), 400, "{}", proxy.log());
        assert_eq!(answer.headers()["content-type"], "application/json");
        assert!(!answer.headers().contains_key("retry-after"));
        let body = answer.text().await.unwrap();
        assert_eq!(body, direct_body);
        let envelope: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(envelope["error"]["code"], 10400);
        assert_eq!(envelope["error"]["slug"], "HTTP_BadRequest");
    }
    assert_eq!(composio.calls(), 2, "a lone selector asks nobody");

    // A scope Composio does not know: the 401 and its envelope, as before.
    let elsewhere = in_scope(("org_elsewhere0123", "proj_elsewhere0123"));
    let answer = through(proxy, "/orders", &elsewhere).await;
    assert_eq!(answer.status(), 401, "{}", proxy.log());
    let envelope: Value = answer.json().await.unwrap();
    assert_eq!(envelope["error"]["request_id"], "standin-request");
}

// nginx reaching the server over a unix socket (`server unix:/path;` in the
// upstream): the same verdicts, scopes and refusals as over TCP.

/// The server's flags for nginx's workers (`nobody` under a root master) to
/// connect to its socket.
const OPEN_TO_NGINX: [&str; 2] = ["--socket-mode", "666"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_over_a_unix_socket_admits_refuses_and_never_lets_a_client_spoof_identity() {
    let composio = composio().await;
    let dir = SocketDir::new();
    let mut server =
        Server::start_unix(&composio.base_url(), &dir.join("auth.sock"), &OPEN_TO_NGINX);
    let nginx = Proxy::nginx(server.addr.as_path(), echo_app().await);
    every_verdict_through(&nginx, &server, &composio).await;

    // The server stopped, its socket gone with it: the same JSON 503.
    assert!(tokio::task::block_in_place(|| server.terminate()).success());
    assert!(!server.addr.exists());
    let answer = through(&nginx, "/orders", &[("x-api-key", ADMIN)]).await;
    assert_eq!(answer.status(), 503, "{}", nginx.log());
    assert_eq!(answer.headers()["retry-after"], "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_over_a_unix_socket_passes_a_user_keys_scope_and_its_400_through() {
    let composio = composio().await;
    let dir = SocketDir::new();
    let args = [&USER_KEYS[..], &OPEN_TO_NGINX].concat();
    let server = Server::start_unix(&composio.base_url(), &dir.join("auth.sock"), &args);
    let nginx = Proxy::nginx(server.addr.as_path(), echo_app().await);
    scopes_through(&nginx, &server, &composio).await;
}

/// Envoy is not installable here, so its HTTP recipe is read, not run: its
/// `allowed_headers` (which headers of the client's reach the server) keeps the
/// project key and adds a user key's, with both selectors.
#[test]
fn the_envoy_http_recipe_sends_a_user_key_and_its_selectors() {
    let recipe = std::fs::read_to_string(recipes().join("envoy/envoy-http.yaml")).unwrap();
    let mut lines = recipe
        .lines()
        .skip_while(|l| l.trim() != "allowed_headers:");
    let indent = |line: &str| line.len() - line.trim_start().len();
    let start = lines.next().expect("allowed_headers in the HTTP recipe");
    let allowed: BTreeSet<&str> = lines
        .take_while(|l| l.trim().starts_with('#') || indent(l) > indent(start))
        .filter_map(|l| l.trim().strip_prefix("- exact: "))
        .collect();
    for header in [
        "x-api-key",
        "x-request-id",
        "x-user-api-key",
        "x-org-id",
        "x-project-id",
    ] {
        assert!(allowed.contains(header), "{header}: {allowed:?}");
    }
    // The gRPC recipe filters nothing: Check carries every header.
    let grpc = std::fs::read_to_string(recipes().join("envoy/envoy-grpc.yaml")).unwrap();
    assert!(!grpc.lines().any(|l| l.trim() == "allowed_headers:"));
}

/// Traefik deletes a client's copies only of the headers a `forwardAuth` lists in
/// `authResponseHeaders`: every middleware of the recipe lists every identity
/// header the server answers.
#[test]
fn every_traefik_middleware_lists_every_identity_header() {
    let recipe = std::fs::read_to_string(recipes().join("traefik/dynamic.yml")).unwrap();
    let middlewares = recipe.matches("forwardAuth:").count();
    assert!(middlewares >= 2, "{middlewares}");
    for header in [
        "Project-Id",
        "Project-Name",
        "Org-Id",
        "Org-Name",
        "Org-Plan",
        "Api-Key-Id",
        "Member-Id",
        "Member-Email",
        "Member-Name",
        "Member-Role",
        "User-Id",
    ] {
        let listed = recipe
            .lines()
            .filter(|l| l.trim() == format!("- X-Composio-{header}"))
            .count();
        assert_eq!(listed, middlewares, "X-Composio-{header}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_retry_after_when_composio_cannot_decide() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let server = Server::start(&nowhere, &["--timeout", "2s"]);
    let app = echo_app().await;
    let nginx = Proxy::nginx(server.addr, app);
    let answer = through(&nginx, "/orders", &[("x-api-key", ADMIN)]).await;
    assert_eq!(answer.status(), 503, "{}", nginx.log());
    assert!(answer.headers().contains_key("retry-after"));
    let envelope: Value = answer.json().await.unwrap();
    assert_eq!(envelope["error"]["status"], 503);
    drop(nginx);

    // Caddy passes the server's own 503 through.
    let caddy = Proxy::caddy(server.addr, app);
    let answer = through(&caddy, "/orders", &[("x-api-key", ADMIN)]).await;
    assert_eq!(answer.status(), 503, "{}", caddy.log());
    assert!(answer.headers().contains_key("retry-after"));
    let envelope: Value = answer.json().await.unwrap();
    assert_eq!(envelope["error"]["status"], 503);
    let nginx = Proxy::nginx(server.addr, app);

    // The server itself unreachable: the same 503.
    drop(server);
    let answer = through(&nginx, "/orders", &[("x-api-key", ADMIN)]).await;
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.headers()["retry-after"], "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_through_nginx_caddy_verify_and_grpc_costs_one_upstream_call() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &["--grpc-listen", "127.0.0.1:0"]);
    let app = echo_app().await;
    let nginx = Proxy::nginx(server.addr, app);
    let caddy = Proxy::caddy(server.addr, app);
    let direct = format!("http://{}/verify?role=admin", server.addr);
    for n in 0..50 {
        if n % 6 == 5 {
            let answer = support::check(server.grpc.unwrap(), &[("x-api-key", ADMIN)], &[]).await;
            assert_eq!(answer.status.unwrap().code, 0);
            continue;
        }
        let url = match n % 6 {
            0 => nginx.url("/orders"),
            1 => nginx.url("/admin/users"),
            2 => caddy.url("/orders"),
            3 => caddy.url("/admin/users"),
            _ => direct.clone(),
        };
        let answer = client()
            .get(url)
            .header("x-api-key", ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    assert_eq!(composio.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_proxy_leaves_no_worker_holding_its_port() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &[]);
    let app = echo_app().await;
    for (proxy, at_least) in [
        (Proxy::nginx(server.addr, app), 2), // the master and its worker
        (Proxy::caddy(server.addr, app), 1),
    ] {
        let answer = through(&proxy, "/orders", &[("x-api-key", ADMIN)]).await;
        assert_eq!(answer.status(), 200, "{}", proxy.log());
        drop(answer);
        let (group, port) = (proxy.group(), proxy.port);
        support::eventually("the proxy's processes", || {
            alive_in_group(group).len() >= at_least
        })
        .await;
        drop(proxy);
        assert_eq!(alive_in_group(group), Vec::<u32>::new());
        std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|error| panic!("port {port} still held: {error}"));
    }
}
