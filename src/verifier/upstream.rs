//! The upstream call: one `GET` of Composio's session endpoint per verification, and
//! the classification of its answer into a [`Verdict`].
//!
//! Only the one credential header goes upstream, with a user key's two selectors
//! when it has them (and `accept` and a `user-agent` naming this crate); redirects are never followed; bodies are read up to
//! [`MAX_UPSTREAM_BODY_BYTES`]. A verdict about the key comes from a `200` session
//! document (a key or project marked `deleted` is refused) or from a well-formed
//! error envelope; anything else (a proxy's HTML, a `429`, a `5xx`, a redirect, a
//! body that is not the envelope) decides nothing and becomes [`Verdict::Undecided`].
//!
//! The HTTP client is one per Tokio runtime: a pooled connection is driven by the
//! runtime that opened it, so a client shared by two runtimes would stall one
//! runtime's calls on a connection that the other, idle, runtime never polls.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{ACCEPT, CONTENT_LENGTH, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::verifier::credential::{CredentialHeader, Selectors, ORG_SELECTOR, PROJECT_SELECTOR};
use crate::verifier::envelope::{ErrorEnvelope, Refusal};
use crate::verifier::per_runtime::{self, PerRuntime};
use crate::verifier::session::{SessionDocument, SessionInfo};
use crate::TRACING_TARGET;

/// Largest upstream body read, in bytes. Session documents are about 2 KiB; a larger
/// answer is refused (503) as soon as its `content-length` or its bytes pass this.
pub const MAX_UPSTREAM_BODY_BYTES: usize = 64 * 1024;

/// The `user-agent` of every upstream call.
pub(crate) const USER_AGENT: &str = concat!("composio-auth/", env!("CARGO_PKG_VERSION"));

/// What the layer decided about a key.
#[derive(Clone, Debug)]
pub(crate) enum Verdict {
    /// Composio vouches for the key.
    Allowed(SessionInfo),
    /// Composio refuses the key (or the session is deleted): 401/403.
    Rejected(Arc<Refusal>),
    /// Nobody could decide: 503, nothing cached.
    Undecided(Arc<Refusal>),
}

impl Verdict {
    pub(crate) fn undecided(reason: impl Into<String>, retry_after_secs: Option<u64>) -> Self {
        Self::Undecided(Arc::new(Refusal::unavailable(reason, retry_after_secs)))
    }

    /// A word for logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Allowed(_) => "allowed",
            Self::Rejected(_) => "rejected",
            Self::Undecided(_) => "undecided",
        }
    }
}

/// Composio's reply to a verification that decided, as it came: what the fleet
/// records.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct UpstreamReply {
    pub(crate) status: StatusCode,
    pub(crate) body: Vec<u8>,
}

/// One upstream call, ended: its verdict, when its request was sent (a session's
/// TTL counts from then), and Composio's reply when it decided.
pub(crate) struct Called {
    pub(crate) verdict: Verdict,
    pub(crate) sent_at: Instant,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) reply: Option<UpstreamReply>,
}

impl Called {
    /// A call that decided nothing, for `reason`: no reply to record.
    pub(crate) fn undecided(reason: impl Into<String>, sent_at: Instant) -> Self {
        Self {
            verdict: Verdict::undecided(reason, None),
            sent_at,
            reply: None,
        }
    }
}

/// The endpoint and its HTTP clients, or why there are none.
pub(crate) enum Upstream {
    Ready {
        /// The session endpoint for each credential header (indexed by
        /// `CredentialHeader as usize`).
        urls: Box<[reqwest::Url; 3]>,
        clients: Clients,
    },
    /// The layer was made by `new()` from an unusable configuration: every key is
    /// undecided (503) and the reason is logged.
    Misconfigured(String),
}

/// One HTTP client per Tokio runtime, all configured alike.
pub(crate) struct Clients {
    loopback: bool,
    connect_timeout: Duration,
    by_runtime: PerRuntime<reqwest::Client>,
}

impl Clients {
    /// Checks that a client can be built with this configuration (and builds none
    /// for any runtime yet: the layer may be made outside one).
    fn new(loopback: bool, connect_timeout: Duration) -> Result<Self, String> {
        let clients = Self {
            loopback,
            connect_timeout,
            by_runtime: PerRuntime::new(),
        };
        clients.build()?;
        Ok(clients)
    }

