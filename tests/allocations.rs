//! What a warm hit allocates, counted: beyond what any axum layer costs, only the
//! `SessionInfo` extension's box and, added with `Router::layer`, the growth of the
//! request's extension map (axum has filled its first table with its own
//! extensions by then). Around the whole router, the layer gives the map room for
//! axum's extensions as it creates it: the box alone. A wrapper response body,
//! which axum boxes again, or any other allocation on the hit path fails this test.
//!
//! A counting allocator; this file holds one test so that nothing else allocates
//! meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{Request, Response};
use axum::routing::get;
use axum::Router;
use composio_auth::testing::StandIn;
use composio_auth::ComposioAuthLayer;
use tower::{Layer, Service, ServiceExt};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const KEY: &str = "ak_allocations_0123456789";
const REQUESTS: u64 = 1_000;

fn router() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}

/// Allocations per request through `app`, over [`REQUESTS`] requests.
async fn per_request<S>(app: &S) -> f64
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..REQUESTS {
        let request = Request::get("/")
            .header("x-api-key", KEY)
            .body(Body::empty())
            .unwrap();
        let status = app.clone().oneshot(request).await.unwrap().status();
        assert_eq!(status, 200);
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / REQUESTS as f64
}

#[tokio::test(flavor = "current_thread")]
async fn a_warm_hit_allocates_the_extension_and_nothing_else() {
    let composio = StandIn::start().await.unwrap();
    composio.add_session(KEY, StandIn::example_document());
    let layer = ComposioAuthLayer::builder()
        .base_url(composio.base_url())
        .build()
        .unwrap();
    let protected = router().layer(layer.clone()).with_state(());
    // The yardstick: a layer that does nothing, for what axum's layering allocates.
    let pass_through = router()
        .layer(tower::layer::util::Identity::new())
        .with_state(());
    per_request(&protected).await; // warm: the one verification, the front filled
    per_request(&pass_through).await;

    let pass_through = per_request(&pass_through).await;
    let hit = per_request(&protected).await;
    let extra = hit - pass_through;
    assert!(
        extra <= 2.0,
        "a warm hit allocates {hit} times per request, {extra} more than a pass-through \
         layer ({pass_through}); expected at most 2 more (the extension's box and the \
         extension map's growth)"
    );
    // The count is real: the extension itself is allocated on every hit.
    assert!(extra >= 1.0, "{hit} against {pass_through}");

    // Around the router: no layering by axum, and no growth of the map.
    let around = layer.layer(router().with_state(()));
    let bare = router().with_state(());
    per_request(&around).await;
    per_request(&bare).await;
    let bare = per_request(&bare).await;
    let around = per_request(&around).await;
    assert_eq!(
        around - bare,
        1.0,
        "around the router, a warm hit allocates {around} times per request against \
         {bare} bare; expected exactly 1 more (the extension's box)"
    );
    assert_eq!(composio.calls(), 1);
}
