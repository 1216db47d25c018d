//! The fleet's interleavings, forced by pausing the layer at a known point
//! (`common::pause`, a process-wide subscriber: the `interleavings` test binary
//! holds only tests that may share it). Requests and invalidations run on runtimes of their own, so a paused
//! thread blocks nothing the test needs.

use crate::{common, multi_thread, WAIT};

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use common::pause::Points;
use common::redis::RedisServer;
use common::{composio, within};
use composio_auth::testing::{pause_point, StandIn};
use composio_auth::ComposioAuthLayer;
use tokio::runtime::Runtime;
use tower::ServiceExt;

const ROUNDS: usize = 5;

fn replica(composio: &StandIn, redis: &RedisServer) -> (ComposioAuthLayer, Router) {
    let layer = ComposioAuthLayer::builder()
        .base_url(composio.base_url())
        .shared_cache(redis.cache(Duration::from_secs(2)))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/me", get(|| async { "ok" }))
        .layer(layer.clone());
    (layer, app)
}

fn call(runtime: &Runtime, app: &Router, key: &str) -> StatusCode {
    let request = Request::get("/me")
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap();
    runtime
        .block_on(within("an answer", app.clone().oneshot(request)))
        .unwrap()
        .status()
}

/// `invalidate` forgets the key here at once, then in Redis. A verification that
/// starts on this replica in between reads the key's verdict from Redis before it
/// leaves, and settles it: once `invalidate` returns, that verdict must be gone too.
#[test]
fn a_verdict_read_from_redis_while_invalidate_runs_is_gone_when_it_returns() {
    let points = Points::get();
    let _serial = points.serial();
    let upstream = multi_thread();
    let composio = upstream.block_on(composio());
    let redis = RedisServer::start();
    let (_, other_app) = replica(&composio, &redis);
    let (layer, app) = replica(&composio, &redis);
    let requests = multi_thread();
    for round in 0..ROUNDS {
        let key = format!("ak_between_{round}_0123456789abcdef");
        composio.add_session(&key, StandIn::example_document());
        // Another replica verifies the key and records it in Redis.
        assert_eq!(call(&requests, &other_app, &key), StatusCode::OK);
        upstream.block_on(redis.wait_for_verdicts(round + 1));
        composio.revoke(&key);

        // This replica's invalidate pauses right after forgetting the key here.
        points.arm(pause_point::INVALIDATED_HERE);
        let invalidating = {
            let (layer, key) = (layer.clone(), key.clone());
            std::thread::spawn(move || multi_thread().block_on(layer.invalidate(&key)))
        };
        points.wait_paused(WAIT);
        // A request arriving now (during the call) adopts the recorded verdict.
        assert_eq!(call(&requests, &app, &key), StatusCode::OK, "round {round}");
        points.resume();
        invalidating.join().unwrap().expect("Redis reachable");

        // Once invalidate has returned, the key is refused here, and Composio
        // (which revoked it) is asked again.
        let calls = composio.calls_for(&key);
        assert_eq!(
            call(&requests, &app, &key),
            StatusCode::UNAUTHORIZED,
            "round {round}"
        );
        assert_eq!(composio.calls_for(&key), calls + 1);
    }
}

/// The same for `invalidate_all`: a verification that starts between this replica
/// forgetting everything and Redis entering the new epoch reads a verdict of the
/// old epoch; once `invalidate_all` returns, it is gone, even before this replica's
/// subscription hears of the new epoch (held here at that point).
#[test]
fn a_verdict_of_the_old_epoch_read_while_invalidate_all_runs_is_gone_when_it_returns() {
    let points = Points::get();
    let _serial = points.serial();
    let upstream = multi_thread();
    let composio = upstream.block_on(composio());
    let redis = RedisServer::start();
    let key = "ak_epoch_0123456789abcdef";
    composio.add_session(key, StandIn::example_document());
    {
        // Another replica records the verdict, then goes away with its runtime (and
        // its subscription): only the replica under test hears the stream.
        let (_, other_app) = replica(&composio, &redis);
        let other_runtime = multi_thread();
        assert_eq!(call(&other_runtime, &other_app, key), StatusCode::OK);
        upstream.block_on(redis.wait_for_verdicts(1));
    }
    composio.revoke(key);
    let (layer, app) = replica(&composio, &redis);
    let requests = multi_thread();

    points.arm(pause_point::INVALIDATED_HERE);
    let invalidating = {
        let layer = layer.clone();
        std::thread::spawn(move || multi_thread().block_on(layer.invalidate_all()))
    };
    points.wait_paused(WAIT);
    // Arriving during the call, a request adopts the verdict of the old epoch.
    assert_eq!(call(&requests, &app, key), StatusCode::OK);
    // This replica's subscription will be held as it receives the new epoch.
    points.arm(pause_point::INVALIDATION_RECEIVED);
    points.resume();
    invalidating.join().unwrap().expect("Redis reachable");
    points.wait_paused(WAIT);

    let status = call(&requests, &app, key);
    points.resume();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