    fn build(&self) -> Result<reqwest::Client, String> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60));
        builder = if self.loopback {
            // A loopback stand-in is never reached through a proxy, and `localhost`
            // never through the resolver: it could answer another address.
            builder.no_proxy().resolve_to_addrs(
                "localhost",
                &[
                    SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
                ],
            )
        } else {
            builder.https_only(true)
        };
        builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))
    }

    /// The client of the runtime this runs on.
    fn current(&self) -> Result<reqwest::Client, String> {
        let id = per_runtime::current().ok_or("no Tokio runtime")?;
        if let Some(client) = self.by_runtime.get(id) {
            return Ok(client);
        }
        let client = self.build()?;
        self.by_runtime.set(id, client.clone());
        Ok(client)
    }
}

impl Upstream {
    pub(crate) fn new(
        urls: [reqwest::Url; 3],
        loopback: bool,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let clients = Clients::new(loopback, connect_timeout)?;
        Ok(Self::Ready {
            urls: Box::new(urls),
            clients,
        })
    }

    /// Asks Composio about one key (in the scope `selectors` choose, if any); a
    /// session's TTL starts at `sent_at`, taken just before this call. Never
    /// panics, never logs the key.
    pub(crate) async fn verify(
        &self,
        header: CredentialHeader,
        key: HeaderValue,
        selectors: Option<Selectors>,
        sent_at: Instant,
    ) -> Called {
        let (urls, clients) = match self {
            Self::Ready { urls, clients } => (urls, clients),
            Self::Misconfigured(reason) => {
                tracing::error!(target: TRACING_TARGET, %reason, "composio-auth is misconfigured; answering 503");
                let reason = "this service's Composio authentication is misconfigured";
                return Called::undecided(reason, sent_at);
            }
        };
        let client = match clients.current() {
            Ok(client) => client,
            Err(reason) => {
                tracing::error!(target: TRACING_TARGET, %reason, "no HTTP client for Composio");
                return Called::undecided(reason, sent_at);
            }
        };
        let mut request = client
            .get(urls[header as usize].clone())
            .header(header.header_name(), key)
            .header(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(Selectors { org, project }) = selectors {
            request = request
                .header(ORG_SELECTOR, org)
                .header(PROJECT_SELECTOR, project);
        }
        let response = request.send().await;
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                let error = error.without_url();
                tracing::warn!(target: TRACING_TARGET, %error, latency_ms = elapsed_ms(sent_at), "Composio unreachable");
                let reason = format!("Composio could not be reached: {}", describe(&error));
                return Called::undecided(reason, sent_at);
            }
        };
        let status = response.status();
        tracing::Span::current().record("upstream_status", status.as_u16());
        let retry_after = retry_after_secs(response.headers());
        let body = read_capped(response, MAX_UPSTREAM_BODY_BYTES).await;
        let (verdict, reply) = match body {
            Ok(body) => match classify(status, retry_after, &body, sent_at) {
                verdict @ Verdict::Undecided(_) => (verdict, None),
                verdict => (verdict, Some(UpstreamReply { status, body })),
            },
            Err(reason) => (Verdict::undecided(reason, retry_after), None),
        };
        tracing::debug!(
            target: TRACING_TARGET,
            pause_point = crate::verifier::pause_point::UPSTREAM_REPLIED,
            status = status.as_u16(),
            latency_ms = elapsed_ms(sent_at),
            verdict = verdict.kind(),
            "Composio answered"
        );
        Called {
            verdict,
            sent_at,
            reply,
        }
    }
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

fn describe(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "the connection broke"
    }
}

/// `Retry-After` in whole seconds, when the upstream gives one in that form.
fn retry_after_secs(headers: &HeaderMap) -> Option<u64> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()
}

/// Reads the body, refusing it as soon as it is known to exceed `cap` bytes.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    let too_large = || format!("Composio's answer exceeds {cap} bytes");
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > cap as u64) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(declared.map_or(4096, |len| len as usize));
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > cap {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(error) => {
                let error = error.without_url();
                tracing::warn!(target: TRACING_TARGET, %error, "Composio's answer broke off");
                return Err(format!("Composio's answer broke off: {}", describe(&error)));
            }
        }
    }
}

