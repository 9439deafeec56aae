//! MSI delivery through KVM: a GSI routing table shared by every device and
//! one irqfd per MSI-X vector.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so [`GsiRouter`] keeps the
//! platform's irqchip routes ([`arch::irqchip_routes`]) next to the MSI
//! routes and re-installs them all on every change.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

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

impl GsiRouter {
    /// Starts from the platform's default irqchip routes (on x86_64 PIC
    /// pins 0-15 and IOAPIC pins 0-23, GSI n → pin n) so the platform
    /// devices' interrupts keep working.
    pub fn new(vm: Arc<VmFd>) -> Self {
        let routes = arch::irqchip_routes()
            .into_iter()
            .map(|r| ((r.gsi, r.chip), irqchip_route(r.gsi, r.chip, r.pin)))
            .collect();
        Self {
            vm,
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
    /// requester `device_id` and installs the table.
    fn set_msi(
        &self,
        gsi: u32,
        address: u64,
        data: u32,
        device_id: u32,
    ) -> Result<(), InterruptError> {
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
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.routes.insert((gsi, u32::MAX), e);
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
    fn update(&self, vector: u16, address: u64, data: u32, _masked: bool) -> std::io::Result<()> {
        // Masking is done by the MSI-X table (it does not trigger a masked
        // vector), so the route can stay in place.
        let (gsi, _) = self.vector(vector)?;
        let device_id = self.device_id.load(Ordering::Acquire);
        self.router
            .set_msi(*gsi, address, data, device_id)
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
