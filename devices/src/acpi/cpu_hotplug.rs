//! The CPU hotplug controller the DSDT's processor devices talk to (ACPI
//! processor hotplug, in the spirit of QEMU's "modern" CPU hotplug
//! interface but smaller).
//!
//! The AML selects one CPU, then reads or writes that CPU's status:
//!
//! | offset | name   | access                                                  |
//! |--------|--------|---------------------------------------------------------|
//! | `0x0`  | `CSEL` | read/write (32 bits): the selected CPU index            |
//! | `0x4`  | `CSTS` | read: flags of the selected CPU; write: commands        |
//!
//! `CSTS` read bits: [`CPU_ENABLED`] (the CPU is present; `_STA`),
//! [`CPU_INSERTING`] (the host added it and the guest was not told yet),
//! [`CPU_REMOVING`] (the host asks the guest to release it). Write bits:
//! [`CPU_INSERTING`] / [`CPU_REMOVING`] acknowledge that the guest was
//! notified, [`CPU_EJECT`] ejects the CPU (its `_EJ0`). An eject is honoured
//! only for a CPU the host asked to remove; the eject handler then runs on
//! the vCPU thread that wrote it. A selected index beyond the possible CPUs
//! reads as zero and ignores commands, so a hostile guest can do no harm.

use std::sync::{Arc, Mutex, MutexGuard};

use super::{read_register_bytes, written_register_value};
use crate::bus::BusDevice;

/// Offset of `CSEL` (selected CPU).
pub const CPU_HOTPLUG_CSEL: u64 = 0x0;
/// Offset of `CSTS` (status / command of the selected CPU).
pub const CPU_HOTPLUG_CSTS: u64 = 0x4;
/// Bytes of the register block.
pub const CPU_HOTPLUG_REGISTER_SIZE: u64 = 0x8;
/// `CSTS` bit: the CPU is present and enabled.
pub const CPU_ENABLED: u32 = 1 << 0;
/// `CSTS` bit: the CPU was added (read) / the guest was told (write).
pub const CPU_INSERTING: u32 = 1 << 1;
/// `CSTS` bit: removal requested (read) / the guest was told (write).
pub const CPU_REMOVING: u32 = 1 << 2;
/// `CSTS` write bit: eject the selected CPU (written by its `_EJ0`).
pub const CPU_EJECT: u32 = 1 << 3;
/// GED event bit for CPU hotplug: the AML then runs `\_SB_.CPUS.CSCN`.
pub const GED_CPU_HOTPLUG: u32 = 1 << 2;

/// Errors from CPU hotplug requests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuHotplugError {
    /// The index is not one of the possible CPUs.
    #[error("CPU {cpu} is not hotpluggable (only 0..{max} are possible)")]
    InvalidCpu {
        /// The requested CPU.
        cpu: u8,
        /// Number of possible CPUs.
        max: u8,
    },
    /// CPU 0 runs the guest's boot code and is never removed.
    #[error("CPU 0 cannot be removed")]
    BootCpu,
    /// Only an enabled CPU can be removed.
    #[error("CPU {0} is not enabled")]
    NotEnabled(u8),
}

/// One possible CPU's hotplug state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStatus {
    /// Present and enabled (`_STA` = 0xF).
    pub enabled: bool,
    /// Added by the host; the guest has not acknowledged the notification.
    pub inserting: bool,
    /// Removal requested; the guest has not acknowledged the notification.
    pub removing: bool,
    /// Removal requested and the guest has not ejected the CPU yet.
    pub eject_requested: bool,
}

impl CpuStatus {
    fn bits(self) -> u32 {
        let mut v = 0;
        if self.enabled {
            v |= CPU_ENABLED;
        }
        if self.inserting {
            v |= CPU_INSERTING;
        }
        if self.removing {
            v |= CPU_REMOVING;
        }
        v
    }
}

struct Registers {
    selected: u32,
    cpus: Vec<CpuStatus>,
}

