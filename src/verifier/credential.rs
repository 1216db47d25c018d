//! Finding the one credential of a request in its headers.
//!
//! Composio knows three credential headers and refuses a request that carries more
//! than one of them, or one of them twice; this module does the same before any
//! upstream call, and refuses keys that cannot be keys (empty, over 256 bytes, or with
//! bytes outside visible ASCII).
//!
//! A layer may also accept `Authorization: Bearer <key>` ([`CredentialHeader::Bearer`]):
//! a project API key, verified as if sent in `x-api-key`. Without it, `Authorization`
//! is not looked at; with it, another scheme is not a credential.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::verifier::envelope::Refusal;
use crate::verifier::headers::RequestHeaders;

/// Longest key accepted, in bytes. Composio's keys are 23 to 47 bytes long.
pub const MAX_KEY_LEN: usize = 256;

/// One of Composio's credential headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CredentialHeader {
    /// `x-api-key`: a project API key (accepted by default).
    ApiKey,
    /// `x-user-api-key`: a user API key.
    UserApiKey,
    /// `x-org-api-key`: an organisation API key.
    OrgApiKey,
    /// `Authorization: Bearer <key>`: a project API key, for clients that can only
    /// send a bearer token (OpenAI-compatible SDKs pointed at another base URL, MCP
    /// clients with a static token). Verified exactly as the same key in
    /// `x-api-key`, and cached as the same entry. Never accepted by default;
    /// [`hide_credential`](crate::ComposioAuthBuilder::hide_credential) removes the
    /// `Authorization` header.
    Bearer,
}

impl CredentialHeader {
    /// Every credential header Composio knows, in the order they are looked for.
    /// [`Bearer`](Self::Bearer) is not in it: it is this crate's, not Composio's,
    /// and it claims `Authorization`, a header that also carries other schemes, so
    /// it is never accepted unless named ([`ACCEPTABLE`](Self::ACCEPTABLE) lists it).
    pub const ALL: [Self; 3] = [Self::ApiKey, Self::UserApiKey, Self::OrgApiKey];

    /// Every header a layer can accept: [`ALL`](Self::ALL) and
    /// [`Bearer`](Self::Bearer), in the order they are looked for.
    pub const ACCEPTABLE: [Self; 4] = [
        Self::ApiKey,
        Self::UserApiKey,
        Self::OrgApiKey,
        Self::Bearer,
    ];

    /// The header's name, e.g. `"x-api-key"` (`"authorization"` for
    /// [`Bearer`](Self::Bearer)).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "x-api-key",
            Self::UserApiKey => "x-user-api-key",
            Self::OrgApiKey => "x-org-api-key",
            Self::Bearer => "authorization",
        }
    }

    /// How the header is named in messages: its name, or `Authorization: Bearer`.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::Bearer => "Authorization: Bearer",
            other => other.as_str(),
        }
    }

    /// The Composio header a key in this one is verified as: itself, and
    /// `x-api-key` for a bearer token.
    #[inline]
    pub(crate) const fn verified_as(self) -> Self {
        match self {
            Self::Bearer => Self::ApiKey,
            other => other,
        }
    }

    #[inline]
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "x-api-key" => Some(Self::ApiKey),
            "x-user-api-key" => Some(Self::UserApiKey),
            "x-org-api-key" => Some(Self::OrgApiKey),
            "authorization" => Some(Self::Bearer),
            _ => None,
        }
    }

    pub(crate) const fn header_name(self) -> HeaderName {
        HeaderName::from_static(self.as_str())
    }

    const fn bit(self) -> u8 {
        match self {
            Self::ApiKey => 1,
            Self::UserApiKey => 2,
            Self::OrgApiKey => 4,
            Self::Bearer => 8,
        }
    }
}

/// The set of credential headers a layer accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AcceptedHeaders(u8);

impl AcceptedHeaders {
    pub(crate) const DEFAULT: Self = Self(CredentialHeader::ApiKey.bit());

