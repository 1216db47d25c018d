//! The layer as actix-web middleware (feature `actix-web`): a real `HttpServer`
//! with 4 workers over TCP, answering as the axum layer does, byte for byte, and
//! sharing each key's one verification across its workers (each worker is a Tokio
//! runtime of its own).

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Service as _;
use actix_web::{web, App, HttpRequest, HttpServer};
use axum::routing::get;
use axum::Router;
use common::{builder, composio, within, Answer, Client, ALICE, BOB};
use composio_auth::testing::StandIn;
use composio_auth::{ComposioAuthLayer, CredentialHeader, SessionInfo};
use tokio::sync::watch;

const WORKERS: usize = 4;

fn is_admin(session: &SessionInfo) -> bool {
    session.org_member.role == "admin"
}

async fn email(session: SessionInfo) -> String {
    session.org_member.email.clone()
}

/// The worker that answered, and whether the handler could read `x-api-key`.
async fn worker(session: SessionInfo, request: HttpRequest) -> String {
    let thread = std::thread::current();
    format!(
        "{} {} {}",
        session.org_member.email,
        thread.name().unwrap_or("?"),
        request.headers().contains_key("x-api-key")
    )
}

async fn maybe(session: Option<SessionInfo>) -> &'static str {
    if session.is_some() {
        "session"
    } else {
        "none"
    }
}

/// An actix-web server on a free loopback port, on threads of its own (an actix
/// `System`, `WORKERS` workers): `/me`, `/worker` behind `auth`; `/admin` behind
/// `auth.require(is_admin)`; `/maybe` (`Option<SessionInfo>`) and `/unprotected`
/// (`SessionInfo`) on no layer. `entered` counts requests whose call reached the
/// layer (the layer's part of a call runs before the call returns its future).
struct ActixServer {
    addr: SocketAddr,
    entered: watch::Receiver<usize>,
    handle: actix_web::dev::ServerHandle,
}

impl ActixServer {
    fn start(auth: &ComposioAuthLayer) -> Self {
        let (entered_tx, entered) = watch::channel(0);
        let entered_tx = Arc::new(entered_tx);
        let (started_tx, started) = std::sync::mpsc::channel();
        let auth = auth.clone();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    let entered = Arc::clone(&entered_tx);
                    App::new()
                        .wrap_fn(move |request, service| {
                            let answer = service.call(request);
                            entered.send_modify(|n| *n += 1);
                            answer
                        })
                        .service(
                            web::scope("/admin")
                                .wrap(auth.require(is_admin))
                                .route("", web::get().to(email)),
                        )
                        .service(
                            web::resource("/me")
                                .wrap(auth.clone())
                                .route(web::get().to(email)),
                        )
                        .service(
                            web::resource("/worker")
                                .wrap(auth.clone())
                                .route(web::get().to(worker)),
                        )
                        .route("/maybe", web::get().to(maybe))
                        .route("/unprotected", web::get().to(email))
                })
                .workers(WORKERS)
                .disable_signals()
                .bind(("127.0.0.1", 0))
                .expect("bind a loopback port");
                let addr = server.addrs()[0];
                let server = server.run();
                started_tx.send((addr, server.handle())).unwrap();
                server.await
            })
        });
        let (addr, handle) = started.recv().expect("the actix server starts");
        Self {
            addr,
            entered,
            handle,
        }
    }

    fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// Waits until `n` requests in all have reached the layer.
    async fn entered(&mut self, n: usize) {
        within(
            "requests to reach the layer",
            self.entered.wait_for(|e| *e >= n),
        )
        .await
        .unwrap();
    }
}