impl Registers {
    fn selected(&mut self) -> Option<&mut CpuStatus> {
        let i = usize::try_from(self.selected).ok()?;
        self.cpus.get_mut(i)
    }
}

/// The VMM's handle on the controller: marks CPUs added or to remove
/// without touching the bus device (a vCPU thread may hold it).
#[derive(Clone)]
pub struct CpuHotplugState {
    regs: Arc<Mutex<Registers>>,
}

impl CpuHotplugState {
    /// `max` possible CPUs, the first `boot` of them enabled.
    pub fn new(boot: u8, max: u8) -> Self {
        let cpus = (0..max)
            .map(|i| CpuStatus {
                enabled: i < boot,
                ..CpuStatus::default()
            })
            .collect();
        Self {
            regs: Arc::new(Mutex::new(Registers { selected: 0, cpus })),
        }
    }

    fn regs(&self) -> MutexGuard<'_, Registers> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of possible CPUs.
    pub fn max_cpus(&self) -> u8 {
        u8::try_from(self.regs().cpus.len()).unwrap_or(u8::MAX)
    }

    fn with_cpu<T>(
        &self,
        cpu: u8,
        f: impl FnOnce(&mut CpuStatus) -> Result<T, CpuHotplugError>,
    ) -> Result<T, CpuHotplugError> {
        let mut r = self.regs();
        let max = u8::try_from(r.cpus.len()).unwrap_or(u8::MAX);
        let status = r
            .cpus
            .get_mut(usize::from(cpu))
            .ok_or(CpuHotplugError::InvalidCpu { cpu, max })?;
        f(status)
    }

    /// The host added `cpu`: it reads as enabled, and the next scan tells
    /// the guest (device check). Cancels a pending removal.
    pub fn insert(&self, cpu: u8) -> Result<(), CpuHotplugError> {
        self.with_cpu(cpu, |s| {
            *s = CpuStatus {
                enabled: true,
                inserting: true,
                removing: false,
                eject_requested: false,
            };
            Ok(())
        })
    }

    /// Asks the guest to release `cpu` (eject request on the next scan);
    /// its eject is then honoured.
    pub fn request_removal(&self, cpu: u8) -> Result<(), CpuHotplugError> {
        if cpu == 0 {
            return Err(CpuHotplugError::BootCpu);
        }
        self.with_cpu(cpu, |s| {
            if !s.enabled {
                return Err(CpuHotplugError::NotEnabled(cpu));
            }
            s.inserting = false;
            s.removing = true;
            s.eject_requested = true;
            Ok(())
        })
    }

    /// The state of `cpu`, or `None` beyond the possible CPUs.
    pub fn status(&self, cpu: u8) -> Option<CpuStatus> {
        self.regs().cpus.get(usize::from(cpu)).copied()
    }

    /// How many CPUs are enabled (including those being removed).
    pub fn enabled_count(&self) -> usize {
        self.regs().cpus.iter().filter(|s| s.enabled).count()
    }

    /// Whether some removal has not been completed by the guest.
    pub fn removal_pending(&self) -> bool {
        self.regs().cpus.iter().any(|s| s.eject_requested)
    }

    /// Ejects the selected CPU if the host asked for it; returns its index.
    fn eject_selected(&self) -> Option<u8> {
        let mut r = self.regs();
        let cpu = u8::try_from(r.selected).ok()?;
        let s = r.selected()?;
        if !s.eject_requested {
            log::debug!("CPU hotplug: guest ejects CPU {cpu} nobody asked to remove; ignored");
            return None;
        }
        *s = CpuStatus::default();
        Some(cpu)
    }
}

/// Called on the vCPU thread that ejected a CPU: the VMM stops that vCPU.
pub type CpuEjectHandler = Box<dyn FnMut(u8) + Send>;

/// The register block on the port-I/O bus.
pub struct CpuHotplugController {
    state: CpuHotplugState,
    on_eject: CpuEjectHandler,
}

