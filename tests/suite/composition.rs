//! The layer among the tower-http layers an axum app already stacks, each claim of
//! the composition guide (guide::composition) checked with the real layers over real TCP.

use crate::common;

use std::time::Duration;

use axum::http::{HeaderValue, Method, StatusCode};
use axum::routing::get;
use axum::Router;
use common::{builder, composio, serve, Capture, Client, ALICE};
use composio_auth::{ResponseBody, SessionInfo};
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::cors::CorsLayer;
use tower_http::map_response_body::MapResponseBodyLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

fn me() -> Router {
    Router::new().route(
        "/me",
        get(|session: SessionInfo| async move { session.org_member.email.clone() }),
    )
}

/// A CORS preflight for `GET /me` from another origin, without a key (browsers never
/// send credentials on a preflight).
async fn preflight(client: &Client) -> reqwest::Response {
    client
        .http
        .request(Method::OPTIONS, format!("http://{}/me", client.addr))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "x-api-key")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn cors_goes_outside_the_layer_so_that_preflights_pass() {
    let composio = composio().await;
    let layer = builder(&composio).build().unwrap();
    let cors = || {
        CorsLayer::new()
            .allow_origin(HeaderValue::from_static("https://app.example"))
            .allow_headers([axum::http::header::HeaderName::from_static("x-api-key")])
    };

    // Outside (added last): the preflight is answered by CORS, the request is checked.
    let outside = Client::new(serve(me().layer(layer.clone()).layer(cors())).await);
    let answer = preflight(&outside).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        answer.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let refused = outside
        .http
        .get(format!("http://{}/me", outside.addr))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    // A rejection still carries the CORS headers, so the browser lets the page read it.
    assert_eq!(
        refused.headers()["access-control-allow-origin"],
        "https://app.example"
    );

    // Inside: every preflight is refused.
    let inside = Client::new(serve(me().layer(cors()).layer(layer)).await);
    assert_eq!(preflight(&inside).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(composio.calls(), 0);
}

#[tokio::test]
async fn request_ids_set_outside_reach_the_layers_envelopes_and_are_returned() {
    let composio = composio().await;
    let app = me().layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(builder(&composio).build().unwrap()),
    );
    let client = Client::new(serve(app).await);
    let answer = client.get("/me", &[]).await;
    assert_eq!(answer.status, 401);
    let id = answer.headers["x-request-id"].to_str().unwrap();
    assert_eq!(answer.envelope().error.request_id.as_deref(), Some(id));
    assert_eq!(id.len(), 36, "a generated UUID: {id}");
}

#[tokio::test]
async fn rejections_are_compressed_and_verifications_end_within_the_layers_budget() {
    let composio = composio().await;
    let budget = Duration::from_millis(300);
    // (`TimeoutLayer::new` is the constructor every tower-http 0.6 release has.)
    #[allow(deprecated)]
    let timeout = TimeoutLayer::new(budget * 10);
    let app = me().layer(
        ServiceBuilder::new()
            .layer(CompressionLayer::new())
            .layer(timeout)
            .layer(builder(&composio).timeout(budget).build().unwrap()),
    );
    let client = Client::new(serve(app).await);
    let compressed = client.get("/me", &[("accept-encoding", "gzip")]).await;
    assert_eq!(compressed.status, 401);
    assert_eq!(compressed.headers["content-encoding"], "gzip");

    // A stalled Composio: the layer's own 503, within its budget, before the
    // outer timeout's 408.
    composio.hold();
    let started = std::time::Instant::now();
    let answer = client.me(ALICE).await;
    assert_eq!(answer.status, 503);
    assert!(started.elapsed() < budget * 5, "{:?}", started.elapsed());
    composio.release();
}

#[tokio::test]
async fn inside_a_stack_that_changes_the_body_type_responsebody_carries_the_envelope() {
    // The layer outside `CompressionLayer` in one `ServiceBuilder`: the inner body is
    // tower-http's `CompressionBody`, which this crate cannot write in; the composition guide's
    // one extra line wraps it.
    let composio = composio().await;
    let app = me().layer(
        ServiceBuilder::new()
            .layer(builder(&composio).build().unwrap())
            .layer(MapResponseBodyLayer::new(ResponseBody::new))
            .layer(CompressionLayer::new()),
    );
    let client = Client::new(serve(app).await);
    let refused = client.get("/me", &[("accept-encoding", "gzip")]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.headers["content-type"], "application/json");
    assert_eq!(
        refused.envelope().error.slug.as_deref(),
        Some("Auth_NoAuthProvided")
    );
    let admitted = client.me(ALICE).await;
    assert_eq!(admitted.status, 200);
    assert!(admitted.body.contains('@'), "{}", admitted.body);
}

