//! Room in an admitted request's extensions for its
//! [`SessionInfo`](crate::SessionInfo) and what a router adds after it, when the
//! layer is the first to put anything there.
//!
//! `http::Extensions` is a hash map that allocates room for 3 values on the first
//! insert and reallocates (and rehashes) on the fourth. Before routing (the layer
//! around a whole axum router, or tonic's server), the session is the first value;
//! axum's router then adds `OriginalUri`, `MatchedPath` and the path's parameters:
//! the fourth value, one more allocation, a rehash and a free on every request.
//! So an empty map is replaced by a clone of [`ROOMY`], an empty map with room for
//! 7 (allocated as the first insert would have allocated its room for 3): one
//! allocation, one rehash and one free fewer per request. A map that already holds
//! values (the layer added with `Router::layer`, after routing) is left as it is.
//! Only allocation changes: what the request's extensions hold is the same.

use std::sync::LazyLock;

use http::Extensions;

/// An empty map with room for 7 values (8 buckets): the session, axum's 3 and 3
/// more. Cloning it allocates its room, and copies no value.
static ROOMY: LazyLock<Extensions> = LazyLock::new(|| {
    /// Values only to make the map grow; removed at once.
    #[derive(Clone)]
    struct Filler<const N: usize>;
    let mut roomy = Extensions::new();
    roomy.insert(Filler::<0>);
    roomy.insert(Filler::<1>);
    roomy.insert(Filler::<2>);
    roomy.insert(Filler::<3>);
    // Empties the map and keeps its room.
    roomy.clear();
    roomy
});

/// Gives empty `extensions` room for what a router adds after the layer (see the
/// module's documentation); leaves a map that holds values as it is.
#[inline]
pub(crate) fn make_room(extensions: &mut Extensions) {
    if extensions.is_empty() {
        replace_empty(extensions);
    }
}

/// Out of line: after routing (`Router::layer`), the path never taken.
#[inline(never)]
fn replace_empty(extensions: &mut Extensions) {
    extensions.clone_from(&ROOMY);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verifier::session::SessionInfo;

    #[derive(Clone)]
    struct Held<const N: usize>;

    fn session() -> SessionInfo {
        SessionInfo::for_tests()
    }

    #[test]
    fn the_session_is_the_only_value_added_and_values_already_there_stay() {
        let mut empty = Extensions::new();
        make_room(&mut empty);
        empty.insert(session());
        assert_eq!(empty.len(), 1);
        assert!(empty.get::<SessionInfo>().is_some());

        let mut routed = Extensions::new();
        routed.insert(Held::<0>);
        routed.insert(Held::<1>);
        routed.insert(Held::<2>);
        make_room(&mut routed);
        routed.insert(session());
        assert_eq!(routed.len(), 4);
        assert!(routed.get::<Held<0>>().is_some() && routed.get::<SessionInfo>().is_some());
    }

    #[test]
    fn the_roomy_map_stays_empty() {
        assert!(ROOMY.is_empty());
        let mut used = ROOMY.clone();
        used.insert(Held::<7>);
        assert!(ROOMY.is_empty() && ROOMY.get::<Held<7>>().is_none());
    }
}
