//! `ComposioWebhookLayer` as an actix-web middleware, `WebhookEvent` as an
//! actix-web extractor and `WebhookRejection` as an actix-web `ResponseError`
//! (features `actix-web` and `webhook`).
//!
//! The middleware takes a delivery down the tower service's path
//! (`adapters/tower/webhook.rs`), through the same `WebhookState`, so it answers
//! the same request the same way: the method and headers are checked in `call`;
//! its future reads the payload up to the limit, verifies it, claims the delivery,
//! and calls the inner service with the same bytes as its payload and the
//! [`WebhookEvent`] in the request's extensions.
//!
//! actix-web runs each worker on a Tokio runtime of its own. The deliveries (a
//! mutex and a watch channel per delivery in progress) live in the layer's shared
//! state, so one delivery is claimed once across every worker, and a copy waiting
//! on one worker wakes when the copy handled on another ends (a watch channel
//! wakes its receivers whatever runtime they wait on).

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::{header as actix_header, StatusCode};
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use bytes::{Bytes, BytesMut};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use tracing::Instrument;

use crate::webhook::check::Delivery;
use crate::webhook::deliveries::Claim;
use crate::webhook::event::WebhookEvent;
use crate::webhook::instruments::Delivered;
use crate::webhook::rejection::{Reason, WebhookRejection};
use crate::webhook::state::WebhookState;
use crate::webhook_layer::ComposioWebhookLayer;
use crate::TRACING_TARGET;

/// The layer as actix-web middleware on the route Composio delivers to:
/// `web::resource("/composio/webhook").wrap(webhooks.clone()).route(web::post().to(on_event))`.
///
/// ```
/// use actix_web::{web, App};
/// use composio_auth::{ComposioWebhookLayer, WebhookEvent};
///
/// async fn on_event(event: WebhookEvent) -> &'static str {
///     println!("{} {:?}", event.event_type(), event.trigger_slug());
///     "ok"
/// }
///
/// # fn main() -> Result<(), composio_auth::Error> {
/// let webhooks = ComposioWebhookLayer::builder().secret("whsec_...").build()?;
/// let app = move || {
///     App::new().service(
///         web::resource("/composio/webhook")
///             .wrap(webhooks.clone())
///             .route(web::post().to(on_event)),
///     )
/// };
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
///
/// Build the layer once, outside `HttpServer::new`'s closure, and clone it in:
/// the closure runs once per worker, and clones share their deliveries, so a copy
/// of a delivery is held back whichever worker it reaches. A layer built inside
/// the closure remembers deliveries per worker: a copy reaching another worker
/// would be handled again.
#[cfg_attr(docsrs, doc(cfg(all(feature = "actix-web", feature = "webhook"))))]
impl<S, B> Transform<S, ServiceRequest> for ComposioWebhookLayer
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = ComposioWebhookMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ComposioWebhookMiddleware {
            service: Rc::new(service),
            state: Arc::clone(&self.state),
        }))
    }
}

/// The actix-web service that [`ComposioWebhookLayer`] wraps around a worker's
/// service (see its `Transform` implementation). Hands the inner service a
/// verified delivery, once, with the same payload bytes and its [`WebhookEvent`]
/// in the request's extensions; answers anything else as the tower layer does.
pub struct ComposioWebhookMiddleware<S> {
    service: Rc<S>,
    state: Arc<WebhookState>,
}

impl<S> std::fmt::Debug for ComposioWebhookMiddleware<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rules = &self.state.rules;
        f.debug_struct("ComposioWebhookMiddleware")
            .field("tolerance", &rules.tolerance)
            .field("max_body_bytes", &rules.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<ServiceRequest> for ComposioWebhookMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = ActixWebhookFuture<B>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        // actix-web 4 speaks `http` 0.2; the checks read `http` 1's types.
        // A method `http` 1 cannot name is no POST: 405 either way.
        let method = http::Method::from_bytes(request.method().as_str().as_bytes())
            .unwrap_or(http::Method::OPTIONS);
        let headers = http_headers(request.headers());
        let delivery = match self.state.headers(&method, &headers) {
            Ok(delivery) => delivery,
            Err(rejection) => {
                return ActixWebhookFuture {
                    stage: WebhookStage::Answered {
                        response: Some(reject(request, rejection)),
                    },
                }
            }
        };
        let span = tracing::debug_span!(
            target: TRACING_TARGET,
            "composio_auth.webhook",
            outcome = tracing::field::Empty,
        );
        let state = Arc::clone(&self.state);
        let service = Rc::clone(&self.service);
        let delivering = deliver(state, delivery, request, service).instrument(span);
        ActixWebhookFuture {
            stage: WebhookStage::Delivering {
                future: Box::pin(delivering),
            },
        }
    }
}

/// The response future of [`ComposioWebhookMiddleware`]: a rejection of the
/// method or headers, or the delivery's way from its payload to the inner
/// service's answer.
pub struct ActixWebhookFuture<B> {
    stage: WebhookStage<B>,
}

/// Where an [`ActixWebhookFuture`] stands.
enum WebhookStage<B> {
    Answered {
        response: Option<ServiceResponse<EitherBody<B>>>,
    },
    Delivering {
        future: LocalBoxFuture<'static, Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>,
    },
}

