//! The fixed platform devices of a VM (serial console, reset line, RTC,
//! power management), built from the platform description
//! ([`arch::PLATFORM`]) and placed on the bus and at the address it names,
//! plus the MSI frame where the interrupt controller needs one; and their
//! snapshot state.

use std::io::Write;
use std::sync::{Arc, Mutex};

use arch::{DeviceBus, MsiDelivery, MsiFrame, PlatformDevice, PlatformDeviceKind};
use devices::legacy::{
    AcpiPmDevice, AcpiPmTimer, Cmos, ConsoleInput, GuestStopEvent, I8042Device, Pl011, Pl031,
    SerialDevice,
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
    /// How MSIs reach the interrupt controller (an MSI frame goes on the
    /// MMIO bus).
    pub msi: MsiDelivery,
}

/// The platform devices whose state a snapshot keeps.
pub struct PlatformDevices {
    uart16550: Option<Arc<Mutex<SerialDevice>>>,
    pl011: Option<Arc<Mutex<Pl011>>>,
    pl031: Option<Arc<Mutex<Pl031>>>,
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
    /// The PL011 UART, when the VM has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pl011: Option<devices::legacy::Pl011State>,
    /// The PL031 RTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pl031: Option<devices::legacy::Pl031State>,
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
            pl011: None,
            pl031: None,
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
        if let MsiDelivery::Frame(frame) = ctx.msi {
            ctx.mmio_bus
                .insert(Self::msi_frame(&frame, ctx.vm_fd)?, frame.base, frame.len)
                .map_err(VmmError::Bus)?;
        }
        Ok(devs)
    }

    /// The MSI frame, with an irqfd per SPI on the GSI whose default route
    /// goes to that SPI's pin. It keeps no state a snapshot needs.
    fn msi_frame(frame: &MsiFrame, vm_fd: &VmFd) -> Result<SharedDevice, VmmError> {
        let spis = (0..frame.count)
            .map(|i| {
                let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?;
                vm_fd
                    .register_irqfd(&evt, frame.first_pin + i)
                    .map_err(VmmError::Kvm)?;
                Ok(evt)
            })
            .collect::<Result<Vec<_>, VmmError>>()?;
        Ok(Arc::new(Mutex::new(devices::legacy::MsiFrame::new(
            frame.first_intid,
            spis,
        ))))
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
            PlatformDeviceKind::Pl011 => {
                let Some(out) = ctx.serial_out.take() else {
                    return Ok(None);
                };
                let dev = Arc::new(Mutex::new(Pl011::new(Self::irq(desc, ctx.vm_fd)?, out)));
                self.pl011 = Some(dev.clone());
                self.console = Some(dev.clone());
                dev
            }
            PlatformDeviceKind::Pl031 => {
                let dev = Arc::new(Mutex::new(Pl031::new()));
                self.pl031 = Some(dev.clone());
                dev
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
            pl011: self.pl011.as_ref().map(|s| lock(s).state()),
            pl031: self.pl031.as_ref().map(|r| lock(r).state()),
            cmos: self.cmos.as_ref().map(|c| lock(c).state()),
            pm_timer: self.pm_timer.as_ref().map(|t| lock(t).state()),
        }
    }

    /// Loads a saved state; the snapshot and this VM must have the same
    /// devices.
    pub fn restore(&self, state: &LegacyDevicesState) -> Result<(), VmmError> {
        restore_one("serial", &self.uart16550, &state.serial, |d, s| {
            d.restore_state(s)
        })?;
        restore_one("pl011", &self.pl011, &state.pl011, |d, s| {
            d.restore_state(s)
        })?;
        restore_one("pl031", &self.pl031, &state.pl031, |d, s| {
            d.restore_state(s)
        })?;
        restore_one("cmos", &self.cmos, &state.cmos, |d, s| d.restore_state(s))?;
        restore_one("ACPI PM timer", &self.pm_timer, &state.pm_timer, |d, s| {
            d.restore_state(s)
        })
    }
}

/// Restores one device's saved state; the device and its state must both
/// exist or both be absent.
fn restore_one<D, S>(
    what: &str,
    dev: &Option<Arc<Mutex<D>>>,
    state: &Option<S>,
    restore: impl FnOnce(&mut D, &S) -> Result<(), devices::legacy::StateError>,
) -> Result<(), VmmError> {
    match (dev, state) {
        (Some(dev), Some(s)) => {
            restore(&mut lock(dev), s).map_err(|e| VmmError::Snapshot(format!("{what}: {e}")))
        }
        (None, None) => Ok(()),
        _ => Err(VmmError::Snapshot(format!(
            "{what}: the snapshot and this VM disagree on whether the device exists"
        ))),
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
