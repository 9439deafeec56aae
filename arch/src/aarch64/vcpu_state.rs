//! The state of one arm64 vCPU a snapshot keeps: every register KVM lists
//! for it (`KVM_GET_REG_LIST`: core, FP/SIMD, system and timer registers,
//! the firmware pseudo-registers), read and written with ONE_REG, and its
//! power state (`KVM_GET_MP_STATE`).

use kvm_bindings::{kvm_mp_state, RegList};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use super::regs::reg_size;

/// Why a vCPU state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// What was being read or written.
        what: String,
        /// Errno from KVM.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The saved state does not fit this vCPU.
    #[error("{0}")]
    Invalid(String),
}

fn kvm_err(what: impl Into<String>) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    let what = what.into();
    move |source| StateError::Kvm { what, source }
}

/// One register: its ONE_REG id and value (little-endian bytes).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Register {
    /// The ONE_REG id (encodes the size).
    pub id: u64,
    /// The value, `reg_size(id)` bytes.
    pub value: Vec<u8>,
}

/// A saved arm64 vCPU.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    /// `KVM_MP_STATE_*`: running, stopped (powered off) or suspended.
    pub mp_state: u32,
    /// Every register KVM lists, in its order.
    pub registers: Vec<Register>,
    /// What the snapshot leaves out (none on aarch64).
    #[serde(default)]
    pub omitted: Vec<String>,
}

/// Most registers kvm-bindings' `RegList` holds (its FAM limit).
const MAX_REGISTERS: usize = 500;

/// The registers a vCPU has.
fn register_ids(vcpu: &VcpuFd) -> Result<Vec<u64>, StateError> {
    let mut list = RegList::new(MAX_REGISTERS)
        .map_err(|e| StateError::Invalid(format!("register list: {e:?}")))?;
    vcpu.get_reg_list(&mut list)
        .map_err(kvm_err("KVM_GET_REG_LIST"))?;
    Ok(list.as_slice().to_vec())
}

impl VcpuState {
    /// Reads the state of a vCPU outside `KVM_RUN`.
    pub fn save(vcpu: &VcpuFd, _kvm: &Kvm) -> Result<VcpuState, StateError> {
        let mut registers = Vec::new();
        for id in register_ids(vcpu)? {
            let mut value = vec![0u8; reg_size(id)];
            vcpu.get_one_reg(id, &mut value)
                .map_err(kvm_err(format!("KVM_GET_ONE_REG {id:#x}")))?;
            registers.push(Register { id, value });
        }
        let mp_state = vcpu
            .get_mp_state()
            .map_err(kvm_err("KVM_GET_MP_STATE"))?
            .mp_state;
        Ok(VcpuState {
            mp_state,
            registers,
            omitted: Vec::new(),
        })
    }

    /// Writes a saved state into an initialised vCPU.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), StateError> {
        for reg in &self.registers {
            if reg.value.len() != reg_size(reg.id) {
                return Err(StateError::Invalid(format!(
                    "register {:#x}: {} bytes saved, {} expected",
                    reg.id,
                    reg.value.len(),
                    reg_size(reg.id)
                )));
            }
            vcpu.set_one_reg(reg.id, &reg.value)
                .map_err(kvm_err(format!("KVM_SET_ONE_REG {:#x}", reg.id)))?;
        }
        vcpu.set_mp_state(kvm_mp_state {
            mp_state: self.mp_state,
        })
        .map_err(kvm_err("KVM_SET_MP_STATE"))
    }
}
