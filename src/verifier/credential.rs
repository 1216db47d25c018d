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
//!
//! A user key (`x-user-api-key`) may come with its two selectors, `x-org-id` and
//! `x-project-id`, which choose the scope its session describes: both or neither,
//! each once, each 1 to [`MAX_SELECTOR_LEN`] visible ASCII characters, or the
//! request is refused here (400). Selectors beside any other credential are ignored
//! and never sent on.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::verifier::digest::Digest;
use crate::verifier::envelope::Refusal;
use crate::verifier::headers::RequestHeaders;

/// Longest key accepted, in bytes. Composio's keys are 23 to 47 bytes long.
pub const MAX_KEY_LEN: usize = 256;

/// Longest selector (`x-org-id`, `x-project-id`) accepted, in bytes. Composio's
/// ids are nano ids (`org_...`, `proj_...`) of about 20 bytes.
pub const MAX_SELECTOR_LEN: usize = 128;

/// The selector headers a user key may come with.
pub(crate) const ORG_SELECTOR: &str = "x-org-id";
/// See [`ORG_SELECTOR`].
pub(crate) const PROJECT_SELECTOR: &str = "x-project-id";

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

/// What a header's name makes it, for this module.
enum Name {
    Credential(CredentialHeader),
    Org,
    Project,
    Other,
}

impl Name {
    #[inline]
    fn of(name: &str) -> Self {
        match name {
            "x-api-key" => Self::Credential(CredentialHeader::ApiKey),
            "x-user-api-key" => Self::Credential(CredentialHeader::UserApiKey),
            "x-org-api-key" => Self::Credential(CredentialHeader::OrgApiKey),
            "authorization" => Self::Credential(CredentialHeader::Bearer),
            ORG_SELECTOR => Self::Org,
            PROJECT_SELECTOR => Self::Project,
            _ => Self::Other,
        }
    }
}

/// A request's one credential: the header it came in, the key, and (for a user
/// key with its selectors) the scope it chose. (`Debug` leaves the key out.)
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Credential<'a> {
    pub(crate) header: CredentialHeader,
    pub(crate) key: &'a [u8],
    pub(crate) scope: Option<Scope<'a>>,
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("header", &self.header)
            .field("key", &"[redacted]")
            .field("scope", &self.scope)
            .finish()
    }
}

/// The organization and project a user key's selectors choose, as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scope<'a> {
    pub(crate) org: &'a [u8],
    pub(crate) project: &'a [u8],
}

/// A scope's selectors as header values, to send on with the key.
#[derive(Clone, Debug)]
pub(crate) struct Selectors {
    pub(crate) org: HeaderValue,
    pub(crate) project: HeaderValue,
}

/// A credential as a verification sends it on: the header it is verified as, the
/// key, and for a user key with selectors, its scope's selectors and the digest of
/// the key itself (under which its scopes are listed, and its refusals cached).
#[derive(Clone, Debug)]
pub(crate) struct Subject {
    pub(crate) header: CredentialHeader,
    pub(crate) key: HeaderValue,
    pub(crate) scope: Option<(Digest, Selectors)>,
}

/// Why a user key's selectors choose no scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScopeError {
    /// One of the two without the other.
    Lone,
    /// A selector sent twice.
    Repeated,
    /// A selector that cannot be an id.
    Malformed,
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
    /// A user key whose selectors choose no scope.
    Scope(ScopeError),
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
            Self::Scope(error) => Refusal::bad_scope(match error {
                ScopeError::Lone => "x-org-id and x-project-id must be sent together",
                ScopeError::Repeated => "x-org-id and x-project-id may each be sent once",
                ScopeError::Malformed => {
                    "x-org-id and x-project-id must be 1 to 128 visible ASCII characters"
                }
            }),
        }
    }
}

/// Finds the request's one credential, marks its header value sensitive (so that
/// `Debug` of the headers and HTTP/2 header compression leave it out) and returns
/// it, with the scope of a user key that has selectors.
///
/// One pass over the headers, comparing names, with no hashing: this runs on every
/// request.
#[inline]
pub(crate) fn extract(
    headers: &mut HeaderMap,
    accepted: AcceptedHeaders,
) -> Result<Credential<'_>, CredentialError> {
    // Every credential value is a secret, even one that gets refused.
    let pairs = headers
        .iter_mut()
        .map(|(name, value)| (name.as_str(), value));
    let found = one_credential(pairs, accepted, |value| value.set_sensitive(true))?;
    checked(found, accepted)
}

