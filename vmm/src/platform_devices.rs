//! The fixed platform devices of a VM (serial console, reset line, RTC,
//! power management), built from the platform description
//! ([`arch::PLATFORM`]) and placed on the bus and at the address it names;
//! and their snapshot state.

use std::io::Write;
use std::sync::{Arc, Mutex};

use arch::{DeviceBus, PlatformDevice, PlatformDeviceKind};
use devices::legacy::{
    AcpiPmDevice, AcpiPmTimer, Cmos, ConsoleInput, GuestStopEvent, I8042Device, SerialDevice,
};
use devices::{Bus, SharedDevice};
use kvm_ioctls::VmFd;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::VmmError;

/// What the platform devices need from the VM being built.
pub struct PlatformContext<'a> {
    /// Registers the devices' irqfds.
    pub vm_fd: &'a VmFd,
    /// Port I/O bus.
    pub io_bus: &'a Bus,
    /// MMIO bus.
    pub mmio_bus: &'a Bus,
    /// Guest RAM regions (the CMOS reports the sizes below and above 4 GiB).
    pub ram: &'a [(GuestAddress, usize)],
    /// Where serial output goes; `None`: the VM has no serial console.
    pub serial_out: Option<Option<Box<dyn Write + Send>>>,
    /// Raised when the guest powers off.
    pub exit_evt: &'a GuestStopEvent,
    /// Raised when the guest resets.
    pub reset_evt: &'a GuestStopEvent,
}

/// The platform devices whose state a snapshot keeps.
pub struct PlatformDevices {
    uart16550: Option<Arc<Mutex<SerialDevice>>>,
    cmos: Option<Arc<Mutex<Cmos>>>,
    pm_timer: Option<Arc<Mutex<AcpiPmTimer>>>,
    /// The serial console, for host input.
    console: Option<Arc<Mutex<dyn ConsoleInput>>>,
}

/// State of the platform devices in a snapshot (each present when the
/// platform and the configuration have the device).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyDevicesState {
    /// The 16550 serial port (COM1), when the VM has one.
    pub serial: Option<devices::legacy::SerialState>,
    /// CMOS RAM and RTC index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmos: Option<devices::legacy::CmosState>,
    /// The ACPI PM timer's count, so the guest's clock source goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pm_timer: Option<devices::legacy::AcpiPmTimerState>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes of guest RAM below 4 GiB and above it.
fn ram_split(ram: &[(GuestAddress, usize)]) -> (u64, u64) {
    const FOUR_GIB: u64 = 1 << 32;
    let mut below = 0u64;
    let mut above = 0u64;
    for &(start, len) in ram {
        let (start, end) = (start.0, start.0.saturating_add(len as u64));
        below += end.min(FOUR_GIB).saturating_sub(start.min(FOUR_GIB));
        above += end.saturating_sub(start.max(FOUR_GIB));
    }
    (below, above)
}

impl PlatformDevices {
    /// Builds every device of [`arch::PLATFORM`] and puts it on its bus.
    pub fn new(mut ctx: PlatformContext<'_>) -> Result<Self, VmmError> {
        let mut devs = Self {
            uart16550: None,
            cmos: None,
            pm_timer: None,
            console: None,
        };
        for desc in arch::PLATFORM.devices {
            if let Some(dev) = devs.build(desc, &mut ctx)? {
                let bus = match desc.bus {
                    DeviceBus::Pio => ctx.io_bus,
                    DeviceBus::Mmio => ctx.mmio_bus,
                };
                bus.insert(dev, desc.base, desc.len)
                    .map_err(VmmError::Bus)?;
            }
        }
        Ok(devs)
    }

