//! ACPI memory hotplug (`vm.resize` with `desired_ram`, Cloud
//! Hypervisor's `hotplug_method=acpi`): each grow maps a new range of
//! guest RAM above the boot RAM, backed like it (shared, huge pages, …),
//! fills the next slot of the memory hotplug controller and raises the
//! GED event; the guest's AML then notifies the slot's `PNP0C80` device,
//! and Linux adds and onlines the range. Ranges are never removed: ACPI
//! memory hot-remove depends on the guest giving the memory up, which it
//! does not promise.

use std::sync::{Arc, Mutex};

use arch::AcpiHotplugLayout;
use devices::acpi::{
    GedEvents, MemoryHotplugController, MemoryHotplugState, MemorySlot, GED_MEMORY_HOTPLUG,
    MEMORY_HOTPLUG_REGISTER_SIZE,
};
use devices::Bus;
use vm_memory::{GuestAddress, GuestRegionMmap};

use super::{BackingError, RamBacking, ZoneBacking};

// The AML's GED dispatch and the controller agree on the event bit and size.
const _: () = assert!(match arch::PLATFORM.acpi_hotplug {
    Some(l) => {
        l.event_memory_hotplug == GED_MEMORY_HOTPLUG
            && l.memory_hotplug_port_size as u64 == MEMORY_HOTPLUG_REGISTER_SIZE
    }
    None => true,
});

/// Why `desired_ram` was refused or could not be honoured.
#[derive(Debug, thiserror::Error)]
pub enum MemoryResizeError {
    /// The VM has no room for hot-added memory.
    #[error(
        "desired_ram={desired}: this VM cannot change its RAM size (it was started with \
         {current} bytes and no memory.hotplug_size)"
    )]
    NotHotpluggable {
        /// Requested bytes.
        desired: u64,
        /// RAM now.
        current: u64,
    },
    /// Above `size + hotplug_size`.
    #[error("desired_ram={desired}: must not exceed size + hotplug_size ({max})")]
    TooLarge {
        /// Requested bytes.
        desired: u64,
        /// The limit.
        max: u64,
    },
    /// ACPI hotplug cannot remove memory.
    #[error(
        "desired_ram={desired}: below the current {current} bytes; ACPI memory hotplug cannot \
         remove memory"
    )]
    Shrink {
        /// Requested bytes.
        desired: u64,
        /// RAM now.
        current: u64,
    },
    /// Not a whole number of hotplug granules above the current size.
    #[error(
        "desired_ram={desired}: the {added} bytes to add must be a multiple of {} MiB",
        align >> 20
    )]
    Unaligned {
        /// Requested bytes.
        desired: u64,
        /// Bytes it would add.
        added: u64,
        /// Hotplug granule.
        align: u64,
    },
    /// All slots are used.
    #[error("desired_ram={0}: all memory hotplug slots are in use (at most {1} resizes)")]
    NoSlot(u64, usize),
    /// The hotplug window has no room.
    #[error("desired_ram={0}: the guest-physical hotplug window has no room for it")]
    NoRoom(u64),
    /// Below the boot RAM: virtio-mem can only unplug what it plugged.
    #[error("desired_ram={desired}: below the boot RAM ({boot} bytes, memory.size)")]
    BelowBoot {
        /// Requested bytes.
        desired: u64,
        /// Boot RAM.
        boot: u64,
    },
    /// virtio-mem refused the size.
    #[error("desired_ram={desired}: {err}")]
    VirtioMem {
        /// Requested bytes.
        desired: u64,
        /// Why.
        err: virtio_devices::mem::MemError,
    },
    /// The new RAM could not be created.
    #[error("desired_ram: {0}")]
    Backing(#[from] BackingError),
    /// KVM or the memory map refused the region.
    #[error("desired_ram: {0}")]
    Map(String),
    /// The guest could not be interrupted.
    #[error("cannot raise the GED interrupt: {0}")]
    Notify(std::io::Error),
}

/// `vm.resize desired_ram` with virtio-mem: asks the driver to plug or
/// unplug blocks until the guest has `desired` bytes (boot RAM plus the
/// plugged part of the region); `current` is the RAM now. Returns at once:
/// `vm.info`'s `memory_actual_size` shows how far the guest got.
pub fn resize_virtio_mem(
    control: &virtio_devices::mem::MemControl,
    current: u64,
    desired: u64,
) -> Result<(), MemoryResizeError> {
    let options = control.options();
    let boot = current.saturating_sub(control.plugged_bytes());
    let max = boot + options.region_size;
    if desired > max {
        return Err(MemoryResizeError::TooLarge { desired, max });
    }
    let Some(plugged) = desired.checked_sub(boot) else {
        return Err(MemoryResizeError::BelowBoot { desired, boot });
    };
    control
        .set_requested(plugged)
        .map_err(|err| MemoryResizeError::VirtioMem { desired, err })
}

