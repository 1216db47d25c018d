//! `composio-auth-server`: Composio API key verification for services behind a
//! proxy (nginx `auth_request`, Caddy `forward_auth`, Traefik ForwardAuth, Envoy
//! `ext_authz`), on composio-auth's cache: one upstream call per key per TTL,
//! shared by every proxy route and, through Redis, by every replica.
//!
//! See `server/README.md` for the flags, the endpoints and the proxy recipes.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

// The image's static (musl) build: musl's own malloc is slow under Tokio's threads.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A line on stdout; a closed or full stdout (a supervisor that stopped reading)
/// loses the line instead of stopping the server.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// A line on stderr, likewise never a panic.
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
use metrics_exporter_prometheus::PrometheusBuilder;

mod config;
mod demo;
mod endpoints;
mod grpc;
mod health;
mod identity;
mod listeners;
mod relay;
mod route_policy;
mod traces;

use composio_auth::ComposioAuthLayer;
use config::{Command, Config, Listen};
use endpoints::Shared;
use health::Drain;
use listeners::{Bound, Listener, SocketFile};
use route_policy::Policies;

/// Bad configuration: one line on stderr, this exit code.
const BAD_CONFIGURATION: u8 = 2;

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(error) if !error.use_stderr() => {
            // --help, --version.
            say!("{}", error.to_string().trim_end());
            return ExitCode::SUCCESS;
        }
        Err(error) => return refuse(&first_line(&error.to_string())),
    };
    if config.command == Some(Command::Health) {
        return health(&config.listen);
    }
    let otlp = match config.otlp() {
        Ok(otlp) => otlp,
        Err(line) => return refuse(&line),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return refuse(&format!("cannot start the runtime: {error}")),
    };
    let traces = match otlp
        .as_ref()
        .map(|otlp| traces::Traces::start(otlp, runtime.handle()))
        .transpose()
    {
        Ok(traces) => traces,
        Err(line) => return refuse(&line),
    };
    traces::install(traces.as_ref());
    if let Some(otlp) = &otlp {
        // Never the URL: it may hold credentials.
        tracing::info!(target: traces::TARGET, protocol = otlp.protocol().as_str(), "exporting traces over OTLP");
    }
    let outcome = runtime.block_on(run(config));
    // The spans still queued, exported on the runtime before it stops.
    if let Some(traces) = &traces {
        traces.shutdown();
    }
    // A blocking task (a DNS lookup) never holds the exit back.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Configuration(line)) => refuse(&line),
        Err(Failure::Demo(line)) => {
            tell!("composio-auth-server: {line}");
            ExitCode::FAILURE
        }
    }
}

/// Why the server stopped.
enum Failure {
    /// Flags, files or addresses that cannot work (exit 2).
    Configuration(String),
    /// `--demo --exit` saw an answer it did not expect (exit 1).
    Demo(String),
}

/// `composio-auth-server health`: one line, exit 0 if `/readyz` answered 200,
/// else 1.
fn health(listen: &Listen) -> ExitCode {
    match health::check(listen) {
        Ok(line) => {
            say!("{line}");
            ExitCode::SUCCESS
        }
        Err(line) => {
            tell!("{line}");
            ExitCode::FAILURE
        }
    }
}

fn refuse(line: &str) -> ExitCode {
    tell!("composio-auth-server: {line}");
    ExitCode::from(BAD_CONFIGURATION)
}

/// clap's message without its "error: " and the usage after it, on one line: a
/// first line that ends with ':' ("the following required arguments were not
/// provided:") goes on with the indented lines under it.
fn first_line(message: &str) -> String {
    let mut lines = message.lines();
    let first = lines.next().unwrap_or(message);
    let mut line = first.strip_prefix("error: ").unwrap_or(first).to_owned();
    if line.ends_with(':') {
        for more in lines.take_while(|l| l.starts_with(' ') && !l.trim().is_empty()) {
            line.push(' ');
            line.push_str(more.trim());
        }
    }
    line
}

async fn run(config: Config) -> Result<(), Failure> {
    let configuration = Failure::Configuration;
    // Listened for before any listener: a signal from the first answer on drains.
    let signal = health::stop_signal()
        .map_err(|error| configuration(format!("cannot listen for signals: {error}")))?;
    // The recorder first: the layer registers its metrics when it is built.
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|error| configuration(format!("cannot install the metrics recorder: {error}")))?;
    let stand_in = if config.demo {
        Some(
            demo::stand_in()
                .await
                .map_err(|e| configuration(e.to_string()))?,
        )
    } else {
        None
    };
    let fleet = config.fleet().map_err(configuration)?;
    let layer = config
        .layer(stand_in.as_ref().map(|s| s.base_url()), &fleet)
        .map_err(configuration)?;
    let drain = Drain::new(config.shutdown_grace);
    let shared = Arc::new(Shared {
        policies: Policies::new(layer.clone()),
        metrics,
        drain: Arc::clone(&drain),
    });
    let webhooks = config.webhooks(&fleet).map_err(configuration)?;
    let settles = webhooks.is_some() && fleet.is_shared();
    // Each socket file goes when `run` returns, whatever ends it.
    let (servers, listen, _files) = start(&config, &shared, layer, webhooks).await?;
    if let Some(stand_in) = &stand_in {
        let tried = demo::show(stand_in, &listen, config.exit).await;
        if config.exit {
            return tried.map_err(Failure::Demo);
        }
    }
    tokio::select! {
        stopped = until_stopped(servers) => stopped?,
        // The grace is over: whatever is still in flight was answered 503.
        () = drain.run(signal) => {}
    }
    // With deliveries claimed in Redis, their last writes get SETTLE_TIME: a
    // claim left behind would hold Composio's retry back on every replica for
    // its lease.
    if settles {
        tokio::time::sleep(SETTLE_TIME).await;
    }
    Ok(())
}