    pub(crate) fn from_headers(headers: impl IntoIterator<Item = CredentialHeader>) -> Self {
        Self(headers.into_iter().fold(0, |bits, h| bits | h.bit()))
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub(crate) fn contains(self, header: CredentialHeader) -> bool {
        self.0 & header.bit() != 0
    }

    /// The accepted headers, in the order they are looked for.
    pub(crate) fn iter(self) -> impl Iterator<Item = CredentialHeader> {
        CredentialHeader::ACCEPTABLE
            .into_iter()
            .filter(move |h| self.contains(*h))
    }

    /// The Composio headers a key is verified as under this set, each once.
    pub(crate) fn verified_as(self) -> impl Iterator<Item = CredentialHeader> {
        let bearer = u8::from(self.contains(CredentialHeader::Bearer));
        let verified = Self((self.0 & !CredentialHeader::Bearer.bit()) | bearer);
        verified.iter()
    }

    /// The accepted headers' names, for messages: `"x-api-key or x-org-api-key"`.
    pub(crate) fn names(self) -> String {
        self.iter()
            .map(CredentialHeader::label)
            .collect::<Vec<_>>()
            .join(" or ")
    }
}

/// Why a request has no usable credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CredentialError {
    /// No credential header at all.
    Missing,
    /// A credential header this layer does not accept.
    NotAccepted(CredentialHeader),
    /// More than one credential value.
    Ambiguous,
    /// The key cannot be a key.
    Malformed(CredentialHeader),
}

impl CredentialError {
    /// The refusal of a request whose credential is in error.
    pub(crate) fn refusal(self, accepted: AcceptedHeaders) -> Refusal {
        match self {
            Self::Missing => Refusal::no_credential(&accepted.names()),
            Self::NotAccepted(header) => {
                Refusal::header_not_accepted(header.label(), &accepted.names())
            }
            Self::Ambiguous => Refusal::ambiguous(),
            Self::Malformed(header) => Refusal::malformed(header.label()),
        }
    }
}

/// Finds the request's one credential, marks its header value sensitive (so that
/// `Debug` of the headers and HTTP/2 header compression leave it out) and returns
/// the header it came in and the key.
///
/// One pass over the headers, comparing names, with no hashing: this runs on every
/// request.
#[inline]
pub(crate) fn extract(
    headers: &mut HeaderMap,
    accepted: AcceptedHeaders,
) -> Result<(CredentialHeader, &[u8]), CredentialError> {
    // Every credential value is a secret, even one that gets refused.
    let pairs = headers
        .iter_mut()
        .map(|(name, value)| (name.as_str(), value));
    let (header, value) = one_credential(pairs, accepted, |value| value.set_sensitive(true))?;
    checked(header, value.as_bytes(), accepted)
}

/// As [`extract`], for headers that are not this crate's to change
/// ([`ComposioAuthLayer::verify`](crate::ComposioAuthLayer::verify), the actix-web
/// middleware).
#[inline]
pub(crate) fn find(
    headers: &impl RequestHeaders,
    accepted: AcceptedHeaders,
) -> Result<(CredentialHeader, &[u8]), CredentialError> {
    let (header, value) = one_credential(headers.pairs(), accepted, |_| {})?;
    checked(header, value, accepted)
}

/// The key carried in `header` of `headers`, as a header value to send on (a
/// bearer token without its scheme), for a verification.
pub(crate) fn key_in(
    headers: &impl RequestHeaders,
    header: CredentialHeader,
) -> Option<HeaderValue> {
    let value = headers.first(header.as_str())?;
    let key = match header {
        CredentialHeader::Bearer => bearer_token(value)?,
        _ => value,
    };
    let mut key = HeaderValue::from_bytes(key).ok()?;
    key.set_sensitive(true);
    Some(key)
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case,
/// then spaces), or `None` for another scheme.
#[inline]
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let scheme = value.get(..SCHEME.len())?;
    scheme
        .eq_ignore_ascii_case(SCHEME)
        .then(|| value[SCHEME.len()..].trim_ascii())
}

/// The one credential header among `headers` (each credential value handed to
/// `seen` first), or why there is none. `Authorization` counts only when
/// [`CredentialHeader::Bearer`] is accepted, and only with the Bearer scheme.
#[inline]
fn one_credential<'a, V: Value>(
    headers: impl Iterator<Item = (&'a str, V)>,
    accepted: AcceptedHeaders,
    mut seen: impl FnMut(&mut V),
) -> Result<(CredentialHeader, V), CredentialError> {
    let mut found = None;
    for (name, mut value) in headers {
        let Some(header) = CredentialHeader::from_name(name) else {
            continue;
        };
        if header == CredentialHeader::Bearer
            && !(accepted.contains(header) && bearer_token(value.bytes()).is_some())
        {
            continue;
        }
        seen(&mut value);
        if found.is_some() {
            return Err(CredentialError::Ambiguous);
        }
        found = Some((header, value));
    }
    found.ok_or(CredentialError::Missing)
}

