//! The fleet on a Redis Cluster of three masters started by the test: the same
//! promises as on one server, with every Redis key of one API key in one slot.

use crate::common;

use std::time::Duration;

use common::redis::{RedisCluster, PEPPER, VERDICTS};
use common::{app, builder, composio, eventually, serve, within, Capture, Client, ALICE, BOB};
use composio_auth::testing::pause_point;
use composio_auth::{ComposioAuthLayer, RedisCache};

async fn replicas(
    composio: &composio_auth::testing::StandIn,
    cluster: &RedisCluster,
    n: usize,
) -> Vec<(ComposioAuthLayer, Client)> {
    let cache = RedisCache::cluster(cluster.urls(), PEPPER)
        .unwrap()
        .budget(Duration::from_secs(2));
    let mut replicas = Vec::new();
    for _ in 0..n {
        let layer = builder(composio)
            .shared_cache(cache.clone())
            .build()
            .unwrap();
        let addr = serve(app(layer.clone())).await;
        replicas.push((layer, Client::new(addr)));
    }
    replicas
}

/// One cluster for every row, in sequence: forming a cluster takes a few seconds.
#[tokio::test]
async fn on_a_cluster_replicas_share_verdicts_leases_rejections_and_invalidations() {
    let (capture, _guard) = Capture::install();
    let cluster = RedisCluster::start();
    let composio = composio().await;
    let fleet = replicas(&composio, &cluster, 3).await;

    // One upstream call for the fleet, for a session and for a rejection.
    for (_, client) in &fleet {
        assert_eq!(client.me(ALICE).await.status, 200);
        assert_eq!(client.me("ak_unknown_key_000000000").await.status, 401);
    }
    assert_eq!(composio.calls(), 2);

    // Concurrent first requests on every replica: one call.
    composio.hold();
    let waiting = capture.count_point(pause_point::LEASE_HELD_ELSEWHERE);
    let requests: Vec<_> = fleet
        .iter()
        .flat_map(|(_, client)| (0..4).map(move |_| client.clone()))
        .map(|client| tokio::spawn(async move { client.me(BOB).await.status }))
        .collect();
    within("BOB's call", composio.wait_for_calls(3)).await;
    within(
        "two replicas waiting on the lease",
        capture.wait_for_point(pause_point::LEASE_HELD_ELSEWHERE, waiting + 2),
    )
    .await;
    composio.release();
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(composio.calls_for(BOB), 1);

    // Every Redis key of one API key lives in one slot (hash tags).
    eventually("BOB's verdict recorded", || {
        cluster.keys(VERDICTS).len() == 3
    })
    .await;
    composio.revoke(ALICE);
    fleet[0]
        .0
        .invalidate(ALICE)
        .await
        .expect("the cluster is reachable");
    let gens = cluster.keys("composio-auth:*:gen");
    assert_eq!(gens.len(), 1, "{gens:?}");
    let tag = gens[0].trim_end_matches(":gen");
    let node = &cluster.nodes[0];
    let slot = |key: &str| node.cli(&["cluster", "keyslot", key]).trim().to_owned();
    for suffix in [":gen", ":v", ":lock"] {
        assert_eq!(slot(&format!("{tag}{suffix}")), slot(&gens[0]));
    }

    // The invalidation reaches every replica.
    for (_, client) in &fleet {
        client.until_refused(ALICE).await;
    }
    for (_, client) in &fleet {
        assert_eq!(client.me(BOB).await.status, 200);
    }
    assert_eq!(composio.calls_for(BOB), 1);

    // A master stops answering (SIGSTOP): replicas with a short Redis budget wait
    // at most that budget per request, and every verdict stays right.
    let cache = RedisCache::cluster(cluster.urls(), PEPPER)
        .unwrap()
        .budget(Duration::from_millis(200));
    let mut impatient = Vec::new();
    for _ in 0..2 {
        let layer = builder(&composio)
            .shared_cache(cache.clone())
            .build()
            .unwrap();
        impatient.push(Client::new(serve(app(layer)).await));
    }
    cluster.nodes[1].freeze();
    for n in 0..10 {
        let key = format!("ak_while_frozen_{n:04}_000000");
        composio.add_session(
            &key,
            composio_auth::testing::StandIn::document_for("f@example.com", "F", "member"),
        );
        for client in &impatient {
            let started = std::time::Instant::now();
            assert_eq!(client.me(&key).await.status, 200, "{key}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
        }
    }
    cluster.nodes[1].thaw();

    // A master dies: its slots are gone. Every verdict stays right, and no request
    // gets a 503 because of it.
    let mut cluster = cluster;
    cluster.nodes[0].kill();
    for n in 0..20 {
        let key = format!("ak_after_the_crash_{n:04}_000000");
        composio.add_session(
            &key,
            composio_auth::testing::StandIn::document_for("c@example.com", "C", "member"),
        );
        for (_, client) in &fleet {
            assert_eq!(client.me(&key).await.status, 200, "{key}");
        }
        assert_eq!(fleet[0].1.me("ak_unknown_key_000000000").await.status, 401);
    }
    for (_, client) in &fleet {
        assert_eq!(client.me(ALICE).await.status, 401);
        assert_eq!(client.me(BOB).await.status, 200);
    }
}
