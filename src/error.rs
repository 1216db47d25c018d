//! [`Error`]: why a layer could not be built, or why an invalidation reached only
//! this replica.

use std::fmt;

/// What went wrong: a configuration the layer cannot work with (from
/// [`ComposioAuthBuilder::build`](crate::ComposioAuthBuilder::build) and the
/// `RedisCache` constructors), whose message names the setting to fix; or a fleet's
/// Redis that could not be reached (from
/// [`invalidate`](crate::ComposioAuthLayer::invalidate)). The message never
/// contains a key or a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    message: String,
    unreachable: bool,
}

impl Error {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unreachable: false,
        }
    }

    /// Redis could not be reached; `message` says what took effect anyway.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn unreachable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unreachable: true,
        }
    }

    /// Whether this is a fleet's Redis that could not be reached (rather than a
    /// configuration to fix).
    #[must_use]
    pub fn is_unreachable(&self) -> bool {
        self.unreachable
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unreachable {
            write!(
                f,
                "composio-auth: Redis could not be reached; {}",
                self.message
            )
        } else {
            write!(f, "composio-auth configuration: {}", self.message)
        }
    }
}

impl std::error::Error for Error {}
