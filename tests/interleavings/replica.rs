//! Interleavings forced by pausing the layer at a known point (`common::pause`), and
//! the runtimes a verification can outlive or be stranded on.
//!
//! Each test builds its own runtimes: the upstream stand-in runs on a runtime of its
//! own, requests run on others (plain threads with current-thread runtimes), so that
//! a thread paused inside the layer blocks nothing the test needs.

use crate::{common, multi_thread, WAIT};

use std::thread;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::{Extension, Router};
use common::pause::Points;
use common::{composio, within, ALICE, BOB};
use composio_auth::testing::{pause_point, Reply, StandIn};
use composio_auth::{ComposioAuthBuilder, ComposioAuthLayer, SessionInfo};
use futures_util::FutureExt;
use tokio::runtime::{Builder, Runtime};
use tower::ServiceExt;

const ROUNDS: usize = 10;

fn current_thread() -> Runtime {
    Builder::new_current_thread().enable_all().build().unwrap()
}

/// The stand-in, on a runtime of its own (kept alive by the returned runtime).
fn upstream() -> (Runtime, StandIn) {
    let runtime = multi_thread();
    let composio = runtime.block_on(composio());
    (runtime, composio)
}

fn layer(
    composio: &StandIn,
    configure: impl FnOnce(ComposioAuthBuilder) -> ComposioAuthBuilder,
) -> ComposioAuthLayer {
    configure(ComposioAuthLayer::builder().base_url(composio.base_url()))
        .build()
        .unwrap()
}

fn app(layer: &ComposioAuthLayer) -> Router {
    Router::new()
        .route(
            "/me",
            get(|Extension(session): Extension<SessionInfo>| async move {
                session.org_member.email.clone()
            }),
        )
        .layer(layer.clone())
}

fn request(key: &str) -> Request<Body> {
    Request::get("/me")
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap()
}

/// One request through `app` on `runtime` (panics if it takes over [`WAIT`]).
fn call(runtime: &Runtime, app: &Router, key: &str) -> StatusCode {
    runtime
        .block_on(within("an answer", app.clone().oneshot(request(key))))
        .unwrap()
        .status()
}

/// One request on `runtime`, which must be answered within a second (a stall or a
/// wait on another runtime takes the whole verification budget, 5 s).
fn call_quickly(runtime: &Runtime, app: &Router, key: &str) -> StatusCode {
    let started = std::time::Instant::now();
    let status = call(runtime, app, key);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    status
}

/// Starts a request on a new runtime and leaves it there, its verification spawned
/// and never polled; returns the runtime (idle from now on).
fn start_and_leave(app: &Router, key: &str) -> Runtime {
    let runtime = current_thread();
    runtime.block_on(async {
        let mut pending = app.clone().oneshot(request(key));
        assert!((&mut pending).now_or_never().is_none());
    });
    runtime
}

/// One request on a new thread with a runtime (and per-thread front) of its own.
fn call_on_thread(app: &Router, key: &str) -> thread::JoinHandle<StatusCode> {
    let (app, key) = (app.clone(), key.to_owned());
    thread::spawn(move || call(&current_thread(), &app, &key))
}

