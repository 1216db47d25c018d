//! The identity headers an allowed request carries to the app: who the session
//! is, never the key, never `webhook_secret`.

use std::cell::RefCell;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use composio_auth::SessionInfo;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

/// Every identity header, in the order they are sent; the proxy recipes copy
/// (and strip from clients) exactly these.
pub const HEADERS: [&str; 11] = [
    "x-composio-project-id",
    "x-composio-project-name",
    "x-composio-org-id",
    "x-composio-org-name",
    "x-composio-org-plan",
    "x-composio-api-key-id",
    "x-composio-member-id",
    "x-composio-member-email",
    "x-composio-member-name",
    "x-composio-member-role",
    "x-composio-user-id",
];

/// Built at compile time: a rendering pays for the values only.
const NAMES: [HeaderName; 11] = [
    HeaderName::from_static(HEADERS[0]),
    HeaderName::from_static(HEADERS[1]),
    HeaderName::from_static(HEADERS[2]),
    HeaderName::from_static(HEADERS[3]),
    HeaderName::from_static(HEADERS[4]),
    HeaderName::from_static(HEADERS[5]),
    HeaderName::from_static(HEADERS[6]),
    HeaderName::from_static(HEADERS[7]),
    HeaderName::from_static(HEADERS[8]),
    HeaderName::from_static(HEADERS[9]),
    HeaderName::from_static(HEADERS[10]),
];

/// What is percent-encoded in a value that is not all visible ASCII: controls,
/// space, `%` itself, and (always) every non-ASCII byte of its UTF-8.
const ENCODED: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b'"');

/// Renderings each thread keeps: a hot key's answer is a copy of a map made
/// once (rendering the values is most of the cost of an answer's headers).
const RENDERED: usize = 64;

/// A session's fields, in the order of [`HEADERS`]; `None` for a null field.
type Fields<'a> = [Option<&'a str>; 11];

/// The identity headers of some session, kept by a thread: the rendered values
/// only (who the session is, never the key or `webhook_secret`), never the
/// `SessionInfo`, so a revoked or expired session is freed as soon as the
/// library's cache and the requests holding it drop it. Nothing then keeps its
/// address from being reused, so a rendering is served only to a session whose
/// fields render to exactly these values, checked on every use.
struct Rendering {
    /// Each header's value, in the order of [`HEADERS`] (shared with `headers`).
    values: [Option<HeaderValue>; 11],
    headers: HeaderMap,
}

impl Rendering {
    fn of(fields: &Fields<'_>) -> Self {
        let values = fields.map(|field| field.map(value_of));
        let mut headers = HeaderMap::with_capacity(NAMES.len());
        for (name, value) in NAMES.into_iter().zip(&values) {
            if let Some(value) = value {
                headers.insert(name, value.clone());
            }
        }
        Self { values, headers }
    }

    /// Whether `fields` render to these headers, whichever session they are from.
    fn renders(&self, fields: &Fields<'_>) -> bool {
        self.values
            .iter()
            .zip(fields)
            .all(|(kept, field)| match (kept, field) {
                (None, None) => true,
                (Some(kept), Some(field)) => renders_to(field, kept.as_bytes()),
                _ => false,
            })
    }
}

thread_local! {
    /// Slot `address % RENDERED`: the rendering last made on this thread for a
    /// session at that address.
    static RENDERED_BY_ADDRESS: RefCell<Vec<Option<Rendering>>> =
        RefCell::new((0..RENDERED).map(|_| None).collect());
}

/// The identity headers of `session`: a null field's header is absent.
pub fn of(session: &SessionInfo) -> HeaderMap {
    let fields = fields(session);
    // Only picks the slot: what is in it is checked against `fields`.
    let address = std::ptr::from_ref::<composio_auth::SessionDocument>(session) as usize;
    let slot = (address / std::mem::align_of::<usize>()) % RENDERED;
    RENDERED_BY_ADDRESS.with(|rendered| {
        let mut rendered = rendered.borrow_mut();
        match &rendered[slot] {
            Some(kept) if kept.renders(&fields) => kept.headers.clone(),
            _ => {
                let rendering = Rendering::of(&fields);
                let headers = rendering.headers.clone();
                rendered[slot] = Some(rendering);
                headers
            }
        }
    })
}

/// The fields of `session` the identity headers carry.
fn fields(session: &SessionInfo) -> Fields<'_> {
    let project = session.project.as_ref();
    let member = &session.org_member;
    [
        project.map(|p| p.id.as_str()),
        project.map(|p| p.name.as_str()),
        project.map(|p| p.org.id.as_str()),
        project.map(|p| p.org.name.as_str()),
        project.map(|p| p.org.plan.as_str()),
        session.api_key.as_ref().map(|k| k.id.as_str()),
        Some(member.id.as_str()),
        Some(member.email.as_str()),
        Some(member.name.as_str()),
        Some(member.role.as_str()),
        member.user_id.as_deref(),
    ]
}

