//! The VM-wide state a snapshot keeps on aarch64: the GICv3 distributor,
//! redistributors and CPU interfaces, and the ITS.

use serde::{Deserialize, Serialize};

use super::gic::Gic;
use super::vcpu_state::StateError;

/// Saved GICv3 and ITS registers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GicState {}

impl GicState {
    /// Reads the GIC state of the paused VM.
    pub fn save(_gic: &Gic) -> Result<Self, StateError> {
        Err(StateError::Invalid(
            "saving the GICv3/ITS state is not supported on aarch64 yet".into(),
        ))
    }

    /// Writes a saved GIC state.
    pub fn restore(&self, _gic: &Gic) -> Result<(), StateError> {
        Err(StateError::Invalid(
            "restoring the GICv3/ITS state is not supported on aarch64 yet".into(),
        ))
    }
}
