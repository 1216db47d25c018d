//! The rate-limit recipe (`recipes/nginx/composio-auth-ratelimit.conf`) with real
//! nginx (Debian's 1.22) beside `composio-auth.conf`, in front of the real server
//! and an app that shows what it receives: a bucket per project, a bucket per
//! member for an organisation key, and none a client can choose.

mod support;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use composio_auth::testing::StandIn;
use serde_json::{json, Value};
use support::proxy::{
    alive_in_group, echo_app, free_port, installed, recipes, signal, NGINX_RECIPES,
};
use support::{client, Server};

/// The recipe this file tests.
const RATELIMIT_RECIPE: &str = "nginx/composio-auth-ratelimit.conf";

/// The recipe's rate and burst, and what the tests run instead: one request a
/// minute, so no bucket refills during a test, and a burst of 2, so each bucket
/// lets exactly 3 requests through (1 + burst) and refuses the 4th.
const RATE: (&str, &str) = ("rate=10r/s;", "rate=1r/m;");
const BURST: (&str, &str) = ("burst=20 nodelay;", "burst=2 nodelay;");
const ALLOWANCE: usize = 3;

/// Two project keys, of projects A and B.
const KEY_A: &str = "ak_ratelimit_a_0123456789";
const KEY_B: &str = "ak_ratelimit_b_0123456789";
const PROJECT_A: &str = "aaaaaaaa-e29b-41d4-a716-446655440000";
const PROJECT_B: &str = "bbbbbbbb-e29b-41d4-a716-446655440000";
/// Two organisation keys (sessions without a project), of two members. Member
/// 1's id is project A's (not that Composio's ids would meet): its bucket is
/// still not A's.
const ORG_KEY_1: &str = "oak_ratelimit_1_0123456789";
const ORG_KEY_2: &str = "oak_ratelimit_2_0123456789";
const MEMBER_1: &str = PROJECT_A;
const MEMBER_2: &str = "22222222-e29b-41d4-a716-446655440002";

/// A stand-in that knows KEY_A and KEY_B (projects whose `id` and `nano_id`
/// differ) and ORG_KEY_1 and ORG_KEY_2 (`project: null`, members who differ).
async fn composio() -> StandIn {
    let composio = StandIn::start().await.expect("bind the stand-in");
    for (key, id, nano_id, email) in [
        (KEY_A, PROJECT_A, "proj_ratelimit_a", "ann@example.com"),
        (KEY_B, PROJECT_B, "proj_ratelimit_b", "ben@example.com"),
    ] {
        let mut document = StandIn::document_for(email, "Member", "member");
        document["project"]["id"] = json!(id);
        document["project"]["nano_id"] = json!(nano_id);
        document["api_key"]["project_id"] = json!(nano_id);
        composio.add_session(key, document);
    }
    for (key, member) in [(ORG_KEY_1, MEMBER_1), (ORG_KEY_2, MEMBER_2)] {
        let mut document = StandIn::document_for("owner@example.com", "Owner", "admin");
        document["project"] = Value::Null;
        document["org_member"]["id"] = json!(member);
        composio.add_session(key, document);
    }
    composio
}

/// `text` with `from` (which must be there) replaced by `to`.
fn replaced(text: &str, (from, to): (&str, &str), file: &str) -> String {
    assert!(text.contains(from), "{file} no longer has {from:?}");
    text.replace(from, to)
}