/// A header value as [`one_credential`] reads it: in place, or to mark it
/// sensitive.
trait Value {
    fn bytes(&self) -> &[u8];
}

impl Value for &[u8] {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl Value for &mut HeaderValue {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// The key in `value` of `header`, if this layer accepts the header and the key
/// can be a key.
#[inline]
fn checked(
    header: CredentialHeader,
    value: &[u8],
    accepted: AcceptedHeaders,
) -> Result<(CredentialHeader, &[u8]), CredentialError> {
    if !accepted.contains(header) {
        return Err(CredentialError::NotAccepted(header));
    }
    let key = match header {
        CredentialHeader::Bearer => bearer_token(value).unwrap_or_default(),
        _ => value,
    };
    if !is_well_formed(key) {
        return Err(CredentialError::Malformed(header));
    }
    Ok((header, key))
}

/// 1 to [`MAX_KEY_LEN`] bytes, each visible ASCII (`0x21..=0x7E`).
#[inline]
pub(crate) fn is_well_formed(key: &[u8]) -> bool {
    // Every byte looked at, without an early exit, so that the compiler checks 16 or
    // 32 at a time: a request carries a well-formed key far more often than not.
    let outside = key.iter().fold(0u8, |outside, b| {
        outside | u8::from(!(0x21..=0x7E).contains(b))
    });
    (1..=MAX_KEY_LEN).contains(&key.len()) && outside == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    fn run(
        pairs: &[(&str, &[u8])],
        accepted: AcceptedHeaders,
    ) -> Result<(CredentialHeader, Vec<u8>), CredentialError> {
        let mut map = headers(pairs);
        extract(&mut map, accepted).map(|(h, v)| (h, v.to_vec()))
    }

    const ALL: AcceptedHeaders = AcceptedHeaders(7);

    #[test]
    fn a_bearer_token_is_read_only_when_accepted_and_only_with_its_scheme() {
        let with_bearer = AcceptedHeaders::from_headers([CredentialHeader::Bearer]);
        let bearer: &[(&str, &[u8])] = &[("authorization", b"Bearer ak_abc")];
        assert_eq!(
            run(bearer, with_bearer),
            Ok((CredentialHeader::Bearer, b"ak_abc".to_vec()))
        );
        assert_eq!(
            run(bearer, ALL),
            Err(CredentialError::Missing),
            "left alone"
        );
        for other in [
            &b"Basic dXNlcg=="[..],
            b"Bearer",
            b"Bearerak_abc",
            b"Token ak_abc",
        ] {
            assert_eq!(
                run(&[("authorization", other)], with_bearer),
                Err(CredentialError::Missing),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        assert_eq!(
            run(&[("authorization", b"bEaReR   ak_abc  ")], with_bearer),
            Ok((CredentialHeader::Bearer, b"ak_abc".to_vec()))
        );
        assert_eq!(
            run(&[("authorization", b"Bearer ak abc")], with_bearer),
            Err(CredentialError::Malformed(CredentialHeader::Bearer))
        );
        let both = AcceptedHeaders(AcceptedHeaders::DEFAULT.0 | with_bearer.0);
        assert_eq!(
            run(
                &[
                    ("authorization", b"Bearer ak_abc"),
                    ("x-api-key", b"ak_abc")
                ],
                both
            ),
            Err(CredentialError::Ambiguous)
        );
        let mut map = headers(bearer);
        let _ = extract(&mut map, with_bearer);
        assert!(map["authorization"].is_sensitive());
        let token = key_in(&map, CredentialHeader::Bearer).unwrap();
        assert_eq!(token, "ak_abc");
        assert!(token.is_sensitive());
        assert_eq!(
            CredentialHeader::Bearer.verified_as(),
            CredentialHeader::ApiKey
        );
        assert_eq!(
            both.verified_as().collect::<Vec<_>>(),
            vec![CredentialHeader::ApiKey]
        );
    }

    #[test]
    fn finds_the_one_key_and_marks_it_sensitive() {
        let mut map = headers(&[("x-api-key", b"ak_abc"), ("cookie", b"c=1")]);
        let (header, value) = extract(&mut map, AcceptedHeaders::DEFAULT).unwrap();
        assert_eq!(header, CredentialHeader::ApiKey);
        assert_eq!(value, b"ak_abc");
        assert!(map["x-api-key"].is_sensitive());
        assert!(!format!("{map:?}").contains("ak_abc"));
    }

    #[test]
    fn missing() {
        assert_eq!(
            run(&[("authorization", b"Bearer x")], ALL),
            Err(CredentialError::Missing)
        );
    }

    #[test]
    fn two_values_or_two_headers_are_ambiguous() {
        let twice = [("x-api-key", &b"a"[..]), ("x-api-key", b"b")];
        assert_eq!(run(&twice, ALL), Err(CredentialError::Ambiguous));
        // Even when the second header is not one this layer accepts.
        let two = [("x-api-key", &b"a"[..]), ("x-org-api-key", b"b")];
        assert_eq!(
            run(&two, AcceptedHeaders::DEFAULT),
            Err(CredentialError::Ambiguous)
        );
    }

    #[test]
    fn headers_not_enabled_are_refused() {
        assert_eq!(
            run(&[("x-user-api-key", b"uak_x")], AcceptedHeaders::DEFAULT),
            Err(CredentialError::NotAccepted(CredentialHeader::UserApiKey))
        );
        assert_eq!(
            run(&[("x-user-api-key", b"uak_x")], ALL).unwrap().0,
            CredentialHeader::UserApiKey
        );
    }

    #[test]
    fn malformed_keys() {
        let long = vec![b'a'; MAX_KEY_LEN + 1];
        for bad in [&b""[..], b"with space", b"tab\there", &long, b"caf\xc3\xa9"] {
            assert_eq!(
                run(&[("x-api-key", bad)], ALL),
                Err(CredentialError::Malformed(CredentialHeader::ApiKey)),
                "{bad:?}"
            );
        }
        assert!(run(&[("x-api-key", &vec![b'~'; MAX_KEY_LEN])], ALL).is_ok());
    }

    #[test]
    fn names_for_messages() {
        assert_eq!(AcceptedHeaders::DEFAULT.names(), "x-api-key");
        assert_eq!(ALL.names(), "x-api-key or x-user-api-key or x-org-api-key");
        assert!(AcceptedHeaders::from_headers([]).is_empty());
    }

    proptest! {
        /// The branch-free check says what the plain definition says, for any bytes
        /// (each byte drawn near the edges of the range as often as anywhere).
        #[test]
        fn well_formed_is_visible_ascii_of_1_to_256_bytes(
            key in proptest::collection::vec(
                prop_oneof![Just(0x20u8), Just(0x21), Just(0x7E), Just(0x7F), Just(0x80), any::<u8>(), 0x21..=0x7Eu8],
                0..300,
            )
        ) {
            let plain = (1..=MAX_KEY_LEN).contains(&key.len())
                && key.iter().all(|b| (0x21..=0x7E).contains(b));
            prop_assert_eq!(is_well_formed(&key), plain);
        }

        /// Any headers at all: never a panic, and a key is returned only when it is the
        /// request's single credential value and well formed.
        #[test]
        fn any_headers_get_a_clear_answer(
            values in proptest::collection::vec((0usize..4, proptest::collection::vec(any::<u8>(), 0..300)), 0..5)
        ) {
            let names = ["x-api-key", "x-user-api-key", "x-org-api-key", "x-other"];
            let mut map = HeaderMap::new();
            let mut credentials = 0;
            for (name, bytes) in &values {
                if let Ok(value) = HeaderValue::from_bytes(bytes) {
                    map.append(HeaderName::from_static(names[*name]), value);
                    credentials += usize::from(*name < 3);
                }
            }
            match extract(&mut map, ALL) {
                Ok((_, value)) => {
                    prop_assert_eq!(credentials, 1);
                    prop_assert!(is_well_formed(value));
                }
                Err(CredentialError::Ambiguous) => prop_assert!(credentials > 1),
                Err(CredentialError::Missing) => prop_assert_eq!(credentials, 0),
                Err(CredentialError::Malformed(_)) => prop_assert_eq!(credentials, 1),
                Err(CredentialError::NotAccepted(_)) => prop_assert!(false, "all accepted"),
            }
        }
    }
}
