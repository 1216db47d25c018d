//! The bodies this layer answers in: [`RejectionBody`], a response body type the layer
//! can write its own rejections in (the inner service's, so that a cache hit passes
//! the inner response through untouched), and [`ResponseBody`], the wrapper that gives
//! any other body that ability.
//!
//! Why the inner body type rather than a wrapper of the layer's own: axum boxes every
//! layer's response body that is not exactly `axum::body::Body`, one allocation per
//! request plus a dynamic call per frame. Answering in the inner service's own body
//! type costs nothing on a hit; the wrapper this crate used before cost about 60 ns of
//! a 1 µs request (BENCHMARKS.md).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Full};
use pin_project_lite::pin_project;

/// A response body type this layer can write its own answers in: the JSON envelope of
/// a rejection, or nothing for a gRPC rejection (its status travels in the headers).
///
/// [`ComposioAuth`](crate::ComposioAuth) answers in its inner service's body type, so
/// that a request it lets through gets the inner response as it is. Implemented for
/// the body types axum, tonic and hyper services answer with:
///
/// - `axum::body::Body` (feature `axum`, on by default);
/// - `tonic::body::Body` (feature `tonic`);
/// - `http_body_util::Full<Bytes>`, `BoxBody<Bytes, E>` and `UnsyncBoxBody<Bytes, E>`;
/// - [`ResponseBody<B>`], which wraps any other body: put
///   `MapResponseBodyLayer::new(ResponseBody::new)` (tower-http) between this layer
///   and an inner service whose body type is not listed here.
#[diagnostic::on_unimplemented(
    message = "composio-auth cannot write its rejections in a `{Self}` response body",
    label = "the inner service answers with this body type",
    note = "for tonic, enable the feature `tonic` of composio-auth",
    note = "for any other body, wrap it: put tower-http's `MapResponseBodyLayer::new(composio_auth::ResponseBody::new)` between this layer and the inner service"
)]
pub trait RejectionBody: Body<Data = Bytes> + Sized {
    /// A body of exactly `bytes` (empty for gRPC rejections).
    fn rejection(bytes: Bytes) -> Self;
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl RejectionBody for axum_core::body::Body {
    fn rejection(bytes: Bytes) -> Self {
        Self::from(bytes)
    }
}

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
impl RejectionBody for tonic::body::Body {
    fn rejection(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            Self::empty()
        } else {
            Self::new(Full::new(bytes))
        }
    }
}

impl RejectionBody for Full<Bytes> {
    fn rejection(bytes: Bytes) -> Self {
        Self::new(bytes)
    }
}

impl<E: 'static> RejectionBody for BoxBody<Bytes, E> {
    fn rejection(bytes: Bytes) -> Self {
        Full::new(bytes).map_err(never::<E>).boxed()
    }
}

impl<E: 'static> RejectionBody for UnsyncBoxBody<Bytes, E> {
    fn rejection(bytes: Bytes) -> Self {
        Full::new(bytes).map_err(never::<E>).boxed_unsync()
    }
}

fn never<E>(never: Infallible) -> E {
    match never {}
}

impl<B: Body<Data = Bytes>> RejectionBody for ResponseBody<B> {
    fn rejection(bytes: Bytes) -> Self {
        let bytes = (!bytes.is_empty()).then_some(bytes);
        Self {
            kind: Kind::Refusal { bytes },
        }
    }
}

pin_project! {
    /// Any response body, made a [`RejectionBody`]: the inner service's body, or the
    /// JSON envelope of a rejection (empty for gRPC rejections). For inner services
    /// whose body type this crate does not know, e.g. one wrapped by another layer:
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use composio_auth::{ComposioAuthLayer, ResponseBody};
    /// use tower::ServiceBuilder;
    /// use tower_http::compression::CompressionLayer;
    /// use tower_http::map_response_body::MapResponseBodyLayer;
    ///
    /// let app: Router = Router::new().route("/", get(|| async { "ok" })).layer(
    ///     ServiceBuilder::new()
    ///         .layer(ComposioAuthLayer::new())
    ///         // `CompressionBody` is not a `RejectionBody`; `ResponseBody` wraps it.
    ///         .layer(MapResponseBodyLayer::new(ResponseBody::new))
    ///         .layer(CompressionLayer::new()),
    /// );
    /// ```
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Refusal { bytes: Option<Bytes> },
    }
}

/// The empty body (what tower-http's `TimeoutLayer` answers a 408 with, when it
/// wraps this layer).
impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self {
            kind: Kind::Refusal { bytes: None },
        }
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's `body`.
    pub fn new(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Refusal { bytes } => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Refusal { bytes } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Refusal { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("ResponseBody::Inner"),
            Kind::Refusal { bytes } => f
                .debug_struct("ResponseBody::Refusal")
                .field("len", &bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn rejection_body_yields_its_bytes_once() {
        let body: ResponseBody<http_body_util::Full<Bytes>> =
            ResponseBody::rejection(Bytes::from_static(b"{}"));
        assert_eq!(body.size_hint().exact(), Some(2));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "{}");
        let empty: ResponseBody<http_body_util::Full<Bytes>> =
            ResponseBody::rejection(Bytes::new());
        assert!(empty.is_end_stream());
    }

    /// A rejection in `B` carries exactly its bytes; an empty one ends at once.
    async fn carries_the_envelope<B: RejectionBody>()
    where
        B::Error: std::fmt::Debug,
    {
        let envelope = Bytes::from_static(br#"{"error":{"message":"no"}}"#);
        let body = B::rejection(envelope.clone());
        assert_eq!(body.size_hint().exact(), Some(envelope.len() as u64));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), envelope);
        let empty = B::rejection(Bytes::new());
        assert!(empty.is_end_stream(), "{}", std::any::type_name::<B>());
        assert!(empty.collect().await.unwrap().to_bytes().is_empty());
    }

    #[tokio::test]
    async fn every_rejection_body_carries_the_envelope() {
        carries_the_envelope::<ResponseBody<Full<Bytes>>>().await;
        carries_the_envelope::<Full<Bytes>>().await;
        carries_the_envelope::<BoxBody<Bytes, std::io::Error>>().await;
        carries_the_envelope::<UnsyncBoxBody<Bytes, std::io::Error>>().await;
        #[cfg(feature = "axum")]
        carries_the_envelope::<axum_core::body::Body>().await;
        #[cfg(feature = "tonic")]
        carries_the_envelope::<tonic::body::Body>().await;
    }

    #[tokio::test]
    async fn inner_body_passes_through() {
        let body = ResponseBody::new(http_body_util::Full::new(Bytes::from_static(b"hello")));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    }
}
