//! The tower adapter: [`ComposioAuth`](crate::ComposioAuth), the service the layer
//! makes, and its [`ResponseFuture`](crate::ResponseFuture), which admits or
//! rejects (draining what is left of a rejected request's body).

pub(crate) mod drain;
mod extensions;
pub(crate) mod future;
pub(crate) mod service;
#[cfg(feature = "webhook")]
pub(crate) mod webhook;
