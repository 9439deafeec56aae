//! The arm64-only KVM ioctls chv threads issue, for their seccomp lists
//! (the generic ones, `KVM_RUN`, `KVM_IRQFD` and the like, are the VMM's).

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_mp_state, kvm_one_reg, kvm_reg_list, kvm_vcpu_init,
    KVMIO,
};

/// Request numbers (from the KVM API headers).
mod nr {
    use super::*;
    vmm_sys_util::ioctl_iow_nr!(KVM_ARM_VCPU_INIT, KVMIO, 0xae, kvm_vcpu_init);
    vmm_sys_util::ioctl_ior_nr!(KVM_ARM_PREFERRED_TARGET, KVMIO, 0xaf, kvm_vcpu_init);
    vmm_sys_util::ioctl_iowr_nr!(KVM_CREATE_DEVICE, KVMIO, 0xe0, kvm_create_device);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, KVMIO, 0xe1, kvm_device_attr);
    vmm_sys_util::ioctl_iow_nr!(KVM_GET_DEVICE_ATTR, KVMIO, 0xe2, kvm_device_attr);
    vmm_sys_util::ioctl_iow_nr!(KVM_GET_ONE_REG, KVMIO, 0xab, kvm_one_reg);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_ONE_REG, KVMIO, 0xac, kvm_one_reg);
    vmm_sys_util::ioctl_iowr_nr!(KVM_GET_REG_LIST, KVMIO, 0xb0, kvm_reg_list);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
}

/// Building a VM and its vCPUs (`Machine::create`, `CpuConfig`): the
/// vGICv3 and ITS devices and their attributes, vCPU init and the boot
/// registers.
pub fn vm_setup_ioctls() -> Vec<u64> {
    vec![
        nr::KVM_ARM_PREFERRED_TARGET(),
        nr::KVM_ARM_VCPU_INIT(),
        nr::KVM_CREATE_DEVICE(),
        nr::KVM_SET_DEVICE_ATTR(),
        nr::KVM_SET_ONE_REG(),
    ]
}

/// Saving and restoring vCPU and VM state (`VcpuState`, `VmState`).
pub fn snapshot_ioctls() -> Vec<u64> {
    vec![
        nr::KVM_GET_REG_LIST(),
        nr::KVM_GET_ONE_REG(),
        nr::KVM_SET_ONE_REG(),
        nr::KVM_GET_MP_STATE(),
        nr::KVM_SET_MP_STATE(),
        nr::KVM_GET_DEVICE_ATTR(),
        nr::KVM_SET_DEVICE_ATTR(),
    ]
}

/// What a vCPU thread issues besides `KVM_RUN`: the program-counter read
/// of the internal-error report and of the guest profiler
/// ([`super::instruction_pointer`]).
pub fn vcpu_ioctls() -> Vec<u64> {
    vec![nr::KVM_GET_ONE_REG()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kvm_headers() {
        assert_eq!(nr::KVM_ARM_VCPU_INIT(), 0x4020_aeae);
        assert_eq!(nr::KVM_ARM_PREFERRED_TARGET(), 0x8020_aeaf);
        assert_eq!(nr::KVM_CREATE_DEVICE(), 0xc00c_aee0);
        assert_eq!(nr::KVM_SET_DEVICE_ATTR(), 0x4018_aee1);
        assert_eq!(nr::KVM_GET_ONE_REG(), 0x4010_aeab);
        assert_eq!(nr::KVM_SET_ONE_REG(), 0x4010_aeac);
        assert_eq!(nr::KVM_GET_REG_LIST(), 0xc008_aeb0);
    }
}
