//! ACPI hardware-reduced power management: the sleep-control/reset byte the
//! FADT points at, and the 24-bit ACPI PM timer.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{check_version, GuestStopEvent, StateError};
use crate::bus::BusDevice;

/// Version of [`AcpiPmTimerState`] this code writes and reads.
pub const PM_TIMER_STATE_VERSION: u32 = 1;

/// A snapshot of the PM timer: how long it had been counting, so a
/// restored guest does not see its clocksource jump backwards.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AcpiPmTimerState {
    /// Format version ([`PM_TIMER_STATE_VERSION`]).
    pub version: u32,
    /// Nanoseconds the counter had run.
    pub elapsed_ns: u64,
}

/// Value the FADT's RESET_VALUE tells the guest to write for a reset.
const RESET_VALUE: u8 = 1;
/// Sleep control register: SLP_EN, "enter the sleep state now".
const SLP_EN: u8 = 1 << 5;
/// Sleep control register: SLP_TYP field (bits 2..=4).
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
/// SLP_TYP the DSDT's `\_S5_` package advertises (soft off).
const SLP_TYP_S5: u8 = 5;

/// PM timer frequency in Hz, fixed by the ACPI specification.
const PM_TIMER_HZ: u128 = 3_579_545;
/// The timer is 24 bits wide (FADT TMR_VAL_EXT clear).
const PM_TIMER_MASK: u32 = 0x00ff_ffff;
/// Byte width of the PM timer register.
const PM_TIMER_LEN: usize = 4;

/// The one-byte sleep-control / sleep-status / reset register.
///
/// Writing `RESET_VALUE` (1) requests a reset; writing SLP_EN with SLP_TYP 5
/// requests power-off. Other values (other sleep states, WAK_STS clears
/// written to the status alias) are ignored. Reads return 0, i.e. WAK_STS
/// clear.
pub struct AcpiPmDevice {
    exit_evt: GuestStopEvent,
    reset_evt: GuestStopEvent,
}

impl AcpiPmDevice {
    /// Creates the register; `exit_evt` is signalled on S5 (power off) and
    /// `reset_evt` on a reset request.
    pub fn new(exit_evt: GuestStopEvent, reset_evt: GuestStopEvent) -> Self {
        Self {
            exit_evt,
            reset_evt,
        }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let (0, &[value]) = (offset, data) else {
            log::debug!(
                "acpi-pm: ignoring {}-byte write at offset {offset}",
                data.len()
            );
            return;
        };
        let slp_typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if value & SLP_EN != 0 && slp_typ == SLP_TYP_S5 {
            log::info!("acpi-pm: guest requested power off (S5)");
            self.exit_evt.raise("ACPI power-off");
        } else if value == RESET_VALUE {
            log::info!("acpi-pm: guest requested reset");
            self.reset_evt.raise("ACPI reset");
        } else {
            log::debug!("acpi-pm: ignoring write {value:#x}");
        }
    }
}

/// The ACPI PM timer: a free-running 24-bit counter at 3.579545 MHz,
/// counting from the device's creation. Read with a 4-byte access.
pub struct AcpiPmTimer {
    start: Instant,
}

impl AcpiPmTimer {
    /// Creates the timer, starting at 0 now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// Current counter value (24 bits).
    fn counter(&self) -> u32 {
        let ticks = self.start.elapsed().as_nanos() * PM_TIMER_HZ / 1_000_000_000;
        // Truncation is the wrap-around of the 24-bit counter.
        (ticks as u32) & PM_TIMER_MASK
    }
}

impl AcpiPmTimer {
    /// Saves how long the counter has been running.
    pub fn state(&self) -> AcpiPmTimerState {
        AcpiPmTimerState {
            version: PM_TIMER_STATE_VERSION,
            elapsed_ns: u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Continues counting from a saved state.
    pub fn restore_state(&mut self, state: &AcpiPmTimerState) -> Result<(), StateError> {
        check_version("acpi-pm-timer", state.version, PM_TIMER_STATE_VERSION)?;
        self.start = Instant::now()
            .checked_sub(Duration::from_nanos(state.elapsed_ns))
            .ok_or_else(|| StateError::Invalid {
                device: "acpi-pm-timer",
                reason: format!("elapsed time {} ns out of range", state.elapsed_ns),
            })?;
        Ok(())
    }
}

impl Default for AcpiPmTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl BusDevice for AcpiPmTimer {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let bytes = self.counter().to_le_bytes();
        // Narrower reads see the matching bytes of the register; anything
        // past it reads as all-ones.
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, b) in data.iter_mut().enumerate() {
            *b = start
                .checked_add(i)
                .filter(|&at| at < PM_TIMER_LEN)
                .map_or(0xff, |at| bytes[at]);
        }
    }

    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {
        // The counter is read-only.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Evt(GuestStopEvent);
    impl Evt {
        fn read(&self) -> std::io::Result<u64> {
            let v = self.0.eventfd().read()?;
            assert!(self.0.is_raised());
            Ok(v)
        }
    }

    fn setup() -> (AcpiPmDevice, Evt, Evt) {
        let (exit, reset) = (
            GuestStopEvent::new().unwrap(),
            GuestStopEvent::new().unwrap(),
        );
        let dev = AcpiPmDevice::new(exit.clone(), reset.clone());
        (dev, Evt(exit), Evt(reset))
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut dev, exit, reset) = setup();
        // What Linux writes: SLP_TYP 5 << 2 | SLP_EN.
        dev.write(0x3c0, 0, &[(5 << 2) | 0x20]);
        assert_eq!(exit.read().unwrap(), 1);
        assert!(reset.read().is_err());
    }