/// nginx running `composio-auth.conf`, `composio-auth-location.conf` and the
/// rate-limit recipe, unchanged but for addresses, rate and burst; its upstreams
/// `composio_auth` (the server at `auth`) and `app_origin` (the app). Stopped
/// as `support::proxy::Proxy` stops nginx when dropped.
struct Nginx {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl Nginx {
    fn start(auth: SocketAddr, app: SocketAddr) -> Self {
        let nginx = installed("nginx", "nginx");
        installed("kill", "procps");
        let dir = std::env::temp_dir().join(format!(
            "composio-auth-ratelimit-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (port, second_hop) = (free_port(), free_port());
        for file in NGINX_RECIPES {
            let recipe = std::fs::read_to_string(recipes().join(file)).unwrap();
            let recipe = recipe.replace("listen 8000;", &format!("listen 127.0.0.1:{port};"));
            std::fs::write(dir.join(Path::new(file).file_name().unwrap()), recipe).unwrap();
        }
        let recipe = std::fs::read_to_string(recipes().join(RATELIMIT_RECIPE)).unwrap();
        let hop = ("127.0.0.1:8001", &*format!("127.0.0.1:{second_hop}"));
        let recipe = replaced(&recipe, hop, RATELIMIT_RECIPE);
        let recipe = replaced(&recipe, RATE, RATELIMIT_RECIPE);
        let recipe = replaced(&recipe, BURST, RATELIMIT_RECIPE);
        std::fs::write(dir.join("composio-auth-ratelimit.conf"), recipe).unwrap();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream composio_auth {{ server {auth}; keepalive 32; }}\n\
               upstream app_origin {{ server {app}; }}\n\
               include {d}/composio-auth.conf;\n\
               include {d}/composio-auth-ratelimit.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut child = Command::new(nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("start nginx");
        // The master binds every listener before it starts a worker: once the
        // first hop accepts, so does the second.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                panic!("nginx exited: {status}\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { port, dir, child }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// GET /orders with `headers`: the status, and the body as JSON.
    async fn get(&self, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = client().get(format!("http://127.0.0.1:{}/orders", self.port));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let answer = request.send().await.expect("nginx answers");
        let status = answer.status().as_u16();
        let content_type = answer.headers().get("content-type").cloned();
        let body = answer.text().await.unwrap();
        let json = serde_json::from_str(&body).unwrap_or_else(|_| {
            panic!(
                "{status} {content_type:?} is not JSON: {body}\n{}",
                self.log()
            )
        });
        (status, json)
    }

    /// Asserts that the request with `headers` reaches the app; what it saw.
    async fn passes(&self, headers: &[(&str, &str)]) -> Value {
        let (status, seen) = self.get(headers).await;
        assert_eq!(status, 200, "{headers:?}: {seen}\n{}", self.log());
        seen
    }

    /// Asserts that the request with `headers` is over its bucket's limit.
    async fn limited(&self, headers: &[(&str, &str)]) {
        let (status, envelope) = self.get(headers).await;
        assert_eq!(status, 429, "{headers:?}: {envelope}\n{}", self.log());
        assert_eq!(envelope["error"]["status"], 429);
        assert_eq!(envelope["error"]["slug"], "HTTP_TooManyRequests");
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master (nginx's fast shutdown), then waits for its whole
    /// process group to be gone; fails the test if any of it survives.
    fn drop(&mut self) {
        let group = self.child.id();
        let mut survivors = Vec::new();
        signal("TERM", &group.to_string());
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                survivors.push(format!("master {group} (ignored SIGTERM)"));
                signal("KILL", &format!("-{group}"));
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !alive_in_group(group).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = alive_in_group(group);
        if !left.is_empty() {
            signal("KILL", &format!("-{group}"));
        }
        survivors.extend(left.iter().map(|pid| format!("process {pid}")));
        let log = self.log();
        let _ = std::fs::remove_dir_all(&self.dir);
        if !survivors.is_empty() && !std::thread::panicking() {
            panic!("nginx left {survivors:?} running\n{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_project_has_its_own_bucket_which_no_client_header_chooses() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &[]);
    let nginx = Nginx::start(server.addr, echo_app().await);
    let a = [("x-api-key", KEY_A)];

    // A burst on project A: its allowance, then 429s.
    for _ in 0..ALLOWANCE {
        let seen = nginx.passes(&a).await;
        assert_eq!(seen["x-composio-project-id"], PROJECT_A);
        // The second hop passes the first's request on as it came.
        assert_eq!(seen["host"], "app");
    }
    nginx.limited(&a).await;
    nginx.limited(&a).await;
    // A's own project id, another project's or a new one, sent by the client:
    // the server's replaces it, still A's bucket.
    for spoofed in [PROJECT_A, PROJECT_B, "cccccccc-e29b-41d4-a716-446655440000"] {
        nginx
            .limited(&[("x-api-key", KEY_A), ("x-composio-project-id", spoofed)])
            .await;
    }
    // Through the server, each time: the 429s were of verified requests (one
    // upstream call, the rest from the cache).
    assert_eq!(composio.calls_for(KEY_A), 1);

    // Project B meanwhile: its whole allowance. The first asks for A's bucket
    // (full) and is counted in B's: the 4th of B's is over.
    let seen = nginx
        .passes(&[("x-api-key", KEY_B), ("x-composio-project-id", PROJECT_A)])
        .await;
    assert_eq!(seen["x-composio-project-id"], PROJECT_B);
    for _ in 1..ALLOWANCE {
        let seen = nginx.passes(&[("x-api-key", KEY_B)]).await;
        assert_eq!(seen["x-composio-project-id"], PROJECT_B);
    }
    nginx.limited(&[("x-api-key", KEY_B)]).await;

    // Refused requests never reach the limiter: the server's own 401.
    let (status, envelope) = nginx.get(&[("x-composio-project-id", PROJECT_B)]).await;
    assert_eq!(status, 401, "{envelope}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organisation_key_is_limited_per_member_never_in_a_project_bucket() {
    let composio = composio().await;
    let server = Server::start(&composio.base_url(), &[]);
    let nginx = Nginx::start(server.addr, echo_app().await);

    // Project A's bucket full first: member 1's, keyed on the same id, is
    // another.
    for _ in 0..ALLOWANCE {
        nginx.passes(&[("x-api-key", KEY_A)]).await;
    }
    nginx.limited(&[("x-api-key", KEY_A)]).await;

    // Member 1's organisation key: its allowance, whatever project id it sends
    // (the first asks for A's full bucket), then 429s.
    let seen = nginx
        .passes(&[
            ("x-api-key", ORG_KEY_1),
            ("x-composio-project-id", PROJECT_A),
        ])
        .await;
    assert!(seen.get("x-composio-project-id").is_none(), "{seen}");
    assert!(seen.get("x-composio-org-id").is_none(), "{seen}");
    assert_eq!(seen["x-composio-member-id"], MEMBER_1);
    for _ in 1..ALLOWANCE {
        nginx.passes(&[("x-api-key", ORG_KEY_1)]).await;
    }
    nginx.limited(&[("x-api-key", ORG_KEY_1)]).await;
    // A project id of its own choosing gets it no fresh bucket.
    nginx
        .limited(&[
            ("x-api-key", ORG_KEY_1),
            (
                "x-composio-project-id",
                "cccccccc-e29b-41d4-a716-446655440000",
            ),
        ])
        .await;
    // Nor does another member's id.
    nginx
        .limited(&[("x-api-key", ORG_KEY_1), ("x-composio-member-id", MEMBER_2)])
        .await;

    // Member 2's organisation key has a bucket of its own; the first request
    // asks for member 1's (full) and is counted in member 2's.
    let seen = nginx
        .passes(&[("x-api-key", ORG_KEY_2), ("x-composio-member-id", MEMBER_1)])
        .await;
    assert_eq!(seen["x-composio-member-id"], MEMBER_2);
    for _ in 1..ALLOWANCE {
        nginx.passes(&[("x-api-key", ORG_KEY_2)]).await;
    }
    nginx.limited(&[("x-api-key", ORG_KEY_2)]).await;

    // Project B's bucket is untouched by all of that.
    for _ in 0..ALLOWANCE {
        nginx.passes(&[("x-api-key", KEY_B)]).await;
    }
}
