//! The server as the tests run it: the real binary, a real process on free
//! loopback ports (or unix sockets), against the library's stand-in of Composio;
//! killed when dropped.
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use composio_auth::testing::StandIn;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint, Uri};

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

/// Where a listener of the server is: a TCP address (`SocketAddr`), or a unix
/// socket's path (`PathBuf`), and how a client reaches it.
pub trait Address: Clone + Send + Sync + 'static {
    /// A connection to it.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The address as a "... on" line of the server prints it.
    fn parse(printed: &str) -> Self;

    /// A new connection.
    fn connect(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;

    /// A gRPC channel to it.
    fn channel(&self) -> impl Future<Output = Channel> + Send;
}

impl Address for SocketAddr {
    type Stream = tokio::net::TcpStream;

    fn parse(printed: &str) -> Self {
        printed.trim_start_matches("http://").parse().unwrap()
    }

    async fn connect(&self) -> std::io::Result<Self::Stream> {
        tokio::net::TcpStream::connect(self).await
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{self}"))
            .unwrap()
            .connect()
            .await
            .expect("connect to the gRPC listener")
    }
}

impl Address for PathBuf {
    type Stream = tokio::net::UnixStream;

    fn parse(printed: &str) -> Self {
        let path = printed.strip_prefix("unix:");
        PathBuf::from(path.unwrap_or_else(|| panic!("not a unix socket: {printed}")))
    }

    async fn connect(&self) -> std::io::Result<Self::Stream> {
        tokio::net::UnixStream::connect(self).await
    }

    async fn channel(&self) -> Channel {
        let path = self.clone();
        // The URI is tonic's to parse, never dialled: the connector is.
        Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .expect("connect to the gRPC socket")
    }
}

/// An answer read with hyper's client (reqwest speaks no unix socket).
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The answer's headers.
    pub headers: HeaderMap,
    /// The whole body (lossy UTF-8).
    pub body: String,
}

/// `method path` with `headers` and `body` to the listener at `addr`, on a
/// connection of its own.
pub async fn request<A: Address>(
    addr: &A,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let stream = addr.connect().await.expect("connect to the server");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/1.1 connection");
    tokio::spawn(connection);
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("an answer within 10 s")
        .expect("an HTTP answer");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the whole body").to_bytes();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A running `composio-auth-server`, its listeners on TCP (`Server`, from
/// `start`) or on unix sockets (`Server<PathBuf>`, from `start_unix`).
pub struct Server<A = SocketAddr> {
    /// Where `--listen` listens.
    pub addr: A,
    /// Where `--admin-listen` listens, if given.
    pub admin: Option<A>,
    /// Where `--grpc-listen` listens, if given.
    pub grpc: Option<A>,
    child: Child,
}

impl Server {
    /// Starts the binary with `args` (and `--listen 127.0.0.1:0`), waiting for
    /// the line that says where it listens.
    pub fn start(base_url: &str, args: &[&str]) -> Self {
        Self::start_with_env(base_url, args, &[])
    }

    /// As `start`, with the environment variables `env` set (none of the
    /// server's own, `--listen`'s, the shutdown grace's or the webhook secret's is
    /// inherited from the tests').
    pub fn start_with_env(base_url: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch("127.0.0.1:0", base_url, args, env)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Server<PathBuf> {
    /// Starts the binary with `--listen unix:{socket}` and `args` (in which any
    /// `--grpc-listen` or `--admin-listen` is a unix socket too), waiting for the
    /// lines that say where it listens.
    pub fn start_unix(base_url: &str, socket: &Path, args: &[&str]) -> Self {
        Self::launch(&format!("unix:{}", socket.display()), base_url, args, &[])
    }
}

impl<A: Address> Server<A> {
    fn launch(listen: &str, base_url: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_composio-auth-server"))
            .args(["--listen", listen, "--base-url", base_url])
            .args(args)
            .env_remove("COMPOSIO_BASE_URL")
            .env_remove("COMPOSIO_WEBHOOK_SECRET")
            .env_remove("COMPOSIO_AUTH_LISTEN")
            .env_remove("COMPOSIO_AUTH_SHUTDOWN_GRACE")
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
            let at = |prefix: &str| line.strip_prefix(prefix).map(A::parse);
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

    /// GET `path` with `headers` on `--listen`.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        request(&self.addr, "GET", path, headers, "").await
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server has exited (reaped if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIG`name` to the server.
    pub fn signal(&self, name: &str) {
        proxy::signal(name, &self.pid().to_string());
    }

    /// Its exit status, waited for `within` at most (the test fails past it),
    /// without blocking the runtime.
    pub async fn exit_within(&mut self, within: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, then its exit status once it has exited (see `wait`).
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait()
    }

    /// Its exit status once it has exited (killed, which fails `success()`, if
    /// still running 10 s later). Blocks the thread.
    pub fn wait(&mut self) -> ExitStatus {
        let pid = self.pid().to_string();
        let (exited, waited) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if waited.recv_timeout(Duration::from_secs(10)).is_err() {
                proxy::signal("KILL", &pid);
            }
        });
        let status = self.child.wait().expect("wait for the server");
        let _ = exited.send(());
        status
    }
}

impl<A> Drop for Server<A> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory of its own for unix sockets: a short path (a socket's is at most
/// 107 bytes), open to nginx's workers (0755); removed when dropped.
pub struct SocketDir(PathBuf);

impl SocketDir {
    /// A new, empty directory.
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("composio-auth-uds-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(dir)
    }

    /// `name` in the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `unix:{dir}/{name}`, as `--listen` and the others take it.
    pub fn unix(&self, name: &str) -> String {
        format!("unix:{}", self.join(name).display())
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The permission bits of the file at `path` (`0o660`), never following a link.
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::symlink_metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    metadata.permissions().mode() & 0o7777
}

/// Envoy's side of `Check`: what it sends for a client's request with `headers`
/// on a route with `context_extensions`.
pub async fn check(
    addr: impl Address,
    headers: &[(&str, &str)],
    context_extensions: &[(&str, &str)],
) -> envoy_types::ext_authz::v3::pb::CheckResponse {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    let mut client = AuthorizationClient::new(addr.channel().await);
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
