//! A protected actix-web app, ready to try offline: `/me` for any valid key,
//! `/admin` for admins only, on one verifier.
//!
//! ```text
//! cargo run --example actix            # serve, print curl commands
//! cargo run --example actix -- --demo  # make those requests itself, then exit
//! ```
//!
//! Without `COMPOSIO_BASE_URL` it starts a local stand-in of Composio's session
//! endpoint that knows two demo keys (an admin and a member). With
//! `COMPOSIO_BASE_URL` set it verifies real keys against that backend.

use actix_web::{web, App, HttpResponse, HttpServer};
use composio_auth::testing::StandIn;
use composio_auth::{ComposioAuthLayer, SessionInfo, BASE_URL_ENV};
use serde_json::json;

const ADMIN: &str = "ak_demo_alice_0123456789";
const MEMBER: &str = "ak_demo_bob_0123456789ab";

/// What a handler behind the layer knows about its caller.
async fn me(session: SessionInfo) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "email": session.org_member.email,
        "role": session.org_member.role,
        "project": session.project.as_ref().map(|p| &p.name),
    }))
}

async fn admin(session: SessionInfo) -> String {
    format!("welcome to the admin area, {}\n", session.org_member.name)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = std::env::args().any(|a| a == "--demo");
    actix_web::rt::System::new().block_on(async move {
        // Keep the stand-in alive as long as the app.
        let (_stand_in, auth) = match std::env::var(BASE_URL_ENV) {
            Ok(base_url) => {
                println!("Verifying keys against {base_url}");
                (None, ComposioAuthLayer::builder().build()?)
            }
            Err(_) => {
                let stand_in = StandIn::start().await?;
                stand_in.add_session(
                    ADMIN,
                    StandIn::document_for("alice@example.com", "Alice", "admin"),
                );
                stand_in.add_session(
                    MEMBER,
                    StandIn::document_for("bob@example.com", "Bob", "member"),
                );
                println!(
                    "Verifying keys against a local stand-in of Composio at {}",
                    stand_in.base_url()
                );
                let auth = ComposioAuthLayer::builder()
                    .base_url(stand_in.base_url())
                    .build()?;
                (Some(stand_in), auth)
            }
        };

        // Built once, outside the closure: one cache for every worker.
        let is_admin = auth.require(|s| s.org_member.role == "admin");
        let server = HttpServer::new(move || {
            App::new()
                .service(
                    web::scope("/admin")
                        .wrap(is_admin.clone())
                        .route("", web::get().to(admin)),
                )
                .service(
                    web::resource("/me")
                        .wrap(auth.clone())
                        .route(web::get().to(me)),
                )
                .route("/health", web::get().to(|| async { "ok" }))
        })
        .workers(2)
        .bind(("127.0.0.1", 0))?;
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        let serving = actix_web::rt::spawn(server);

        let tries = [
            ("the admin on /admin", "/admin", Some(ADMIN)),
            ("a member on /admin", "/admin", Some(MEMBER)),
            ("a member on /me", "/me", Some(MEMBER)),
            ("an invalid key", "/me", Some("ak_not_a_real_key_ESjq")),
            ("no key", "/me", None),
        ];
        if demo {
            let client = reqwest::Client::builder().no_proxy().build()?;
            for (what, path, key) in tries {
                let mut request = client.get(format!("http://{addr}{path}"));
                if let Some(key) = key {
                    request = request.header("x-api-key", key);
                }
                let response = request.send().await?;
                let status = response.status().as_u16();
                println!(
                    "\n{what}: HTTP {status}\n{}",
                    response.text().await?.trim_end()
                );
            }
            handle.stop(true).await;
            return Ok(());
        }
        println!("\nServing GET /me and GET /admin on http://{addr}. Try:\n");
        for (what, path, key) in tries {
            let header = key
                .map(|k| format!(" -H 'x-api-key: {k}'"))
                .unwrap_or_default();
            println!("  # {what}\n  curl -i{header} http://{addr}{path}\n");
        }
        println!("Ctrl-C to stop.");
        serving.await??;
        Ok(())
    })
}
