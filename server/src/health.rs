//! Readiness and the drain at shutdown (`/readyz`, `--shutdown-grace`), and the
//! `health` subcommand a container's `HEALTHCHECK` runs.
//!
//! `/readyz` asks neither Composio nor Redis: one outage they share would take
//! every replica out of rotation at once, when each still answers what it can
//! (cached verdicts; a 503 of its own, per request, when Composio cannot decide).

use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use composio_auth::{ErrorBody, ErrorEnvelope};
use tokio::sync::{watch, Notify};

use crate::config::Listen;

/// Where the server is in its life, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Every listener serves: `/readyz` is 200.
    Serving,
    /// A signal came: `/readyz` is 503; the listeners still accept and answer
    /// until no request is in flight or the grace ends.
    Draining,
    /// The listeners accept no more and finish the requests they have.
    Stopping,
    /// The grace is over: a request still in flight is answered 503.
    Over,
}

/// After the grace, how long the 503s of the requests still in flight get to
/// be written before the process exits.
const CUT_TIME: Duration = Duration::from_millis(500);

/// How many seconds a request cut at the grace's end is told to wait (another
/// replica can answer it at once).
const CUT_RETRY_AFTER: &str = "1";

/// The drain every listener follows, and the requests in flight on them.
pub struct Drain {
    phase: watch::Sender<Phase>,
    grace: Duration,
    in_flight: AtomicUsize,
    /// Set at the signal: whether a request ending leaves the server idle is
    /// only told then (no lock on the way of every request before).
    draining: AtomicBool,
    idle: Notify,
}

impl Drain {
    /// A drain of `grace` after the signal; serving until then.
    pub fn new(grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            phase: watch::Sender::new(Phase::Serving),
            grace,
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            idle: Notify::new(),
        })
    }

    /// Whether `/readyz` answers 200: no signal yet.
    pub fn is_ready(&self) -> bool {
        *self.phase.borrow() == Phase::Serving
    }

    /// Resolves when the listeners are to stop accepting: once nothing is in
    /// flight after the signal, or at the grace's end.
    pub fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut phase = self.phase.subscribe();
        async move {
            let _ = phase.wait_for(|p| *p >= Phase::Stopping).await;
        }
    }

    async fn over(&self) {
        let mut phase = self.phase.subscribe();
        let _ = phase.wait_for(|p| *p == Phase::Over).await;
    }

    /// From `signal` on: `/readyz` 503 and the listeners still serving; they
    /// stop accepting once no request is in flight, or at the grace's end, when
    /// any request still in flight is answered 503. Returns [`CUT_TIME`] after
    /// the grace (the server has normally exited by then).
    pub async fn run(&self, signal: impl Future<Output = ()>) {
        signal.await;
        let deadline = tokio::time::Instant::now() + self.grace;
        self.draining.store(true, SeqCst);
        self.phase.send_replace(Phase::Draining);
        tracing::info!(
            "stopping: /readyz answers 503; requests in flight get {}",
            humantime::format_duration(self.grace)
        );
        let _ = tokio::time::timeout_at(deadline, self.idle()).await;
        self.phase.send_replace(Phase::Stopping);
        tokio::time::sleep_until(deadline).await;
        let left = self.in_flight.load(SeqCst);
        tracing::warn!("the shutdown grace is over with {left} request(s) in flight: answered 503");
        self.phase.send_replace(Phase::Over);
        tokio::time::sleep(CUT_TIME).await;
    }

    /// Until no request is in flight.
    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A request in flight, from its head read to its answer's.
struct InFlight<'a>(&'a Drain);

impl<'a> InFlight<'a> {
    fn enter(drain: &'a Drain) -> Self {
        drain.in_flight.fetch_add(1, SeqCst);
        Self(drain)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // The count is read before `draining`, and the drain sets `draining`
        // before it reads the count: one of them sees the other.
        if self.0.in_flight.fetch_sub(1, SeqCst) == 1 && self.0.draining.load(SeqCst) {
            self.0.idle.notify_waiters();
        }
    }
}

/// The middleware of every listener: counts the request in flight, and answers
/// it 503 if it is still in flight when the grace ends (gRPC: `UNAVAILABLE`).
pub async fn counted(State(drain): State<Arc<Drain>>, request: Request, next: Next) -> Response {
    let _in_flight = InFlight::enter(&drain);
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    let answer = next.run(request);
    tokio::select! {
        // The answer first: one that is ready never subscribes to the drain.
        biased;
        response = answer => response,
        () = drain.over() => cut(grpc),
    }
}

/// What a request still in flight at the grace's end gets: never an allow.
fn cut(grpc: bool) -> Response {
    const WHY: &str = "composio-auth-server stopped before it could answer";
    if grpc {
        return tonic::Status::unavailable(WHY).into_http();
    }
    let envelope = ErrorEnvelope {
        error: ErrorBody {
            message: "The server stopped before it could answer".to_owned(),
            code: 10503,
            slug: Some("HTTP_ServiceUnavailable".to_owned()),
            status: StatusCode::SERVICE_UNAVAILABLE.as_u16(),
            request_id: None,
            suggested_fix: Some(
                "Retry after the number of seconds in the Retry-After header.".to_owned(),
            ),
            errors: Some(vec![WHY.to_owned()]),
        },
    };
    let body = serde_json::to_vec(&envelope).unwrap_or_default();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::RETRY_AFTER, CUT_RETRY_AFTER),
            (header::CONNECTION, "close"),
        ],
        body,
    )
        .into_response()
}

