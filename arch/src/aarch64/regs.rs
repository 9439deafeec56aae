//! vCPU initialisation and the registers of the arm64 boot protocol,
//! through `KVM_ARM_VCPU_INIT` and the ONE_REG interface.

use kvm_bindings::{
    kvm_vcpu_init, KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2, KVM_REG_ARM64, KVM_REG_ARM_CORE,
    KVM_REG_SIZE_MASK, KVM_REG_SIZE_SHIFT, KVM_REG_SIZE_U64,
};
use kvm_ioctls::{VcpuFd, VmFd};

use crate::ArchError;

/// PSTATE at kernel entry: EL1 using SP_EL1 (EL1h), with debug, SError,
/// IRQ and FIQ masked (Documentation/arch/arm64/booting.rst).
pub const PSTATE_BOOT: u64 = 0x3c5;

/// Byte offsets in `struct kvm_regs` (arch/arm64/include/uapi/asm/kvm.h).
const CORE_X0: u64 = 0;
const CORE_PC: u64 = 256;
const CORE_PSTATE: u64 = 264;

/// The ONE_REG id of the 64-bit core register at byte `offset` of
/// `struct kvm_regs` (the id counts 32-bit words).
pub const fn core_reg(offset: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (offset / 4)
}

/// ONE_REG id of general-purpose register `n` (x0-x30).
pub const fn xreg(n: u64) -> u64 {
    core_reg(CORE_X0 + 8 * n)
}

/// ONE_REG id of the program counter.
pub const PC: u64 = core_reg(CORE_PC);
/// ONE_REG id of PSTATE.
pub const PSTATE: u64 = core_reg(CORE_PSTATE);

/// Bytes of the value of ONE_REG `id` (its size field is log2 bytes).
pub fn reg_size(id: u64) -> usize {
    1usize << ((id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT)
}

/// The `KVM_ARM_VCPU_INIT` argument of this VM: the host's preferred
/// target with PSCI 0.2 (PSCI calls, SYSTEM_OFF and SYSTEM_RESET among
/// them, are then handled by KVM or exit as system events).
pub fn vcpu_init_template(vm: &VmFd) -> Result<kvm_vcpu_init, ArchError> {
    let mut kvi = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut kvi)
        .map_err(ArchError::kvm("KVM_ARM_PREFERRED_TARGET"))?;
    kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    Ok(kvi)
}

/// Initialises vCPU `id` from `template`; every vCPU but the boot one
/// starts powered off, until the guest starts it with PSCI `CPU_ON`.
pub fn init_vcpu(vcpu: &VcpuFd, template: &kvm_vcpu_init, id: u8) -> Result<(), ArchError> {
    let mut kvi = *template;
    if id > 0 {
        kvi.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
    }
    vcpu.vcpu_init(&kvi)
        .map_err(ArchError::kvm("KVM_ARM_VCPU_INIT"))
}

/// Writes a 64-bit register.
pub fn set_u64(vcpu: &VcpuFd, id: u64, value: u64) -> Result<(), ArchError> {
    vcpu.set_one_reg(id, &value.to_le_bytes())
        .map(|_| ())
        .map_err(ArchError::kvm("KVM_SET_ONE_REG"))
}

/// Reads a 64-bit register.
pub fn get_u64(vcpu: &VcpuFd, id: u64) -> Result<u64, kvm_ioctls::Error> {
    let mut bytes = [0u8; 8];
    vcpu.get_one_reg(id, &mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// The boot vCPU's registers at kernel entry: PC at the kernel, x0 at the
/// device tree, x1-x3 zero, EL1h with interrupts masked.
pub fn set_boot_registers(vcpu: &VcpuFd, entry: u64, fdt: u64) -> Result<(), ArchError> {
    set_u64(vcpu, PSTATE, PSTATE_BOOT)?;
    set_u64(vcpu, PC, entry)?;
    set_u64(vcpu, xreg(0), fdt)?;
    for n in 1..=3 {
        set_u64(vcpu, xreg(n), 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_register_ids_match_the_kvm_headers() {
        // Values QEMU and the kernel's selftests use.
        assert_eq!(xreg(0), 0x6030_0000_0010_0000);
        assert_eq!(xreg(1), 0x6030_0000_0010_0002);
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE, 0x6030_0000_0010_0042);
        assert_eq!(reg_size(PC), 8);
        assert_eq!(reg_size(0x6040_0000_0010_0054), 16);
    }
}
