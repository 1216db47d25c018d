//! [`ComposioWebhookLayer`] and its builder (feature `webhook`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method};
use tower_layer::Layer;

use crate::adapters::tower::webhook::ComposioWebhook;
use crate::webhook::check::Rules;
use crate::webhook::event::WebhookEvent;
use crate::webhook::rejection::WebhookRejection;
use crate::webhook::signature::Keys;
use crate::webhook::state::WebhookState;
use crate::Error;
#[cfg(feature = "redis")]
use crate::RedisCache;

/// The environment variable [`ComposioWebhookLayer::from_env`] reads the secret
/// from: the one Composio's SDKs read.
pub const WEBHOOK_SECRET_ENV: &str = "COMPOSIO_WEBHOOK_SECRET";

/// The default tolerance between a delivery's `webhook-timestamp` and the clock,
/// either way: Composio's SDKs' (5 minutes).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The default largest body read: 1 MiB. Composio's event payloads are JSON of a
/// few KiB (a trigger's payload and its ids); the largest triggers (an e-mail with
/// its text, a push with many commits) stay in the hundreds of KiB. A larger limit
/// only lets a sender make this service buffer more before the signature is
/// checked.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// A tower [`Layer`] that guards a route receiving Composio's webhook deliveries:
/// it verifies each delivery's signature and timestamp, parses its payload, and
/// hands the inner service the request with the **same body bytes** and a
/// [`WebhookEvent`] in its extensions, at most once at a time per `webhook-id` and
/// never again once it answered 2xx. Anything else gets a
/// [`WebhookRejection`]'s answer.
///
/// ```
/// use axum::{routing::post, Router};
/// use composio_auth::{ComposioWebhookLayer, WebhookEvent};
///
/// async fn on_event(event: WebhookEvent) -> &'static str {
///     println!("{} {:?}", event.event_type(), event.trigger_slug());
///     "ok"
/// }
///
/// # fn main() -> Result<(), composio_auth::Error> {
/// let webhooks = ComposioWebhookLayer::builder().secret("whsec_...").build()?;
/// let app: Router = Router::new().route("/composio/webhook", post(on_event).layer(webhooks));
/// # Ok(())
/// # }
/// ```
///
/// Clones share their deliveries: build it once. The guide: `guide::webhooks`.
#[derive(Clone)]
pub struct ComposioWebhookLayer {
    pub(crate) state: Arc<WebhookState>,
}

impl ComposioWebhookLayer {
    /// A builder: at least one [`secret`](ComposioWebhookBuilder::secret) is needed.
    pub fn builder() -> ComposioWebhookBuilder {
        ComposioWebhookBuilder::new()
    }

    /// A layer with the secret in `COMPOSIO_WEBHOOK_SECRET` and every default.
    ///
    /// # Errors
    ///
    /// When the variable is unset, empty or not UTF-8 (the message names it, never
    /// its value).
    pub fn from_env() -> Result<Self, Error> {
        match std::env::var(WEBHOOK_SECRET_ENV) {
            Ok(secret) if !secret.trim().is_empty() => Self::builder().secret(secret).build(),
            _ => Err(Error::new(format!(
                "{WEBHOOK_SECRET_ENV} is unset or empty; set it to the webhook secret of the project's webhook subscription"
            ))),
        }
    }

    /// Verifies a delivery without a framework: the headers' presence and form,
    /// the timestamp, the body's size, the signature and the payload, with the
    /// layer's rules and answers. The method is not looked at, and there is **no
    /// once-delivery**: a copy of a delivery verifies every time (the layer, the
    /// actix-web middleware and the server deduplicate).
    ///
    /// # Errors
    ///
    /// The [`WebhookRejection`] the layer would answer with.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<WebhookEvent, WebhookRejection> {
        let rules = &self.state.rules;
        let delivery = rules.headers(&Method::POST, headers, SystemTime::now())?;
        rules.body(delivery, Bytes::copy_from_slice(body))
    }
}

impl fmt::Debug for ComposioWebhookLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules = &self.state.rules;
        f.debug_struct("ComposioWebhookLayer")
            .field("tolerance", &rules.tolerance)
            .field("max_body_bytes", &rules.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ComposioWebhookLayer {
    type Service = ComposioWebhook<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ComposioWebhook::new(inner, Arc::clone(&self.state))
    }
}

/// Builds a [`ComposioWebhookLayer`].
#[must_use]
pub struct ComposioWebhookBuilder {
    secrets: Vec<String>,
    tolerance: Duration,
    max_body_bytes: usize,
    #[cfg(feature = "redis")]
    shared_cache: Option<RedisCache>,
}

impl Default for ComposioWebhookBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ComposioWebhookBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ComposioWebhookBuilder");
        debug
            .field(
                "secrets",
                &format_args!("{} (redacted)", self.secrets.len()),
            )
            .field("tolerance", &self.tolerance)
            .field("max_body_bytes", &self.max_body_bytes);
        #[cfg(feature = "redis")]
        debug.field("shared_cache", &self.shared_cache);
        debug.finish()
    }
}

