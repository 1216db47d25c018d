//! The identity headers an allowed request carries to the app: who the session
//! is, never the key, never `webhook_secret`.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use std::cell::RefCell;

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

/// What is percent-encoded in a value that is not all visible ASCII: controls,
/// space, `%` itself, and (always) every non-ASCII byte of its UTF-8.
const ENCODED: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b'"');

/// Sessions whose headers each thread keeps rendered: a hot key's answer is a
/// copy of a map made once.
const RENDERED: usize = 64;

thread_local! {
    /// Slot `address % RENDERED` holds a session (a clone: while it is here its
    /// address cannot be reused by another session) and its rendered headers.
    static RENDERED_BY_SESSION: RefCell<Vec<Option<(SessionInfo, HeaderMap)>>> =
        RefCell::new(vec![None; RENDERED]);
}

/// The identity headers of `session`: a null field's header is absent.
pub fn of(session: &SessionInfo) -> HeaderMap {
    let address = std::ptr::from_ref::<composio_auth::SessionDocument>(session) as usize;
    let slot = (address / std::mem::align_of::<usize>()) % RENDERED;
    let same =
        |kept: &SessionInfo| std::ptr::eq::<composio_auth::SessionDocument>(&**kept, &**session);
    RENDERED_BY_SESSION.with(|rendered| {
        let mut rendered = rendered.borrow_mut();
        match &rendered[slot] {
            Some((kept, headers)) if same(kept) => headers.clone(),
            _ => {
                let mut headers = HeaderMap::with_capacity(NAMES.len());
                add(session, &mut headers);
                rendered[slot] = Some((session.clone(), headers.clone()));
                headers
            }
        }
    })
}

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

/// The identity headers of `session`, added to `headers`.
fn add(session: &SessionInfo, headers: &mut HeaderMap) {
    let project = session.project.as_ref();
    let member = &session.org_member;
    let values: [Option<&str>; 11] = [
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
    ];
    headers.reserve(NAMES.len());
    for (name, value) in NAMES.into_iter().zip(values) {
        if let Some(value) = value {
            headers.insert(name, value_of(value));
        }
    }
}

/// `text` as a header value: as it is when all visible ASCII, else
/// percent-encoded UTF-8 (so `Zoë Smith` is `Zo%C3%AB%20Smith`).
pub fn value_of(text: &str) -> HeaderValue {
    let visible = text.bytes().all(|b| (0x21..=0x7E).contains(&b));
    let value = if visible {
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

    #[test]
    fn visible_ascii_as_is_anything_else_percent_encoded() {
        assert_eq!(value_of("alice@example.com"), "alice@example.com");
        assert_eq!(value_of("Zoë Smith"), "Zo%C3%AB%20Smith");
        assert_eq!(value_of("100% sure"), "100%25%20sure");
        assert_eq!(value_of("a\r\nx-evil: 1"), "a%0D%0Ax-evil:%201");
        assert_eq!(value_of(""), "");
    }
}