#[test]
fn a_verdict_invalidated_in_flight_reaches_no_thread_while_it_settles() {
    let points = Points::get();
    let _serial = points.serial();
    let (upstream_rt, composio) = upstream();
    let layer = layer(&composio, |b| b);
    let app = app(&layer);
    let requests = multi_thread();
    for round in 0..ROUNDS {
        let key = format!("ak_settle_{round}_0123456789abcdef");
        composio.add_session(&key, StandIn::example_document());
        let calls = composio.calls();

        composio.hold();
        let first = requests.spawn(app.clone().oneshot(request(&key)));
        upstream_rt.block_on(within(
            "the upstream call",
            composio.wait_for_calls(calls + 1),
        )); // decided "valid"
        composio.revoke(&key);
        upstream_rt.block_on(layer.invalidate(&key)).unwrap();

        // The held verification settles and is paused right there, in its critical
        // section, having decided not to cache its (pre-invalidation) verdict.
        points.arm(pause_point::VERDICT_NOT_CACHED);
        composio.release();
        points.wait_paused(WAIT);
        // Meanwhile another thread asks for the key (it misses and waits its turn).
        let misses = points.count(pause_point::CACHE_MISS);
        let other = call_on_thread(&app, &key);
        points.wait_count(pause_point::CACHE_MISS, misses + 1, WAIT);
        points.resume();

        assert_eq!(
            requests.block_on(first).unwrap().unwrap().status(),
            StatusCode::OK
        );
        assert_eq!(
            other.join().unwrap(),
            StatusCode::UNAUTHORIZED,
            "round {round}"
        );
        // No thread kept the old verdict: not that one, not this one.
        assert_eq!(
            call_on_thread(&app, &key).join().unwrap(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(call(&requests, &app, &key), StatusCode::UNAUTHORIZED);
        assert_eq!(composio.calls_for(&key), 2, "round {round}");
    }
}

#[test]
fn a_stale_session_is_never_served_once_composio_has_refused_the_key() {
    let points = Points::get();
    let _serial = points.serial();
    let (upstream_rt, composio) = upstream();
    let ttl = Duration::from_millis(200);
    let layer = layer(&composio, |b| {
        b.ttl(ttl)
            .stale_if_error(Duration::from_secs(600))
            .negative_ttl(Duration::ZERO)
            .refresh_ahead(false)
    });
    let app = app(&layer);
    let requests = multi_thread();
    for round in 0..ROUNDS {
        let key = format!("ak_stale_{round}_0123456789abcdef");
        composio.recover();
        composio.add_session(&key, StandIn::example_document());
        assert_eq!(call(&requests, &app, &key), StatusCode::OK);
        thread::sleep(ttl + Duration::from_millis(50)); // let the session go stale
        let calls = composio.calls();

        composio.hold();
        composio.revoke(&key);
        // The first request finds the stale session and starts a verification,
        // which Composio decides: refused.
        let first = requests.spawn(app.clone().oneshot(request(&key)));
        upstream_rt.block_on(within(
            "the upstream call",
            composio.wait_for_calls(calls + 1),
        ));
        // A second request also finds the stale session in its lookup, and is
        // paused right after it, before joining anything.
        points.arm(pause_point::CACHE_MISS);
        let second = call_on_thread(&app, &key);
        points.wait_paused(WAIT);
        // The refusal lands; then Composio starts failing.
        composio.release();
        let first = requests.block_on(first).unwrap().unwrap().status();
        assert_eq!(first, StatusCode::UNAUTHORIZED, "round {round}");
        composio.fail_with(Reply::html(502));
        points.resume();
        // The second request's own verification is undecided: the stale session it
        // saw is older than the refusal, so it is not served.
        assert_eq!(
            second.join().unwrap(),
            StatusCode::SERVICE_UNAVAILABLE,
            "round {round}"
        );
        assert_eq!(composio.calls_for(&key), 3, "round {round}");
    }
}

#[test]
fn a_verification_dropped_with_its_runtime_is_replaced_at_once() {
    // Not paused, but it passes pause points: not while another test has one armed.
    let _serial = Points::get().serial();
    let (_upstream_rt, composio) = upstream();
    let layer = layer(&composio, |b| b.timeout(Duration::from_secs(5)));
    let app = app(&layer);

    // Started (the task is spawned on `a`), never polled: `a` goes away first.
    drop(start_and_leave(&app, ALICE));

    assert_eq!(call_quickly(&current_thread(), &app, ALICE), StatusCode::OK);
    assert_eq!(
        composio.calls_for(ALICE),
        1,
        "the dropped task never called"
    );
}

#[test]
fn a_runtime_left_idle_does_not_stall_another_runtimes_verifications() {
    // Not paused, but it passes pause points: not while another test has one armed.
    let _serial = Points::get().serial();
    let (_upstream_rt, composio) = upstream();
    let layer = layer(&composio, |b| b.timeout(Duration::from_secs(5)));
    let app = app(&layer);

    // `a` verifies a key (opening a pooled connection it drives), then idles: it
    // stays alive, but nothing polls it again.
    let a = current_thread();
    assert_eq!(call(&a, &app, ALICE), StatusCode::OK);

    assert_eq!(call_quickly(&current_thread(), &app, BOB), StatusCode::OK);
    assert_eq!(composio.calls(), 2);
    drop(a);
}

#[test]
fn requests_on_another_runtime_do_not_join_a_flight_they_cannot_drive() {
    // Not paused, but it passes pause points: not while another test has one armed.
    let _serial = Points::get().serial();
    let (_upstream_rt, composio) = upstream();
    let layer = layer(&composio, |b| b.timeout(Duration::from_secs(5)));
    let app = app(&layer);

    // A verification started on `a`, which is then left idle with it in flight.
    let a = start_and_leave(&app, ALICE);
    // Another runtime does not wait on `a`'s flight: it verifies the key itself.
    assert_eq!(call_quickly(&current_thread(), &app, ALICE), StatusCode::OK);
    assert_eq!(composio.calls_for(ALICE), 1, "only `b` called Composio");
    drop(a);
}

/// GET /me with a user key in the scope `(org, project)`.
fn scoped_request(key: &str, (org, project): (&str, &str)) -> Request<Body> {
    Request::get("/me")
        .header("x-user-api-key", key)
        .header("x-org-id", org)
        .header("x-project-id", project)
        .body(Body::empty())
        .unwrap()
}

/// Scope A's (or, with `a` None, the key's default scope's) call is answered with
/// a session and paused before it settles, while the key is revoked and a call in
/// scope B learns it: the older session must not be cached.
fn an_older_session_than_the_keys_refusal_is_never_cached(
    a: Option<(&'static str, &'static str)>,
    configure: impl FnOnce(ComposioAuthBuilder) -> ComposioAuthBuilder,
) {
    const USER: &str = "uak_interleaved_0123456789abcdefghijklmnopqrstu";
    let b = ("org_b", "proj_b");
    let points = Points::get();
    let _serial = points.serial();
    let (upstream_rt, composio) = upstream();
    composio.add_session(
        USER,
        StandIn::document_for("d@example.com", "User", "admin"),
    );
    for (email, (org, project)) in [("a@example.com", ("org_a", "proj_a")), ("b@example.com", b)] {
        let document = StandIn::document_for(email, "User", "admin");
        composio.add_scoped_session(USER, org, project, document);
    }
    let layer = layer(&composio, |builder| {
        configure(builder.credential_headers([composio_auth::CredentialHeader::UserApiKey]))
    });
    let app = app(&layer);
    let ask = |scope: Option<(&'static str, &'static str)>| {
        let app = app.clone();
        thread::spawn(move || {
            let request = match scope {
                Some(scope) => scoped_request(USER, scope),
                None => Request::get("/me")
                    .header("x-user-api-key", USER)
                    .body(Body::empty())
                    .unwrap(),
            };
            current_thread()
                .block_on(within("an answer", app.oneshot(request)))
                .unwrap()
                .status()
        })
    };
    points.arm(pause_point::UPSTREAM_REPLIED);
    let first = ask(a);
    points.wait_paused(WAIT);
    composio.revoke(USER);
    assert_eq!(ask(Some(b)).join().unwrap(), StatusCode::UNAUTHORIZED);
    points.resume();
    // The request that asked before the refusal gets its answer; nobody after.
    assert_eq!(first.join().unwrap(), StatusCode::OK);
    assert_eq!(ask(a).join().unwrap(), StatusCode::UNAUTHORIZED);
    drop(upstream_rt);
}

#[test]
fn a_scopes_session_older_than_its_keys_refusal_is_never_cached() {
    an_older_session_than_the_keys_refusal_is_never_cached(Some(("org_a", "proj_a")), |b| b);
}

#[test]
fn a_default_scopes_session_older_than_its_keys_refusal_is_never_cached() {
    an_older_session_than_the_keys_refusal_is_never_cached(None, |b| b);
}

#[test]
fn without_a_negative_cache_an_older_session_is_never_cached_either() {
    let no_negative_cache = |b: ComposioAuthBuilder| b.negative_ttl(std::time::Duration::ZERO);
    an_older_session_than_the_keys_refusal_is_never_cached(
        Some(("org_a", "proj_a")),
        no_negative_cache,
    );
    an_older_session_than_the_keys_refusal_is_never_cached(None, no_negative_cache);
}
