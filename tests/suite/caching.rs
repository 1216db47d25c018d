//! What the cache saves and when it lets go: hits, coalescing, negative caching,
//! expiry, invalidation, the stale window, the concurrency bound, cancellation, and
//! the service contract (`poll_ready`, clone-and-swap).

use crate::common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use common::{app, builder, composio, serve, setup, Capture, Client, ALICE, BOB};
use composio_auth::testing::{pause_point, Reply};
use composio_auth::ComposioAuthLayer;
use futures_util::FutureExt;
use tower::{Layer, Service, ServiceExt};

fn request(key: &str) -> Request<Body> {
    Request::get("/me")
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn one_upstream_call_per_key_per_ttl() {
    let (composio, _, client) = setup(|b| b).await;
    for _ in 0..10 {
        assert_eq!(client.me(ALICE).await.status, 200);
        assert_eq!(client.me(BOB).await.status, 200);
    }
    assert_eq!((composio.calls_for(ALICE), composio.calls_for(BOB)), (1, 1));
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_first_requests_share_one_call() {
    let (capture, _guard) = Capture::install();
    let (composio, _, client) = setup(|b| b).await;
    composio.hold();
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.me(ALICE).await.status })
        })
        .collect();
    // All twenty are waiting: one started the verification, nineteen joined it.
    capture
        .wait_for_point(pause_point::JOINED_VERIFICATION, 19)
        .await;
    composio.wait_for_calls(1).await;
    assert_eq!(composio.calls(), 1);
    composio.release();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(composio.calls(), 1);
}

#[tokio::test]
async fn rejections_are_cached_for_negative_ttl() {
    let (composio, _, client) = setup(|b| b.negative_ttl(Duration::from_millis(300))).await;
    let unknown = "ak_unknown_negative";
    for _ in 0..5 {
        assert_eq!(client.me(unknown).await.status, 401);
    }
    assert_eq!(composio.calls_for(unknown), 1);
    tokio::time::sleep(Duration::from_millis(400)).await; // let the rejection expire
    assert_eq!(client.me(unknown).await.status, 401);
    assert_eq!(composio.calls_for(unknown), 2);
}

#[tokio::test]
async fn zero_negative_ttl_asks_every_time() {
    let (composio, _, client) = setup(|b| b.negative_ttl(Duration::ZERO)).await;
    for _ in 0..3 {
        assert_eq!(client.me("ak_unknown_zero").await.status, 401);
    }
    assert_eq!(composio.calls_for("ak_unknown_zero"), 3);
}

#[tokio::test]
async fn sessions_expire_after_ttl() {
    let (composio, _, client) = setup(|b| b.ttl(Duration::from_millis(300))).await;
    assert_eq!(client.me(ALICE).await.status, 200);
    assert_eq!(client.me(ALICE).await.status, 200);
    assert_eq!(composio.calls_for(ALICE), 1);
    tokio::time::sleep(Duration::from_millis(400)).await; // let the session expire
    composio.revoke(ALICE);
    assert_eq!(client.me(ALICE).await.status, 401);
    assert_eq!(composio.calls_for(ALICE), 2);
}

#[tokio::test]
async fn invalidate_forgets_one_key_and_invalidate_all_every_key() {
    let (composio, layer, client) = setup(|b| b).await;
    assert_eq!(client.me(ALICE).await.status, 200);
    assert_eq!(client.me(BOB).await.status, 200);
    composio.revoke(ALICE);
    assert_eq!(client.me(ALICE).await.status, 200, "still cached");
    layer.invalidate(ALICE).await.unwrap();
    assert_eq!(client.me(ALICE).await.status, 401);
    assert_eq!(client.me(BOB).await.status, 200, "other keys stay cached");
    assert_eq!((composio.calls_for(ALICE), composio.calls_for(BOB)), (2, 1));

    layer.invalidate_all().await.unwrap();
    assert_eq!(client.me(BOB).await.status, 200);
    assert_eq!(composio.calls_for(BOB), 2);
}

#[tokio::test]
async fn a_verification_in_flight_during_invalidate_is_not_cached() {
    let (composio, layer, client) = setup(|b| b).await;
    composio.hold();
    let first = {
        let client = client.clone();
        tokio::spawn(async move { client.me(ALICE).await.status })
    };
    composio.wait_for_calls(1).await;
    // Invalidated (say, revoked elsewhere) while Composio is still answering.
    layer.invalidate(ALICE).await.unwrap();
    composio.release();
    // The request that asked gets the answer it asked for...
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    // ...but the cache did not keep an answer older than the invalidation.
    assert_eq!(client.me(ALICE).await.status, StatusCode::OK);
    assert_eq!(composio.calls_for(ALICE), 2);
    assert_eq!(client.me(ALICE).await.status, StatusCode::OK);
    assert_eq!(composio.calls_for(ALICE), 2, "the fresh answer is cached");
}

