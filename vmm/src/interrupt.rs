//! MSI delivery through KVM: a GSI routing table shared by every device and
//! one irqfd per MSI-X vector.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so [`GsiRouter`] keeps the
//! platform's irqchip routes ([`arch::irqchip_routes`]) next to the MSI
//! routes and re-installs them all on every change.
//!
//! Where the interrupt controller decodes MSI messages itself
//! ([`arch::MsiDelivery::Kvm`]) a vector's route is an MSI route. Where MSIs
//! go through an MSI frame ([`arch::MsiDelivery::Frame`], arm64 without an
//! ITS) the message names one of the frame's SPIs, so the route goes to that
//! SPI's irqchip pin; a message that names none gets no route.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use arch::MsiDelivery;
use devices::pci::MsiInterruptGroup;
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
    KVM_MSI_VALID_DEVID,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

/// Largest GSI KVM accepts by default (KVM_MAX_IRQ_ROUTES is 4096).
const MAX_GSI: u32 = 4095;

/// Errors from interrupt routing.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// No GSI left for another MSI vector.
    #[error("out of GSIs for MSI vectors")]
    OutOfGsis,
    /// KVM refused the routing table or an irqfd.
    #[error("KVM: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    /// The routing table could not be built.
    #[error("routing table: {0}")]
    Table(String),
    /// An eventfd could not be created.
    #[error("eventfd: {0}")]
    EventFd(#[from] std::io::Error),
}

struct RouterState {
    routes: BTreeMap<(u32, u32), kvm_irq_routing_entry>,
    next_gsi: u32,
}

/// The VM's GSI routing table.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    msi: MsiDelivery,
    state: Mutex<RouterState>,
}

fn irqchip_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

/// The route of `gsi` for the MSI message (`address`, `data`) from PCI
/// requester `device_id`, delivered as `msi` says; `None` when the message
/// names nothing the MSI frame raises.
fn msi_route(
    msi: &MsiDelivery,
    gsi: u32,
    address: u64,
    data: u32,
    device_id: u32,
) -> Option<kvm_irq_routing_entry> {
    if let MsiDelivery::Frame(frame) = msi {
        return frame
            .pin(address, data)
            .map(|pin| irqchip_route(gsi, frame.chip, pin));
    }
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = address as u32;
    e.u.msi.address_hi = (address >> 32) as u32;
    e.u.msi.data = data;
    if arch::PLATFORM.msi_device_id {
        e.flags = KVM_MSI_VALID_DEVID;
        e.u.msi.__bindgen_anon_1.devid = device_id;
    }
    Some(e)
}

impl GsiRouter {
    /// Starts from the platform's default irqchip routes (on x86_64 PIC
    /// pins 0-15 and IOAPIC pins 0-23, GSI n → pin n) so the platform
    /// devices' interrupts keep working; MSI routes follow `msi`
    /// ([`arch::Machine::msi_delivery`]).
    pub fn new(vm: Arc<VmFd>, msi: MsiDelivery) -> Self {
        let routes = arch::irqchip_routes()
            .into_iter()
            .map(|r| ((r.gsi, r.chip), irqchip_route(r.gsi, r.chip, r.pin)))
            .collect();
        Self {
            vm,
            msi,
            state: Mutex::new(RouterState {
                routes,
                next_gsi: arch::PLATFORM.first_msi_gsi,
            }),
        }
    }

    fn allocate_gsi(&self) -> Result<u32, InterruptError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.next_gsi > MAX_GSI {
            return Err(InterruptError::OutOfGsis);
        }
        let gsi = st.next_gsi;
        st.next_gsi += 1;
        Ok(gsi)
    }

    /// Points `gsi` at the MSI message (`address`, `data`) from PCI
    /// requester `device_id` and installs the table. A message the MSI
    /// frame cannot raise leaves `gsi` without a route (the vector is
    /// dead until the guest programs a valid one); it is logged unless the
    /// vector is `masked` (the guest has not programmed it yet).
    fn set_msi(
        &self,
        gsi: u32,
        address: u64,
        data: u32,
        device_id: u32,
        masked: bool,
    ) -> Result<(), InterruptError> {
        let route = msi_route(&self.msi, gsi, address, data, device_id);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match route {
            Some(e) => {
                st.routes.insert((gsi, u32::MAX), e);
            }
            None => {
                if !masked {
                    log::warn!(
                        "MSI message address={address:#x} data={data:#x} names no SPI of the \
                         MSI frame; its vector (GSI {gsi}) stays silent"
                    );
                }
                if st.routes.remove(&(gsi, u32::MAX)).is_none() {
                    // Nothing changed: the table need not be re-installed.
                    return Ok(());
                }
            }
        }
        self.commit(&st)
    }

    fn commit(&self, st: &RouterState) -> Result<(), InterruptError> {
        let entries: Vec<kvm_irq_routing_entry> = st.routes.values().copied().collect();
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| InterruptError::Table(format!("{e:?}")))?;
        self.vm.set_gsi_routing(&table)?;
        Ok(())
    }
}

