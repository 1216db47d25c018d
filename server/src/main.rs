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
mod identity;
mod relay;
mod route_policy;

use config::Config;
use endpoints::Shared;
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
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return refuse(&format!("cannot start the runtime: {error}")),
    };
    match runtime.block_on(run(config)) {
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
    let shared = Arc::new(Shared {
        policies: Policies::new(layer.clone()),
        metrics,
    });

    let listen = if config.demo && config.exit {
        SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        config.listen
    };
    let webhooks = config.webhooks(&fleet).map_err(configuration)?;
    let settles = webhooks.is_some() && fleet.is_shared();
    let service = bind(listen).await?;
    let addr = local_addr(&service)?;
    say!("composio-auth-server listening on http://{addr}");
    let mut app = endpoints::service(Arc::clone(&shared));
    if let Some(webhooks) = webhooks {
        let path = webhooks.path.clone();
        app = relay::route(app, webhooks).map_err(configuration)?;
        say!("composio-auth-server webhooks on http://{addr}{path}");
    }
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(serve(service, app));
    if let Some(grpc_listen) = config.grpc_listen {
        let grpc = bind(grpc_listen).await?;
        say!("composio-auth-server grpc on {}", local_addr(&grpc)?);
        let check = grpc::Check::new(Arc::clone(&shared), config.hidden());
        servers.spawn(serve_grpc(grpc, check));
    }
    if let Some(admin_listen) = config.admin_listen {
        let admin = bind(admin_listen).await?;
        say!(
            "composio-auth-server admin on http://{}",
            local_addr(&admin)?
        );
        servers.spawn(serve(admin, endpoints::admin(layer.clone())));
    }
    if let Some(stand_in) = &stand_in {
        let tried = demo::show(stand_in, addr, config.exit).await;
        if config.exit {
            return tried.map_err(Failure::Demo);
        }
    }
    until_stopped(servers, settles).await
}

/// How long the Redis writes that end the last deliveries (acknowledged, or
/// their claims released), which the library spawns as each delivery ends, are
/// given once every listener has stopped.
const SETTLE_TIME: Duration = Duration::from_secs(1);

/// Until a signal has stopped every listener (each finishes the requests it
/// has, deliveries being forwarded included), or one fails. With deliveries
/// claimed in Redis (`settles`), their last writes get [`SETTLE_TIME`]: a claim
/// left behind would hold Composio's retry back on every replica for its lease.
async fn until_stopped(
    mut servers: tokio::task::JoinSet<std::io::Result<()>>,
    settles: bool,
) -> Result<(), Failure> {
    while let Some(stopped) = servers.join_next().await {
        if let Ok(Err(error)) = stopped {
            return Err(Failure::Configuration(format!("serving stopped: {error}")));
        }
    }
    if settles {
        tokio::time::sleep(SETTLE_TIME).await;
    }
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Failure> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| Failure::Configuration(format!("cannot listen on {addr}: {error}")))
}

fn local_addr(listener: &tokio::net::TcpListener) -> Result<SocketAddr, Failure> {
    listener
        .local_addr()
        .map_err(|error| Failure::Configuration(format!("no local address: {error}")))
}

async fn serve_grpc(listener: tokio::net::TcpListener, check: grpc::Check) -> std::io::Result<()> {
    tonic::transport::Server::builder()
        .add_service(envoy_types::ext_authz::v3::pb::AuthorizationServer::new(
            check,
        ))
        .serve_with_incoming_shutdown(
            // Without it, Nagle and delayed ACKs hold each answer ~40 ms.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown(),
        )
        .await
        .map_err(std::io::Error::other)
}

async fn serve(listener: tokio::net::TcpListener, app: axum::Router) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await
}

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(terminate) => terminate,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
