//! Minimal i8042 keyboard controller: only the "pulse reset line" command.
//!
//! Inserted at port 0x60 with length 5, so offset 0 is the data port and
//! offset 4 the command/status port. Reads always return 0: status "output
//! buffer empty, input buffer empty", so a guest polling it never waits.

use serde::{Deserialize, Serialize};

use super::{check_version, GuestStopEvent, StateError};
use crate::bus::BusDevice;

/// Version of [`I8042State`] this code writes and reads.
pub const I8042_STATE_VERSION: u32 = 1;

/// A snapshot of the i8042: it holds no register state (reads are constant
/// and only the reset command acts), so only the version is recorded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct I8042State {
    /// Format version ([`I8042_STATE_VERSION`]).
    pub version: u32,
}

/// Ports 0x60..=0x64 as seen from the device's base.
const I8042_RANGE: u64 = 5;

/// An i8042 that turns the guest's CPU-reset command (0xFE) into a VMM event.
pub struct I8042Device {
    inner: vm_superio::I8042Device<GuestStopEvent>,
}

impl I8042Device {
    /// Creates the controller; `reset_evt` is signalled when the guest
    /// writes 0xFE to the command port.
    pub fn new(reset_evt: GuestStopEvent) -> Self {
        Self {
            inner: vm_superio::I8042Device::new(reset_evt),
        }
    }

    /// Saves the (empty) device state.
    pub fn state(&self) -> I8042State {
        I8042State {
            version: I8042_STATE_VERSION,
        }
    }

    /// Restores a state saved by [`Self::state`] (checks its version).
    pub fn restore_state(&mut self, state: &I8042State) -> Result<(), StateError> {
        check_version("i8042", state.version, I8042_STATE_VERSION)
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < I8042_RANGE {
            data[0] = self.inner.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= I8042_RANGE {
            return;
        }
        log::debug!("i8042: write {:#x} to offset {offset}", data[0]);
        if let Err(e) = self.inner.write(offset as u8, data[0]) {
            log::error!("i8042: signalling reset: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (I8042Device, GuestStopEvent) {
        let evt = GuestStopEvent::new().unwrap();
        (I8042Device::new(evt.clone()), evt)
    }

    #[test]
    fn reset_command_signals_reset() {
        let (mut dev, evt) = setup();
        dev.write(0x60, 4, &[0xfe]);
        assert!(evt.is_raised());
        assert_eq!(evt.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn other_commands_and_ports_do_not_reset() {
        let (mut dev, evt) = setup();
        for cmd in [0x20u8, 0x60, 0xaa, 0xad, 0xd1, 0xff] {
            dev.write(0x60, 4, &[cmd]);
        }
        dev.write(0x60, 0, &[0xfe]); // data port, not a command
        dev.write(0x60, 4, &[0xfe, 0]); // wrong size
        dev.write(0x60, 5, &[0xfe]); // out of range
        dev.write(0x60, u64::MAX, &[0xfe]);
        assert!(!evt.is_raised());
        assert!(evt.eventfd().read().is_err());
    }

    #[test]
    fn status_reads_idle_and_odd_reads_are_safe() {
        let (mut dev, _evt) = setup();
        let mut b = [0xaa];
        dev.read(0x60, 4, &mut b);
        assert_eq!(b, [0]);
        dev.read(0x60, 0, &mut b);
        assert_eq!(b, [0]);
        let mut wide = [0u8; 4];
        dev.read(0x60, 0, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        dev.read(0x60, 100, &mut b);
        assert_eq!(b, [0xff]);
        dev.read(0x60, 0, &mut []);
    }

    #[test]
    fn state_versions() {
        let (mut dev, _evt) = setup();
        let s = dev.state();
        dev.restore_state(&s).unwrap();
        assert!(dev.restore_state(&I8042State { version: 0 }).is_err());
    }
}
