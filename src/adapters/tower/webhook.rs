//! [`ComposioWebhook`]: the service [`ComposioWebhookLayer`](crate::ComposioWebhookLayer)
//! makes. `call` checks the method and headers at once; its future reads the body
//! up to the limit, verifies it, claims the delivery, and calls the inner service
//! with the same bytes and a [`WebhookEvent`] in the request's extensions. A
//! refusal first reads what is left of an HTTP/1.x body within the drain limits
//! (`drain.rs`), as the key layer's do.
//!
//! The future is boxed: a delivery reads a body and checks an HMAC, next to which
//! one allocation is nothing.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::CONNECTION;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tower_service::Service;
use tracing::Instrument;

use crate::adapters::tower::drain::Unread;
use crate::body::RejectionBody;
use crate::webhook::check::Delivery;
use crate::webhook::deliveries::Claim;
use crate::webhook::event::WebhookEvent;
use crate::webhook::instruments::Delivered;
use crate::webhook::rejection::{Reason, WebhookRejection};
use crate::webhook::state::WebhookState;
use crate::TRACING_TARGET;

/// The future of [`ComposioWebhook`]'s `call`.
pub type WebhookFuture<ResBody, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResBody>, E>> + Send + 'static>>;

/// The service made by [`ComposioWebhookLayer`](crate::ComposioWebhookLayer): see
/// there. It answers in the inner service's body type (a [`RejectionBody`]) and
/// hands the inner service its own request body type, rebuilt from the bytes read
/// (any body that is `From<Bytes>`: axum's, `Full<Bytes>`).
#[derive(Clone)]
pub struct ComposioWebhook<S> {
    inner: S,
    state: Arc<WebhookState>,
}

impl<S> ComposioWebhook<S> {
    pub(crate) fn new(inner: S, state: Arc<WebhookState>) -> Self {
        Self { inner, state }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for ComposioWebhook<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComposioWebhook")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ComposioWebhook<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<Box<dyn StdError + Send + Sync>>,
    ResBody: RejectionBody + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = WebhookFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let delivery = match self.state.headers(&parts.method, &parts.headers) {
            Ok(delivery) => delivery,
            Err(rejection) => {
                let request = Request::from_parts(parts, body);
                return Box::pin(async move { Ok(drained(request, reject(rejection)).await) });
            }
        };
        // The service polled ready goes with the delivery; a clone stays.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let span = tracing::debug_span!(
            target: TRACING_TARGET,
            "composio_auth.webhook",
            outcome = tracing::field::Empty,
        );
        let state = Arc::clone(&self.state);
        let request = Request::from_parts(parts, body);
        Box::pin(deliver(state, delivery, request, inner).instrument(span))
    }
}

/// A delivery whose headers passed, from its body to the inner service's answer.
async fn deliver<S, ReqBody, ResBody>(
    state: Arc<WebhookState>,
    delivery: Delivery,
    request: Request<ReqBody>,
    mut inner: S,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body + From<Bytes>,
    ReqBody::Error: Into<Box<dyn StdError + Send + Sync>>,
    ResBody: RejectionBody,
{
    let (parts, body) = request.into_parts();
    let bytes = match read(Box::pin(body), state.rules.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err((reason, rest)) => {
            let rejection = state.refused(WebhookRejection::new(reason));
            let request = Request::from_parts(parts, rest);
            return Ok(drained(request, reject(rejection)).await);
        }
    };
    let event = match state.event(delivery, bytes.clone()) {
        Ok(event) => event,
        Err(rejection) => return Ok(reject(rejection)),
    };
    let ticket = match state.claim(&event).await {
        Claim::Handle(ticket) => ticket,
        Claim::Acknowledged => return Ok(duplicate()),
    };
    tracing::debug!(target: TRACING_TARGET, pause_point = crate::verifier::pause_point::DELIVERY_HANDLED, "webhook delivery verified; handing it to the handler");
    let mut request = Request::from_parts(parts, ReqBody::from(bytes));
    request.extensions_mut().insert::<WebhookEvent>(event);
    let response = inner.call(request).await;
    let acknowledged = response.as_ref().is_ok_and(|r| r.status().is_success());
    state.delivered(if acknowledged {
        Delivered::Handled
    } else {
        Delivered::Failed
    });
    ticket.finish(acknowledged);
    response
}

/// The body, whole, if it is at most `limit` bytes: read no further than the
/// limit, and on a refusal the rest is handed back, to drain.
async fn read<B: Body>(
    mut body: Pin<Box<B>>,
    limit: usize,
) -> Result<Bytes, (Reason, Pin<Box<B>>)> {
    if body.size_hint().lower() > limit as u64 {
        return Err((Reason::TooLarge, body));
    }
    let mut bytes = BytesMut::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                let Ok(mut data) = frame.into_data() else {
                    continue; // trailers
                };
                if bytes.len() + data.remaining() > limit {
                    return Err((Reason::TooLarge, body));
                }
                bytes.put(&mut data);
            }
            Some(Err(_)) => return Err((Reason::Unreadable, body)),
            None => return Ok(bytes.freeze()),
        }
    }
}

/// `response`, once what is left of `request`'s body has been read within the
/// drain limits (as the key layer's rejections do: a client still writing would
/// otherwise see a reset, and a proxy would answer 502), or with `Connection:
/// close` past them.
async fn drained<B: Body, R>(request: Request<B>, mut response: Response<R>) -> Response<R> {
    let ended = match Unread::of(request) {
        Unread::Nothing => true,
        Unread::Drain(drain) => {
            let mut drain = std::pin::pin!(drain);
            std::future::poll_fn(|cx| drain.as_mut().poll_drain(cx)).await
        }
        Unread::Close => false,
    };
    if !ended {
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn reject<B: RejectionBody>(rejection: WebhookRejection) -> Response<B> {
    rejection.into_bytes_response().map(B::rejection)
}

/// The answer to a copy of an acknowledged delivery: 200, empty.
fn duplicate<B: RejectionBody>() -> Response<B> {
    let mut response = Response::new(B::rejection(Bytes::new()));
    *response.status_mut() = StatusCode::OK;
    response
}
