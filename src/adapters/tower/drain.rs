//! What a rejection does with a request body that is still arriving over HTTP/1.x.
//!
//! Answering without reading the body makes the server close the connection while
//! the client is still writing: a client that sends its whole body before reading
//! (Python's `http.client`, gRPC-web over HTTP/1.1) then sees a broken pipe or a
//! reset instead of the 401. So before answering, the layer reads and discards the
//! rest of the body, bounded by time and not by size, the way nginx's lingering
//! close is: at most [`DRAIN_TIME`] in all, and at most [`DRAIN_IDLE_TIME`] without
//! a byte arriving. Past either, or when [`MAX_DRAINING`] rejections are already
//! draining in this process, it answers at once with `Connection: close`.
//!
//! A draining rejection costs what the request's connection already costs: its
//! task (no thread, no buffer of its own; each chunk is dropped as it is read) and a
//! place among [`MAX_DRAINING`].
//!
//! Not done for HTTP/2 (a stream is reset cleanly) or for a body already complete.
//! A client that sent `Expect: 100-continue` waits for the answer before sending its
//! body: it is answered at once, and told `Connection: close`, since the server will
//! not read a body it never asked for.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::EXPECT;
use http::{Request, Version};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// Longest a rejection reads and discards a request body before answering (nginx's
/// `lingering_time` is 30 s). A client uploading faster than its share of a
/// 30-second window gets its 401 after its body; a slower one gets it with
/// `Connection: close`.
pub const DRAIN_TIME: Duration = Duration::from_secs(30);

/// Longest a draining rejection waits for the next byte of a body before answering
/// (nginx's `lingering_timeout` is 5 s; shorter here because, unlike nginx, the
/// layer has not answered yet: a client that stopped sending gets its 401 sooner).
pub const DRAIN_IDLE_TIME: Duration = Duration::from_secs(2);

/// Most rejections draining a body at once in one process; one more is answered at
/// once with `Connection: close`. What bounds the memory an attacker can hold:
/// hyper's read buffer of a connection receiving at full speed grows to about
/// 0.5 MiB, so 256 draining connections hold about 120 MiB (BENCHMARKS.md).
pub const MAX_DRAINING: usize = 256;

/// Rejections draining a body now, in this process.
static DRAINING: AtomicUsize = AtomicUsize::new(0);

/// Most frames read in one poll before yielding, so a body that is always ready
/// cannot hold its task past the drain limits.
const FRAMES_PER_POLL: usize = 64;

/// What a rejection does with its request's body.
pub(crate) enum Unread<B> {
    /// Nothing left to read: answer, and the connection carries on.
    Nothing,
    /// Read the rest within the drain limits, then answer.
    Drain(Drain<B>),
    /// Answer at once; the connection will close.
    Close,
}

impl<B: Body> Unread<B> {
    /// What to do with the body of `request`.
    pub(crate) fn of(request: Request<B>) -> Self {
        let expects_continue = request
            .headers()
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let http1 = request.version() <= Version::HTTP_11;
        let body = request.into_body();
        if !http1 || body.is_end_stream() {
            return Self::Nothing;
        }
        if expects_continue {
            return Self::Close;
        }
        match Place::take() {
            Some(place) => Self::Drain(Drain {
                body,
                timers: None,
                _place: place,
            }),
            None => {
                tracing::debug!(target: crate::TRACING_TARGET, "too many rejections draining bodies; answering at once");
                Self::Close
            }
        }
    }
}