/// Turns Composio's answer to a call sent at `sent_at` into a verdict. Pure: tested
/// beside, property-tested and fuzzed.
pub(crate) fn classify(
    status: StatusCode,
    retry_after: Option<u64>,
    body: &[u8],
    sent_at: Instant,
) -> Verdict {
    match status {
        StatusCode::OK => match serde_json::from_slice::<SessionDocument>(body) {
            Ok(document) if document.is_deleted() => {
                Verdict::Rejected(Arc::new(Refusal::deleted()))
            }
            Ok(document) => Verdict::Allowed(SessionInfo::verified_at(document, sent_at)),
            Err(_) => Verdict::undecided("Composio answered 200 without a session document", None),
        },
        // A refusal of the key itself: of every scope of a user key.
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => rejected(status, status, body),
        // A refusal of the scope asked about (a user key's selectors), answered as
        // nginx's `auth_request` understands: 401.
        StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND => {
            rejected(status, StatusCode::UNAUTHORIZED, body)
        }
        status if status.is_redirection() => Verdict::undecided(
            format!(
                "Composio answered a redirect ({}), which is not followed",
                status.as_u16()
            ),
            None,
        ),
        status => Verdict::undecided(
            format!("Composio answered {}", status.as_u16()),
            retry_after,
        ),
    }
}

