//! What the layer keeps on the heap: bounded by `max_capacity` (plus a small
//! constant per thread), and nothing of an invalidated entry or a dropped layer.
//!
//! A counting allocator measures live heap bytes; this file holds one test so that
//! nothing else allocates meanwhile.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use common::app;
use composio_auth::testing::{Reply, StandIn};
use composio_auth::ComposioAuthLayer;
use tower::ServiceExt;

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: i64 = 1024 * 1024;

fn live() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

/// Sessions of 32 KiB each: what a front that kept them would hold is obvious.
fn big_document() -> serde_json::Value {
    let mut document = StandIn::example_document();
    document["org_member"]["metadata"] = serde_json::json!({ "notes": "x".repeat(32 * 1024) });
    document
}

async fn me(app: &Router, key: &str) -> StatusCode {
    let request = Request::get("/me")
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(request).await.unwrap().status()
}

#[tokio::test(flavor = "current_thread")]
async fn memory_is_bounded_by_capacity_and_nothing_outlives_invalidation_or_the_layer() {
    let composio = StandIn::start().await.unwrap();
    composio.set_default_reply(Some(Reply::Session(big_document())));
    let layer = ComposioAuthLayer::builder()
        .base_url(composio.base_url())
        .max_capacity(10)
        .build()
        .unwrap();
    let app = app(layer.clone());
    // Warm the connections and the runtime's own allocations.
    assert_eq!(me(&app, "ak_warm_0123456789abcdef").await, StatusCode::OK);
    layer.invalidate_all().await.unwrap();
    let before = live();

    // 3,000 keys, each served twice (the second time from this thread's front).
    for i in 0..3_000 {
        let key = format!("ak_memory_{i:05}_0123456789");
        assert_eq!(me(&app, &key).await, StatusCode::OK);
        assert_eq!(me(&app, &key).await, StatusCode::OK);
    }
    let cached = layer.cached().sessions;
    assert!(cached <= 10, "{cached} sessions cached");
    // 10 sessions of 32 KiB, the front's slots of dead pointers, moka's bookkeeping
    // and the stand-in's call log; 3,000 sessions would be over 96 MiB.
    let grown = live() - before;
    eprintln!("live heap over baseline: {grown} B after 3,000 keys");
    assert!(grown < 4 * MIB, "{grown} bytes live with max_capacity 10");

    layer.invalidate_all().await.unwrap();
    let grown = live() - before;
    eprintln!("live heap over baseline: {grown} B after invalidate_all");
    assert!(grown < 2 * MIB, "{grown} bytes live after invalidate_all");

    // Served once more, then the layer is dropped: nothing of it stays reachable
    // from this thread's front, whose slots now point at freed sessions.
    for i in 0..1_000 {
        let key = format!("ak_memory_{i:05}_0123456789");
        assert_eq!(me(&app, &key).await, StatusCode::OK);
    }
    drop(app);
    drop(layer);
    let grown = live() - before;
    eprintln!("live heap over baseline: {grown} B after dropping the layer");
    assert!(
        grown < MIB / 4,
        "{grown} bytes live after dropping the layer"
    );
}