/// As [`extract`], for headers that are not this crate's to change
/// ([`ComposioAuthLayer::verify`](crate::ComposioAuthLayer::verify), the actix-web
/// middleware).
#[inline]
pub(crate) fn find(
    headers: &impl RequestHeaders,
    accepted: AcceptedHeaders,
) -> Result<Credential<'_>, CredentialError> {
    checked(one_credential(headers.pairs(), accepted, |_| {})?, accepted)
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

/// The selectors of `headers`, as header values to send on, for a verification of
/// a scope [`find`] or [`extract`] found in them.
pub(crate) fn selectors_in(headers: &impl RequestHeaders) -> Option<Selectors> {
    let value = |name| HeaderValue::from_bytes(headers.first(name)?).ok();
    Some(Selectors {
        org: value(ORG_SELECTOR)?,
        project: value(PROJECT_SELECTOR)?,
    })
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

/// What one pass over a request's headers found: its one credential header and
/// value, and its selectors.
struct Found<V> {
    header: CredentialHeader,
    value: V,
    org: Selector<V>,
    project: Selector<V>,
}

/// A selector header as found.
enum Selector<V> {
    Absent,
    Once(V),
    Repeated,
}

impl<V> Selector<V> {
    #[inline]
    fn add(&mut self, value: V) {
        *self = match self {
            Self::Absent => Self::Once(value),
            _ => Self::Repeated,
        };
    }
}

/// The one credential header among `headers` (each credential value handed to
/// `seen` first) and the selectors, or why there is none. `Authorization` counts
/// only when [`CredentialHeader::Bearer`] is accepted, and only with the Bearer
/// scheme.
#[inline]
fn one_credential<'a, V: Value<'a>>(
    headers: impl Iterator<Item = (&'a str, V)>,
    accepted: AcceptedHeaders,
    mut seen: impl FnMut(&mut V),
) -> Result<Found<V>, CredentialError> {
    let mut found = None;
    let (mut org, mut project) = (Selector::Absent, Selector::Absent);
    for (name, mut value) in headers {
        let header = match Name::of(name) {
            Name::Credential(header) => header,
            Name::Org => {
                org.add(value);
                continue;
            }
            Name::Project => {
                project.add(value);
                continue;
            }
            Name::Other => continue,
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
    let (header, value) = found.ok_or(CredentialError::Missing)?;
    Ok(Found {
        header,
        value,
        org,
        project,
    })
}

/// A header value as [`one_credential`] reads it: in place, or to mark it
/// sensitive.
trait Value<'a> {
    fn bytes(&self) -> &[u8];
    fn into_bytes(self) -> &'a [u8];
}

impl<'a> Value<'a> for &'a [u8] {
    fn bytes(&self) -> &[u8] {
        self
    }

    fn into_bytes(self) -> &'a [u8] {
        self
    }
}

impl<'a> Value<'a> for &'a mut HeaderValue {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }

    fn into_bytes(self) -> &'a [u8] {
        let value: &'a HeaderValue = self;
        value.as_bytes()
    }
}

/// The credential in `found`, if this layer accepts its header, the key can be a
/// key, and (for a user key) its selectors choose a scope or none.
#[inline]
fn checked<'a, V: Value<'a>>(
    found: Found<V>,
    accepted: AcceptedHeaders,
) -> Result<Credential<'a>, CredentialError> {
    let Found {
        header,
        value,
        org,
        project,
    } = found;
    if !accepted.contains(header) {
        return Err(CredentialError::NotAccepted(header));
    }
    let value = value.into_bytes();
    let key = match header {
        CredentialHeader::Bearer => bearer_token(value).unwrap_or_default(),
        _ => value,
    };
    if !is_well_formed(key) {
        return Err(CredentialError::Malformed(header));
    }
    let scope = match header {
        CredentialHeader::UserApiKey => scope(org, project)?,
        _ => None,
    };
    Ok(Credential { header, key, scope })
}

/// The scope a user key's selectors choose: none without them.
fn scope<'a, V: Value<'a>>(
    org: Selector<V>,
    project: Selector<V>,
) -> Result<Option<Scope<'a>>, CredentialError> {
    let error = |error| Err(CredentialError::Scope(error));
    match (org, project) {
        (Selector::Absent, Selector::Absent) => Ok(None),
        (Selector::Repeated, _) | (_, Selector::Repeated) => error(ScopeError::Repeated),
        (Selector::Once(org), Selector::Once(project)) => {
            let (org, project) = (org.into_bytes(), project.into_bytes());
            if is_well_formed_selector(org) && is_well_formed_selector(project) {
                Ok(Some(Scope { org, project }))
            } else {
                error(ScopeError::Malformed)
            }
        }
        _ => error(ScopeError::Lone),
    }
}

