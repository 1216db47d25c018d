//! A gRPC service (the standard health service) behind the layer.
//!
//! ```text
//! cargo run --example tonic            # serve on 127.0.0.1:50051 (or a free port)
//! cargo run --example tonic -- --demo  # call it with a valid key, then without one
//! ```
//!
//! Like the quickstart, it uses a local stand-in of Composio unless
//! `COMPOSIO_BASE_URL` is set. A tonic server needs the crate's feature `tonic` (this
//! repository's examples have it on), so that the layer can write its rejections in
//! tonic's body type.

use composio_auth::testing::StandIn;
use composio_auth::{ComposioAuthLayer, SessionInfo, BASE_URL_ENV};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::{HealthReporter, HealthService};

const DEMO_KEY: &str = "ak_demo_alice_0123456789";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = std::env::args().any(|a| a == "--demo");
    let (_stand_in, layer) = if std::env::var(BASE_URL_ENV).is_ok() {
        (None, ComposioAuthLayer::builder().build()?)
    } else {
        let stand_in = StandIn::start().await?;
        stand_in.add_session(DEMO_KEY, StandIn::example_document());
        let layer = ComposioAuthLayer::builder()
            .base_url(stand_in.base_url())
            .build()?;
        (Some(stand_in), layer)
    };

    // Handlers (here, an interceptor) find the session in the request's extensions.
    let health = HealthService::from_health_reporter(HealthReporter::new());
    let health = HealthServer::with_interceptor(health, |request: Request<()>| {
        let session = request
            .extensions()
            .get::<SessionInfo>()
            .ok_or_else(|| Status::unauthenticated("no session"))?;
        println!("health check by {}", session.org_member.email);
        Ok(request)
    });

    let listener = match tokio::net::TcpListener::bind("127.0.0.1:50051").await {
        Ok(listener) => listener,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let addr = listener.local_addr()?;
    let server = Server::builder()
        .layer(layer)
        .add_service(health)
        .serve_with_incoming(TcpIncoming::from(listener));

    if !demo {
        println!("gRPC health service on {addr}; send your key as `x-api-key` metadata.");
        server.await?;
        return Ok(());
    }
    tokio::spawn(server);
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    for key in [Some(DEMO_KEY), None] {
        let mut request = Request::new(HealthCheckRequest {
            service: String::new(),
        });
        if let Some(key) = key {
            request.metadata_mut().insert("x-api-key", key.parse()?);
        }
        match HealthClient::new(channel.clone()).check(request).await {
            Ok(response) => println!("with a key: {:?}", response.into_inner().status()),
            Err(status) => println!("without a key: {:?}: {}", status.code(), status.message()),
        }
    }
    Ok(())
}