impl ComposioWebhookBuilder {
    /// No secret, [`DEFAULT_TOLERANCE`], [`DEFAULT_MAX_BODY_BYTES`].
    pub fn new() -> Self {
        Self {
            secrets: Vec::new(),
            tolerance: DEFAULT_TOLERANCE,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            #[cfg(feature = "redis")]
            shared_cache: None,
        }
    }

    /// A webhook secret of the project's subscription. Repeatable: a delivery
    /// signed with any of them verifies (keep the old one beside the new while a
    /// secret is rotated). Each is used as Composio's SDKs use it (its UTF-8
    /// bytes) and, for a `whsec_` secret, also as Standard Webhooks does (the
    /// base64 after the prefix, decoded).
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secrets.push(secret.into());
        self
    }

    /// How far a delivery's `webhook-timestamp` may be from the clock, either way
    /// (default [`DEFAULT_TOLERANCE`]). `Duration::ZERO` turns the check off, as in
    /// Composio's SDKs: replays are then refused only while their id is
    /// remembered (see `guide::webhooks`).
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The largest body kept (default [`DEFAULT_MAX_BODY_BYTES`]); a body of
    /// exactly this size is accepted, a larger one answered 413: the rest is read
    /// and dropped first within the drain limits (`limits::DRAIN_TIME`), so that a
    /// client still writing sees the answer, not a reset.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Holds once-delivery across the replicas of this service through Redis
    /// (feature `redis`), with the [`RedisCache`] the key layer's
    /// [`shared_cache`](crate::ComposioAuthBuilder::shared_cache) takes (the same
    /// pepper and prefix on every replica): each `webhook-id` reaches one
    /// replica's handler at a time, and none again once one answered 2xx. A
    /// replica claims a delivery in Redis for 30 s at most (a lease: one that dies
    /// mid-delivery holds the retry back no longer), and a copy reaching another
    /// replica meanwhile waits for its answer. Redis holds no webhook id, secret
    /// or body byte, and a Redis writer without the pepper cannot make a delivery
    /// pass for acknowledged. When Redis cannot be reached, deliveries still reach
    /// the handler, deduplicated on each replica only (logged at `warn`). See
    /// [`guide::replicas`](crate::guide::replicas).
    #[cfg(feature = "redis")]
    pub fn shared_cache(mut self, cache: RedisCache) -> Self {
        self.shared_cache = Some(cache);
        self
    }

    /// Validates the configuration and makes the layer.
    ///
    /// # Errors
    ///
    /// When no secret was given, a secret is empty, `max_body_bytes` is zero, the
    /// tolerance is over a day, or a `shared_cache`'s
    /// settings are refused (as `ComposioAuthBuilder::build` refuses them). The
    /// message names the setting, never a secret's value.
    pub fn build(self) -> Result<ComposioWebhookLayer, Error> {
        if self.secrets.is_empty() {
            return Err(Error::new(format!(
                "no webhook secret: call secret() with the project's webhook secret, or use from_env() and {WEBHOOK_SECRET_ENV}"
            )));
        }
        if self.secrets.iter().any(|s| s.trim().is_empty()) {
            return Err(Error::new("a webhook secret is empty"));
        }
        if self.max_body_bytes == 0 {
            return Err(Error::new("max_body_bytes must be at least 1"));
        }
        if self.tolerance > Duration::from_secs(24 * 3600) {
            return Err(Error::new("tolerance must be at most a day"));
        }
        if !self.tolerance.is_zero() && self.tolerance < Duration::from_secs(1) {
            return Err(Error::new(
                "tolerance must be zero (no check) or at least a second: webhook-timestamp counts seconds",
            ));
        }
        let rules = Rules {
            keys: Keys::new(self.secrets.iter().map(String::as_str)),
            tolerance: self.tolerance,
            max_body_bytes: self.max_body_bytes,
        };
        #[cfg(feature = "redis")]
        if let Some(cache) = &self.shared_cache {
            cache.validate()?;
            return Ok(ComposioWebhookLayer {
                state: Arc::new(WebhookState::shared(rules, cache)),
            });
        }
        Ok(ComposioWebhookLayer {
            state: Arc::new(WebhookState::new(rules)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configurations_are_refused_naming_the_setting_never_the_secret() {
        let error = |b: ComposioWebhookBuilder| b.build().unwrap_err().to_string();
        assert!(error(ComposioWebhookLayer::builder()).contains("no webhook secret"));
        assert!(error(ComposioWebhookLayer::builder().secret(" ")).contains("empty"));
        let zero = ComposioWebhookLayer::builder()
            .secret("s3cr3t-value")
            .max_body_bytes(0);
        let message = error(zero);
        assert!(message.contains("max_body_bytes") && !message.contains("s3cr3t"));
        let short = ComposioWebhookLayer::builder()
            .secret("s")
            .tolerance(Duration::from_millis(500));
        assert!(error(short).contains("at least a second"));
        let layer = ComposioWebhookLayer::builder()
            .secret("s3cr3t-value")
            .build()
            .unwrap();
        assert!(!format!("{layer:?}").contains("s3cr3t"));
        let builder = ComposioWebhookLayer::builder().secret("s3cr3t-value");
        assert!(!format!("{builder:?}").contains("s3cr3t"));
    }
}
