//! Snapshot and restore of the VM-wide in-kernel x86 devices: the two 8259
//! PICs and the IOAPIC (KVM_GET_IRQCHIP), the 8254 PIT (KVM_GET_PIT2) and
//! the kvmclock (KVM_GET_CLOCK).

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::vcpu_state::{kvm_err, StateError};

/// The VM-wide in-kernel device state of a paused VM.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct VmKvmState {
    /// Master 8259 PIC (IRQs 0-7).
    pub pic_master: kvm_irqchip,
    /// Slave 8259 PIC (IRQs 8-15).
    pub pic_slave: kvm_irqchip,
    /// IOAPIC with its redirection table.
    pub ioapic: kvm_irqchip,
    /// 8254 PIT channels and flags.
    pub pit: kvm_pit_state2,
    /// kvmclock value (guest nanoseconds) at save time.
    pub clock: kvm_clock_data,
}

/// Reads irqchip `chip_id` (KVM_IRQCHIP_*).
fn read_chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, StateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(kvm_err("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Writes a saved irqchip after checking it is the expected one (a swapped
/// or corrupted chip id would otherwise load one chip's bytes into another).
fn write_chip(vm: &VmFd, chip: &kvm_irqchip, chip_id: u32) -> Result<(), StateError> {
    if chip.chip_id != chip_id {
        return Err(StateError::ChipId {
            expected: chip_id,
            found: chip.chip_id,
        });
    }
    vm.set_irqchip(chip).map_err(kvm_err("KVM_SET_IRQCHIP"))
}

impl VmKvmState {
    /// Captures the in-kernel irqchip, PIT and kvmclock of a paused VM
    /// (created with KVM_CREATE_IRQCHIP and KVM_CREATE_PIT2).
    pub fn save(vm: &VmFd) -> Result<VmKvmState, StateError> {
        Ok(VmKvmState {
            pic_master: read_chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: read_chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: read_chip(vm, KVM_IRQCHIP_IOAPIC)?,
            pit: vm.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?,
            clock: vm.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?,
        })
    }

    /// Loads this state into a fresh VM that has the in-kernel irqchip and
    /// PIT. The kvmclock is set to the saved value with KVM_CLOCK_REALTIME
    /// cleared, so guest time resumes where it stopped instead of jumping
    /// forward by the wall-clock time the VM spent saved.
    pub fn restore(&self, vm: &VmFd) -> Result<(), StateError> {
        write_chip(vm, &self.pic_master, KVM_IRQCHIP_PIC_MASTER)?;
        write_chip(vm, &self.pic_slave, KVM_IRQCHIP_PIC_SLAVE)?;
        write_chip(vm, &self.ioapic, KVM_IRQCHIP_IOAPIC)?;
        vm.set_pit2(&self.pit).map_err(kvm_err("KVM_SET_PIT2"))?;
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::layout::KVM_TSS_ADDRESS;
    use kvm_bindings::{kvm_pit_config, KVM_CLOCK_REALTIME, KVM_PIT_SPEAKER_DUMMY};
    use kvm_ioctls::Kvm;

    /// IOAPIC redirection entry used by the test: vector 0x35, level
    /// triggered, masked, destination APIC 1.
    const REDIR: u64 = (1 << 56) | (1 << 16) | (1 << 15) | 0x35;
    const REDIR_PIN: usize = 5;
    /// Guest nanoseconds the source VM's clock is set to.
    const CLOCK_NS: u64 = 5_000_000_000;

    fn vm(kvm: &Kvm) -> VmFd {
        let vm = kvm.create_vm().unwrap();
        vm.set_tss_address(KVM_TSS_ADDRESS as usize).unwrap();
        vm.create_irq_chip().unwrap();
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .unwrap();
        vm
    }

    fn ioapic_entry(chip: &kvm_irqchip, pin: usize) -> u64 {
        // SAFETY: the chip is the IOAPIC (checked), and every bit pattern of
        // these plain-integer unions is valid.
        unsafe {
            assert_eq!(chip.chip_id, KVM_IRQCHIP_IOAPIC);
            chip.chip.ioapic.redirtbl[pin].bits
        }
    }

    fn kvm_or_skip() -> Option<Kvm> {
        if !std::path::Path::new("/dev/kvm").exists() {
            println!("note: /dev/kvm absent, skipping");
            return None;
        }
        Some(Kvm::new().unwrap())
    }

    #[test]
    fn real_kvm_vm_state_round_trips_through_json() {
        let Some(kvm) = kvm_or_skip() else { return };
        let vm1 = vm(&kvm);
        let mut ioapic = read_chip(&vm1, KVM_IRQCHIP_IOAPIC).unwrap();
        // SAFETY: chip_id is IOAPIC; plain-integer union fields.
        unsafe { ioapic.chip.ioapic.redirtbl[REDIR_PIN].bits = REDIR };
        vm1.set_irqchip(&ioapic).unwrap();
        let mut master = read_chip(&vm1, KVM_IRQCHIP_PIC_MASTER).unwrap();
        master.chip.pic.imr = 0xfa;
        vm1.set_irqchip(&master).unwrap();
        let mut pit = vm1.get_pit2().unwrap();
        pit.channels[0].mode = 2;
        pit.channels[0].count = 0x1234;
        vm1.set_pit2(&pit).unwrap();
        vm1.set_clock(&kvm_clock_data {
            clock: CLOCK_NS,
            ..Default::default()
        })
        .unwrap();

        let mut state = VmKvmState::save(&vm1).unwrap();
        println!("clock flags {:#x}", state.clock.flags);
        assert!(state.clock.clock >= CLOCK_NS);
        // Pretend the snapshot was taken 100 s ago by wall clock: restore
        // must still not advance guest time by that much.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        state.clock.flags |= KVM_CLOCK_REALTIME;
        state.clock.realtime = (now.as_nanos() as u64).saturating_sub(100_000_000_000);
        let json = serde_json::to_string(&state).unwrap();
        println!("VmKvmState JSON: {} bytes", json.len());
        let back: VmKvmState = serde_json::from_str(&json).unwrap();

        let vm2 = vm(&kvm);
        back.restore(&vm2).unwrap();
        let ioapic2 = read_chip(&vm2, KVM_IRQCHIP_IOAPIC).unwrap();
        assert_eq!(ioapic_entry(&ioapic2, REDIR_PIN), REDIR);
        let master2 = read_chip(&vm2, KVM_IRQCHIP_PIC_MASTER).unwrap();
        // SAFETY: chip_id is the master PIC; plain-integer union fields.
        assert_eq!(unsafe { master2.chip.pic.imr }, 0xfa);
        let pit2 = vm2.get_pit2().unwrap();
        assert_eq!((pit2.channels[0].mode, pit2.channels[0].count), (2, 0x1234));
        assert_eq!(pit2.flags, state.pit.flags);
        let clock = vm2.get_clock().unwrap().clock;
        assert!(
            clock >= state.clock.clock && clock - state.clock.clock < 10_000_000_000,
            "clock {clock} vs saved {}",
            state.clock.clock
        );
    }

    #[test]
    fn real_kvm_swapped_chips_are_an_error() {
        let Some(kvm) = kvm_or_skip() else { return };
        let vm1 = vm(&kvm);
        let mut state = VmKvmState::save(&vm1).unwrap();
        std::mem::swap(&mut state.pic_master, &mut state.ioapic);
        let err = state.restore(&vm(&kvm)).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::ChipId {
                    expected: KVM_IRQCHIP_PIC_MASTER,
                    found: KVM_IRQCHIP_IOAPIC
                }
            ),
            "{err}"
        );
        // A VM without the in-kernel irqchip cannot take the state.
        let bare = kvm.create_vm().unwrap();
        let err = VmKvmState::save(&vm1).unwrap().restore(&bare).unwrap_err();
        assert!(err.to_string().starts_with("KVM_SET_IRQCHIP"), "{err}");
    }
}