    /// The eventfd behind `desc`'s interrupt, registered as an irqfd.
    fn irq(desc: &PlatformDevice, vm_fd: &VmFd) -> Result<EventFd, VmmError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?;
        if let Some(gsi) = desc.irq {
            vm_fd.register_irqfd(&evt, gsi).map_err(VmmError::Kvm)?;
        }
        Ok(evt)
    }

    fn build(
        &mut self,
        desc: &PlatformDevice,
        ctx: &mut PlatformContext<'_>,
    ) -> Result<Option<SharedDevice>, VmmError> {
        Ok(Some(match desc.kind {
            PlatformDeviceKind::Uart16550 => {
                let Some(out) = ctx.serial_out.take() else {
                    return Ok(None);
                };
                let dev = Arc::new(Mutex::new(SerialDevice::new(
                    Self::irq(desc, ctx.vm_fd)?,
                    out,
                )));
                self.uart16550 = Some(dev.clone());
                self.console = Some(dev.clone());
                dev
            }
            PlatformDeviceKind::I8042 => {
                Arc::new(Mutex::new(I8042Device::new(ctx.reset_evt.clone())))
            }
            PlatformDeviceKind::Cmos => {
                let (below, above) = ram_split(ctx.ram);
                let dev = Arc::new(Mutex::new(Cmos::new(below, above)));
                self.cmos = Some(dev.clone());
                dev
            }
            PlatformDeviceKind::AcpiPm => Arc::new(Mutex::new(AcpiPmDevice::new(
                ctx.exit_evt.clone(),
                ctx.reset_evt.clone(),
            ))),
            PlatformDeviceKind::AcpiPmTimer => {
                let dev = Arc::new(Mutex::new(AcpiPmTimer::new()));
                self.pm_timer = Some(dev.clone());
                dev
            }
            PlatformDeviceKind::Pl011 | PlatformDeviceKind::Pl031 => {
                return Err(VmmError::Device(format!(
                    "{:?}: not built by this chv",
                    desc.kind
                )))
            }
        }))
    }

    /// The serial console, for host input.
    pub fn console(&self) -> Option<Arc<Mutex<dyn ConsoleInput>>> {
        self.console.clone()
    }

    /// Saves every device's state.
    pub fn state(&self) -> LegacyDevicesState {
        LegacyDevicesState {
            serial: self.uart16550.as_ref().map(|s| lock(s).state()),
            cmos: self.cmos.as_ref().map(|c| lock(c).state()),
            pm_timer: self.pm_timer.as_ref().map(|t| lock(t).state()),
        }
    }

    /// Loads a saved state; the snapshot and this VM must have the same
    /// devices.
    pub fn restore(&self, state: &LegacyDevicesState) -> Result<(), VmmError> {
        let bad = |what: &str, e: String| VmmError::Snapshot(format!("{what}: {e}"));
        let mismatch = |what: &str| {
            bad(
                what,
                "the snapshot and this VM disagree on whether the device exists".into(),
            )
        };
        match (&self.uart16550, &state.serial) {
            (Some(dev), Some(s)) => lock(dev)
                .restore_state(s)
                .map_err(|e| bad("serial", e.to_string()))?,
            (None, None) => {}
            _ => return Err(mismatch("serial")),
        }
        match (&self.cmos, &state.cmos) {
            (Some(dev), Some(s)) => lock(dev)
                .restore_state(s)
                .map_err(|e| bad("cmos", e.to_string()))?,
            (None, None) => {}
            _ => return Err(mismatch("cmos")),
        }
        match (&self.pm_timer, &state.pm_timer) {
            (Some(dev), Some(s)) => lock(dev)
                .restore_state(s)
                .map_err(|e| bad("ACPI PM timer", e.to_string()))?,
            (None, None) => {}
            _ => return Err(mismatch("ACPI PM timer")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_split_at_4_gib() {
        const GIB: u64 = 1 << 30;
        let r = |s: u64, l: u64| (GuestAddress(s), l as usize);
        assert_eq!(ram_split(&[r(0, 2 * GIB)]), (2 * GIB, 0));
        assert_eq!(ram_split(&[r(0, 3 * GIB), r(4 * GIB, GIB)]), (3 * GIB, GIB));
        assert_eq!(ram_split(&[r(GIB, 4 * GIB)]), (3 * GIB, GIB));
    }
}