// No field is ever pinned: the delivery's future is boxed, the answer moved out.
impl<B> Unpin for ActixWebhookFuture<B> {}

impl<B> Future for ActixWebhookFuture<B> {
    type Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().stage {
            WebhookStage::Answered { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("ActixWebhookFuture polled after it completed"),
            },
            WebhookStage::Delivering { future } => future.as_mut().poll(cx),
        }
    }
}

impl<B> std::fmt::Debug for ActixWebhookFuture<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActixWebhookFuture").finish_non_exhaustive()
    }
}

/// A delivery whose headers passed, from its payload to the inner service's
/// answer: the tower service's `deliver`, in actix-web's types.
async fn deliver<S, B>(
    state: Arc<WebhookState>,
    delivery: Delivery,
    mut request: ServiceRequest,
    service: Rc<S>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    let length = content_length(request.headers());
    let payload = request.take_payload();
    let bytes = match read(payload, length, state.rules.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(reason) => {
            let rejection = state.refused(WebhookRejection::new(reason));
            return Ok(reject(request, rejection));
        }
    };
    let event = match state.event(delivery, bytes.clone()) {
        Ok(event) => event,
        Err(rejection) => return Ok(reject(request, rejection)),
    };
    let ticket = match state.claim(&event).await {
        Claim::Handle(ticket) => ticket,
        Claim::Acknowledged => {
            let duplicate = HttpResponse::with_body(StatusCode::OK, Bytes::new());
            return Ok(request
                .into_response(duplicate.map_into_boxed_body())
                .map_into_right_body());
        }
    };
    tracing::debug!(target: TRACING_TARGET, pause_point = crate::verifier::pause_point::DELIVERY_HANDLED, "webhook delivery verified; handing it to the handler");
    request.set_payload(Payload::from(bytes));
    request.extensions_mut().insert::<WebhookEvent>(event);
    let response = service.call(request).await;
    let acknowledged = response.as_ref().is_ok_and(|r| r.status().is_success());
    state.delivered(if acknowledged {
        Delivered::Handled
    } else {
        Delivered::Failed
    });
    ticket.finish(acknowledged);
    response.map(ServiceResponse::map_into_left_body)
}

