//! The identity headers an allowed request carries to the app: who the session
//! is, never the key, never `webhook_secret`.

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

/// What is percent-encoded in a value that is not all visible ASCII: controls,
/// space, `%` itself, and (always) every non-ASCII byte of its UTF-8.
const ENCODED: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b'"');

/// The identity headers of `session`, added to `headers`: a null field's header
/// is absent.
pub fn add(session: &SessionInfo, headers: &mut HeaderMap) {
    // Built at compile time: a request pays for the values only.
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

    #[test]
    fn visible_ascii_as_is_anything_else_percent_encoded() {
        assert_eq!(value_of("alice@example.com"), "alice@example.com");
        assert_eq!(value_of("Zoë Smith"), "Zo%C3%AB%20Smith");
        assert_eq!(value_of("100% sure"), "100%25%20sure");
        assert_eq!(value_of("a\r\nx-evil: 1"), "a%0D%0Ax-evil:%201");
        assert_eq!(value_of(""), "");
    }
}