/// Binds every listener, then serves them all (so `/readyz` answers only once
/// each listens); where `--listen`'s listens, and the socket files to remove at
/// exit.
async fn start(
    config: &Config,
    shared: &Arc<Shared>,
    layer: ComposioAuthLayer,
    webhooks: Option<relay::Webhooks>,
) -> Result<(Servers, Listen, Vec<SocketFile>), Failure> {
    let listen = if config.demo && config.exit {
        Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
    } else {
        config.listen.clone()
    };
    let mut files = Vec::new();
    let (service, addr) = bind(&listen, config.socket_mode, &mut files).await?;
    say!("composio-auth-server listening on {addr}");
    let mut app = endpoints::service(Arc::clone(shared));
    if let Some(webhooks) = webhooks {
        let path = webhooks.path.clone();
        app = relay::route(app, webhooks).map_err(Failure::Configuration)?;
        match &addr {
            Listen::Tcp(_) => say!("composio-auth-server webhooks on {addr}{path}"),
            Listen::Unix(_) => say!("composio-auth-server webhooks on {addr}, at {path}"),
        }
    }
    let mut grpc = None;
    if let Some(grpc_listen) = &config.grpc_listen {
        let (listener, addr) = bind(grpc_listen, config.socket_mode, &mut files).await?;
        match addr {
            // An address for a gRPC client: no scheme.
            Listen::Tcp(addr) => say!("composio-auth-server grpc on {addr}"),
            addr => say!("composio-auth-server grpc on {addr}"),
        }
        grpc = Some(listener);
    }
    let mut admin = None;
    if let Some(admin_listen) = &config.admin_listen {
        let (listener, addr) = bind(admin_listen, config.socket_mode, &mut files).await?;
        say!("composio-auth-server admin on {addr}");
        admin = Some(listener);
    }
    let drain = &shared.drain;
    let mut servers = Servers::new();
    servers.spawn(serve(service, app, Arc::clone(drain)));
    if let Some(grpc) = grpc {
        let check = grpc::Check::new(Arc::clone(shared), config.hidden());
        servers.spawn(serve_grpc(grpc, check, Arc::clone(drain)));
    }
    if let Some(admin) = admin {
        servers.spawn(serve(admin, endpoints::admin(layer), Arc::clone(drain)));
    }
    Ok((servers, addr, files))
}

/// The listeners being served.
type Servers = tokio::task::JoinSet<std::io::Result<()>>;

/// How long the Redis writes that end the last deliveries (acknowledged, or
/// their claims released), which the library spawns as each delivery ends, are
/// given once every listener has stopped.
const SETTLE_TIME: Duration = Duration::from_secs(1);

/// Until the drain has stopped every listener (each finishes the requests it
/// has, deliveries being forwarded included), or one fails.
async fn until_stopped(mut servers: Servers) -> Result<(), Failure> {
    while let Some(stopped) = servers.join_next().await {
        if let Ok(Err(error)) = stopped {
            return Err(Failure::Configuration(format!("serving stopped: {error}")));
        }
    }
    Ok(())
}

/// Binds `listen` (a unix socket with `mode`), its socket file kept in `files`
/// to be removed at exit (or as soon as `start` fails); the listener and where
/// it listens.
async fn bind(
    listen: &Listen,
    mode: u32,
    files: &mut Vec<SocketFile>,
) -> Result<(Listener, Listen), Failure> {
    let Bound {
        listener,
        address,
        file,
    } = listeners::bind(listen, mode)
        .await
        .map_err(Failure::Configuration)?;
    files.extend(file);
    Ok((listener, address))
}

async fn serve_grpc(
    listener: Listener,
    check: grpc::Check,
    drain: Arc<Drain>,
) -> std::io::Result<()> {
    let stopping = drain.stopping();
    let routes = tonic::service::Routes::new(
        envoy_types::ext_authz::v3::pb::AuthorizationServer::new(check),
    )
    .into_axum_router()
    .layer(axum::middleware::from_fn_with_state(drain, health::counted));
    let server =
        tonic::transport::Server::builder().add_routes(tonic::service::Routes::from(routes));
    match listener {
        Listener::Tcp(listener) => {
            server
                .serve_with_incoming_shutdown(
                    // Without it, Nagle and delayed ACKs hold each answer ~40 ms.
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stopping,
                )
                .await
        }
        Listener::Unix(listener) => {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            server
                .serve_with_incoming_shutdown(incoming, stopping)
                .await
        }
    }
    .map_err(std::io::Error::other)
}

async fn serve(listener: Listener, app: axum::Router, drain: Arc<Drain>) -> std::io::Result<()> {
    let stopping = drain.stopping();
    let app = app.layer(axum::middleware::from_fn_with_state(drain, health::counted));
    match listener {
        Listener::Tcp(listener) => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopping)
                .await
        }
        Listener::Unix(listener) => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopping)
                .await
        }
    }
}