#[tokio::test]
async fn layer_clones_share_one_cache() {
    let composio = composio().await;
    let layer = builder(&composio).build().unwrap();
    let first = Client::new(serve(app(layer.clone())).await);
    let second = Client::new(serve(app(layer.clone())).await);
    assert_eq!(first.me(ALICE).await.status, 200);
    assert_eq!(second.me(ALICE).await.status, 200);
    assert_eq!(composio.calls_for(ALICE), 1);
    let cached = layer.cached();
    assert_eq!((cached.sessions, cached.rejections), (1, 0));
}

#[tokio::test]
async fn stale_sessions_are_served_while_composio_fails_only_if_enabled() {
    let ttl = Duration::from_millis(300);
    let (stale_ok, _, with_stale) =
        setup(|b| b.ttl(ttl).stale_if_error(Duration::from_secs(60))).await;
    let (no_stale, _, without_stale) = setup(|b| b.ttl(ttl)).await;
    assert_eq!(with_stale.me(ALICE).await.status, 200);
    assert_eq!(without_stale.me(ALICE).await.status, 200);
    stale_ok.fail_with(Reply::html(502));
    no_stale.fail_with(Reply::html(502));
    tokio::time::sleep(ttl + Duration::from_millis(100)).await; // let the sessions expire

    let answer = with_stale.me(ALICE).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "alice@example.com")
    );
    assert_eq!(without_stale.me(ALICE).await.status, 503);
    assert_eq!(
        (stale_ok.calls_for(ALICE), no_stale.calls_for(ALICE)),
        (2, 2)
    );

    // A verdict from Composio wins over the stale session.
    stale_ok.recover();
    stale_ok.revoke(ALICE);
    assert_eq!(with_stale.me(ALICE).await.status, 401);
}

#[tokio::test]
async fn stale_sessions_are_not_served_past_the_window() {
    let ttl = Duration::from_millis(200);
    let (composio, _, client) = setup(|b| b.ttl(ttl).stale_if_error(ttl)).await;
    assert_eq!(client.me(ALICE).await.status, 200);
    composio.fail_with(Reply::html(503));
    tokio::time::sleep(ttl * 2 + Duration::from_millis(100)).await; // past ttl + window
    assert_eq!(client.me(ALICE).await.status, 503);
}

#[tokio::test]
async fn upstream_concurrency_never_exceeds_the_bound() {
    let (composio, _, client) = setup(|b| b.max_concurrent_verifications(2)).await;
    composio.set_latency(Duration::from_millis(50));
    let requests: Vec<_> = (0..8)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.me(&format!("ak_distinct_key_{i}")).await.status })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(composio.calls(), 8);
    assert!(
        composio.peak_concurrency() <= 2,
        "peak {}",
        composio.peak_concurrency()
    );
}

