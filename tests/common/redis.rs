//! Real `redis-server` processes for the fleet tests, on free loopback ports, each
//! with its own temporary directory, killed when dropped. Never a mock.
//!
//! `.ci/run` installs `redis-server` (and `redis-cli`) when they are missing.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use composio_auth::RedisCache;

/// The Redis keys of recorded verdicts.
pub const VERDICTS: &str = "composio-auth:*:v";

/// The fleet pepper of the tests.
pub const PEPPER: &str = "the fleet pepper of these tests: 32 bytes or more";

/// A shared cache at a loopback port where nothing listens.
pub fn nowhere(budget: Duration) -> RedisCache {
    let port = free_port();
    RedisCache::new(&format!("redis://127.0.0.1:{port}"), PEPPER)
        .unwrap()
        .budget(budget)
}

/// One `redis-server` on loopback.
pub struct RedisServer {
    pub port: u16,
    /// The TLS port, for a server started by [`RedisServer::start_tls`].
    pub tls_port: Option<u16>,
    dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl RedisServer {
    /// Starts a server without persistence on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("composio-auth-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        let mut server = Self {
            port,
            tls_port: None,
            dir,
            child: None,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.spawn();
        server
    }

    /// Starts a server that also listens with TLS, its certificate (for
    /// `127.0.0.1`) signed by a CA made for it; see [`RedisServer::ca_pem`].
    pub fn start_tls() -> Self {
        let port = free_port();
        let tls_port = free_port();
        let dir =
            std::env::temp_dir().join(format!("composio-auth-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl on PATH");
            assert!(status.success(), "openssl {args:?}");
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec![
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=composio-auth test CA",
        ];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
        openssl(&ca);
        let mut request = vec!["req", "-subj", "/CN=127.0.0.1"];
        request.extend(ec);
        request.extend(["-keyout", "server.key", "-out", "server.csr"]);
        openssl(&request);
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ]);
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let extra = vec![
            "--tls-port".to_owned(),
            tls_port.to_string(),
            "--tls-cert-file".to_owned(),
            path("server.crt"),
            "--tls-key-file".to_owned(),
            path("server.key"),
            "--tls-ca-cert-file".to_owned(),
            path("ca.crt"),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        let mut server = Self {
            port,
            tls_port: Some(tls_port),
            dir,
            child: None,
            extra,
        };
        server.spawn();
        server
    }

    /// The CA certificate of a TLS server, PEM.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("ca.crt")).expect("a TLS server's CA")
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server; .ci/run does it)");
        self.child = Some(child);
        self.wait_until_ready();
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "redis-server on port {} did not answer within 10 s",
            self.port
        );
    }

    fn ping(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0u8; 64];
        // `+PONG`, or `-NOAUTH` / `-LOADING`: any answer means the server is up.
        matches!(stream.read(&mut reply), Ok(n) if n > 0)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A shared cache on this server, under the tests' pepper.
    pub fn cache(&self, budget: Duration) -> RedisCache {
        RedisCache::new(&self.url(), PEPPER).unwrap().budget(budget)
    }

    /// `redis-cli` against this server; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// The keys matching `pattern` (`SCAN`).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.cli(&["--scan", "--pattern", pattern])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits (at most 10 s) until at least `n` verdicts are recorded (a replica
    /// records after answering); their Redis keys.
    pub async fn wait_for_verdicts(&self, n: usize) -> Vec<String> {
        super::eventually("verdicts recorded in Redis", || {
            self.keys(VERDICTS).len() >= n
        })
        .await;
        self.keys(VERDICTS)
    }

    /// Kills the server (as a crash would: its data is gone).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Every byte the server holds, as `SAVE` writes it uncompressed.
    pub fn dump(&self) -> Vec<u8> {
        self.cli(&["config", "set", "rdbcompression", "no"]);
        assert_eq!(self.cli(&["save"]).trim(), "OK");
        std::fs::read(self.dir.join("dump.rdb")).expect("dump.rdb")
    }

    /// `redis-cli MONITOR`: every command the server receives from now on, until
    /// the returned monitor is stopped.
    pub fn monitor(&self) -> Monitor {
        let path = self.dir.join(format!("monitor-{}.log", free_port()));
        let file = std::fs::File::create(&path).expect("a monitor log");
        let child = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "monitor"])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli on PATH");
        let monitor = Monitor { child, path };
        // MONITOR answers OK once it is in place.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&monitor.path)
            .unwrap_or_default()
            .contains("OK")
        {
            assert!(Instant::now() < deadline, "MONITOR did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        monitor
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Stops the process (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        signal("-STOP", self.pid());
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&self) {
        signal("-CONT", self.pid());
    }
}

/// A running `redis-cli MONITOR`.
pub struct Monitor {
    child: Child,
    path: PathBuf,
}

impl Monitor {
    /// Stops monitoring; what was seen.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.path).expect("the monitor log")
    }
}

fn signal(which: &str, pid: u32) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {which} {pid}");
}

/// `redis-cli -p port args…`; its standard output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen server ignores SIGKILL until resumed on some systems.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters (no replicas) on free loopback ports.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<_> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let output = Command::new("redis-cli")
            .args(&args)
            .output()
            .expect("redis-cli on PATH");
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Self { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster
            .nodes
            .iter()
            .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < deadline,
                "the cluster did not form within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Every key on every node matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.nodes.iter().flat_map(|n| n.keys(pattern)).collect()
    }
}