/// A verdict from an error envelope, or undecided when the body is not one.
fn rejected(upstream: StatusCode, answer: StatusCode, body: &[u8]) -> Verdict {
    let refuses_key = matches!(upstream, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) => Verdict::Rejected(Arc::new(Refusal::upstream(
            answer,
            envelope.error,
            refuses_key,
        ))),
        Err(_) => Verdict::undecided(
            format!(
                "Composio answered {} without its error envelope",
                upstream.as_u16()
            ),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// Classification of an answer to a call sent now.
    fn classify(status: StatusCode, retry_after: Option<u64>, body: &[u8]) -> Verdict {
        super::classify(status, retry_after, body, Instant::now())
    }

    fn document() -> serde_json::Value {
        json!({
            "project": null,
            "api_key": {
                "auto_id": 1, "id": "k1", "name": "n", "project_id": "p", "org_member_id": "m",
                "created_at": "t", "updated_at": "t", "deleted_at": null, "key": "ak_secret", "deleted": false
            },
            "org_member": {"id": "m", "email": "a@b.c", "name": "A", "role": "admin"}
        })
    }

    fn envelope(status: u16) -> Vec<u8> {
        json!({"error": {"message": "Invalid API key: ak_**ESjq", "code": 801, "slug": "APIKey_InvalidAPIKey",
                         "status": status, "request_id": "r-1", "suggested_fix": "fix", "errors": ["e"]}})
        .to_string()
        .into_bytes()
    }

    fn rejection(verdict: Verdict) -> Arc<Refusal> {
        match verdict {
            Verdict::Rejected(r) => r,
            other => panic!("expected a rejection, got {}", other.kind()),
        }
    }

    fn undecided(verdict: Verdict) -> Arc<Refusal> {
        match verdict {
            Verdict::Undecided(r) => r,
            other => panic!("expected undecided, got {}", other.kind()),
        }
    }

    #[test]
    fn ok_document_is_allowed() {
        let body = document().to_string();
        match classify(StatusCode::OK, None, body.as_bytes()) {
            Verdict::Allowed(session) => assert_eq!(session.org_member.email, "a@b.c"),
            other => panic!("{}", other.kind()),
        }
    }

    #[test]
    fn a_session_is_as_old_as_its_question() {
        let sent_at = Instant::now() - Duration::from_secs(3);
        let body = document().to_string();
        match super::classify(StatusCode::OK, None, body.as_bytes(), sent_at) {
            Verdict::Allowed(session) => assert_eq!(session.verified(), sent_at),
            other => panic!("{}", other.kind()),
        }
    }

    #[test]
    fn deleted_key_or_project_is_rejected() {
        let mut doc = document();
        doc["api_key"]["deleted"] = json!(true);
        let r = rejection(classify(StatusCode::OK, None, doc.to_string().as_bytes()));
        assert_eq!(r.status(), 401);
        assert!(!r.refuses_key(), "a deleted project is its scope's");
    }

    #[test]
    fn a_401_or_403_refuses_the_key_and_a_400_or_404_only_the_scope() {
        for (status, answer, refuses_key) in [
            (401, 401, true),
            (403, 403, true),
            (400, 401, false),
            (404, 401, false),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            let r = rejection(classify(status, None, &envelope(status.as_u16())));
            assert_eq!(
                (r.status().as_u16(), r.refuses_key()),
                (answer, refuses_key),
                "{status}"
            );
        }
    }

    #[test]
    fn unparsable_200_is_undecided() {
        for body in [&b"<html>"[..], b"{}", b"{\"project\":null", b""] {
            assert_eq!(
                undecided(classify(StatusCode::OK, None, body)).status(),
                503
            );
        }
    }

    #[test]
    fn envelopes_pass_through_with_the_answered_status() {
        for (upstream, answered) in [(401, 401), (403, 403), (400, 401), (404, 401)] {
            let status = StatusCode::from_u16(upstream).unwrap();
            let r = rejection(classify(status, None, &envelope(upstream)));
            assert_eq!(r.status().as_u16(), answered);
            assert_eq!(r.body().status, answered);
            assert_eq!(r.body().code, 801);
            assert_eq!(r.body().slug.as_deref(), Some("APIKey_InvalidAPIKey"));
            assert_eq!(r.body().request_id.as_deref(), Some("r-1"));
            assert_eq!(r.body().suggested_fix.as_deref(), Some("fix"));
            assert_eq!(r.body().errors, Some(vec!["e".to_owned()]));
        }
    }

    #[test]
    fn statuses_without_an_envelope_decide_nothing() {
        let html = b"<html><body>401 Authorization Required</body></html>";
        assert_eq!(
            undecided(classify(StatusCode::UNAUTHORIZED, None, html)).status(),
            503
        );
        let message = br#"{"message": "Rate limit exceeded..."}"#;
        let r = undecided(classify(StatusCode::TOO_MANY_REQUESTS, Some(7), message));
        let challenge = crate::verifier::envelope::challenge(["x-api-key"]);
        assert_eq!(r.render_http(None, &challenge).headers()[RETRY_AFTER], "7");
        for status in [500, 502, 503, 504, 301, 302, 307, 308, 418] {
            let status = StatusCode::from_u16(status).unwrap();
            // Even a well-formed envelope on these statuses says nothing about the key.
            undecided(classify(status, None, &envelope(status.as_u16())));
        }
    }

    #[test]
    fn retry_after_in_seconds_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after_secs(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("12"));
        assert_eq!(retry_after_secs(&headers), Some(12));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after_secs(&headers), None);
    }

    /// Any JSON value: scalars, long strings, nested arrays and objects.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::String),
            (0usize..70_000).prop_map(|n| Value::String("x".repeat(n))),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::hash_map("[a-z_]{1,12}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn check(status: u16, body: &[u8]) -> Result<(), TestCaseError> {
        let status = StatusCode::from_u16(status).unwrap();
        match classify(status, None, body) {
            Verdict::Allowed(_) => prop_assert_eq!(status, StatusCode::OK),
            Verdict::Rejected(r) => {
                prop_assert!([200, 400, 401, 403, 404].contains(&status.as_u16()));
                prop_assert!([401, 403].contains(&r.status().as_u16()));
            }
            Verdict::Undecided(r) => prop_assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE),
        }
        Ok(())
    }

    proptest! {
        /// Any status with any bytes or any JSON: never a panic, always 401/403 or 503
        /// (200 only for status 200).
        #[test]
        fn any_answer_gets_a_clear_verdict(status in 100u16..600, body in any_json(), raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            check(status, body.to_string().as_bytes())?;
            check(status, &raw)?;
            check(status, json!({"error": body}).to_string().as_bytes())?;
        }

        /// The reference document with one field replaced by anything: never a panic.
        #[test]
        fn mutated_documents_get_a_clear_verdict(
            path in prop::sample::select(vec![
                "/project", "/project/webhook_version", "/project/org", "/project/deleted",
                "/project/auto_id", "/api_key", "/api_key/key", "/api_key/deleted",
                "/org_member", "/org_member/email", "/org_member/metadata",
            ]),
            value in any_json(),
        ) {
            let mut doc = document();
            doc["project"] = json!({
                "auto_id": 1, "id": "p", "org_id": "o", "name": "n", "email": "e", "nano_id": "pn",
                "created_at": "t", "updated_at": "t", "webhook_url": null, "event_webhook_url": null,
                "webhook_secret": "whsec_x", "triggers_enabled": true, "last_subscribed_at": null,
                "deleted": false, "is_new_webhook": false, "webhook_version": "V1",
                "org": {"id": "o", "name": "O", "plan": "FREE"}
            });
            if let Some(slot) = doc.pointer_mut(path) {
                *slot = value;
            }
            check(200, doc.to_string().as_bytes())?;
        }
    }

    #[test]
    fn deep_nesting_is_undecided_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        undecided(classify(StatusCode::OK, None, deep.as_bytes()));
        let deep_error = format!(
            "{{\"error\": {}{}}}",
            "{\"a\":".repeat(50_000),
            "1}".repeat(50_000)
        );
        undecided(classify(
            StatusCode::UNAUTHORIZED,
            None,
            deep_error.as_bytes(),
        ));
    }
}