/// The VMM side of ACPI memory hotplug for one VM.
pub struct MemoryHotplug {
    layout: AcpiHotplugLayout,
    state: MemoryHotplugState,
    ged: GedEvents,
    backing: RamBacking,
    /// RAM at boot, in bytes.
    boot_size: u64,
    /// Where the boot RAM ends (guest-physical).
    ram_end: u64,
    /// `boot_size + hotplug_size`.
    max_size: u64,
    /// The backings of the hot-added ranges (their memfds or files).
    backings: Vec<ZoneBacking>,
}

impl MemoryHotplug {
    /// Puts the memory hotplug controller on `io_bus` at `layout`'s port;
    /// hot-added ranges are backed as `backing` and go after the boot RAM
    /// (`boot_size` bytes, ending at `ram_end`), up to `hotplug_size` bytes.
    pub fn new(
        layout: AcpiHotplugLayout,
        io_bus: &Bus,
        ged: GedEvents,
        backing: RamBacking,
        (boot_size, ram_end, hotplug_size): (u64, u64, u64),
    ) -> Result<Self, devices::BusError> {
        let state = MemoryHotplugState::new(usize::from(layout.memory_hotplug_slots));
        io_bus.insert(
            Arc::new(Mutex::new(MemoryHotplugController::new(state.clone()))),
            u64::from(layout.memory_hotplug_port),
            u64::from(layout.memory_hotplug_port_size),
        )?;
        Ok(Self {
            layout,
            state,
            ged,
            backing,
            boot_size,
            ram_end,
            max_size: boot_size.saturating_add(hotplug_size),
            backings: Vec::new(),
        })
    }

    /// Bytes hot-added so far.
    pub fn added(&self) -> u64 {
        self.state.slots().iter().map(|s| s.len).sum()
    }

    /// RAM now: boot RAM plus what was hot-added.
    pub fn current_size(&self) -> u64 {
        self.boot_size + self.added()
    }

    /// The filled slots, for a snapshot.
    pub fn slots(&self) -> Vec<MemorySlot> {
        self.state.slots()
    }

    /// Checks `desired` and maps the range that grows RAM to it (`None`
    /// when RAM has that size already). The caller registers the region
    /// with KVM and the memory map, then calls [`Self::announce`].
    pub fn grow(&mut self, desired: u64) -> Result<Option<GuestRegionMmap>, MemoryResizeError> {
        let current = self.current_size();
        if desired == current {
            return Ok(None);
        }
        if self.max_size == self.boot_size {
            return Err(MemoryResizeError::NotHotpluggable { desired, current });
        }
        if desired > self.max_size {
            return Err(MemoryResizeError::TooLarge {
                desired,
                max: self.max_size,
            });
        }
        if desired < current {
            return Err(MemoryResizeError::Shrink { desired, current });
        }
        let len = desired - current;
        let align = self.layout.memory_hotplug_align;
        if !len.is_multiple_of(align) {
            return Err(MemoryResizeError::Unaligned {
                desired,
                added: len,
                align,
            });
        }
        let slots = self.state.max_slots();
        if self.state.slots().len() >= slots {
            return Err(MemoryResizeError::NoSlot(desired, slots));
        }
        let (base, _) = self
            .layout
            .hotplug_range(self.ram_end, self.added(), len)
            .ok_or(MemoryResizeError::NoRoom(desired))?;
        let region = self.map(base, len)?;
        Ok(Some(region))
    }

    /// Maps `len` bytes at `base`, backed like the boot RAM.
    fn map(&mut self, base: u64, len: u64) -> Result<GuestRegionMmap, MemoryResizeError> {
        let size = usize::try_from(len).map_err(|_| MemoryResizeError::NoRoom(len))?;
        let mut backing = ZoneBacking::new("memory", len, &self.backing)?;
        let region = backing.map_region(GuestAddress(base), size)?;
        self.backings.push(backing);
        Ok(region)
    }

    /// Fills the next slot with the range just registered and tells the
    /// guest.
    pub fn announce(&mut self, base: u64, len: u64) -> Result<(), MemoryResizeError> {
        let slots = self.state.max_slots();
        self.state
            .insert(base, len)
            .map_err(|_| MemoryResizeError::NoSlot(self.current_size() + len, slots))?;
        self.ged
            .raise(GED_MEMORY_HOTPLUG)
            .map_err(MemoryResizeError::Notify)
    }

    /// Restores the slots of a snapshot whose ranges are already mapped
    /// (by the snapshot's memory file); the guest knows them, so no event.
    pub fn restore(&mut self, slots: &[MemorySlot]) -> Result<(), String> {
        self.state.restore(slots).map_err(|e| e.to_string())
    }
}
