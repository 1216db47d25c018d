//! The layer as an actix-web middleware, and `SessionInfo` as an actix-web
//! extractor (feature `actix-web`).
//!
//! The middleware hands the request's headers to the verifier (read in place: the
//! path [`ComposioAuthLayer::verify`] takes) and copies its answer into actix-web's
//! types: the same status, headers and JSON body as the tower layer's. A hit calls
//! the inner service at once, with nothing boxed.
//!
//! actix-web runs each worker on a Tokio runtime of its own. A layer that becomes
//! an actix-web middleware therefore runs its verifications on one runtime of its
//! own (`verifier/own_runtime.rs`), so that the workers share each key's one
//! verification.

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header as actix_header;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use bytes::Bytes;

use crate::adapters::MissingSession;
use crate::verifier::decision::{self, Decided};
use crate::verifier::headers::RequestHeaders;
use crate::verifier::rejection::Rejection;
use crate::verifier::session::SessionInfo;
use crate::ComposioAuthLayer;

/// The layer as actix-web middleware: `App::new().wrap(layer.clone())`,
/// `web::scope("/admin").wrap(layer.require(is_admin))`.
///
/// Build the layer once, outside `HttpServer::new`'s closure, and clone it in:
/// the closure runs once per worker, and a layer built inside it is one cache,
/// one set of verification slots and one verification thread per worker.
#[cfg_attr(docsrs, doc(cfg(feature = "actix-web")))]
impl<S, B> Transform<S, ServiceRequest> for ComposioAuthLayer
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = ComposioAuthMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        // Called on each worker's runtime: from now on the flights run where
        // every worker can join them.
        self.state.verifications.run_on_own_runtime();
        ready(Ok(ComposioAuthMiddleware {
            service: Rc::new(service),
            layer: self.clone(),
        }))
    }
}

/// The actix-web service that [`ComposioAuthLayer`] wraps around a worker's
/// service (see its `Transform` implementation). Admits a request with its
/// [`SessionInfo`] in the request's extensions, or answers the rejection.
pub struct ComposioAuthMiddleware<S> {
    service: Rc<S>,
    layer: ComposioAuthLayer,
}

impl<S> std::fmt::Debug for ComposioAuthMiddleware<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComposioAuthMiddleware")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<ServiceRequest> for ComposioAuthMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = ActixResponseFuture<S, B>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let (carrier, decided) =
            decision::decide(&self.layer.state, &self.layer.policy, request.headers());
        let hide = self.layer.state.hide_credential;
        let admit = move |mut request: ServiceRequest, session: SessionInfo| {
            if let Some(header) = carrier.filter(|_| hide) {
                request.headers_mut().remove(header.as_str());
            }
            request.extensions_mut().insert(session);
            request
        };
        let stage = match decided {
            // A hit: the inner service is called now, nothing is boxed.
            Decided::Now(Ok(session)) => ActixStage::Called {
                inner: self.service.call(admit(request, session)),
            },
            Decided::Now(Err(rejection)) => ActixStage::Answered {
                response: Some(reject(request, &rejection)),
            },
            Decided::Later(verdict) => {
                let service = Rc::clone(&self.service);
                ActixStage::Waiting {
                    verdict: Box::pin(async move {
                        match verdict.await {
                            Ok(session) => {
                                let response = service.call(admit(request, session)).await?;
                                Ok(response.map_into_left_body())
                            }
                            Err(rejection) => Ok(reject(request, &rejection)),
                        }
                    }),
                }
            }
        };
        ActixResponseFuture { stage }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ComposioAuthMiddleware`]: the inner service's (a
    /// hit), the rejection, or the wait for a verification.
    pub struct ActixResponseFuture<S: Service<ServiceRequest>, B> {
        #[pin]
        stage: ActixStage<S, B>,
    }
}

pin_project_lite::pin_project! {
    /// Where the actix response future stands.
    #[project = ActixStageProjection]
    enum ActixStage<S: Service<ServiceRequest>, B> {
        Called { #[pin] inner: S::Future },
        Answered { response: Option<ServiceResponse<EitherBody<B>>> },
        Waiting { verdict: LocalBoxFuture<Result<ServiceResponse<EitherBody<B>>, actix_web::Error>> },
    }
}

/// A future that stays on its worker's thread.
type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

impl<S, B> Future for ActixResponseFuture<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    type Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().stage.project() {
            ActixStageProjection::Called { inner } => inner
                .poll(cx)
                .map(|answer| answer.map(ServiceResponse::map_into_left_body)),
            ActixStageProjection::Answered { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("ActixResponseFuture polled after it completed"),
            },
            ActixStageProjection::Waiting { verdict } => verdict.as_mut().poll(cx),
        }
    }
}

impl<S: Service<ServiceRequest>, B> std::fmt::Debug for ActixResponseFuture<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActixResponseFuture")
            .finish_non_exhaustive()
    }
}

/// `request` answered with `rejection`.
fn reject<B>(request: ServiceRequest, rejection: &Rejection) -> ServiceResponse<EitherBody<B>> {
    request
        .into_response(actix_response(rejection.response()))
        .map_into_right_body()
}

/// actix-web 4's own header map, read in place by the verifier.
impl RequestHeaders for actix_header::HeaderMap {
    #[inline]
    fn pairs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
    }

    fn first(&self, name: &'static str) -> Option<&[u8]> {
        self.get(name).map(actix_header::HeaderValue::as_bytes)
    }
}

/// `response` in actix-web's types, byte for byte.
fn actix_response(response: &http::Response<Bytes>) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(response.status().as_u16())
        .unwrap_or(actix_web::http::StatusCode::SERVICE_UNAVAILABLE);
    let mut answer = HttpResponse::with_body(status, response.body().clone());
    for (name, value) in response.headers() {
        let name = actix_header::HeaderName::from_bytes(name.as_str().as_bytes());
        let value = actix_header::HeaderValue::from_bytes(value.as_bytes());
        if let (Ok(name), Ok(value)) = (name, value) {
            answer.headers_mut().append(name, value);
        }
    }
    answer.map_into_boxed_body()
}

/// `SessionInfo` in an actix-web handler behind the layer; on a route without it,
/// [`MissingSession`] (401). `Option<SessionInfo>` (actix-web's own `Option`
/// extractor) is `None` there instead, never a rejection.
#[cfg_attr(docsrs, doc(cfg(feature = "actix-web")))]
impl FromRequest for SessionInfo {
    type Error = MissingSession;
    type Future = Ready<Result<Self, MissingSession>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(
            request
                .extensions()
                .get::<SessionInfo>()
                .cloned()
                .ok_or(MissingSession),
        )
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "actix-web")))]
impl ResponseError for MissingSession {
    fn status_code(&self) -> actix_web::http::StatusCode {
        actix_web::http::StatusCode::UNAUTHORIZED
    }

    fn error_response(&self) -> HttpResponse {
        actix_response(&self.response())
    }
}

/// A [`Rejection`] from [`ComposioAuthLayer::verify`] answers an actix-web
/// request exactly as the middleware would.
#[cfg_attr(docsrs, doc(cfg(feature = "actix-web")))]
impl ResponseError for Rejection {
    fn status_code(&self) -> actix_web::http::StatusCode {
        actix_web::http::StatusCode::from_u16(self.status().as_u16())
            .unwrap_or(actix_web::http::StatusCode::SERVICE_UNAVAILABLE)
    }

    fn error_response(&self) -> HttpResponse {
        actix_response(self.response())
    }
}