/// Whether all of `text`'s bytes are visible ASCII (sent as they are).
fn visible(text: &str) -> bool {
    text.bytes().all(|b| (0x21..=0x7E).contains(&b))
}

/// Whether [`value_of`]`(text)` is `rendered`, without rendering `text`.
fn renders_to(text: &str, rendered: &[u8]) -> bool {
    if text.as_bytes() == rendered {
        // `rendered` is visible ASCII, so `text` is too: sent as it is.
        return true;
    }
    if visible(text) {
        return false;
    }
    let mut rest = rendered;
    for part in utf8_percent_encode(text, ENCODED) {
        match rest.strip_prefix(part.as_bytes()) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    rest.is_empty()
}

/// `text` as a header value: as it is when all visible ASCII, else
/// percent-encoded UTF-8 (so `Zoë Smith` is `Zo%C3%AB%20Smith`).
pub fn value_of(text: &str) -> HeaderValue {
    let value = if visible(text) {
        HeaderValue::from_str(text)
    } else {
        HeaderValue::from_str(&utf8_percent_encode(text, ENCODED).to_string())
    };
    // Only visible ASCII is left: always a valid value.
    value.unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(name: &str) -> SessionInfo {
        let document =
            composio_auth::testing::StandIn::document_for("a@example.com", name, "admin");
        SessionInfo::new(serde_json::from_value(document).unwrap())
    }

    #[test]
    fn a_kept_rendering_is_only_ever_its_own_sessions() {
        let ada = session("Ada");
        assert_eq!(of(&ada)["x-composio-member-name"], "Ada");
        assert_eq!(of(&ada)["x-composio-member-name"], "Ada");
        // Many other sessions, each dropped at once: their addresses are reused,
        // and each still gets its own headers.
        for n in 0..1_000 {
            let name = format!("Member {n}");
            let other = session(&name);
            assert_eq!(of(&other)["x-composio-member-name"], value_of(&name));
        }
        assert_eq!(of(&ada)["x-composio-member-name"], "Ada");
    }

    /// This process's resident memory, in bytes.
    fn resident() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap();
        let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().unwrap();
        kib * 1024
    }

    #[test]
    fn a_kept_rendering_never_keeps_its_session_alive() {
        // 64 MiB: the allocator maps it on its own and unmaps it once freed, so
        // resident memory shows whether anything still holds the session.
        const SECRET: usize = 64 << 20;
        let mut document =
            composio_auth::testing::StandIn::document_for("a@example.com", "Ada", "admin");
        document["project"]["webhook_secret"] = "s".repeat(SECRET).into();
        let session = SessionInfo::new(serde_json::from_value(document).unwrap());
        assert_eq!(of(&session)["x-composio-member-name"], "Ada");
        // Served from this thread's slot.
        assert_eq!(of(&session)["x-composio-member-name"], "Ada");
        let alive = resident();
        // Its last handle, as when the library's cache forgets a revoked key.
        drop(session);
        let freed = alive.saturating_sub(resident());
        assert!(
            freed >= SECRET as u64 * 3 / 4,
            "{freed} bytes freed: the identity cache still holds the session"
        );
    }

    #[test]
    fn a_rendering_serves_only_fields_that_render_to_it() {
        assert!(renders_to("Zoë Smith", b"Zo%C3%AB%20Smith"));
        // Text that is its own rendering: the same header, so the same answer.
        assert!(renders_to("Zo%C3%AB%20Smith", b"Zo%C3%AB%20Smith"));
        assert!(!renders_to("Zoe Smith", b"Zo%C3%AB%20Smith"));
        assert!(!renders_to("Zoë Smit", b"Zo%C3%AB%20Smith"));
        assert!(!renders_to("Zoë Smithy", b"Zo%C3%AB%20Smith"));
        assert!(renders_to("ada", b"ada"));
        assert!(!renders_to("ad", b"ada"));

        let with_project = session("Zoë Smith");
        let mut document =
            composio_auth::testing::StandIn::document_for("a@example.com", "Zoë Smith", "admin");
        document["project"] = serde_json::Value::Null;
        let without_project = SessionInfo::new(serde_json::from_value(document).unwrap());
        let kept = Rendering::of(&fields(&with_project));
        assert!(kept.renders(&fields(&with_project)));
        assert!(kept.renders(&fields(&session("Zoë Smith"))));
        assert!(!kept.renders(&fields(&without_project)));
        assert!(!kept.renders(&fields(&session("Zoe Smith"))));
    }

    #[test]
    fn visible_ascii_as_is_anything_else_percent_encoded() {
        assert_eq!(value_of("alice@example.com"), "alice@example.com");
        assert_eq!(value_of("Zoë Smith"), "Zo%C3%AB%20Smith");
        assert_eq!(value_of("100% sure"), "100%25%20sure");
        assert_eq!(value_of("a\r\nx-evil: 1"), "a%0D%0Ax-evil:%201");
        assert_eq!(value_of(""), "");
    }
}
