//! [`RequestHeaders`]: a request's headers as the verifier reads them.

use http::{HeaderMap, HeaderValue};

/// A request's headers as the verifier reads them, whichever `http` crate holds
/// them (actix-web 4 has its own): read in place, never copied.
pub(crate) trait RequestHeaders {
    /// Every header, in order, as its (lowercase) name and its value's bytes.
    fn pairs(&self) -> impl Iterator<Item = (&str, &[u8])>;

    /// The first value of the header named `name` (lowercase).
    fn first(&self, name: &'static str) -> Option<&[u8]>;
}

impl RequestHeaders for HeaderMap {
    #[inline]
    fn pairs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
    }

    #[inline]
    fn first(&self, name: &'static str) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }
}