/// One device's MSI-X vectors, each an irqfd on its own GSI.
pub struct KvmMsiGroup {
    router: Arc<GsiRouter>,
    vectors: Vec<(u32, EventFd)>,
    /// The device's PCI requester id (bus << 8 | devfn), which the
    /// platform's MSI controller may translate by; known once the device
    /// has its slot.
    device_id: AtomicU32,
}

impl KvmMsiGroup {
    /// Allocates `count` GSIs and registers an irqfd for each.
    pub fn new(router: Arc<GsiRouter>, count: u16) -> Result<Self, InterruptError> {
        let mut vectors = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let gsi = router.allocate_gsi()?;
            let evt = EventFd::new(libc::EFD_NONBLOCK)?;
            router.vm.register_irqfd(&evt, gsi)?;
            vectors.push((gsi, evt));
        }
        Ok(Self {
            router,
            vectors,
            device_id: AtomicU32::new(0),
        })
    }

    /// Records the device's PCI requester id, for the MSI routes of the
    /// vectors the guest programs from now on.
    pub fn set_device_id(&self, requester_id: u32) {
        self.device_id.store(requester_id, Ordering::Release);
    }

    fn vector(&self, vector: u16) -> std::io::Result<&(u32, EventFd)> {
        self.vectors.get(usize::from(vector)).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("no MSI vector {vector}"),
            )
        })
    }
}

impl MsiInterruptGroup for KvmMsiGroup {
    fn update(&self, vector: u16, address: u64, data: u32, masked: bool) -> std::io::Result<()> {
        // Masking is done by the MSI-X table (it does not trigger a masked
        // vector), so the route can stay in place.
        let (gsi, _) = self.vector(vector)?;
        let device_id = self.device_id.load(Ordering::Acquire);
        self.router
            .set_msi(*gsi, address, data, device_id, masked)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        self.vector(vector)?.1.write(1)
    }
}

impl Drop for KvmMsiGroup {
    fn drop(&mut self) {
        for (gsi, evt) in &self.vectors {
            let _ = self.router.vm.unregister_irqfd(evt, *gsi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: arch::MsiFrame = arch::MsiFrame {
        base: 0x0808_0000,
        len: 0x1000,
        doorbell: 0x0808_0040,
        first_intid: 64,
        count: 64,
        chip: 0,
        first_pin: 32,
    };

    #[test]
    fn kvm_delivery_routes_the_message_itself() {
        let e = msi_route(&MsiDelivery::Kvm, 100, 0x1_fee0_0000, 0x4041, 8).unwrap();
        assert_eq!((e.gsi, e.type_), (100, KVM_IRQ_ROUTING_MSI));
        // SAFETY: an MSI route's union holds the `msi` member.
        let msi = unsafe { e.u.msi };
        assert_eq!(
            (msi.address_hi, msi.address_lo, msi.data),
            (1, 0xfee0_0000, 0x4041)
        );
        assert_eq!(e.flags != 0, arch::PLATFORM.msi_device_id);
    }

    #[test]
    fn frame_delivery_routes_to_the_spis_irqchip_pin() {
        let msi = MsiDelivery::Frame(FRAME);
        let e = msi_route(&msi, 100, 0x0808_0040, 70, 8).unwrap();
        assert_eq!((e.gsi, e.type_, e.flags), (100, KVM_IRQ_ROUTING_IRQCHIP, 0));
        // SAFETY: an irqchip route's union holds the `irqchip` member.
        let chip = unsafe { e.u.irqchip };
        assert_eq!((chip.irqchip, chip.pin), (0, 38));
        // Not the doorbell, not one of the frame's SPIs, never programmed.
        assert!(msi_route(&msi, 100, 0xfee0_0000, 70, 8).is_none());
        assert!(msi_route(&msi, 100, 0x0808_0040, 128, 8).is_none());
        assert!(msi_route(&msi, 100, 0x0808_0040, 33, 8).is_none());
        assert!(msi_route(&msi, 100, 0, 0, 0).is_none());
    }
}
