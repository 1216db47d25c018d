//! Any request headers through the layer: never a panic, always an answer.
//!
//! The layer runs outside a Tokio runtime, so a well-formed key cannot be verified
//! and gets 503 at once; everything else is decided from the headers alone.
#![no_main]

use std::convert::Infallible;
use std::sync::OnceLock;

use composio_auth::ComposioAuthLayer;
use futures_util::FutureExt;
use http::{HeaderName, HeaderValue, Request, Response};
use libfuzzer_sys::fuzz_target;
use tower::{Layer, Service};

const NAMES: [&str; 6] = [
    "x-api-key",
    "x-user-api-key",
    "x-org-api-key",
    "x-request-id",
    "content-type",
    "cookie",
];

fn layer() -> &'static ComposioAuthLayer {
    static LAYER: OnceLock<ComposioAuthLayer> = OnceLock::new();
    LAYER.get_or_init(|| {
        ComposioAuthLayer::builder()
            .base_url("http://127.0.0.1:9")
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut request = Request::new(());
    for field in data.split(|b| *b == 0xff) {
        let Some((name, value)) = field.split_first() else {
            continue;
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            let name = HeaderName::from_static(NAMES[usize::from(*name) % NAMES.len()]);
            request.headers_mut().append(name, value);
        }
    }
    let inner = tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let mut service = layer().layer(inner);
    let answer = service
        .call(request)
        .now_or_never()
        .expect("answered without waiting")
        .unwrap();
    let status = answer.status().as_u16();
    assert!([200, 401, 503].contains(&status), "{status}");
});
