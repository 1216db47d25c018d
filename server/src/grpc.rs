//! Envoy's gRPC `envoy.service.auth.v3.Authorization/Check` (`--grpc-listen`):
//! the same verdicts as `/verify`, the route's policy from its
//! `context_extensions` (values comma-separated).

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use composio_auth::{CredentialHeader, Rejection, SessionInfo};
use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::HeaderValue as EnvoyHeader;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::pb::google::rpc;
use tracing::{Instrument, Span};

use crate::endpoints::Shared;
use crate::route_policy::{self, RoutePolicy};
use crate::{identity, traces};

/// gRPC status codes of the answers.
const OK: i32 = 0;
const INVALID_ARGUMENT: i32 = 3;
const PERMISSION_DENIED: i32 = 7;
const INTERNAL: i32 = 13;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

/// The `Authorization` service.
pub struct Check {
    shared: Arc<Shared>,
    /// The credential headers to remove from an allowed request
    /// (`--hide-credential`), if any.
    hide: Vec<CredentialHeader>,
}

impl Check {
    /// The service over the server's one cache; `hide` lists the accepted
    /// credential headers when `--hide-credential` is set.
    pub fn new(shared: Arc<Shared>, hide: Vec<CredentialHeader>) -> Self {
        Self { shared, hide }
    }
}

#[tonic::async_trait]
impl Authorization for Check {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let (metadata, _, request) = request.into_parts();
        let attributes = request.attributes.unwrap_or_default();
        let http = attributes
            .request
            .and_then(|request| request.http)
            .unwrap_or_default();
        let headers = header_map(http.headers.iter());
        // The client's request's trace, else that of Envoy's call to `Check`.
        let span = traces::check_span("grpc", &headers, || Some(metadata.into_headers()));
        let answer = self
            .answer(&attributes.context_extensions, &headers, &span)
            .instrument(span.clone())
            .await;
        Ok(tonic::Response::new(answer))
    }
}

impl Check {
    /// The answer to the client's `headers` on a route with `context_extensions`,
    /// awaited inside `check`, the check's span.
    async fn answer(
        &self,
        context_extensions: &std::collections::HashMap<String, String>,
        headers: &HeaderMap,
        check: &Span,
    ) -> CheckResponse {
        let policy = match RoutePolicy::from_context(context_extensions) {
            Ok(policy) => policy,
            Err(error) => {
                // `route_policy::misconfigured`'s 500.
                traces::misconfigured(check, 500);
                return misconfigured(&error);
            }
        };
        let layer = self.shared.policies.for_policy(policy);
        let verdict = layer.verify(headers).await;
        traces::checked(check, &verdict);
        match verdict {
            Ok(session) => allowed(&session, headers, &self.hide),
            Err(rejection) => denied(&rejection),
        }
    }
}

/// The client's headers as Envoy sends them (lower-case names), in an
/// `http::HeaderMap`; a pair that is not a valid header is left out.
fn header_map<'a>(pairs: impl Iterator<Item = (&'a String, &'a String)>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    headers
}

/// OK, the identity headers replacing any the client sent, and the credential
/// header removed when asked.
fn allowed(session: &SessionInfo, headers: &HeaderMap, hide: &[CredentialHeader]) -> CheckResponse {
    let identity = identity::of(session);
    let headers_to_remove = hide
        .iter()
        .filter(|header| carries(headers, **header))
        .map(|header| header.as_str().to_owned())
        .collect();
    CheckResponse {
        status: Some(status(OK, "")),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: envoy_headers(&identity, HeaderAppendAction::OverwriteIfExistsOrAdd),
            headers_to_remove,
            ..OkHttpResponse::default()
        })),
        ..CheckResponse::default()
    }
}

/// Whether `header` carries a credential in `headers`: `Authorization` only with
/// the Bearer scheme (another scheme is not a credential, and stays).
fn carries(headers: &HeaderMap, header: CredentialHeader) -> bool {
    let Some(value) = headers.get(header.as_str()) else {
        return false;
    };
    header != CredentialHeader::Bearer
        || value
            .as_bytes()
            .get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
}

/// The rejection as Envoy hands it to the client: 400 / 401 / 403 / 503 with the
/// layer's headers and JSON envelope, and the matching gRPC code.
fn denied(rejection: &Rejection) -> CheckResponse {
    let code = match rejection.status().as_u16() {
        400 => INVALID_ARGUMENT,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        _ => UNAVAILABLE,
    };
    let body = serde_json::to_string(rejection.envelope()).unwrap_or_default();
    denied_with(
        code,
        rejection.status().as_u16(),
        rejection.headers(),
        body,
        &rejection.envelope().error.message,
    )
}

/// A route whose policy is wrong: the `/verify` answer for it, as code 13.
fn misconfigured(error: &str) -> CheckResponse {
    let response = route_policy::misconfigured(error, "the Envoy route's context_extensions");
    denied_with(
        INTERNAL,
        response.status().as_u16(),
        response.headers(),
        response.body().clone(),
        error,
    )
}

fn denied_with(
    code: i32,
    http: u16,
    headers: &HeaderMap,
    body: String,
    message: &str,
) -> CheckResponse {
    CheckResponse {
        status: Some(status(code, message)),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(http),
            }),
            headers: envoy_headers(headers, HeaderAppendAction::OverwriteIfExistsOrAdd),
            body,
        })),
        ..CheckResponse::default()
    }
}

fn status(code: i32, message: &str) -> rpc::Status {
    rpc::Status {
        code,
        message: message.to_owned(),
        details: Vec::new(),
    }
}

/// `headers` as Envoy's header options, each with `action` (and `append`
/// false, for Envoys that still read the deprecated field).
fn envoy_headers(headers: &HeaderMap, action: HeaderAppendAction) -> Vec<HeaderValueOption> {
    headers
        .iter()
        .map(|(name, value)| {
            #[allow(deprecated)]
            HeaderValueOption {
                header: Some(EnvoyHeader {
                    key: name.as_str().to_owned(),
                    value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    raw_value: Vec::new(),
                }),
                append: Some(BoolValue { value: false }),
                append_action: action.into(),
                keep_empty_value: false,
            }
        })
        .collect()
}
