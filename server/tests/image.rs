//! The container image: `server/build-image` builds it (the static musl binary
//! FROM scratch, `server/Containerfile`), podman runs it (runc, the host's
//! network) against the stand-in on the host's loopback. `.ci/run` installs
//! podman and runc; the test writes its own `containers.conf` (through
//! `CONTAINERS_CONF`, for its podman commands only) and changes no system
//! configuration. The image is tagged `localhost/composio-auth-server:test` and
//! kept (a later run rebuilds nothing that is fresh); its containers are removed.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::proxy::{free_port, installed};
use support::{client, composio, ADMIN, MEMBER};

const TAG: &str = "localhost/composio-auth-server:test";
/// The image's `USER`.
const UID: u32 = 65532;
/// The binary's path in the image.
const BINARY: &str = "/composio-auth-server";

/// Podman as these machines run it: as root with runc (crun refuses here),
/// cgroupfs, and no default ulimits (the container's would be refused).
const CONTAINERS_CONF: &str = "\
[containers]
default_ulimits = []

[engine]
cgroup_manager = \"cgroupfs\"
runtime = \"runc\"
";

/// The `containers.conf` of every podman command here (build-image's too).
fn containers_conf() -> &'static Path {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-containers.conf");
        std::fs::write(&path, CONTAINERS_CONF).unwrap();
        path
    })
}

fn podman_command() -> Command {
    static PODMAN: OnceLock<PathBuf> = OnceLock::new();
    let podman = PODMAN.get_or_init(|| {
        installed("runc", "runc");
        installed("podman", "podman")
    });
    let mut command = Command::new(podman);
    command.env("CONTAINERS_CONF", containers_conf());
    command
}

/// `podman args`, whatever its exit status.
fn podman_output(args: &[&str]) -> Output {
    podman_command().args(args).output().expect("run podman")
}

/// `podman args`, which must succeed: its stdout, trimmed.
fn podman(args: &[&str]) -> String {
    let output = podman_output(args);
    assert!(
        output.status.success(),
        "podman {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The image, built once per run of this file by `server/build-image` (cargo
/// rebuilds the binary only if it is not fresh, in CARGO_TARGET_DIR as
/// always): its id.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("build-image");
        podman_command(); // podman and runc are there
        let started = Instant::now();
        let output = Command::new(&script)
            .arg(TAG)
            .env("CONTAINER_ENGINE", "podman")
            .env("CONTAINERS_CONF", containers_conf())
            .output()
            .expect("run server/build-image");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "server/build-image: {}\n{stderr}",
            output.status
        );
        let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "build-image prints the image id, not {id:?}\n{stderr}"
        );
        println!("server/build-image: {id} in {:?}", started.elapsed());
        id
    })
}

/// The image's configuration, as podman reads it: FROM scratch, one layer,
/// the binary alone; a fixed UID; the listening address an `ENV`; the port
/// exposed; the `HEALTHCHECK` the binary answers itself; the OCI labels. And
/// no shell to run.
#[test]
fn the_image_is_the_binary_alone_with_its_metadata() {
    let id = image();
    let inspected: Value = serde_json::from_str(&podman(&["image", "inspect", id])).unwrap();
    let image = &inspected[0];
    let config = &image["Config"];
    assert_eq!(config["User"], format!("{UID}:{UID}"));
    assert_eq!(config["Entrypoint"], serde_json::json!([BINARY]));
    let env: Vec<&str> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"COMPOSIO_AUTH_LISTEN=0.0.0.0:8080"),
        "{env:?}"
    );
    assert!(env.contains(&"MIMALLOC_ARENA_EAGER_COMMIT=0"), "{env:?}");
    assert!(config["ExposedPorts"].get("8080/tcp").is_some(), "{config}");
    // Kept because build-image builds with `--format docker`.
    assert_eq!(
        image["Healthcheck"]["Test"],
        serde_json::json!(["CMD", BINARY, "health"]),
        "{image}"
    );
    let labels = &config["Labels"];
    for name in [
        "title",
        "description",
        "version",
        "revision",
        "created",
        "licenses",
    ] {
        let label = format!("org.opencontainers.image.{name}");
        let value = labels[&label].as_str().unwrap_or_default();
        assert!(!value.is_empty(), "{label}: {labels}");
    }
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(image["RootFS"]["Layers"].as_array().unwrap().len(), 1);
    let size = image["Size"].as_u64().unwrap();
    println!("image size: {size} bytes");
    assert!(size < 32 << 20, "{size} bytes");

    // The binary in it: TLS roots compiled in (webpki-roots), no code that
    // reads the system's store (rustls-native-certs reads SSL_CERT_FILE):
    // scratch has none.
    let name = format!("composio-auth-image-copy-{}", std::process::id());
    podman(&["create", "--name", &name, id]);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let copied = podman_output(&["cp", &format!("{name}:{BINARY}"), dir.to_str().unwrap()]);
    podman(&["rm", &name]);
    assert!(copied.status.success(), "{copied:?}");
    let binary = std::fs::read(dir.join("composio-auth-server")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let has = |needle: &[u8]| binary.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"ISRG Root X1"), "no webpki roots in the binary");
    assert!(
        !has(b"SSL_CERT_FILE"),
        "the binary can read the system's store"
    );
    // Its allocator: musl's own cost /verify 13% of glibc's req/s.
    assert!(has(b"mimalloc_"), "the binary's allocator is not mimalloc");

    // No shell.
    let shell = podman_output(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
        id,
        "-c",
        "true",
    ]);
    assert!(!shell.status.success(), "a shell ran in the image");
}

