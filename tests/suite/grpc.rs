//! The layer in a tonic server, called by a tonic client over real TCP: verdicts
//! become gRPC status codes, and handlers find `SessionInfo` in the request's
//! extensions.

use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::{builder, composio, ALICE, BOB};
use composio_auth::testing::Reply;
use composio_auth::{ComposioAuthLayer, SessionInfo};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::{HealthReporter, HealthService};

type Seen = Arc<Mutex<Vec<String>>>;

/// Serves the health service behind `layer`; its interceptor records the email of
/// every session it sees.
async fn serve(layer: ComposioAuthLayer) -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let record = Arc::clone(&seen);
    let health = HealthService::from_health_reporter(HealthReporter::new());
    let health = HealthServer::with_interceptor(health, move |request: Request<()>| {
        let session = request
            .extensions()
            .get::<SessionInfo>()
            .ok_or_else(|| Status::internal("no session"))?;
        record
            .lock()
            .unwrap()
            .push(session.org_member.email.clone());
        Ok(request)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder().layer(layer).add_service(health);
    tokio::spawn(server.serve_with_incoming(TcpIncoming::from(listener)));
    (addr, seen)
}

async fn check(addr: SocketAddr, key: Option<&str>) -> Result<ServingStatus, Status> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("x-api-key", key.parse().unwrap());
    }
    let response = HealthClient::new(channel).check(request).await?;
    Ok(response.into_inner().status())
}

#[tokio::test]
async fn a_valid_key_reaches_the_grpc_handler_with_its_session() {
    let composio = composio().await;
    let (addr, seen) = serve(builder(&composio).build().unwrap()).await;
    assert_eq!(
        check(addr, Some(ALICE)).await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        check(addr, Some(ALICE)).await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        *seen.lock().unwrap(),
        ["alice@example.com", "alice@example.com"]
    );
    assert_eq!(composio.calls_for(ALICE), 1);
}

#[tokio::test]
async fn missing_and_invalid_keys_are_unauthenticated() {
    let composio = composio().await;
    let (addr, seen) = serve(builder(&composio).build().unwrap()).await;
    let status = check(addr, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "No API key provided");
    let status = check(addr, Some("ak_unknown_grpc_ESjq")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "Invalid API key: ak_**ESjq");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn require_refusals_are_permission_denied() {
    let composio = composio().await;
    let layer = builder(&composio)
        .require(|s| s.org_member.role == "admin")
        .build()
        .unwrap();
    let (addr, _) = serve(layer).await;
    assert_eq!(
        check(addr, Some(BOB)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert!(check(addr, Some(ALICE)).await.is_ok());
}

#[tokio::test]
async fn an_undecided_upstream_is_unavailable() {
    let composio = composio().await;
    composio.fail_with(Reply::html(502));
    let (addr, _) = serve(builder(&composio).build().unwrap()).await;
    let status = check(addr, Some(ALICE)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        "The API key could not be verified right now"
    );
}
