//! The tower adapter: [`ComposioAuth`](crate::ComposioAuth), the service the layer
//! makes (`service.rs`), its [`ResponseFuture`](crate::ResponseFuture)
//! (`future.rs`), and what a rejection does with an HTTP/1.x body still arriving
//! (`drain.rs`). The body types it answers in are `crate::body`'s.

pub(crate) mod drain;
pub(crate) mod future;
pub(crate) mod service;