/// A container of the image, removed (killed first if need be) when dropped.
struct Container {
    name: String,
}

impl Container {
    fn inspect(&self, format: &str) -> String {
        podman(&["inspect", "--format", format, &self.name])
    }

    fn running(&self) -> bool {
        self.inspect("{{.State.Running}}") == "true"
    }

    fn logs(&self) -> String {
        let output = podman_output(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// `podman healthcheck run`: the image's HEALTHCHECK command, run in the
    /// container (`composio-auth-server health`).
    fn healthy(&self) -> bool {
        podman_output(&["healthcheck", "run", &self.name])
            .status
            .success()
    }

    /// `/proc/{pid}/status` of the container's process, seen from the host.
    fn status(&self) -> String {
        let pid = self.inspect("{{.State.Pid}}");
        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman_output(&["rm", "--force", "--time", "0", &self.name]);
    }
}

/// The values of `field` (`Uid`, `NSpid`, ...) in a `/proc/{pid}/status`.
fn field<'a>(status: &'a str, field: &str) -> Vec<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .split_whitespace()
        .collect()
}

/// Polls `condition` every 20 ms until it holds, or panics naming `what`.
async fn until(
    what: &str,
    within: Duration,
    container: &Container,
    mut condition: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {what}\n{}",
            container.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The container against the stand-in: probes, an allowed and a refused key,
/// the HEALTHCHECK, a process that is not root and is PID 1; on SIGTERM,
/// `/readyz` 503 and unhealthy, the verification in flight answered, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_verifies_checks_its_health_and_drains_on_sigterm() {
    let id = image();
    let composio = composio().await;
    let port = free_port();
    let container = Container {
        name: format!("composio-auth-image-test-{}", std::process::id()),
    };
    let _ = podman_output(&["rm", "--force", "--time", "0", &container.name]);
    let listen = format!("COMPOSIO_AUTH_LISTEN=127.0.0.1:{port}");
    let base_url = composio.base_url();
    let started = Instant::now();
    podman(&[
        "run",
        "--detach",
        "--name",
        &container.name,
        // The stand-in is on the host's loopback.
        "--network",
        "host",
        // A variable of the user's beats the image's ENV.
        "--env",
        &listen,
        // The HEALTHCHECK is run below; no timer (it would need systemd).
        "--health-interval",
        "disable",
        id,
        "--base-url",
        &base_url,
    ]);
    let http = client();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let status = |path: &'static str| {
        let (http, url) = (http.clone(), url(path));
        async move { http.get(url).send().await.map(|r| r.status().as_u16()).ok() }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while status("/readyz").await != Some(200) {
        assert!(
            Instant::now() < deadline && container.running(),
            "the container never got ready\n{}",
            container.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("ready {:?} after `podman run`", started.elapsed());

    let healthz = http.get(url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
    assert_eq!(healthz.text().await.unwrap(), "ok");
    let verify = |key: &'static str| {
        let (http, url) = (http.clone(), url("/verify"));
        async move { http.get(url).header("x-api-key", key).send().await.unwrap() }
    };
    let allowed = verify(ADMIN).await;
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["x-composio-member-email"],
        "alice@example.com"
    );
    let refused = verify("ak_nobody_0123456789abcdef").await;
    assert_eq!(refused.status(), 401);
    assert_eq!(composio.calls(), 2, "the container asked the stand-in");
    assert!(
        container.healthy(),
        "HEALTHCHECK failed\n{}",
        container.logs()
    );

    // Not root, PID 1 of its namespace.
    let proc_status = container.status();
    let uids = field(&proc_status, "Uid");
    assert!(uids.iter().all(|uid| *uid == UID.to_string()), "{uids:?}");
    assert_eq!(field(&proc_status, "NSpid").last(), Some(&"1"));
    println!("idle RSS: {} kB", field(&proc_status, "VmRSS")[0]);

    // SIGTERM with a verification in flight (the stand-in holds its answer).
    composio.hold();
    let in_flight = tokio::spawn(verify(MEMBER));
    tokio::time::timeout(Duration::from_secs(10), composio.wait_for_calls(3))
        .await
        .expect("the verification reached the stand-in");
    podman(&["kill", "--signal", "TERM", &container.name]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status("/readyz").await != Some(503) {
        assert!(
            Instant::now() < deadline,
            "/readyz never 503\n{}",
            container.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!container.healthy(), "HEALTHCHECK passed while draining");
    assert!(container.running());
    tokio::time::sleep(Duration::from_millis(200)).await;
    composio.release();
    let answered = in_flight.await.unwrap();
    assert_eq!(answered.status(), 200);
    assert_eq!(
        answered.headers()["x-composio-member-email"],
        "bob@example.com"
    );
    // Exits once nothing is in flight, long before the grace (20 s) ends.
    until(
        "the container's exit",
        Duration::from_secs(10),
        &container,
        || !container.running(),
    )
    .await;
    assert_eq!(
        container.inspect("{{.State.ExitCode}}"),
        "0",
        "{}",
        container.logs()
    );
}
