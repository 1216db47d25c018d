//! `--demo`: the server against a local stand-in of Composio that knows three
//! keys, and the requests to try (`--demo --exit` makes them itself).

use composio_auth::testing::StandIn;

use crate::config::Listen;

/// An admin of a project on the `pro` plan.
pub const ADMIN: &str = "ak_demo_alice_0123456789";
/// A member of the same project.
pub const MEMBER: &str = "ak_demo_bob_0123456789ab";
/// An organisation key: its session has no project.
pub const NO_PROJECT: &str = "oak_demo_carol_012345678";

/// The stand-in, with the demo keys.
pub async fn stand_in() -> std::io::Result<StandIn> {
    let stand_in = StandIn::start().await?;
    stand_in.add_session(
        ADMIN,
        StandIn::document_for("alice@example.com", "Alice", "admin"),
    );
    stand_in.add_session(
        MEMBER,
        StandIn::document_for("bob@example.com", "Bob", "member"),
    );
    let mut no_project = StandIn::document_for("carol@example.com", "Carol Zoë", "admin");
    no_project["project"] = serde_json::Value::Null;
    stand_in.add_session(NO_PROJECT, no_project);
    Ok(stand_in)
}

/// What to try: a description, a path, a key, the status expected.
const TRIES: [(&str, &str, Option<&str>, u16); 5] = [
    ("a valid key", "/verify", Some(ADMIN), 200),
    (
        "an admin on an admin-only route",
        "/verify?role=admin",
        Some(ADMIN),
        200,
    ),
    (
        "a member on an admin-only route",
        "/verify?role=admin",
        Some(MEMBER),
        403,
    ),
    (
        "an invalid key",
        "/verify",
        Some("ak_not_a_real_key_ESjq"),
        401,
    ),
    ("no key", "/verify", None, 401),
];

/// Prints the requests to try on `listen`; with `exit`, makes them (`listen` is
/// then TCP) and checks each status.
///
/// # Errors
///
/// With `exit`, the first answer that is not what the demo expects.
pub async fn show(stand_in: &StandIn, listen: &Listen, exit: bool) -> Result<(), String> {
    say!(
        "Verifying keys against a local stand-in of Composio at {}",
        stand_in.base_url()
    );
    if !exit {
        say!("\nTry:\n");
        for (what, path, key, _) in TRIES {
            let header = key
                .map(|k| format!(" -H 'x-api-key: {k}'"))
                .unwrap_or_default();
            let target = match listen {
                Listen::Tcp(addr) => format!("'http://{addr}{path}'"),
                Listen::Unix(socket) => {
                    format!(
                        "--unix-socket {} 'http://localhost{path}'",
                        socket.display()
                    )
                }
            };
            say!("  # {what}\n  curl -i{header} {target}\n");
        }
        say!("Ctrl-C to stop.");
        return Ok(());
    }
    let Listen::Tcp(addr) = listen else {
        return Err("--demo --exit asks over TCP".to_owned());
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    for (what, path, key, expected) in TRIES {
        let mut request = client.get(format!("http://{addr}{path}"));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let identity: Vec<String> = response
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("x-composio-"))
            .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("?")))
            .collect();
        let body = response.text().await.map_err(|e| e.to_string())?;
        say!("\n{what}: GET {path} -> HTTP {status}");
        for line in identity {
            say!("  {line}");
        }
        if !body.is_empty() {
            say!("  {body}");
        }
        if status != expected {
            return Err(format!("{what}: expected HTTP {expected}, got {status}"));
        }
    }
    Ok(())
}
