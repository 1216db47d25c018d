//! The server as the tests run it: the real binary, a real process on free
//! loopback ports, against the library's stand-in of Composio; killed when
//! dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use composio_auth::testing::StandIn;

pub mod proxy;
/// The library's own `redis-server` processes (one source for both crates).
#[cfg(feature = "redis")]
#[path = "../../../tests/common/redis.rs"]
pub mod redis;

/// For the library's Redis support, which waits with it: polls `condition`
/// every 5 ms until it holds, or panics naming `what` after 10 s.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 10 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub const ADMIN: &str = "ak_alice_0123456789abcdef";
pub const MEMBER: &str = "ak_bob_0123456789abcdefgh";
/// An organisation key: a session without a project, a member named with a
/// non-ASCII letter.
pub const NO_PROJECT: &str = "oak_carol_0123456789abcd";

/// A user key (`x-user-api-key`): its default project is dave@'s; with the
/// selectors `x-org-id` and `x-project-id` of SCOPE_A it is ann@'s session, of
/// SCOPE_B ben@'s.
pub const USER: &str = "uak_dave_0123456789abcdefghij";
/// Two scopes of USER: `(x-org-id, x-project-id)`.
pub const SCOPE_A: (&str, &str) = ("org_a0123456789", "proj_a0123456789");
pub const SCOPE_B: (&str, &str) = ("org_b0123456789", "proj_b0123456789");
/// The flags of a server that accepts user keys beside project keys.
pub const USER_KEYS: [&str; 4] = [
    "--credential-header",
    "x-api-key",
    "--credential-header",
    "x-user-api-key",
];

/// A stand-in that knows ADMIN, MEMBER, NO_PROJECT, and USER in its default
/// project and its two scopes.
pub async fn composio() -> StandIn {
    let composio = StandIn::start().await.expect("bind the stand-in");
    composio.add_session(
        ADMIN,
        StandIn::document_for("alice@example.com", "Alice", "admin"),
    );
    composio.add_session(
        MEMBER,
        StandIn::document_for("bob@example.com", "Bob", "member"),
    );
    let mut carol = StandIn::document_for("carol@example.com", "Carol Zoë", "admin");
    carol["project"] = serde_json::Value::Null;
    composio.add_session(NO_PROJECT, carol);
    let member = |email| StandIn::document_for(email, "Dave", "member");
    composio.add_session(USER, member("dave@example.com"));
    composio.add_scoped_session(USER, SCOPE_A.0, SCOPE_A.1, member("ann@example.com"));
    composio.add_scoped_session(USER, SCOPE_B.0, SCOPE_B.1, member("ben@example.com"));
    composio
}

/// USER's headers in the scope `(org, project)`.
pub fn in_scope((org, project): (&'static str, &'static str)) -> [(&'static str, &'static str); 3] {
    [
        ("x-user-api-key", USER),
        ("x-org-id", org),
        ("x-project-id", project),
    ]
}

/// Headers that choose no scope: each answered 400 (HTTP_BadRequest, 10400)
/// without asking Composio. A lone selector, either one, one sent twice, one too
/// long, one empty.
pub fn bad_selectors() -> Vec<Vec<(&'static str, String)>> {
    let user = ("x-user-api-key", USER.to_owned());
    let (org, project) = (
        ("x-org-id", SCOPE_A.0.to_owned()),
        ("x-project-id", SCOPE_A.1.to_owned()),
    );
    vec![
        vec![user.clone(), org.clone()],
        vec![user.clone(), project.clone()],
        vec![
            user.clone(),
            org.clone(),
            ("x-org-id", SCOPE_B.0.to_owned()),
            project.clone(),
        ],
        vec![user.clone(), ("x-org-id", "o".repeat(129)), project.clone()],
        vec![user, ("x-org-id", String::new()), project],
    ]
}

/// A running `composio-auth-server`.
pub struct Server {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub grpc: Option<SocketAddr>,
    child: Child,
}

impl Server {
    /// Starts the binary with `args` (and `--listen 127.0.0.1:0`), waiting for
    /// the line that says where it listens.
    pub fn start(base_url: &str, args: &[&str]) -> Self {
        Self::start_with_env(base_url, args, &[])
    }

    /// As `start`, with the environment variables `env` set (none of the
    /// library's or the webhook secret's is inherited from the tests').
    pub fn start_with_env(base_url: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_composio-auth-server"))
            .args(["--listen", "127.0.0.1:0", "--base-url", base_url])
            .args(args)
            .env_remove("COMPOSIO_BASE_URL")
            .env_remove("COMPOSIO_WEBHOOK_SECRET")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start composio-auth-server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = None;
        let mut admin = None;
        let mut grpc = None;
        let wants_admin = args.contains(&"--admin-listen");
        let wants_grpc = args.contains(&"--grpc-listen");
        while addr.is_none() || (wants_admin && admin.is_none()) || (wants_grpc && grpc.is_none()) {
            let line = lines
                .next()
                .expect("the server says where it listens")
                .unwrap();
            let at = |prefix: &str| {
                line.strip_prefix(prefix)
                    .map(|a| a.trim_start_matches("http://").parse().unwrap())
            };
            addr = addr.or_else(|| at("composio-auth-server listening on "));
            admin = admin.or_else(|| at("composio-auth-server admin on "));
            grpc = grpc.or_else(|| at("composio-auth-server grpc on "));
        }
        // Keep reading stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            addr: addr.unwrap(),
            admin,
            grpc,
            child,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server has exited (reaped if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Envoy's side of `Check`: what it sends for a client's request with `headers`
/// on a route with `context_extensions`.
pub async fn check(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    context_extensions: &[(&str, &str)],
) -> envoy_types::ext_authz::v3::pb::CheckResponse {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    let mut client = AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the gRPC listener");
    let owned = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".to_owned(),
                    path: "/orders".to_owned(),
                    headers: owned(headers),
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            context_extensions: owned(context_extensions),
            ..AttributeContext::default()
        }),
    };
    client
        .check(request)
        .await
        .expect("Check answers")
        .into_inner()
}

/// A client that never goes through a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The binary's exit code and stderr for `args`, which must make it stop.
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_composio-auth-server"))
        .args(args)
        .env_remove("COMPOSIO_BASE_URL")
        .env_remove("COMPOSIO_WEBHOOK_SECRET")
        .output()
        .expect("run composio-auth-server");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