impl Drop for ActixServer {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

/// The same routes in axum, behind the same kind of layer.
fn axum_app(auth: &ComposioAuthLayer) -> Router {
    let email = |session: SessionInfo| async move { session.org_member.email.clone() };
    Router::new()
        .route("/admin", get(email).route_layer(auth.require(is_admin)))
        .route("/me", get(email).route_layer(auth.clone()))
        .route("/unprotected", get(email))
}

/// What must be the same in both frameworks: status, the layer's headers, body.
fn answer_of(answer: &Answer) -> (u16, [Option<String>; 4], String) {
    let header = |name: &str| {
        answer
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    (
        answer.status.as_u16(),
        [
            header("content-type"),
            header("www-authenticate"),
            header("retry-after"),
            header("content-length"),
        ],
        answer.body.clone(),
    )
}

/// A base URL where nothing listens: Composio is down.
fn nothing_listening() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A path, the request's headers, and the status expected.
type Case = (&'static str, &'static [(&'static str, &'static str)], u16);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_answers_every_verdict_byte_for_byte_as_axum() {
    let composio = composio().await;
    let cases: [Case; 5] = [
        ("/me", &[], 401),
        ("/me", &[("x-api-key", "ak_not_a_key_0123456789")], 401),
        ("/me", &[("x-api-key", ALICE)], 200),
        ("/admin", &[("x-api-key", BOB)], 403),
        (
            "/me",
            &[("x-api-key", BOB), ("x-request-id", "req-42")],
            200,
        ),
    ];
    // One layer per framework, so each verifies for itself.
    let actix = ActixServer::start(&builder(&composio).build().unwrap());
    let axum = Client::new(common::serve(axum_app(&builder(&composio).build().unwrap())).await);
    for (path, headers, status) in cases {
        let from_actix = actix.client().get(path, headers).await;
        let from_axum = axum.get(path, headers).await;
        assert_eq!(from_actix.status, status, "{path} {headers:?}");
        assert_eq!(
            answer_of(&from_actix),
            answer_of(&from_axum),
            "{path} {headers:?}"
        );
    }
    // Ambiguous credentials, with a request id echoed in the envelope.
    let ambiguous = [
        ("x-api-key", ALICE),
        ("x-user-api-key", BOB),
        ("x-request-id", "req-7"),
    ];
    let from_actix = actix.client().get("/me", &ambiguous).await;
    assert_eq!(from_actix.status, 401);
    assert_eq!(
        from_actix.envelope().error.request_id.as_deref(),
        Some("req-7")
    );
    assert_eq!(
        answer_of(&from_actix),
        answer_of(&axum.get("/me", &ambiguous).await)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_answers_the_same_bytes_in_actix_and_axum() {
    // One layer served by both frameworks: the same refusal, the same bytes.
    let auth = ComposioAuthLayer::builder()
        .base_url(nothing_listening())
        .build()
        .unwrap();
    let actix = ActixServer::start(&auth);
    let axum = Client::new(common::serve(axum_app(&auth)).await);
    let from_actix = actix.client().me(ALICE).await;
    let from_axum = axum.me(ALICE).await;
    assert_eq!(from_actix.status, 503);
    assert_eq!(answer_of(&from_actix), answer_of(&from_axum));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_over_four_workers_costs_one_upstream_call() {
    let composio = composio().await;
    let auth = builder(&composio).build().unwrap();
    let mut actix = ActixServer::start(&auth);
    let client = actix.client();
    composio.hold();
    // 40 requests, each on its own connection: actix hands connections to its
    // workers in turn.
    let burst: Vec<_> = (0..40)
        .map(|_| {
            let client = Client::new(actix.addr);
            tokio::spawn(async move { client.get("/worker", &[("x-api-key", ALICE)]).await })
        })
        .collect();
    actix.entered(40).await;
    composio.wait_for_calls(1).await;
    composio.release();
    let mut workers = std::collections::HashSet::new();
    for answer in burst {
        let answer = within("the burst's answers", answer).await.unwrap();
        assert_eq!(answer.status, 200);
        let mut words = answer.body.split(' ');
        assert_eq!(words.next(), Some("alice@example.com"));
        workers.insert(words.next().unwrap().to_owned());
    }
    assert_eq!(
        workers.len(),
        WORKERS,
        "the burst reached every worker: {workers:?}"
    );
    assert_eq!(composio.calls(), 1);
    // The verdict is cached for every worker.
    assert_eq!(client.me(ALICE).await.status, 200);
    assert_eq!(composio.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_keys_refresh_is_one_flight_for_every_worker() {
    let composio = composio().await;
    let ttl = Duration::from_secs(1);
    let auth = builder(&composio).ttl(ttl).build().unwrap();
    let mut actix = ActixServer::start(&auth);
    let client = actix.client();
    assert_eq!(client.me(ALICE).await.status, 200);
    tokio::time::sleep(ttl.mul_f64(0.85)).await; // into the refresh-ahead window
    composio.hold();
    // A hit that starts the refresh, held upstream...
    assert_eq!(client.me(ALICE).await.status, 200);
    composio.wait_for_calls(2).await;
    // ...past the entry's TTL: now every request misses, on every worker, and
    // must wait for that one refresh rather than start its own.
    tokio::time::sleep(ttl.mul_f64(0.3)).await;
    let before = *actix.entered.borrow();
    let burst: Vec<_> = (0..40)
        .map(|_| {
            let client = Client::new(actix.addr);
            tokio::spawn(async move { client.get("/worker", &[("x-api-key", ALICE)]).await })
        })
        .collect();
    actix.entered(before + 40).await;
    composio.release();
    let mut workers = std::collections::HashSet::new();
    for answer in burst {
        let answer = within("the answers", answer).await.unwrap();
        assert_eq!(answer.status, 200);
        workers.insert(answer.body.split(' ').nth(1).unwrap().to_owned());
    }
    assert_eq!(workers.len(), WORKERS, "{workers:?}");
    assert_eq!(composio.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_on_a_plain_and_a_required_scope_costs_one_call_and_invalidate_reaches_both() {
    let composio = composio().await;
    let auth = builder(&composio).build().unwrap();
    let actix = ActixServer::start(&auth);
    let client = actix.client();
    for _ in 0..20 {
        assert_eq!(client.me(ALICE).await.status, 200);
        let admin = client.get("/admin", &[("x-api-key", ALICE)]).await;
        assert_eq!(
            (admin.status.as_u16(), admin.body.as_str()),
            (200, "alice@example.com")
        );
    }
    assert_eq!(composio.calls(), 1);
    // A member: 403 on the admin scope, and the session stays cached.
    assert_eq!(
        client
            .get("/admin", &[("x-api-key", BOB)])
            .await
            .envelope()
            .error
            .code,
        10403
    );
    assert_eq!(client.me(BOB).await.status, 200);
    assert_eq!(composio.calls(), 2);

    composio.revoke(ALICE);
    auth.require(is_admin).invalidate(ALICE).await.unwrap();
    assert_eq!(client.me(ALICE).await.status, 401);
    assert_eq!(
        client.get("/admin", &[("x-api-key", ALICE)]).await.status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_keys_scopes_answer_in_actix_as_in_axum_one_call_per_scope_over_every_worker() {
    const USER: &str = "uak_actix_0123456789abcdefghijklmnopqrstuvwxyz0";
    let composio = composio().await;
    let document = |email| StandIn::document_for(email, "User", "admin");
    composio.add_scoped_session(USER, "org_a", "proj_a", document("a@example.com"));
    composio.add_scoped_session(USER, "org_b", "proj_b", document("b@example.com"));
    let layer = || {
        builder(&composio)
            .credential_headers([CredentialHeader::UserApiKey])
            .build()
            .unwrap()
    };
    let actix = ActixServer::start(&layer());
    let axum = Client::new(common::serve(axum_app(&layer())).await);
    let cases: [Case; 4] = [
        (
            "/me",
            &[
                ("x-user-api-key", USER),
                ("x-org-id", "org_a"),
                ("x-project-id", "proj_a"),
            ],
            200,
        ),
        (
            "/me",
            &[
                ("x-user-api-key", USER),
                ("x-org-id", "org_b"),
                ("x-project-id", "proj_b"),
            ],
            200,
        ),
        (
            "/me",
            &[
                ("x-user-api-key", USER),
                ("x-org-id", "org_a"),
                ("x-project-id", "proj_b"),
            ],
            401,
        ),
        (
            "/me",
            &[("x-user-api-key", USER), ("x-org-id", "org_a")],
            400,
        ),
    ];
    for (path, headers, status) in cases {
        for _ in 0..WORKERS * 2 {
            let from_actix = actix.client().get(path, headers).await;
            assert_eq!(from_actix.status, status, "{headers:?}");
            assert_eq!(
                answer_of(&from_actix),
                answer_of(&axum.get(path, headers).await)
            );
        }
    }
    let client = actix.client();
    let a = [
        ("x-user-api-key", USER),
        ("x-org-id", "org_a"),
        ("x-project-id", "proj_a"),
    ];
    assert_eq!(client.get("/me", &a).await.body, "a@example.com");
    // One call per scope per layer (actix's and axum's), whichever worker answered.
    assert_eq!(composio.calls_for_scope(USER, "org_a", "proj_a"), 2);
    assert_eq!(composio.calls_for_scope(USER, "org_b", "proj_b"), 2);
    assert_eq!(composio.calls_for_scope(USER, "org_a", "proj_b"), 2);
    assert_eq!(composio.calls(), 6, "none for the lone selector");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_session_info_is_none_on_an_open_route_and_session_info_fails_closed() {
    let composio = composio().await;
    let auth = builder(&composio).build().unwrap();
    let actix = ActixServer::start(&auth);
    let client = actix.client();
    for headers in [
        &[][..],
        &[("x-api-key", ALICE)][..],
        &[("x-api-key", "junk")][..],
    ] {
        let answer = client.get("/maybe", headers).await;
        assert_eq!(
            (answer.status.as_u16(), answer.body.as_str()),
            (200, "none")
        );
    }
    // `SessionInfo` on a route without the layer: the axum extractor's 401.
    let axum = Client::new(common::serve(axum_app(&auth)).await);
    let from_actix = client.get("/unprotected", &[("x-api-key", ALICE)]).await;
    assert_eq!(from_actix.status, 401);
    assert_eq!(
        answer_of(&from_actix),
        answer_of(&axum.get("/unprotected", &[("x-api-key", ALICE)]).await)
    );
    assert_eq!(composio.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hide_credential_and_bearer_work_in_actix() {
    let composio = composio().await;
    let auth = builder(&composio)
        .credential_headers([CredentialHeader::ApiKey, CredentialHeader::Bearer])
        .hide_credential(true)
        .build()
        .unwrap();
    let actix = ActixServer::start(&auth);
    let client = actix.client();
    let bearer = format!("Bearer {ALICE}");
    let answer = client.get("/worker", &[("authorization", &bearer)]).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.starts_with("alice@example.com "));
    // The same key in x-api-key: a hit; and the handler never sees it.
    let answer = client.get("/worker", &[("x-api-key", ALICE)]).await;
    assert!(answer.body.ends_with(" false"), "{}", answer.body);
    assert_eq!(composio.calls(), 1);
    // Bearer plus x-api-key: ambiguous.
    let both = client
        .get("/me", &[("authorization", &bearer), ("x-api-key", ALICE)])
        .await;
    assert_eq!(
        (both.status.as_u16(), both.envelope().error.code),
        (401, 10401)
    );
}
