//! Every metric of the `metrics` feature moves as guide::metrics's table says, read from
//! `metrics-util`'s debugging recorder.

use crate::common;

use std::time::Duration;

use common::{app, builder, composio, serve, Client, ALICE, BOB};
use composio_auth::testing::Reply;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};

/// The recorder's values since the last snapshot (taking one resets counters and
/// gauges to zero and drains histograms).
struct Values(Vec<(CompositeKey, DebugValue)>);

impl Values {
    fn take(snapshotter: &Snapshotter) -> Self {
        let values = snapshotter.snapshot().into_vec();
        Self(
            values
                .into_iter()
                .map(|(key, _, _, value)| (key, value))
                .collect(),
        )
    }

    /// The value of the metric `name` whose labels include `label`, if any.
    fn get(&self, name: &str, label: Option<(&str, &str)>) -> Option<&DebugValue> {
        self.0
            .iter()
            .find(|(key, _)| {
                key.key().name() == name
                    && label.is_none_or(|(k, v)| {
                        key.key().labels().any(|l| l.key() == k && l.value() == v)
                    })
            })
            .map(|(_, value)| value)
    }

    fn counter(&self, name: &str, label: (&str, &str)) -> u64 {
        match self.get(name, Some(label)) {
            Some(DebugValue::Counter(n)) => *n,
            other => panic!("{name} {label:?}: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        match self.get(name, label) {
            Some(DebugValue::Gauge(n)) => n.into_inner(),
            other => panic!("{name} {label:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn every_metric_moves_as_documented() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let composio = composio().await;
    let ttl = Duration::from_millis(300);
    // Handles are registered when the layer is built: with this recorder.
    let layer = metrics::with_local_recorder(&recorder, || {
        builder(&composio)
            .ttl(ttl)
            .stale_if_error(Duration::from_secs(60))
            .refresh_ahead(false)
            .require(|session| session.org_member.role == "admin")
            .build()
            .unwrap()
    });
    let client = Client::new(serve(app(layer)).await);

    assert_eq!(client.me(ALICE).await.status, 200); // miss, allowed
    assert_eq!(client.me(ALICE).await.status, 200); // hit
    assert_eq!(client.me(BOB).await.status, 403); // miss, allowed upstream, forbidden
    assert_eq!(client.get("/me", &[]).await.status, 401); // no key: no lookup
    assert_eq!(client.me("ak_unknown_metrics_key").await.status, 401); // miss, rejected
    assert_eq!(client.me("ak_unknown_metrics_key").await.status, 401); // negative hit
    composio.fail_with(Reply::html(502));
    assert_eq!(client.me("ak_down_metrics_key_0").await.status, 503); // miss, undecided
    tokio::time::sleep(ttl + Duration::from_millis(50)).await; // let ALICE go stale
    assert_eq!(client.me(ALICE).await.status, 200); // miss, undecided, stale

    let values = Values::take(&snapshotter);
    let requests = |result| values.counter("composio_auth_requests_total", ("result", result));
    let cache = |result| values.counter("composio_auth_cache_total", ("result", result));
    let calls =
        |outcome| values.counter("composio_auth_upstream_calls_total", ("outcome", outcome));
    assert_eq!(requests("allowed"), 2);
    assert_eq!(requests("forbidden"), 1);
    assert_eq!(requests("unauthorized"), 3);
    assert_eq!(requests("unavailable"), 1);
    assert_eq!(requests("stale"), 1);
    assert_eq!(cache("hit"), 1);
    assert_eq!(cache("negative_hit"), 1);
    assert_eq!(cache("miss"), 5);
    assert_eq!(calls("allowed"), 2);
    assert_eq!(calls("rejected"), 1);
    assert_eq!(calls("undecided"), 2);
    match values.get("composio_auth_upstream_duration_seconds", None) {
        Some(DebugValue::Histogram(samples)) => {
            assert_eq!(samples.len(), 5);
            assert!(samples.iter().all(|s| s.into_inner() >= 0.0));
        }
        other => panic!("duration: {other:?}"),
    }
    assert_eq!(values.gauge("composio_auth_upstream_in_flight", None), 0.0);
    // ALICE's session (stale, kept for the window), BOB's; the unknown key's rejection.
    let sessions = values.gauge("composio_auth_cache_entries", Some(("tier", "sessions")));
    assert_eq!(sessions, 2.0);
    let rejections = values.gauge("composio_auth_cache_entries", Some(("tier", "rejections")));
    assert_eq!(rejections, 1.0);
    let kinds: Vec<MetricKind> = values.0.iter().map(|(key, _)| key.kind()).collect();
    assert!(kinds.contains(&MetricKind::Histogram));
}

#[tokio::test]
async fn the_in_flight_gauge_counts_calls_being_answered() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let composio = composio().await;
    let layer = metrics::with_local_recorder(&recorder, || builder(&composio).build().unwrap());
    let client = Client::new(serve(app(layer)).await);
    composio.hold();
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.me(ALICE).await.status })
    };
    common::within("the upstream call", composio.wait_for_calls(1)).await;
    let held = Values::take(&snapshotter);
    assert_eq!(held.gauge("composio_auth_upstream_in_flight", None), 1.0);
    composio.release();
    assert_eq!(waiting.await.unwrap(), 200);
    // Relative to the last snapshot, which reset the gauge: one call fewer.
    let after = Values::take(&snapshotter);
    assert_eq!(after.gauge("composio_auth_upstream_in_flight", None), -1.0);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn the_shared_tiers_metrics_move_as_documented() {
    use common::redis::{nowhere, RedisServer};

    let redis = RedisServer::start();
    let composio = composio().await;
    let cache = redis.cache(Duration::from_secs(2));
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let [a, b] = [(); 2].map(|()| {
        metrics::with_local_recorder(&recorder, || {
            builder(&composio)
                .shared_cache(cache.clone())
                .build()
                .unwrap()
        })
    });
    let a_client = Client::new(serve(app(a.clone())).await);
    let b_client = Client::new(serve(app(b)).await);
    assert_eq!(a_client.me(ALICE).await.status, 200); // the lease: verified
    assert_eq!(b_client.me(ALICE).await.status, 200); // adopted
    composio.revoke(ALICE);
    a.invalidate(ALICE).await.unwrap(); // sent; received by both replicas
                                        // B first: it verifies for the fleet once it hears of the invalidation.
    b_client.until_refused(ALICE).await;
    a_client.until_refused(ALICE).await;
    let values = Values::take(&snapshotter);
    let shared = |result| values.counter("composio_auth_shared_total", ("result", result));
    // Before the invalidation A verified and B adopted; after it, B (asked first)
    // verified again and A adopted B's refusal.
    assert_eq!(shared("verified"), 2);
    assert_eq!(shared("adopted"), 2);
    assert_eq!(shared("alone"), 0);
    let invalidations = |direction| {
        values.counter(
            "composio_auth_shared_invalidations_total",
            ("direction", direction),
        )
    };
    assert_eq!(invalidations("sent"), 1);
    assert_eq!(invalidations("received"), 2);
    assert_eq!(values.gauge("composio_auth_shared_subscribed", None), 1.0);

    // A replica whose Redis is not there verifies alone, and says it is not
    // subscribed.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let alone = metrics::with_local_recorder(&recorder, || {
        builder(&composio)
            .shared_cache(nowhere(Duration::from_secs(2)))
            .build()
            .unwrap()
    });
    let client = Client::new(serve(app(alone)).await);
    assert_eq!(client.me(BOB).await.status, 200);
    let values = Values::take(&snapshotter);
    assert_eq!(
        values.counter("composio_auth_shared_total", ("result", "alone")),
        1
    );
    assert_eq!(values.gauge("composio_auth_shared_subscribed", None), 0.0);
}