impl CpuHotplugController {
    /// A controller over `state` that calls `on_eject` for every CPU the
    /// guest ejects after the host asked it to.
    pub fn new(state: CpuHotplugState, on_eject: CpuEjectHandler) -> Self {
        Self { state, on_eject }
    }
}

impl BusDevice for CpuHotplugController {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let mut r = self.state.regs();
        let selected = r.selected;
        read_register_bytes(CPU_HOTPLUG_CSEL, selected, offset, data);
        let status = r.selected().map_or(0, |s| s.bits());
        read_register_bytes(CPU_HOTPLUG_CSTS, status, offset, data);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let Some(cpu) = written_register_value(CPU_HOTPLUG_CSEL, offset, data) {
            self.state.regs().selected = cpu;
        }
        let Some(cmd) = written_register_value(CPU_HOTPLUG_CSTS, offset, data) else {
            return;
        };
        {
            let mut r = self.state.regs();
            if let Some(s) = r.selected() {
                if cmd & CPU_INSERTING != 0 {
                    s.inserting = false;
                }
                if cmd & CPU_REMOVING != 0 {
                    s.removing = false;
                }
            }
        }
        if cmd & CPU_EJECT != 0 {
            // The registers are unlocked here: the handler may take other locks.
            if let Some(cpu) = self.state.eject_selected() {
                (self.on_eject)(cpu);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller(
        boot: u8,
        max: u8,
    ) -> (CpuHotplugController, CpuHotplugState, Arc<Mutex<Vec<u8>>>) {
        let state = CpuHotplugState::new(boot, max);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let dev = CpuHotplugController::new(
            state.clone(),
            Box::new(move |cpu| s.lock().unwrap().push(cpu)),
        );
        (dev, state, seen)
    }

    fn select(dev: &mut CpuHotplugController, cpu: u32) {
        dev.write(0, CPU_HOTPLUG_CSEL, &cpu.to_le_bytes());
    }

    fn status(dev: &mut CpuHotplugController, cpu: u32) -> u32 {
        select(dev, cpu);
        let mut d = [0xee; 4];
        dev.read(0, CPU_HOTPLUG_CSTS, &mut d);
        u32::from_le_bytes(d)
    }

    fn command(dev: &mut CpuHotplugController, cpu: u32, cmd: u32) {
        select(dev, cpu);
        // The AML writes a byte (ByteAcc field).
        dev.write(0, CPU_HOTPLUG_CSTS, &[cmd as u8]);
    }

    #[test]
    fn boot_cpus_are_enabled() {
        let (mut dev, state, _) = controller(2, 4);
        assert_eq!(state.max_cpus(), 4);
        assert_eq!(status(&mut dev, 0), CPU_ENABLED);
        assert_eq!(status(&mut dev, 1), CPU_ENABLED);
        assert_eq!(status(&mut dev, 2), 0);
        assert_eq!(status(&mut dev, 3), 0);
        assert_eq!(state.enabled_count(), 2);
        // CSEL reads back.
        select(&mut dev, 3);
        let mut d = [0u8; 4];
        dev.read(0, CPU_HOTPLUG_CSEL, &mut d);
        assert_eq!(u32::from_le_bytes(d), 3);
    }

    #[test]
    fn insert_is_reported_until_acknowledged() {
        let (mut dev, state, _) = controller(1, 2);
        state.insert(1).unwrap();
        assert_eq!(status(&mut dev, 1), CPU_ENABLED | CPU_INSERTING);
        assert_eq!(
            status(&mut dev, 1),
            CPU_ENABLED | CPU_INSERTING,
            "no read-to-clear"
        );
        command(&mut dev, 1, CPU_INSERTING);
        assert_eq!(status(&mut dev, 1), CPU_ENABLED);
        assert_eq!(state.enabled_count(), 2);
    }

    #[test]
    fn removal_then_eject_reaches_the_handler() {
        let (mut dev, state, seen) = controller(1, 3);
        state.insert(1).unwrap();
        state.insert(2).unwrap();
        state.request_removal(2).unwrap();
        assert!(state.removal_pending());
        assert_eq!(status(&mut dev, 2), CPU_ENABLED | CPU_REMOVING);
        command(&mut dev, 2, CPU_REMOVING);
        assert_eq!(status(&mut dev, 2), CPU_ENABLED);
        // Acknowledging the notification does not cancel the eject.
        assert!(state.removal_pending());
        command(&mut dev, 2, CPU_EJECT);
        assert_eq!(*seen.lock().unwrap(), vec![2]);
        assert_eq!(status(&mut dev, 2), 0, "_STA reads absent after _EJ0");
        assert!(!state.removal_pending());
        // A second eject does nothing.
        command(&mut dev, 2, CPU_EJECT);
        assert_eq!(seen.lock().unwrap().len(), 1);
        // Re-adding works.
        state.insert(2).unwrap();
        assert_eq!(status(&mut dev, 2), CPU_ENABLED | CPU_INSERTING);
    }

    #[test]
    fn uninvited_ejects_are_ignored() {
        let (mut dev, state, seen) = controller(2, 2);
        command(&mut dev, 0, CPU_EJECT);
        command(&mut dev, 1, CPU_EJECT);
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(state.enabled_count(), 2);
    }

    #[test]
    fn invalid_requests_are_refused() {
        let state = CpuHotplugState::new(1, 2);
        assert_eq!(
            state.insert(2),
            Err(CpuHotplugError::InvalidCpu { cpu: 2, max: 2 })
        );
        assert_eq!(state.request_removal(0), Err(CpuHotplugError::BootCpu));
        assert_eq!(
            state.request_removal(1),
            Err(CpuHotplugError::NotEnabled(1))
        );
        assert_eq!(
            state.request_removal(9),
            Err(CpuHotplugError::InvalidCpu { cpu: 9, max: 2 })
        );
        assert!(state.status(2).is_none());
        assert!(!state.removal_pending());
    }

    #[test]
    fn insert_cancels_a_pending_removal() {
        let (mut dev, state, seen) = controller(2, 2);
        state.request_removal(1).unwrap();
        state.insert(1).unwrap();
        assert!(!state.removal_pending());
        command(&mut dev, 1, CPU_EJECT);
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn hostile_accesses_are_harmless() {
        let (mut dev, state, seen) = controller(1, 2);
        state.insert(1).unwrap();
        state.request_removal(1).unwrap();
        // Out-of-range selections read zero and ignore commands.
        for cpu in [2, 255, u32::MAX] {
            assert_eq!(status(&mut dev, cpu), 0);
            command(&mut dev, cpu, 0xff);
        }
        // Odd offsets and sizes.
        dev.write(0, u64::MAX, &[0xff; 8]);
        dev.write(0, 0x100, &[0xff; 4]);
        let mut d = [0xaa; 16];
        dev.read(0, u64::MAX - 3, &mut d);
        dev.read(0, 0x100, &mut d);
        assert_eq!(d, [0; 16]);
        assert!(seen.lock().unwrap().is_empty());
        assert!(state.removal_pending());
        // A straddling write: CSEL's top byte and CSTS's low byte. The
        // selected CPU becomes 0x0100_0000 (none), so the eject is ignored.
        select(&mut dev, 1);
        dev.write(0, CPU_HOTPLUG_CSEL + 3, &[1, CPU_EJECT as u8]);
        assert!(seen.lock().unwrap().is_empty());
        // An 8-byte write selecting CPU 1 and ejecting it in one go.
        let mut both = 1u32.to_le_bytes().to_vec();
        both.extend_from_slice(&CPU_EJECT.to_le_bytes());
        dev.write(0, 0, &both);
        assert_eq!(*seen.lock().unwrap(), vec![1]);
    }
}