/// SIGTERM or SIGINT (Ctrl-C), listened for from this call on.
///
/// # Errors
///
/// When the handlers cannot be installed.
pub fn stop_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// How long `health` waits for `/readyz`'s answer, connecting included.
pub const CHECK_TIME: Duration = Duration::from_secs(2);

/// The `health` subcommand: GET `/readyz` on `listen` (on loopback for an
/// unspecified address, `0.0.0.0` or `[::]`; over the socket for a unix one).
/// The line to print, `Ok` if it answered 200 within [`CHECK_TIME`].
///
/// # Errors
///
/// Not ready: no connection, no answer in time, or another status.
pub fn check(listen: &Listen) -> Result<String, String> {
    let deadline = Instant::now() + CHECK_TIME;
    let (asked_at, answer) = match listen {
        Listen::Tcp(listen) => {
            let target = asked(*listen);
            let answer = left(deadline)
                .and_then(|time| TcpStream::connect_timeout(&target, time))
                .and_then(|stream| status_of(stream, &target.to_string(), deadline));
            (format!("http://{target}/readyz"), answer)
        }
        Listen::Unix(path) => {
            let answer = connect_unix(path, deadline)
                .and_then(|stream| status_of(stream, "localhost", deadline));
            (format!("/readyz on {listen}"), answer)
        }
    };
    match answer {
        Ok(200) => Ok(format!("ready: {asked_at} answered 200")),
        Ok(status) => Err(format!("not ready: {asked_at} answered {status}")),
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Err(format!(
                "not ready: {asked_at}: no answer within {}s",
                CHECK_TIME.as_secs()
            ))
        }
        Err(error) => Err(format!("not ready: {asked_at}: {error}")),
    }
}

/// Where `health` asks a server listening on `listen`: loopback for an
/// unspecified address, of the same family.
fn asked(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// The time left until `deadline`, or `TimedOut` past it.
fn left(deadline: Instant) -> std::io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(std::io::Error::from(ErrorKind::TimedOut))
    } else {
        Ok(left)
    }
}

/// A connection to the socket at `path`, made by `deadline`: a server whose
/// backlog is full holds a unix socket's `connect` back, with no timeout of its
/// own, so it waits on a thread of its own (left behind as the process exits).
fn connect_unix(path: &Path, deadline: Instant) -> std::io::Result<UnixStream> {
    let (connected, connection) = std::sync::mpsc::channel();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let _ = connected.send(UnixStream::connect(path));
    });
    connection
        .recv_timeout(left(deadline)?)
        .unwrap_or_else(|_| Err(std::io::Error::from(ErrorKind::TimedOut)))
}

/// A connection `health` asks on, TCP or a unix socket, with its timeouts.
trait Connection: Read + Write {
    /// Reads and writes given up after `read` and `write`.
    fn set_timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()>;
}

impl Connection for TcpStream {
    fn set_timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(read))?;
        self.set_write_timeout(Some(write))
    }
}

impl Connection for UnixStream {
    fn set_timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(read))?;
        self.set_write_timeout(Some(write))
    }
}

/// The status of `GET /readyz` on `stream` (to `host`), read by `deadline`.
fn status_of(mut stream: impl Connection, host: &str, deadline: Instant) -> std::io::Result<u16> {
    let time = left(deadline)?;
    stream.set_timeouts(time, time)?;
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut head = Vec::new();
    let mut buffer = [0; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let time = left(deadline)?;
        stream.set_timeouts(time, time)?;
        match stream.read(&mut buffer)? {
            0 => break,
            n => head.extend_from_slice(&buffer[..n]),
        }
    }
    // "HTTP/1.1 200 OK"
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = std::str::from_utf8(line).unwrap_or_default().split(' ');
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(status))) if version.starts_with("HTTP/1.") => Ok(status),
        _ => Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "the answer is not HTTP/1.1",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_asks_loopback_for_an_unspecified_address() {
        for (listen, asked_at) in [
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("[::]:8080", "[::1]:8080"),
            ("10.1.2.3:9000", "10.1.2.3:9000"),
            ("[::1]:9000", "[::1]:9000"),
        ] {
            assert_eq!(asked(listen.parse().unwrap()), asked_at.parse().unwrap());
        }
    }

    #[tokio::test]
    async fn the_drain_stops_the_listeners_once_idle_and_cuts_at_the_grace() {
        let drain = Drain::new(Duration::from_millis(200));
        assert!(drain.is_ready());
        let in_flight = InFlight::enter(&drain);
        let (signal, signalled) = tokio::sync::oneshot::channel::<()>();
        let stopping = drain.stopping();
        let started = tokio::time::Instant::now();
        tokio::join!(
            async {
                drain
                    .run(async {
                        let _ = signalled.await;
                    })
                    .await;
            },
            async {
                let _ = signal.send(());
                tokio::task::yield_now().await;
                stopping.await;
                // Stopped at the grace's end: a request was in flight.
                assert!(started.elapsed() >= Duration::from_millis(200));
                assert!(!drain.is_ready());
                drain.over().await;
                drop(in_flight);
            },
        );
        // Idle from the signal on: stops at once.
        let drain = Drain::new(Duration::from_secs(60));
        let stopping = drain.stopping();
        let run = drain.run(async {});
        tokio::pin!(run);
        tokio::select! {
            () = &mut run => panic!("the drain outlived its grace"),
            () = stopping => {}
        }
    }
}