#[tokio::test]
async fn verify_is_counted_like_a_request() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let composio = composio().await;
    let layer = metrics::with_local_recorder(&recorder, || builder(&composio).build().unwrap());
    let admin = layer.require(|s| s.org_member.role == "admin");
    let with = |key: &str| {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-api-key", key.parse().unwrap());
        headers
    };
    assert!(layer.verify(&with(ALICE)).await.is_ok()); // miss, allowed
    assert!(admin.verify(&with(ALICE)).await.is_ok()); // hit, allowed
    let forbidden = admin.verify(&with(BOB)).await.unwrap_err(); // miss, forbidden
    assert_eq!(forbidden.status(), 403);
    let none = layer
        .verify(&axum::http::HeaderMap::new())
        .await
        .unwrap_err(); // no lookup
    assert_eq!(none.status(), 401);
    let unknown = layer
        .verify(&with("ak_unknown_metrics_key"))
        .await
        .unwrap_err(); // miss
    assert_eq!(unknown.status(), 401);

    let values = Values::take(&snapshotter);
    let requests = |result| values.counter("composio_auth_requests_total", ("result", result));
    let cache = |result| values.counter("composio_auth_cache_total", ("result", result));
    assert_eq!(requests("allowed"), 2);
    assert_eq!(requests("forbidden"), 1);
    assert_eq!(requests("unauthorized"), 2);
    assert_eq!(cache("hit"), 1);
    assert_eq!(cache("miss"), 3);
    assert_eq!(composio.calls(), 3);
}