/// 1 to [`MAX_SELECTOR_LEN`] bytes, each visible ASCII.
fn is_well_formed_selector(selector: &[u8]) -> bool {
    selector.len() <= MAX_SELECTOR_LEN && is_well_formed(selector)
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
        extract(&mut map, accepted).map(|c| (c.header, c.key.to_vec()))
    }

    /// The scope `find` reads from `pairs` with every header accepted.
    /// A scope as owned bytes: organization, project.
    type OwnedScope = (Vec<u8>, Vec<u8>);

    /// A header as a test writes it.
    type Pair<'a> = (&'a str, &'a [u8]);

    fn scope_of(pairs: &[Pair<'_>]) -> Result<Option<OwnedScope>, CredentialError> {
        let map = headers(pairs);
        find(&map, ALL).map(|c| c.scope.map(|s| (s.org.to_vec(), s.project.to_vec())))
    }

    #[test]
    fn a_user_key_reads_both_selectors_or_neither() {
        let key: (&str, &[u8]) = ("x-user-api-key", b"uak_1");
        let (org, project): (Pair<'_>, Pair<'_>) =
            (("x-org-id", b"org_1"), ("x-project-id", b"proj_1"));
        assert_eq!(scope_of(&[key]), Ok(None));
        assert_eq!(
            scope_of(&[org, key, project]),
            Ok(Some((b"org_1".to_vec(), b"proj_1".to_vec())))
        );
        let lone = Err(CredentialError::Scope(ScopeError::Lone));
        assert_eq!(scope_of(&[key, org]), lone);
        assert_eq!(scope_of(&[key, project]), lone);
        let repeated = Err(CredentialError::Scope(ScopeError::Repeated));
        assert_eq!(
            scope_of(&[key, org, project, ("x-org-id", b"org_2")]),
            repeated
        );
        assert_eq!(scope_of(&[key, project, project]), repeated);
        let long = vec![b'a'; MAX_SELECTOR_LEN + 1];
        let longest = vec![b'a'; MAX_SELECTOR_LEN];
        for bad in [&b""[..], b"org 1", b"org\t1", &long, b"caf\xc3\xa9"] {
            assert_eq!(
                scope_of(&[key, ("x-org-id", bad), project]),
                Err(CredentialError::Scope(ScopeError::Malformed)),
                "{bad:?}"
            );
        }
        // A UUID is for Composio to judge.
        let uuid = b"123e4567-e89b-12d3-a456-426614174000";
        assert!(
            scope_of(&[key, ("x-org-id", uuid), ("x-project-id", &longest)])
                .unwrap()
                .is_some()
        );
        // The key is judged before its selectors.
        assert_eq!(
            scope_of(&[("x-user-api-key", b"u k"), org]),
            Err(CredentialError::Malformed(CredentialHeader::UserApiKey))
        );
        assert_eq!(
            CredentialError::Scope(ScopeError::Lone)
                .refusal(ALL)
                .status(),
            http::StatusCode::BAD_REQUEST
        );
        let map = headers(&[key, org, project]);
        let selectors = selectors_in(&map).unwrap();
        assert_eq!(
            (selectors.org.as_bytes(), selectors.project.as_bytes()),
            (&b"org_1"[..], &b"proj_1"[..])
        );
    }

    #[test]
    fn selectors_beside_any_other_credential_are_ignored() {
        for other in ["x-api-key", "x-org-api-key"] {
            let lone = [(other, &b"ak_1"[..]), ("x-org-id", b"org 1")];
            assert_eq!(scope_of(&lone), Ok(None), "{other}");
            let both = [
                (other, &b"ak_1"[..]),
                ("x-org-id", b"o"),
                ("x-project-id", b"p"),
            ];
            assert_eq!(scope_of(&both), Ok(None), "{other}");
        }
        let bearer = AcceptedHeaders::from_headers([CredentialHeader::Bearer]);
        let map = headers(&[("authorization", b"Bearer ak_1"), ("x-project-id", b"p")]);
        assert_eq!(find(&map, bearer).unwrap().scope, None);
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
        let Credential {
            header, key: value, ..
        } = extract(&mut map, AcceptedHeaders::DEFAULT).unwrap();
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
                Ok(Credential { key: value, .. }) => {
                    prop_assert_eq!(credentials, 1);
                    prop_assert!(is_well_formed(value));
                }
                Err(CredentialError::Ambiguous) => prop_assert!(credentials > 1),
                Err(CredentialError::Missing) => prop_assert_eq!(credentials, 0),
                Err(CredentialError::Malformed(_)) => prop_assert_eq!(credentials, 1),
                Err(CredentialError::NotAccepted(_)) => prop_assert!(false, "all accepted"),
                Err(CredentialError::Scope(_)) => prop_assert!(false, "no selectors sent"),
            }
        }
    }
}
