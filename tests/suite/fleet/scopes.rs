//! A user key's scopes across replicas: each scope's verdict shared through Redis
//! and never another scope's, and one invalidation voiding every scope of the key
//! on every replica and in Redis.

use crate::common;

use std::time::Duration;

use common::redis::RedisServer;
use common::{app, builder, composio, serve, within, Client};
use composio_auth::testing::StandIn;
use composio_auth::{ComposioAuthLayer, CredentialHeader};

const USER: &str = "uak_fleet_0123456789abcdefghijklmnopqrstuvwxyz0";
const A: (&str, &str) = ("org_fleet_a01234", "proj_fleet_a01234");
const B: (&str, &str) = ("org_fleet_b01234", "proj_fleet_b01234");

fn document(email: &str) -> serde_json::Value {
    StandIn::document_for(email, "User", "admin")
}

async fn two_replicas(composio: &StandIn, redis: &RedisServer) -> Vec<(ComposioAuthLayer, Client)> {
    let cache = redis.cache(Duration::from_secs(2));
    let mut fleet = Vec::new();
    for _ in 0..2 {
        let layer = builder(composio)
            .credential_headers([CredentialHeader::UserApiKey])
            .shared_cache(cache.clone())
            .build()
            .unwrap();
        fleet.push((layer.clone(), Client::new(serve(app(layer)).await)));
    }
    fleet
}

async fn me_in(client: &Client, (org, project): (&str, &str)) -> common::Answer {
    let headers = [
        ("x-user-api-key", USER),
        ("x-org-id", org),
        ("x-project-id", project),
    ];
    client.get("/me", &headers).await
}

#[tokio::test]
async fn two_replicas_share_each_scopes_verdict_and_never_mix_two_scopes() {
    let redis = RedisServer::start();
    let composio = composio().await;
    composio.add_session(USER, document("default@example.com"));
    composio.add_scoped_session(USER, A.0, A.1, document("a@example.com"));
    composio.add_scoped_session(USER, B.0, B.1, document("b@example.com"));
    let fleet = two_replicas(&composio, &redis).await;
    let (one, two) = (&fleet[0].1, &fleet[1].1);
    assert_eq!(me_in(one, A).await.body, "a@example.com");
    redis.wait_for_verdicts(1).await;
    assert_eq!(me_in(two, A).await.body, "a@example.com");
    assert_eq!(me_in(two, B).await.body, "b@example.com");
    redis.wait_for_verdicts(2).await;
    assert_eq!(me_in(one, B).await.body, "b@example.com");
    let default = two.get("/me", &[("x-user-api-key", USER)]).await;
    assert_eq!(default.body, "default@example.com");
    assert_eq!(composio.calls_for_scope(USER, A.0, A.1), 1);
    assert_eq!(composio.calls_for_scope(USER, B.0, B.1), 1);
    assert_eq!(composio.calls_for(USER), 3);
    // A scope Composio refuses (404) is shared too, as the 401 the layer answers.
    let elsewhere = ("org_fleet_elsewhere", "proj_fleet_elsewhere");
    assert_eq!(me_in(one, elsewhere).await.status, 401);
    redis.wait_for_verdicts(4).await;
    assert_eq!(me_in(two, elsewhere).await.status, 401);
    assert_eq!(composio.calls_for_scope(USER, elsewhere.0, elsewhere.1), 1);
    // Redis holds neither the key nor a selector in the clear.
    let dump = redis.dump();
    for secret in [USER, A.0, A.1, B.1, "a@example.com"] {
        assert!(
            !dump.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret}"
        );
    }
}

#[tokio::test]
async fn invalidating_a_user_key_on_one_replica_voids_every_scope_everywhere() {
    let redis = RedisServer::start();
    let composio = composio().await;
    composio.add_scoped_session(USER, A.0, A.1, document("a@example.com"));
    composio.add_scoped_session(USER, B.0, B.1, document("b@example.com"));
    let fleet = two_replicas(&composio, &redis).await;
    for (_, client) in &fleet {
        assert_eq!(me_in(client, A).await.body, "a@example.com");
        assert_eq!(me_in(client, B).await.body, "b@example.com");
    }
    redis.wait_for_verdicts(2).await;
    assert_eq!(composio.calls(), 2);
    // The project of scope A changes hands; the key is invalidated from one replica.
    composio.add_scoped_session(USER, A.0, A.1, document("a2@example.com"));
    composio.add_scoped_session(USER, B.0, B.1, document("b2@example.com"));
    fleet[0].0.invalidate(USER).await.expect("Redis reachable");
    assert_eq!(me_in(&fleet[0].1, A).await.body, "a2@example.com");
    // The other replica hears of it, and finds no scope's old verdict in Redis
    // (which would be adopted, and served for a TTL).
    within("every scope forgotten on the other replica", async {
        while me_in(&fleet[1].1, B).await.body != "b2@example.com" {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(me_in(&fleet[1].1, A).await.body, "a2@example.com");
    assert_eq!(me_in(&fleet[0].1, B).await.body, "b2@example.com");
}
