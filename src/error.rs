//! [`Error`]: why a layer could not be built.

use std::fmt;

/// A configuration the layer cannot work with, returned by
/// [`ComposioAuthBuilder::build`](crate::ComposioAuthBuilder::build). Its message
/// names the setting to fix; it never contains a key or a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "composio-auth configuration: {}", self.message)
    }
}

impl std::error::Error for Error {}