#[tokio::test]
async fn the_layer_around_a_whole_router_is_served_by_axum_serve_as_it_is() {
    // Wrapping the router itself (not `Router::layer`): the layer answers in the
    // router's own body type, which is what `axum::serve` takes.
    use axum::ServiceExt;
    use tower::Layer;

    use axum::extract::{MatchedPath, OriginalUri, Path};

    let composio = composio().await;
    // Axum's own extensions go into the map the layer made room in, beside the session.
    let items = Router::new().route(
        "/items/{id}",
        get(
            |Path(id): Path<String>,
             matched: MatchedPath,
             uri: OriginalUri,
             session: SessionInfo| async move {
                format!(
                    "{id} {} {} {}",
                    matched.as_str(),
                    uri.0,
                    session.org_member.email
                )
            },
        ),
    );
    let app = builder(&composio).build().unwrap().layer(me().merge(items));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ServiceExt::<axum::extract::Request>::into_make_service(app);
    tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
    let client = Client::new(addr);
    let refused = client.get("/me", &[]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.envelope().error.slug.as_deref(),
        Some("Auth_NoAuthProvided")
    );
    // Outside the router, the layer runs before routing: an unknown path needs a key.
    assert_eq!(client.get("/nowhere", &[]).await.status, 401);
    let admitted = client.me(ALICE).await;
    assert_eq!(admitted.status, 200);
    assert!(admitted.body.contains('@'), "{}", admitted.body);
    let item = client.get("/items/42?x=1", &[("x-api-key", ALICE)]).await;
    assert_eq!(item.status, 200);
    assert_eq!(
        item.body,
        format!("42 /items/{{id}} /items/42?x=1 {}", admitted.body)
    );
    let item = client.get("/items/42?x=1", &[("x-api-key", ALICE)]).await;
    assert_eq!(item.status, 200);
    assert_eq!(
        item.body,
        format!("42 /items/{{id}} /items/42?x=1 {}", admitted.body)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn traces_show_the_verification_inside_the_request() {
    let (capture, _guard) = Capture::install();
    let composio = composio().await;
    let app = me()
        .layer(builder(&composio).build().unwrap())
        .layer(TraceLayer::new_for_http());
    let client = Client::new(serve(app).await);
    assert_eq!(client.me(ALICE).await.status, 200);
    assert_eq!(client.get("/me", &[]).await.status, 401);

    let spans = capture.spans();
    let verification = spans
        .iter()
        .find(|s| s.name == "composio_auth.verification")
        .expect("a verification span");
    assert_eq!(verification.parent.as_deref(), Some("request"));
    for field in [
        "header=x-api-key",
        "outcome=allowed",
        "upstream_status=200",
        "latency_ms=",
    ] {
        assert!(verification.fields.contains(field), "{verification:?}");
    }
    assert!(!verification.fields.contains(ALICE));
    // The rejection is traced by TraceLayer like any response.
    capture.wait_for("status=401", 1).await;
}

#[tokio::test]
async fn route_layer_protects_some_routes_layer_protects_every_path() {
    let composio = composio().await;
    let layer = builder(&composio).build().unwrap();
    let routes = || me().route("/health", get(|| async { "ok" }));

    // `route_layer` on the protected routes, added before the open ones: open routes
    // stay open, unknown paths stay 404.
    let per_route = Client::new(
        serve(
            me().route_layer(layer.clone())
                .route("/health", get(|| async { "ok" })),
        )
        .await,
    );
    assert_eq!(per_route.get("/health", &[]).await.status, 200);
    assert_eq!(per_route.get("/me", &[]).await.status, 401);
    assert_eq!(per_route.get("/nowhere", &[]).await.status, 404);
    assert_eq!(per_route.me(ALICE).await.status, 200);

    // `layer` on the whole router: every path, unknown ones included, needs a key.
    let everything = Client::new(serve(routes().layer(layer)).await);
    assert_eq!(everything.get("/health", &[]).await.status, 401);
    assert_eq!(everything.get("/nowhere", &[]).await.status, 401);
    assert_eq!(
        everything
            .get("/nowhere", &[("x-api-key", ALICE)])
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn h2c_with_prior_knowledge_through_axum_serve() {
    let composio = composio().await;
    let addr = serve(me().layer(builder(&composio).build().unwrap())).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let get = |key: Option<&str>| {
        let mut request = h2.get(format!("http://{addr}/me"));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.send()
    };
    let answer = get(Some(ALICE)).await.unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.status(), 200);
    let refused = get(None).await.unwrap();
    assert_eq!(refused.version(), reqwest::Version::HTTP_2);
    assert_eq!(refused.status(), 401);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("Auth_NoAuthProvided"));
}

#[tokio::test]
async fn a_per_client_rate_limiter_before_the_layer_keeps_a_flood_off_the_upstream() {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use tower_governor::governor::GovernorConfigBuilder;
    use tower_governor::GovernorLayer;

    let composio = composio().await;
    // Each client IP: a burst of 5 requests, then one every 10 s.
    let config = Arc::new(
        GovernorConfigBuilder::default()
            .per_second(10)
            .burst_size(5)
            .finish()
            .unwrap(),
    );
    let app = me()
        .layer(builder(&composio).build().unwrap())
        .layer(GovernorLayer::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    let client = Client::new(addr);
    // One client sprays 50 random keys.
    let mut statuses = Vec::new();
    for i in 0..50 {
        statuses.push(
            client
                .me(&format!("ak_random_flood_key_{i:04}"))
                .await
                .status,
        );
    }
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!(limited + refused, 50);
    // Only the requests the limiter let through reached the layer, and Composio.
    assert_eq!(composio.calls() as usize, refused);
    assert!(refused <= 5, "{refused} reached Composio");
}

/// A gRPC-web `Health/Check` over HTTP/1.1 (an empty request message, framed), as a
/// browser client sends it; returns the status, content type and `grpc-status`
/// (from the headers of a trailers-only answer, else from the trailer frame).
async fn grpc_web_check(addr: std::net::SocketAddr, key: Option<&str>) -> (u16, String, String) {
    let mut request = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .build()
        .unwrap()
        .post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(vec![0u8, 0, 0, 0, 0]);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let in_headers = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.bytes().await.unwrap();
    let grpc_status = in_headers.unwrap_or_else(|| {
        // The trailer frame (flag 0x80) holds `grpc-status:N`.
        let text = String::from_utf8_lossy(&body);
        let at = text.find("grpc-status:").expect("a grpc-status trailer");
        text[at + 12..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect()
    });
    (status, content_type, grpc_status)
}

#[tokio::test]
async fn grpc_web_clients_get_the_status_with_grpc_web_layer_outside_or_inside() {
    let composio = composio().await;
    for web_outside in [true, false] {
        let health = tonic_health::server::HealthService::from_health_reporter(
            tonic_health::server::HealthReporter::new(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let auth = builder(&composio).build().unwrap();
        let service = tonic_health::pb::health_server::HealthServer::new(health);
        let server = tonic::transport::Server::builder().accept_http1(true);
        if web_outside {
            // Recommended: tonic-web translates, the layer sees plain gRPC.
            let router = server
                .layer(tonic_web::GrpcWebLayer::new())
                .layer(auth)
                .add_service(service);
            tokio::spawn(router.serve_with_incoming(incoming));
        } else {
            let router = server
                .layer(auth)
                .layer(tonic_web::GrpcWebLayer::new())
                .add_service(service);
            tokio::spawn(router.serve_with_incoming(incoming));
        }
        let (status, content_type, grpc_status) = grpc_web_check(addr, None).await;
        assert_eq!(status, 200, "outside: {web_outside}");
        assert!(
            content_type.starts_with("application/grpc-web"),
            "{content_type}"
        );
        assert_eq!(grpc_status, "16", "outside: {web_outside}");
        let (status, content_type, grpc_status) = grpc_web_check(addr, Some(ALICE)).await;
        assert_eq!(status, 200);
        assert!(
            content_type.starts_with("application/grpc-web"),
            "{content_type}"
        );
        assert_eq!(grpc_status, "0", "outside: {web_outside}");
    }
}

/// The builder's "Runtime" section, shown: outside any Tokio runtime a request is
/// answered 503; on a runtime without its time driver, a verification fails (503:
/// Tokio panics in the verification's own task) and a rejected body still arriving
/// panics in the request's task, where the layer cannot catch it.
#[test]
fn the_runtime_the_layer_needs() {
    use axum::body::Body;
    use axum::http::Request;
    use futures_util::FutureExt;
    use tower::ServiceExt;

    let full = tokio::runtime::Runtime::new().unwrap();
    let composio = full.block_on(composio());
    let layer = full.block_on(async { builder(&composio).build().unwrap() });
    let app = Router::new()
        .route("/me", get(|| async { "ok" }).post(|| async { "ok" }))
        .layer(layer);
    let with_alice = || {
        Request::get("/me")
            .header("x-api-key", ALICE)
            .body(Body::empty())
            .unwrap()
    };
    let arriving = || {
        let pending = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
        Request::post("/me")
            .body(Body::from_stream(pending))
            .unwrap()
    };
    // Outside any runtime: answered at once, 503.
    let outside = app.clone().oneshot(with_alice()).now_or_never();
    let status = outside.expect("answered at once").unwrap().status();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Without the time driver.
    let no_timers = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let verified = no_timers
        .block_on(app.clone().oneshot(with_alice()))
        .unwrap();
    assert_eq!(verified.status(), StatusCode::SERVICE_UNAVAILABLE);
    let drained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        no_timers.block_on(app.clone().oneshot(arriving()))
    }));
    let message = drained.expect_err("Tokio refuses a timer");
    let message = message
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| message.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    assert!(message.contains("timers are disabled"), "{message}");
    // With it, the same requests: admitted, and refused once the body is given up.
    assert_eq!(
        full.block_on(app.clone().oneshot(with_alice()))
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let refused = full.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(arriving())).await
    });
    let refused = refused.expect("given up after the idle time").unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(refused.headers()["connection"], "close");
}