/// A place among [`MAX_DRAINING`], given back when dropped.
struct Place(&'static AtomicUsize);

impl Place {
    fn take() -> Option<Self> {
        Self::take_from(&DRAINING, MAX_DRAINING)
    }

    fn take_from(count: &'static AtomicUsize, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The two deadlines of a drain, armed the first time it has to wait.
struct Timers {
    total: Pin<Box<Sleep>>,
    idle: Pin<Box<Sleep>>,
}

pin_project! {
    /// The rest of a rejected request's body, read and discarded within the drain
    /// limits.
    pub(crate) struct Drain<B> {
        #[pin]
        body: B,
        timers: Option<Timers>,
        _place: Place,
    }
}

impl<B: Body> Drain<B> {
    /// `Ready(true)` once the body has ended within the drain limits, `Ready(false)`
    /// when either ran out (or the body failed): answer then with `Connection:
    /// close`.
    pub(crate) fn poll_drain(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let mut this = self.project();
        let mut arrived = false;
        let mut frames = 0;
        loop {
            match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(_))) => {
                    arrived = true;
                    frames += 1;
                    if frames == FRAMES_PER_POLL {
                        cx.waker().wake_by_ref();
                        break;
                    }
                }
                Poll::Ready(Some(Err(_))) => return Poll::Ready(false),
                Poll::Ready(None) => return Poll::Ready(true),
                Poll::Pending => break,
            }
        }
        let timers = this.timers.get_or_insert_with(|| Timers {
            total: Box::pin(tokio::time::sleep(DRAIN_TIME)),
            idle: Box::pin(tokio::time::sleep(DRAIN_IDLE_TIME)),
        });
        if arrived {
            timers.idle.as_mut().reset(Instant::now() + DRAIN_IDLE_TIME);
        }
        if timers.total.as_mut().poll(cx).is_ready() {
            tracing::debug!(target: crate::TRACING_TARGET, "the request body did not end within the drain time; answering with Connection: close");
            return Poll::Ready(false);
        }
        if timers.idle.as_mut().poll(cx).is_ready() {
            tracing::debug!(target: crate::TRACING_TARGET, "the request body stalled; answering with Connection: close");
            return Poll::Ready(false);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body::Frame;
    use tokio::sync::mpsc;

    /// A body whose chunks a test sends when it wants them to arrive.
    struct Chunks(mpsc::Receiver<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    fn arriving(version: Version, expect: bool) -> (mpsc::Sender<Bytes>, Request<Chunks>) {
        let (sender, receiver) = mpsc::channel(4);
        let mut builder = Request::builder().version(version);
        if expect {
            builder = builder.header(EXPECT, "100-continue");
        }
        (sender, builder.body(Chunks(receiver)).unwrap())
    }

    async fn drained(unread: Unread<Chunks>) -> Option<bool> {
        match unread {
            Unread::Drain(drain) => {
                let mut drain = std::pin::pin!(drain);
                Some(std::future::poll_fn(|cx| drain.as_mut().poll_drain(cx)).await)
            }
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_arriving_is_read_to_its_end_whatever_its_size() {
        let (sender, request) = arriving(Version::HTTP_11, false);
        let feeding = tokio::spawn(async move {
            // 20 MiB, a 1 MiB chunk each second of (paused) time: past any size
            // bound, and longer than the idle time, which each chunk restarts.
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                sender.send(Bytes::from(vec![0; 1 << 20])).await.unwrap();
            }
        });
        let started = Instant::now();
        assert_eq!(drained(Unread::of(request)).await, Some(true));
        assert!(started.elapsed() >= Duration::from_secs(20));
        feeding.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_is_given_up_after_the_idle_time() {
        let (sender, request) = arriving(Version::HTTP_11, false);
        sender.send(Bytes::from_static(b"start")).await.unwrap();
        let started = Instant::now();
        assert_eq!(drained(Unread::of(request)).await, Some(false));
        let waited = started.elapsed();
        assert!(
            waited >= DRAIN_IDLE_TIME && waited < DRAIN_IDLE_TIME * 2,
            "{waited:?}"
        );
        drop(sender);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_trickles_forever_is_given_up_after_the_drain_time() {
        let (sender, request) = arriving(Version::HTTP_11, false);
        let feeding = tokio::spawn(async move {
            while sender.send(Bytes::from_static(b"x")).await.is_ok() {
                tokio::time::sleep(DRAIN_IDLE_TIME / 2).await;
            }
        });
        let started = Instant::now();
        assert_eq!(drained(Unread::of(request)).await, Some(false));
        let waited = started.elapsed();
        assert!(
            waited >= DRAIN_TIME && waited < DRAIN_TIME + DRAIN_IDLE_TIME,
            "{waited:?}"
        );
        feeding.abort();
    }

    #[tokio::test]
    async fn what_is_not_drained_and_what_closes() {
        let (_sender, request) = arriving(Version::HTTP_2, false);
        assert!(matches!(Unread::of(request), Unread::Nothing));
        let (_sender, request) = arriving(Version::HTTP_11, true);
        assert!(matches!(Unread::of(request), Unread::Close));
        // The rest of a body already here is read at once.
        let here = Request::new(http_body_util::Full::new(Bytes::from_static(b"here")));
        let here = match Unread::of(here) {
            Unread::Drain(drain) => drain,
            _ => panic!("a body with data left is drained"),
        };
        let mut here = std::pin::pin!(here);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(here.as_mut().poll_drain(&mut cx), Poll::Ready(true));
        let empty = Request::new(http_body_util::Empty::<Bytes>::new());
        assert!(matches!(Unread::of(empty), Unread::Nothing));
    }

    #[test]
    fn places_are_bounded_and_given_back() {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let take = || Place::take_from(&COUNT, 3);
        let held: Vec<Place> = std::iter::from_fn(take).take(10).collect();
        assert_eq!(held.len(), 3);
        assert!(take().is_none());
        drop(held);
        assert_eq!(COUNT.load(Ordering::Acquire), 0);
        assert!(take().is_some());
    }
}