/// The payload, whole, if it is at most `limit` bytes: refused at once when its
/// `Content-Length` says it is larger, and never read past the limit.
async fn read(mut payload: Payload, length: Option<u64>, limit: usize) -> Result<Bytes, Reason> {
    let length = match length {
        Some(length) if length > limit as u64 => return Err(Reason::TooLarge),
        // At most `limit`: it fits in a usize.
        Some(length) => usize::try_from(length).unwrap_or(limit),
        None => 0,
    };
    // Grown as bytes arrive: a declared length reserves at most 64 KiB up front,
    // before anything is signed.
    let mut body = BytesMut::with_capacity(length.min(64 * 1024));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| Reason::Unreadable)?;
        if chunk.len() > limit - body.len() {
            return Err(Reason::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The request's `Content-Length`, if it has a readable one.
fn content_length(headers: &actix_header::HeaderMap) -> Option<u64> {
    let value = headers.get(actix_header::CONTENT_LENGTH)?.to_str().ok()?;
    value.trim().parse().ok()
}

/// actix-web's header map as `http` 1's, every value kept in order.
fn http_headers(headers: &actix_header::HeaderMap) -> http::HeaderMap {
    let mut converted = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers.iter() {
        let name = http::HeaderName::from_bytes(name.as_str().as_bytes());
        let value = http::HeaderValue::from_bytes(value.as_bytes());
        if let (Ok(name), Ok(value)) = (name, value) {
            converted.append(name, value);
        }
    }
    converted
}

/// `request` answered with `rejection`.
fn reject<B>(
    request: ServiceRequest,
    rejection: WebhookRejection,
) -> ServiceResponse<EitherBody<B>> {
    request
        .into_response(webhook_answer(rejection.into_bytes_response()))
        .map_into_right_body()
}

/// A webhook rejection's answer in actix-web's types, byte for byte.
fn webhook_answer(response: http::Response<Bytes>) -> HttpResponse {
    let status = StatusCode::from_u16(response.status().as_u16())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (parts, body) = response.into_parts();
    let mut answer = HttpResponse::with_body(status, body);
    for (name, value) in &parts.headers {
        let name = actix_header::HeaderName::from_bytes(name.as_str().as_bytes());
        let value = actix_header::HeaderValue::from_bytes(value.as_bytes());
        if let (Ok(name), Ok(value)) = (name, value) {
            answer.headers_mut().append(name, value);
        }
    }
    answer.map_into_boxed_body()
}

/// `WebhookEvent` in an actix-web handler behind [`ComposioWebhookLayer`]; on a
/// route without it, the [`WebhookRejection`] of a delivery without its headers
/// (401), logged at `error` as the configuration error it is: it fails closed.
#[cfg_attr(docsrs, doc(cfg(all(feature = "actix-web", feature = "webhook"))))]
impl FromRequest for WebhookEvent {
    type Error = WebhookRejection;
    type Future = Ready<Result<Self, WebhookRejection>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let event = request.extensions().get::<Self>().cloned();
        ready(event.ok_or_else(|| {
            tracing::error!(
                target: TRACING_TARGET,
                "WebhookEvent extracted on a route without ComposioWebhookLayer; answering 401"
            );
            WebhookRejection::new(Reason::Headers)
        }))
    }
}

/// A [`WebhookRejection`] (from [`ComposioWebhookLayer::verify`], or the
/// [`WebhookEvent`] extractor) answers an actix-web request exactly as the layer
/// would: [`WebhookRejection::into_http_response`], byte for byte.
#[cfg_attr(docsrs, doc(cfg(all(feature = "actix-web", feature = "webhook"))))]
impl ResponseError for WebhookRejection {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status().as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        webhook_answer(self.clone().into_bytes_response())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use actix_web::body::MessageBody as _;
    use actix_web::error::PayloadError;
    use actix_web::test::{init_service, TestRequest};
    use actix_web::{web, App};
    use futures_util::{stream, Stream};

    use super::*;
    use crate::webhook::signature::sign;

    const SECRET: &str = "test-webhook-secret-for-fixtures";

    #[test]
    fn a_rejection_as_a_response_error_is_its_http_response_byte_for_byte() {
        for reason in Reason::ALL {
            let rejection = WebhookRejection::new(reason);
            let expected = rejection.clone().into_bytes_response();
            assert_eq!(rejection.status_code().as_u16(), expected.status().as_u16());
            let answer = rejection.error_response();
            assert_eq!(answer.status().as_u16(), expected.status().as_u16());
            let headers: Vec<_> = answer
                .headers()
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect();
            let mut wanted: Vec<_> = expected
                .headers()
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect();
            wanted.sort();
            let mut headers = headers;
            headers.sort();
            assert_eq!(headers, wanted, "{reason:?}");
            let body = answer.into_body().try_into_bytes().ok().unwrap();
            assert_eq!(body, expected.body(), "{reason:?}");
        }
    }

    /// A payload of `chunks`, counting how many were taken.
    fn payload(
        chunks: impl Iterator<Item = Result<Bytes, PayloadError>> + 'static,
        taken: &Rc<Cell<usize>>,
    ) -> Payload {
        let taken = Rc::clone(taken);
        let counted = stream::iter(chunks).inspect(move |_| taken.set(taken.get() + 1));
        let boxed: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(counted);
        Payload::from(boxed)
    }

    /// The status and body the middleware answers a signed delivery of `body`
    /// (32 bytes at most) whose payload streams as `chunks`, without a length.
    fn answer(
        body: &[u8],
        chunks: impl Iterator<Item = Result<Bytes, PayloadError>> + 'static,
        taken: &Rc<Cell<usize>>,
    ) -> (u16, String) {
        let layer = ComposioWebhookLayer::builder()
            .secret(SECRET)
            .tolerance(std::time::Duration::ZERO)
            .max_body_bytes(32)
            .build()
            .unwrap();
        let payload = payload(chunks, taken);
        let signature = sign(SECRET, "msg_1", "1700000000", body);
        actix_web::rt::System::new().block_on(async move {
            let handler =
                web::post().to(|event: WebhookEvent| async move { event.id().to_owned() });
            let app = App::new().service(web::resource("/hook").wrap(layer).route(handler));
            let app = init_service(app).await;
            let mut request = TestRequest::post()
                .uri("/hook")
                .insert_header(("webhook-id", "msg_1"))
                .insert_header(("webhook-timestamp", "1700000000"))
                .insert_header(("webhook-signature", signature))
                .to_request();
            *request.payload() = payload;
            let response = app.call(request).await.unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().try_into_bytes().ok().unwrap();
            (status, String::from_utf8(body.to_vec()).unwrap())
        })
    }

    #[test]
    fn a_streamed_body_is_read_no_further_than_the_limit_and_one_that_breaks_off_is_400() {
        let taken = Rc::new(Cell::new(0));
        // An endless body in 5-byte chunks: refused at the seventh (35 > 32).
        let endless = std::iter::repeat_with(|| Ok(Bytes::from_static(b"01234")));
        let (status, envelope) = answer(b"{}", endless, &taken);
        assert_eq!((status, taken.get()), (413, 7));
        assert!(envelope.contains("Webhook_PayloadTooLarge"), "{envelope}");
        // A body that breaks off.
        let broken = [
            Ok(Bytes::from_static(b"{\"trig")),
            Err(PayloadError::Incomplete(None)),
        ];
        let (status, envelope) = answer(b"{}", broken.into_iter(), &taken);
        assert_eq!(status, 400);
        assert!(envelope.contains("Webhook_BodyUnreadable"), "{envelope}");
        // Exactly the limit, in chunks: read whole, verified, handed on.
        let body: &'static [u8] = br#"{"trigger_name":"T","payload":0}"#;
        let chunks = body.chunks(5).map(|chunk| Ok(Bytes::from_static(chunk)));
        assert_eq!(answer(body, chunks, &taken), (200, "msg_1".to_owned()));
    }
}