#[cfg(feature = "webhook")]
#[tokio::test]
async fn webhook_deliveries_move_their_metrics_as_documented() {
    use axum::http::StatusCode;
    use axum::routing::post;
    use composio_auth::testing::sign_delivery;
    use composio_auth::{ComposioWebhookLayer, WebhookEvent};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        ComposioWebhookLayer::builder()
            .secret("whsec_metrics")
            .build()
            .unwrap()
    });
    let fail = Arc::new(AtomicBool::new(false));
    let handler = {
        let fail = Arc::clone(&fail);
        move |_: WebhookEvent| async move {
            if fail.load(Ordering::SeqCst) {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }
        }
    };
    let app = axum::Router::new().route("/hook", post(handler).layer(layer));
    let client = Client::new(serve(app).await);
    let body =
        br#"{"trigger_name":"T","connection_id":"c","trigger_id":"t","payload":{},"log_id":"l"}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let deliver = |secret: &'static str, id: &'static str, when: u64| {
        let client = client.clone();
        async move {
            let mut request = client
                .http
                .post(format!("http://{}/hook", client.addr))
                .body(body.to_vec());
            for (name, value) in &sign_delivery(secret, id, body, when) {
                request = request.header(name.as_str(), value.as_bytes());
            }
            request.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(deliver("whsec_metrics", "msg_1", now).await, 200); // handled
    assert_eq!(deliver("whsec_metrics", "msg_1", now).await, 200); // duplicate
    fail.store(true, Ordering::SeqCst);
    assert_eq!(deliver("whsec_metrics", "msg_2", now).await, 500); // failed
    assert_eq!(deliver("another", "msg_3", now).await, 401); // signature
    assert_eq!(deliver("whsec_metrics", "msg_4", now - 3600).await, 401); // timestamp

    let values = Values::take(&snapshotter);
    let delivered = |r| values.counter("composio_auth_webhook_deliveries_total", ("result", r));
    let rejected = |r| values.counter("composio_auth_webhook_rejections_total", ("reason", r));
    assert_eq!(
        (
            delivered("handled"),
            delivered("duplicate"),
            delivered("failed")
        ),
        (1, 1, 1)
    );
    assert_eq!(
        (
            rejected("signature"),
            rejected("timestamp"),
            rejected("payload")
        ),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn a_user_keys_bad_selectors_count_as_bad_request_not_unavailable() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let composio = composio().await;
    let layer = metrics::with_local_recorder(&recorder, || {
        builder(&composio)
            .credential_headers([composio_auth::CredentialHeader::UserApiKey])
            .build()
            .unwrap()
    });
    let client = Client::new(serve(app(layer)).await);
    let lone = [
        ("x-user-api-key", "uak_metrics_0123456789"),
        ("x-org-id", "org_1"),
    ];
    assert_eq!(client.get("/me", &lone).await.status, 400);
    let values = Values::take(&snapshotter);
    let requests = |result| values.counter("composio_auth_requests_total", ("result", result));
    assert_eq!((requests("bad_request"), requests("unavailable")), (1, 0));
    assert_eq!(composio.calls(), 0);
}