    #[test]
    fn reset_value_resets() {
        let (mut dev, exit, reset) = setup();
        dev.write(0x3c0, 0, &[1]);
        assert_eq!(reset.read().unwrap(), 1);
        assert!(exit.read().is_err());
    }

    #[test]
    fn other_sleep_states_and_slp_en_clear_do_nothing() {
        let (mut dev, exit, reset) = setup();
        for v in [
            (3 << 2) | 0x20, // S3
            (1 << 2) | 0x20, // S1
            5 << 2,          // S5 type without SLP_EN
            0x80,            // WAK_STS clear written to the status alias
            0,
            SLP_EN, // SLP_EN with type 0
        ] {
            dev.write(0x3c0, 0, &[v]);
        }
        assert!(exit.read().is_err());
        assert!(reset.read().is_err());
    }

    #[test]
    fn hostile_accesses_do_nothing() {
        let (mut dev, exit, reset) = setup();
        dev.write(0x3c0, 0, &[0x34, 0]);
        dev.write(0x3c0, 0, &[1, 0, 0, 0, 0, 0, 0, 0]);
        dev.write(0x3c0, 1, &[0x34]);
        dev.write(0x3c0, u64::MAX, &[1]);
        dev.write(0x3c0, 0, &[]);
        assert!(exit.read().is_err());
        assert!(reset.read().is_err());
        let mut b = [0xaau8; 8];
        dev.read(0x3c0, 0, &mut b);
        assert_eq!(b, [0; 8]);
        dev.read(0x3c0, u64::MAX, &mut []);
    }

    fn read_timer(t: &mut AcpiPmTimer) -> u32 {
        let mut b = [0u8; 4];
        t.read(0x608, 0, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn pm_timer_counts_at_3_58_mhz() {
        let mut t = AcpiPmTimer::new();
        let a = read_timer(&mut t);
        std::thread::sleep(Duration::from_millis(20));
        let b = read_timer(&mut t);
        assert!(a <= PM_TIMER_MASK && b <= PM_TIMER_MASK);
        // 20 ms is 71_591 ticks; allow generous scheduling slack upwards.
        let delta = b.wrapping_sub(a) & PM_TIMER_MASK;
        assert!((71_000..=3_579_545).contains(&delta), "delta {delta}");
    }

    #[test]
    fn pm_timer_odd_reads_are_safe() {
        let mut t = AcpiPmTimer::new();
        let mut b = [0u8; 8];
        t.read(0x608, 0, &mut b);
        assert_eq!(&b[4..], &[0xff; 4]);
        assert_eq!(b[3], 0, "top byte of a 24-bit counter");
        let mut one = [0u8];
        t.read(0x608, 3, &mut one);
        assert_eq!(one, [0]);
        t.read(0x608, 4, &mut one);
        assert_eq!(one, [0xff]);
        t.read(0x608, u64::MAX, &mut b);
        assert_eq!(b, [0xff; 8]);
        t.write(0x608, 0, &[1, 2, 3, 4]);
        t.read(0x608, 0, &mut []);
    }

    #[test]
    fn pm_timer_state_continues_counting() {
        let mut t = AcpiPmTimer::new();
        let saved = AcpiPmTimerState {
            version: PM_TIMER_STATE_VERSION,
            elapsed_ns: 2_000_000_000,
        };
        t.restore_state(&saved).unwrap();
        // Two seconds in: about 7.16 M ticks, wrapped to 24 bits.
        let expect = (2 * PM_TIMER_HZ as u64) as u32 & PM_TIMER_MASK;
        let now = read_timer(&mut t);
        assert!(now.wrapping_sub(expect) & PM_TIMER_MASK < 3_579_545 / 10);
        assert!(t.state().elapsed_ns >= saved.elapsed_ns);
        let mut bad = saved.clone();
        bad.elapsed_ns = u64::MAX;
        // Either refused or accepted; reading the counter must not panic.
        let _ = t.restore_state(&bad);
        read_timer(&mut t);
        bad = saved;
        bad.version = 0;
        assert!(t.restore_state(&bad).is_err());
    }
}
