//! Real proxies for the recipe tests: nginx (and Caddy) processes on free
//! loopback ports, with configurations built from the recipe files the README
//! links (`server/recipes/`), stopped as each proxy expects when dropped, which
//! fails the test if any of its processes survives. `.ci/run` installs them.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::routing::any;
use axum::{Json, Router};

/// The recipes, as shipped.
pub fn recipes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes")
}

/// The files of `recipes()` that `Proxy::nginx` runs.
pub const NGINX_RECIPES: [&str; 2] = [
    "nginx/composio-auth.conf",
    "nginx/composio-auth-location.conf",
];

/// The file of `recipes()` that `Proxy::caddy` runs.
pub const CADDY_RECIPE: &str = "caddy/Caddyfile";

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The program `name` (on the PATH, or in /usr/sbin or /usr/bin), or a failure
/// that says how to install it (`package`): a test never passes without the
/// real program.
pub fn installed(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: `apt-get install -y {package}` (.ci/run does it)")
        })
}

/// Waits until `port` accepts connections (the proxy signals nothing else).
fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} exited: {status}\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A directory of its own under the system's temporary directory.
fn scratch(what: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("composio-auth-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where nginx reaches the server: its upstream's `server`, an address or a
/// unix socket.
pub enum Upstream {
    /// `server 127.0.0.1:8080;`
    Tcp(SocketAddr),
    /// `server unix:/path;`
    Unix(PathBuf),
}

impl From<SocketAddr> for Upstream {
    fn from(addr: SocketAddr) -> Self {
        Self::Tcp(addr)
    }
}

impl From<&Path> for Upstream {
    fn from(socket: &Path) -> Self {
        Self::Unix(socket.to_owned())
    }
}

impl std::fmt::Display for Upstream {
    /// As nginx's `server` takes it: `127.0.0.1:8080`, `unix:/path`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(socket) => write!(f, "unix:{}", socket.display()),
        }
    }
}

/// A running proxy.
pub struct Proxy {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl Proxy {
    /// nginx with `server/recipes/nginx/`, its upstreams `composio_auth` (the
    /// server at `auth`: an address, or a unix socket nginx's workers may
    /// connect to) and `app`.
    pub fn nginx(auth: impl Into<Upstream>, app: SocketAddr) -> Self {
        let auth = auth.into();
        let nginx = installed("nginx", "nginx");
        installed("kill", "procps"); // how `Drop` stops it
        let dir = scratch("nginx");
        let port = free_port();
        for file in NGINX_RECIPES {
            let recipe = std::fs::read_to_string(recipes().join(file)).unwrap();
            let recipe = recipe.replace("listen 8000;", &format!("listen 127.0.0.1:{port};"));
            let name = Path::new(file).file_name().unwrap();
            std::fs::write(dir.join(name), recipe).unwrap();
        }
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream composio_auth {{ server {auth}; keepalive 32; }}\n\
               upstream app {{ server {app}; }}\n\
               include {d}/composio-auth.conf;\n}}\n"
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
            // Its own process group, which its workers inherit: what `Drop`
            // waits for to be empty.
            .process_group(0)
            .spawn()
            .expect("start nginx");
        wait_for_port(port, &mut child, "nginx", &dir.join("error.log"));
        Self { port, dir, child }
    }

    /// Caddy with `server/recipes/caddy/Caddyfile`, its addresses replaced by the
    /// server's (`auth`) and the app's; no admin endpoint, no automatic HTTPS, all
    /// state in a directory of its own.
    pub fn caddy(auth: SocketAddr, app: SocketAddr) -> Self {
        let caddy = installed("caddy", "caddy");
        installed("kill", "procps");
        let dir = scratch("caddy");
        let port = free_port();
        let recipe = std::fs::read_to_string(recipes().join(CADDY_RECIPE)).unwrap();
        let recipe = recipe
            .replace("127.0.0.1:8080", &auth.to_string())
            .replace("127.0.0.1:3000", &app.to_string())
            .replace(":8000 {", &format!("http://127.0.0.1:{port} {{"));
        let conf = format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{recipe}");
        std::fs::write(dir.join("Caddyfile"), conf).unwrap();
        let log = std::fs::File::create(dir.join("error.log")).unwrap();
        let mut child = Command::new(caddy)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(dir.join("Caddyfile"))
            .env("HOME", &dir)
            .env("XDG_DATA_HOME", &dir)
            .env("XDG_CONFIG_HOME", &dir)
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start caddy");
        wait_for_port(port, &mut child, "caddy", &dir.join("error.log"));
        Self { port, dir, child }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The proxy's own log, for a failing assertion's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Proxy {
    /// The proxy's process group: its master (whose pid it is) and every
    /// process the master started.
    pub fn group(&self) -> u32 {
        self.child.id()
    }

    /// Stops the proxy as it expects: SIGTERM to its master (nginx's fast
    /// shutdown: the master stops its workers, waits for them, then exits;
    /// Caddy's graceful exit), then waits for the master to exit and for every
    /// process of its group to be gone. Returns what was still alive after that
    /// (then killed): a master that ignored SIGTERM for 10 s, workers that
    /// outlived it by 5 s.
    fn stop(&mut self) -> Vec<String> {
        let mut survivors = Vec::new();
        signal("TERM", &self.group().to_string());
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                survivors.push(format!("master {} (ignored SIGTERM)", self.group()));
                signal("KILL", &format!("-{}", self.group()));
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !alive_in_group(self.group()).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = alive_in_group(self.group());
        if !left.is_empty() {
            signal("KILL", &format!("-{}", self.group()));
        }
        survivors.extend(left.iter().map(|pid| format!("process {pid}")));
        survivors
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let survivors = self.stop();
        let log = self.log();
        let _ = std::fs::remove_dir_all(&self.dir);
        // Not while a test is already failing: a second panic would abort.
        if !survivors.is_empty() && !std::thread::panicking() {
            panic!(
                "the proxy on port {} left {survivors:?} running\n{log}",
                self.port
            );
        }
    }
}

/// Sends SIG`name` to `target` (a pid, or `-pgid` for a whole group), with
/// procps' `kill` (the tests forbid `unsafe`, so no `libc::kill`).
pub fn signal(name: &str, target: &str) {
    let _ = Command::new(installed("kill", "procps"))
        .args(["-s", name, "--", target])
        .stderr(Stdio::null())
        .status();
}

/// The processes of process group `group` still alive (zombies left out: they
/// hold no port and are their parent's to reap), read from /proc.
pub fn alive_in_group(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // "pid (comm) state ppid pgrp ...": comm may hold spaces and parens.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace()
                .collect();
            matches!(fields.as_slice(), [state, _ppid, pgrp, ..]
                if *pgrp == group.to_string() && !matches!(*state, "Z" | "X"))
        })
        .collect()
}

/// The app behind the proxy: answers every request with the headers it
/// received, as a JSON object (a repeated header's values joined by ", ").
pub async fn echo_app() -> SocketAddr {
    async fn echo(headers: HeaderMap) -> Json<serde_json::Value> {
        let mut seen = serde_json::Map::new();
        for name in headers.keys() {
            let values: Vec<_> = headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            seen.insert(name.as_str().to_owned(), values.join(", ").into());
        }
        Json(seen.into())
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(any(echo));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}
