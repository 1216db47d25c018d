//! What a rejection does with a request body that is still arriving over HTTP/1.x.
//!
//! Answering without reading the body makes the server close the connection while
//! the client is still writing: a client that sends its whole body before reading
//! (Python's `http.client`, gRPC-web over HTTP/1.1) then sees a broken pipe or a
//! reset instead of the 401. So before answering, the layer reads and discards up to
//! [`MAX_DRAINED_BYTES`] within [`DRAIN_TIME`] (what nginx calls a lingering close,
//! done before the answer), then answers; past either budget it answers at once with
//! `Connection: close`. Not done for HTTP/2 (a stream is reset cleanly), for a body
//! already complete, or for a client that sent `Expect: 100-continue` (it waits for
//! the answer before sending the body).

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::header::EXPECT;
use http::{Request, Version};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

/// Most request-body bytes a rejection reads and discards before answering.
pub const MAX_DRAINED_BYTES: usize = 8 * 1024 * 1024;

/// Longest a rejection waits for the rest of a request body before answering.
pub const DRAIN_TIME: Duration = Duration::from_secs(1);

pin_project! {
    /// The rest of a rejected request's body, read and discarded within the budget.
    pub(crate) struct Drain<B> {
        #[pin]
        body: B,
        read: usize,
        // Armed on the first poll that has to wait.
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<B: Body> Drain<B> {
    /// The body of `request` to drain before answering it, if there is one to drain.
    pub(crate) fn of(request: Request<B>) -> Option<Self> {
        let expects_continue = request
            .headers()
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let http1 = request.version() <= Version::HTTP_11;
        let body = request.into_body();
        (http1 && !expects_continue && !body.is_end_stream()).then_some(Self {
            body,
            read: 0,
            timer: None,
        })
    }

    /// `Ready(true)` once the body has ended within the budget, `Ready(false)` when
    /// the budget ran out (or the body failed): answer then with `Connection: close`.
    pub(crate) fn poll_drain(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let mut this = self.project();
        loop {
            match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    *this.read += frame.data_ref().map_or(0, bytes::Buf::remaining);
                    if *this.read > MAX_DRAINED_BYTES {
                        return Poll::Ready(false);
                    }
                }
                Poll::Ready(Some(Err(_))) => return Poll::Ready(false),
                Poll::Ready(None) => return Poll::Ready(true),
                Poll::Pending => break,
            }
        }
        if this.timer.is_none() {
            match timer() {
                Some(timer) => *this.timer = Some(timer),
                None => return Poll::Ready(false),
            }
        }
        if let Some(timer) = this.timer.as_mut() {
            ready!(timer.as_mut().poll(cx));
        }
        Poll::Ready(false)
    }
}

/// A [`DRAIN_TIME`] timer, or `None` where Tokio has no timer to give (no runtime,
/// or one built without `enable_time`, where making one would panic).
fn timer() -> Option<Pin<Box<Sleep>>> {
    tokio::runtime::Handle::try_current().ok()?;
    panic::catch_unwind(AssertUnwindSafe(|| {
        Box::pin(tokio::time::sleep(DRAIN_TIME))
    }))
    .ok()
}
