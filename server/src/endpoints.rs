//! The HTTP endpoints: what a proxy asks (`/verify`, `/ext-authz/`), liveness,
//! readiness, metrics, and the operators' endpoints on their own listener.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use composio_auth::ComposioAuthLayer;
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::{Instrument, Span};

use crate::health::Drain;
use crate::route_policy::{self, Policies};
use crate::{identity, traces};

/// What every endpoint shares.
pub struct Shared {
    pub policies: Policies,
    pub metrics: PrometheusHandle,
    pub drain: Arc<Drain>,
}

/// The endpoints proxies and monitoring reach.
pub fn service(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/verify", any(verify))
        .route("/ext-authz", any(ext_authz))
        .route("/ext-authz/", any(ext_authz))
        .route("/ext-authz/{*client_path}", any(ext_authz))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// The operators' endpoints, for a listener of their own.
pub fn admin(layer: ComposioAuthLayer) -> Router {
    Router::new()
        .route("/invalidate", post(invalidate))
        .route("/invalidate-all", post(invalidate_all))
        .with_state(layer)
}

/// nginx `auth_request`, Caddy `forward_auth`, Traefik ForwardAuth: the client's
/// headers, the route's policy in the query (written by the proxy's
/// configuration, never by the client). The body is never read.
async fn verify(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let span = traces::check_span("verify", request.headers(), || None);
    let check = span.clone();
    async move {
        let query = request.uri().query().unwrap_or_default();
        match shared.policies.for_query(query) {
            Ok(layer) => answer(&layer, request.headers(), &check).await,
            Err(error) => {
                let response = route_policy::misconfigured(&error, "the proxy's /verify URI");
                traces::misconfigured(&check, response.status().as_u16());
                response.map(Body::from)
            }
        }
    }
    .instrument(span)
    .await
}

/// Envoy's HTTP `ext_authz` (`path_prefix: /ext-authz`): Envoy appends the
/// client's own path and query, so both are ignored, or a client could choose its
/// policy. A route's policy for Envoy goes through gRPC's `context_extensions`.
async fn ext_authz(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let span = traces::check_span("ext_authz", request.headers(), || None);
    answer(shared.policies.base(), request.headers(), &span)
        .instrument(span.clone())
        .await
}

/// Allowed: 200, empty, with the identity headers. Refused: the layer's answer.
/// Awaited inside `check`, the check's span (the library's verification span is
/// a child of the span current when `verify` is called).
async fn answer(layer: &ComposioAuthLayer, headers: &HeaderMap, check: &Span) -> Response {
    let verdict = layer.verify(headers).await;
    traces::checked(check, &verdict);
    match verdict {
        Ok(session) => {
            let mut response = Response::new(Body::empty());
            *response.headers_mut() = identity::of(&session);
            response
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// Readiness: 200 until SIGTERM or SIGINT, then 503 while the server drains.
/// Never Composio's or Redis's reachability (see `health`).
async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    if shared.drain.is_ready() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}

/// `POST /invalidate` with the key as the body: forgotten here, and on every
/// replica when they share Redis.
async fn invalidate(State(layer): State<ComposioAuthLayer>, body: Bytes) -> Response {
    let Ok(key) = std::str::from_utf8(&body) else {
        return (StatusCode::BAD_REQUEST, "the body must be the API key\n").into_response();
    };
    let key = key.trim();
    if key.is_empty() {
        return (StatusCode::BAD_REQUEST, "the body must be the API key\n").into_response();
    }
    reached(layer.invalidate(key).await)
}

/// `POST /invalidate-all`: every verdict forgotten, here and on every replica.
async fn invalidate_all(State(layer): State<ComposioAuthLayer>) -> Response {
    reached(layer.invalidate_all().await)
}

fn reached(result: Result<(), composio_auth::Error>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => (
            StatusCode::BAD_GATEWAY,
            format!("forgotten here only: {error}\n"),
        )
            .into_response(),
    }
}
