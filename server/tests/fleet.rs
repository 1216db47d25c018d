//! Two servers sharing one real `redis-server` (feature `redis`): one upstream
//! call for both, and an invalidation on one reaches the other.
#![cfg(feature = "redis")]

mod support;

use support::redis::{RedisServer, PEPPER};
use support::{client, composio, Server, ADMIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_verdicts_and_invalidations() {
    let composio = composio().await;
    let redis = RedisServer::start();
    let dir =
        std::env::temp_dir().join(format!("composio-auth-server-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pepper = dir.join("pepper");
    std::fs::write(&pepper, format!("{PEPPER}\n")).unwrap();
    let args = |admin: bool| {
        let mut args = vec![
            "--redis-url".to_owned(),
            redis.url(),
            "--redis-pepper-file".to_owned(),
            pepper.display().to_string(),
        ];
        if admin {
            args.extend(["--admin-listen".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        args
    };
    let start = |admin| {
        let args = args(admin);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(&composio.base_url(), &args)
    };
    let (one, two) = (start(true), start(false));
    let verify = |server: &Server| {
        client()
            .get(server.url("/verify"))
            .header("x-api-key", ADMIN)
            .send()
    };
    assert_eq!(verify(&one).await.unwrap().status(), 200);
    assert_eq!(verify(&two).await.unwrap().status(), 200);
    assert_eq!(
        composio.calls_for(ADMIN),
        1,
        "the second server adopted the first's verdict"
    );

    composio.revoke(ADMIN);
    let invalidated = client()
        .post(format!("http://{}/invalidate", one.admin.unwrap()))
        .body(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(invalidated.status(), 204);
    // The other server hears it on the fleet's stream (milliseconds) and asks
    // Composio again, which refuses the key.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while verify(&two).await.unwrap().status() != 401 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second server still admits the key"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(verify(&one).await.unwrap().status(), 401);
    std::fs::remove_dir_all(dir).unwrap();
}