#[tokio::test]
async fn excess_verifications_wait_within_the_budget_then_get_503() {
    let budget = Duration::from_secs(1);
    let (composio, _, client) = setup(|b| b.max_concurrent_verifications(1).timeout(budget)).await;
    composio.hold();
    let first = {
        let client = client.clone();
        tokio::spawn(async move { client.me(ALICE).await.status })
    };
    composio.wait_for_calls(1).await;
    // BOB waits for ALICE's slot. It frees when ALICE's verification times out, with
    // less than a tenth of BOB's budget left: BOB gives up without calling Composio.
    let second = client.me(BOB).await;
    assert_eq!(second.status, 503);
    let reason = second.envelope().error.errors.unwrap().join(" ");
    assert!(
        reason.contains("no verification slot free in time"),
        "{reason}"
    );
    assert_eq!(composio.calls_for(BOB), 0, "BOB never called Composio");
    assert_eq!(first.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    composio.release();
    assert_eq!(client.me(BOB).await.status, 200);
}

#[tokio::test]
async fn a_verification_waits_for_a_slot_and_then_succeeds() {
    let (composio, _, client) = setup(|b| b.max_concurrent_verifications(1)).await;
    composio.hold();
    let first = {
        let client = client.clone();
        tokio::spawn(async move { client.me(ALICE).await.status })
    };
    composio.wait_for_calls(1).await;
    let second = {
        let client = client.clone();
        tokio::spawn(async move { client.me(BOB).await.status })
    };
    composio.release();
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(second.await.unwrap(), StatusCode::OK);
    assert_eq!(composio.peak_concurrency(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_that_goes_away_does_not_cancel_the_verification() {
    let (capture, _guard) = Capture::install();
    let composio = composio().await;
    let layer = builder(&composio).build().unwrap();
    let app = app(layer.clone());
    composio.hold();

    // The first request starts the verification, then its client disconnects.
    let mut first = app.clone().oneshot(request(ALICE));
    assert!((&mut first).now_or_never().is_none());
    composio.wait_for_calls(1).await;
    drop(first);

    // A second request joins the same verification instead of starting another.
    let second = tokio::spawn(app.clone().oneshot(request(ALICE)));
    capture
        .wait_for_point(pause_point::JOINED_VERIFICATION, 1)
        .await;
    composio.release();
    assert_eq!(second.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(composio.calls_for(ALICE), 1);

    // With every caller gone, the verdict is still cached when it lands.
    composio.hold();
    let mut lone = app.clone().oneshot(request(BOB));
    assert!((&mut lone).now_or_never().is_none());
    composio.wait_for_calls(2).await;
    drop(lone);
    composio.release();
    capture
        .wait_for_point(pause_point::UPSTREAM_REPLIED, 2)
        .await;
    assert_eq!(
        app.oneshot(request(BOB)).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(composio.calls_for(BOB), 1);
}

/// Requests every 20 ms for `run`; returns how many found no fresh session.
async fn steady_use(capture: &Capture, client: &Client, run: Duration) -> usize {
    let misses_before = capture.count_point(pause_point::CACHE_MISS);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let until = tokio::time::Instant::now() + run;
    while tokio::time::Instant::now() < until {
        tick.tick().await;
        assert_eq!(client.me(ALICE).await.status, StatusCode::OK);
    }
    capture.count_point(pause_point::CACHE_MISS) - misses_before
}

#[tokio::test(flavor = "current_thread")]
async fn a_key_in_steady_use_never_waits_for_composio_after_the_first_request() {
    let (capture, _guard) = Capture::install();
    let ttl = Duration::from_secs(1);
    let (composio, _, client) = setup(|b| b.ttl(ttl)).await;
    composio.set_latency(Duration::from_millis(20));
    // Three TTLs: only the very first request misses; the entry is refreshed in the
    // background at 80% of each TTL.
    assert_eq!(steady_use(&capture, &client, ttl * 3 + ttl / 2).await, 1);
    let calls = composio.calls_for(ALICE);
    assert!((4..=6).contains(&calls), "{calls} calls in 3.5 TTLs");

    // Without refresh-ahead, every expiry costs one request a miss.
    let (capture, _guard) = Capture::install();
    let (composio, _, client) = setup(|b| b.ttl(ttl).refresh_ahead(false)).await;
    composio.set_latency(Duration::from_millis(20));
    assert_eq!(steady_use(&capture, &client, ttl * 3 + ttl / 2).await, 4);
    assert_eq!(composio.calls_for(ALICE), 4);
}

#[tokio::test(flavor = "current_thread")]
async fn a_refresh_that_finds_the_key_revoked_refuses_it_before_the_ttl_ends() {
    let (capture, _guard) = Capture::install();
    let ttl = Duration::from_secs(2);
    let (composio, _, client) = setup(|b| b.ttl(ttl)).await;
    assert_eq!(client.me(ALICE).await.status, StatusCode::OK);
    composio.revoke(ALICE);
    tokio::time::sleep(ttl.mul_f64(0.85)).await; // into the refresh-ahead window
                                                 // Served from the cache, and starts the refresh...
    assert_eq!(client.me(ALICE).await.status, StatusCode::OK);
    capture
        .wait_for_point(pause_point::UPSTREAM_REPLIED, 2)
        .await;
    // ...whose verdict applies at once, before the entry's TTL is over.
    assert_eq!(client.me(ALICE).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(composio.calls_for(ALICE), 2);
}

/// A service that records whether the instance called was polled ready first.
#[derive(Clone, Default)]
struct ReadyTracker {
    ready: bool,
}

impl Service<Request<Body>> for ReadyTracker {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        let ready = self.ready;
        self.ready = false;
        Box::pin(async move {
            Ok(Response::new(Body::from(if ready {
                "ready"
            } else {
                "not ready"
            })))
        })
    }
}

async fn body_text(response: Response<Body>) -> String {
    use http_body_util::BodyExt;
    String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn the_service_polled_ready_is_the_one_called_and_poll_ready_never_waits_on_composio() {
    let composio = composio().await;
    let layer = builder(&composio).build().unwrap();
    let mut service = layer.layer(ReadyTracker::default());

    // A miss: the call waits for Composio, the service stays ready meanwhile.
    composio.hold();
    let miss = service.ready().await.unwrap().call(request(ALICE));
    let miss = tokio::spawn(miss);
    composio.wait_for_calls(1).await;
    assert!(
        service.ready().now_or_never().is_some(),
        "poll_ready waited"
    );
    composio.release();
    assert_eq!(body_text(miss.await.unwrap().unwrap()).await, "ready");

    // A hit.
    let hit = service
        .ready()
        .await
        .unwrap()
        .call(request(ALICE))
        .await
        .unwrap();
    assert_eq!(body_text(hit).await, "ready");
    assert_eq!(composio.calls(), 1);
}

#[tokio::test]
async fn new_honours_no_network_and_reports_its_base_url() {
    // Construction never touches the network: no runtime, no server needed.
    let layer = ComposioAuthLayer::builder()
        .base_url("https://backend.composio.dev")
        .build()
        .unwrap();
    assert_eq!(layer.base_url(), "https://backend.composio.dev");
    let cached = layer.cached();
    assert_eq!((cached.sessions, cached.rejections), (0, 0));
}
