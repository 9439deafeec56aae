//! The x86-only KVM ioctls chv threads issue, for their seccomp lists (the
//! generic ones, `KVM_RUN`, `KVM_IRQFD` and the like, are the VMM's).

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_list, kvm_msrs, kvm_nested_state, kvm_pit_config, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
};

/// Request numbers (from the KVM API headers).
mod nr {
    use super::*;
    vmm_sys_util::ioctl_iowr_nr!(KVM_GET_SUPPORTED_CPUID, KVMIO, 0x05, kvm_cpuid2);
    vmm_sys_util::ioctl_io_nr!(KVM_SET_TSS_ADDR, KVMIO, 0x47);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_IDENTITY_MAP_ADDR, KVMIO, 0x48, u64);
    vmm_sys_util::ioctl_io_nr!(KVM_CREATE_IRQCHIP, KVMIO, 0x60);
    vmm_sys_util::ioctl_iow_nr!(KVM_CREATE_PIT2, KVMIO, 0x77, kvm_pit_config);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_cpuid2);
    vmm_sys_util::ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
    vmm_sys_util::ioctl_iowr_nr!(KVM_GET_MSR_INDEX_LIST, KVMIO, 0x02, kvm_msr_list);
    vmm_sys_util::ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
    vmm_sys_util::ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
    vmm_sys_util::ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_irqchip);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_CLOCK, KVMIO, 0x7b, kvm_clock_data);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_pit_state2);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_DEBUGREGS, KVMIO, 0xa2, kvm_debugregs);
    vmm_sys_util::ioctl_io_nr!(KVM_SET_TSC_KHZ, KVMIO, 0xa2);
    vmm_sys_util::ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_xsave);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);
    vmm_sys_util::ioctl_iowr_nr!(KVM_GET_NESTED_STATE, KVMIO, 0xbe, kvm_nested_state);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_XSAVE2, KVMIO, 0xcf, kvm_xsave);
}

/// Building a VM and its vCPUs (`Machine::create`, `CpuConfig`): the TSS
/// and identity map, the in-kernel irqchip and PIT, CPUID, MSRs, FPU,
/// LAPIC and the boot registers.
pub fn vm_setup_ioctls() -> Vec<u64> {
    vec![
        nr::KVM_GET_SUPPORTED_CPUID(),
        nr::KVM_SET_TSS_ADDR(),
        nr::KVM_SET_IDENTITY_MAP_ADDR(),
        nr::KVM_CREATE_IRQCHIP(),
        nr::KVM_CREATE_PIT2(),
        nr::KVM_SET_CPUID2(),
        nr::KVM_GET_CPUID2(),
        nr::KVM_SET_REGS(),
        nr::KVM_GET_SREGS(),
        nr::KVM_SET_SREGS(),
        nr::KVM_SET_FPU(),
        nr::KVM_SET_MSRS(),
        nr::KVM_GET_LAPIC(),
        nr::KVM_SET_LAPIC(),
    ]
}

/// Saving and restoring vCPU and VM state (`VcpuState`, `VmState`).
pub fn snapshot_ioctls() -> Vec<u64> {
    vec![
        nr::KVM_GET_MSR_INDEX_LIST(),
        nr::KVM_GET_REGS(),
        nr::KVM_GET_MSRS(),
        nr::KVM_GET_FPU(),
        nr::KVM_GET_MP_STATE(),
        nr::KVM_SET_MP_STATE(),
        nr::KVM_GET_IRQCHIP(),
        nr::KVM_SET_IRQCHIP(),
        nr::KVM_GET_CLOCK(),
        nr::KVM_SET_CLOCK(),
        nr::KVM_GET_PIT2(),
        nr::KVM_SET_PIT2(),
        nr::KVM_GET_VCPU_EVENTS(),
        nr::KVM_SET_VCPU_EVENTS(),
        nr::KVM_GET_DEBUGREGS(),
        nr::KVM_SET_DEBUGREGS(),
        nr::KVM_GET_TSC_KHZ(),
        nr::KVM_SET_TSC_KHZ(),
        nr::KVM_GET_XSAVE(),
        nr::KVM_GET_XSAVE2(),
        nr::KVM_SET_XSAVE(),
        nr::KVM_GET_XCRS(),
        nr::KVM_SET_XCRS(),
        nr::KVM_GET_NESTED_STATE(),
    ]
}

/// What a vCPU thread issues besides `KVM_RUN`: the register read of the
/// internal-error report and of the guest profiler
/// ([`super::instruction_pointer`]).
pub fn vcpu_ioctls() -> Vec<u64> {
    vec![nr::KVM_GET_REGS()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kvm_headers() {
        assert_eq!(nr::KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(nr::KVM_SET_REGS(), 0x4090_ae82);
        assert_eq!(nr::KVM_GET_SUPPORTED_CPUID(), 0xc008_ae05);
        assert_eq!(nr::KVM_SET_CPUID2(), 0x4008_ae90);
        assert_eq!(nr::KVM_CREATE_PIT2(), 0x4040_ae77);
        assert_eq!(nr::KVM_SET_LAPIC(), 0x4400_ae8f);
    }
}
