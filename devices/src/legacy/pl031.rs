//! ARM PrimeCell PL031 real-time clock (the arm64 guest's `rtc0`), on the
//! MMIO bus, backed by `vm_superio::Rtc`. Its alarm (match register) does
//! not interrupt, as in `vm_superio`; Linux only reads and sets the time.

use serde::{Deserialize, Serialize};
use vm_superio::rtc_pl031::{NoEvents, RtcState};
use vm_superio::Rtc;

use super::{check_version, StateError};
use crate::bus::BusDevice;

/// Version of [`Pl031State`] this code writes and reads.
pub const PL031_STATE_VERSION: u32 = 1;

/// A snapshot of the RTC (a serde mirror of `vm_superio`'s `RtcState`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pl031State {
    /// Format version ([`PL031_STATE_VERSION`]).
    pub version: u32,
    /// Load register.
    pub lr: u32,
    /// Offset of the guest's clock from the host's, in seconds.
    pub offset: i64,
    /// Match register.
    pub mr: u32,
    /// Interrupt mask.
    pub imsc: u32,
    /// Raw interrupt status.
    pub ris: u32,
}

/// A PL031 RTC.
pub struct Pl031 {
    rtc: Rtc<NoEvents>,
}

impl Default for Pl031 {
    fn default() -> Self {
        Self::new()
    }
}

impl Pl031 {
    /// An RTC showing the host's time.
    pub fn new() -> Self {
        Self { rtc: Rtc::new() }
    }

    /// Saves the registers and the guest's clock offset.
    pub fn state(&self) -> Pl031State {
        let s = self.rtc.state();
        Pl031State {
            version: PL031_STATE_VERSION,
            lr: s.lr,
            offset: s.offset,
            mr: s.mr,
            imsc: s.imsc,
            ris: s.ris,
        }
    }

    /// Restores a state saved by [`Self::state`].
    pub fn restore_state(&mut self, s: &Pl031State) -> Result<(), StateError> {
        check_version("pl031", s.version, PL031_STATE_VERSION)?;
        let state = RtcState {
            lr: s.lr,
            offset: s.offset,
            mr: s.mr,
            imsc: s.imsc & 1,
            ris: s.ris & 1,
        };
        self.rtc = Rtc::from_state(&state, NoEvents);
        Ok(())
    }
}

impl BusDevice for Pl031 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let mut word = [0u8; 4];
        if let Ok(off) = u16::try_from(offset & !3) {
            self.rtc.read(off, &mut word);
        }
        let shift = (offset & 3) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = word.get(shift + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let (Ok(off), Ok(word)) = (u16::try_from(offset), <[u8; 4]>::try_from(data)) else {
            log::debug!("pl031: {}-byte write at {offset:#x} ignored", data.len());
            return;
        };
        if off & 3 == 0 {
            self.rtc.write(off, &word);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTCDR: u64 = 0x0;
    const RTCLR: u64 = 0x8;

    fn read32(dev: &mut Pl031, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        dev.read(0, offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn shows_host_time_and_identifies_as_a_pl031() {
        let mut dev = Pl031::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32;
        let t = read32(&mut dev, RTCDR);
        assert!(t.abs_diff(now) <= 2, "{t} vs {now}");
        let id: Vec<u32> = (0..4).map(|i| read32(&mut dev, 0xfe0 + 4 * i)).collect();
        assert_eq!(id, vec![0x31, 0x10, 0x04, 0x00]);
    }

    #[test]
    fn a_set_time_survives_save_and_restore() {
        let mut dev = Pl031::new();
        dev.write(0, RTCLR, &1_000_000u32.to_le_bytes());
        let saved = dev.state();
        let mut other = Pl031::new();
        other.restore_state(&saved).unwrap();
        assert!(read32(&mut other, RTCDR).abs_diff(1_000_000) <= 2);
        let bad = Pl031State {
            version: 7,
            ..saved
        };
        assert!(other.restore_state(&bad).is_err());
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let mut dev = Pl031::new();
        dev.write(0, RTCLR, &[1, 2]);
        dev.write(0, 0x1_0000_0000, &[0; 4]);
        let mut big = [0u8; 8];
        dev.read(0, 0xffff_ffff, &mut big);
        assert!(read32(&mut dev, RTCLR) == 0);
    }
}
