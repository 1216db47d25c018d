//! [`LayerState`]: what every layer made from one builder shares, whatever
//! framework its requests come through.

use std::sync::Arc;

use crate::verifier::cache::VerdictCache;
use crate::verifier::credential::AcceptedHeaders;
use crate::verifier::instruments::Instruments;
use crate::verifier::verification::Verifications;

/// What every layer made from one builder shares (through `require` too), and
/// every service and `verify` call of those layers.
pub(crate) struct LayerState {
    pub(crate) accepted: AcceptedHeaders,
    /// Remove the credential header before the inner service sees the request.
    pub(crate) hide_credential: bool,
    pub(crate) base_url: String,
    pub(crate) cache: Arc<VerdictCache>,
    pub(crate) verifications: Verifications,
    pub(crate) instruments: Arc<Instruments>,
}
