//! CMOS real-time clock and NVRAM (MC146818-compatible), ports 0x70/0x71.
//!
//! The clock always reads the host's current UTC time; it does not tick on
//! its own and raises no interrupts. Guest writes to the time/date registers
//! (and to the century byte) are **ignored**, so the guest cannot move the
//! clock away from the host. Status A and B are writable (B's binary and
//! 12/24-hour bits change how the time is encoded); status C reads 0 and
//! status D always reports valid RAM and time. Every other byte is plain
//! 128-byte NVRAM, pre-filled with the memory-size bytes firmware would
//! leave there.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{check_version, StateError};
use crate::bus::BusDevice;

/// Version of [`CmosState`] this code writes and reads.
pub const CMOS_STATE_VERSION: u32 = 1;

/// A snapshot of the CMOS: the selected index and the 128 NVRAM bytes
/// (the clock itself always follows the host).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CmosState {
    /// Format version ([`CMOS_STATE_VERSION`]).
    pub version: u32,
    /// Register selected through port 0x70.
    pub index: u8,
    /// NVRAM contents (128 bytes).
    pub nvram: Vec<u8>,
}

/// Offset of the index port (0x70) from the device base.
const INDEX_OFFSET: u64 = 0;
/// Offset of the data port (0x71) from the device base.
const DATA_OFFSET: u64 = 1;
/// Size of the CMOS RAM, indexes 0..=0x7f.
const CMOS_SIZE: usize = 128;
/// Bit 7 of the index port masks NMIs on real hardware; we ignore it.
const INDEX_MASK: u8 = 0x7f;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_DAY_OF_WEEK: u8 = 0x06;
const REG_DAY_OF_MONTH: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
/// Century byte (the FADT points the guest at it).
pub const REG_CENTURY: u8 = 0x32;
/// RAM between 16 MiB and 4 GiB, in 64 KiB units (low, high byte).
const REG_MEM_ABOVE_16M_LOW: u8 = 0x34;
const REG_MEM_ABOVE_16M_HIGH: u8 = 0x35;
/// RAM above 4 GiB, in 64 KiB units (three bytes, little-endian).
const REG_MEM_ABOVE_4G: u8 = 0x5b;

/// Status A: update in progress (kept clear so readers never wait).
const STATUS_A_UIP: u8 = 0x80;
/// Status A default: 32.768 kHz time base, 1024 Hz periodic rate.
const STATUS_A_DEFAULT: u8 = 0x26;
/// Status B: 24-hour mode.
const STATUS_B_24H: u8 = 0x02;
/// Status B: binary (not BCD) data mode.
const STATUS_B_BINARY: u8 = 0x04;
/// Status D: valid RAM and time.
const STATUS_D_VRT: u8 = 0x80;
/// Hour register flag for PM in 12-hour mode.
const HOUR_PM: u8 = 0x80;

const SIXTEEN_MIB: u64 = 16 << 20;
const CHUNK_64K: u64 = 64 << 10;

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: u32,
    month: u8,
    day: u8,
    /// 1 = Sunday .. 7 = Saturday, as the RTC counts.
    weekday: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

fn is_leap(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

/// Converts seconds since the Unix epoch to a UTC calendar date.
fn datetime_from_unix(secs: u64) -> DateTime {
    let mut days = secs / 86_400;
    let rem = secs % 86_400;
    // 1970-01-01 was a Thursday (Sunday = 0).
    let weekday = ((days + 4) % 7) as u8 + 1;
    let mut year = 1970u32;
    loop {
        let len = if is_leap(year) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let feb = if is_leap(year) { 29 } else { 28 };
    let month_lengths = [31, feb, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut month = 1u8;
    for len in month_lengths {
        if days < len {
            break;
        }
        days -= len;
        month += 1;
    }
    DateTime {
        year,
        month,
        day: days as u8 + 1,
        weekday,
        hour: (rem / 3600) as u8,
        minute: (rem / 60 % 60) as u8,
        second: (rem % 60) as u8,
    }
}

/// Seconds since the Unix epoch on the host (0 if the host clock is before it).
fn host_unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

/// The CMOS RTC/NVRAM device on ports 0x70 (index) and 0x71 (data).
pub struct Cmos {
    index: u8,
    nvram: [u8; CMOS_SIZE],
}

impl Cmos {
    /// Creates the device. `mem_below_4g` is the guest RAM below 4 GiB
    /// (counted from address 0) and `mem_above_4g` the RAM from 4 GiB up;
    /// both are reported in the extended-memory bytes firmware uses.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Self {
        let mut nvram = [0u8; CMOS_SIZE];
        nvram[REG_STATUS_A as usize] = STATUS_A_DEFAULT;
        nvram[REG_STATUS_B as usize] = STATUS_B_24H;

        let above_16m = (mem_below_4g.saturating_sub(SIXTEEN_MIB) / CHUNK_64K).min(0xffff);
        nvram[REG_MEM_ABOVE_16M_LOW as usize] = above_16m as u8;
        nvram[REG_MEM_ABOVE_16M_HIGH as usize] = (above_16m >> 8) as u8;

        let above_4g = (mem_above_4g / CHUNK_64K).min(0xff_ffff);
        let base = REG_MEM_ABOVE_4G as usize;
        nvram[base..base + 3].copy_from_slice(&above_4g.to_le_bytes()[..3]);

        Self { index: 0, nvram }
    }

    /// Encodes a time field per status B (BCD unless binary mode).
    fn encode(&self, v: u8) -> u8 {
        if self.nvram[REG_STATUS_B as usize] & STATUS_B_BINARY != 0 {
            v
        } else {
            to_bcd(v)
        }
    }

    /// Encodes the hour per status B's 12/24-hour bit.
    fn encode_hour(&self, hour: u8) -> u8 {
        if self.nvram[REG_STATUS_B as usize] & STATUS_B_24H != 0 {
            return self.encode(hour);
        }
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        let pm = if hour >= 12 { HOUR_PM } else { 0 };
        self.encode(h12) | pm
    }

    /// Value of register `reg` when the host clock reads `now` (Unix seconds).
    fn read_register(&self, reg: u8, now: u64) -> u8 {
        let t = || datetime_from_unix(now);
        match reg {
            REG_SECONDS => self.encode(t().second),
            REG_MINUTES => self.encode(t().minute),
            REG_HOURS => self.encode_hour(t().hour),
            REG_DAY_OF_WEEK => self.encode(t().weekday),
            REG_DAY_OF_MONTH => self.encode(t().day),
            REG_MONTH => self.encode(t().month),
            REG_YEAR => self.encode((t().year % 100) as u8),
            REG_CENTURY => self.encode((t().year / 100 % 100) as u8),
            REG_STATUS_A => self.nvram[REG_STATUS_A as usize] & !STATUS_A_UIP,
            REG_STATUS_C => 0,
            REG_STATUS_D => STATUS_D_VRT,
            _ => self.nvram[usize::from(reg & INDEX_MASK)],
        }
    }

    /// Stores a guest write to register `reg`.
    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY_OF_WEEK | REG_DAY_OF_MONTH
            | REG_MONTH | REG_YEAR | REG_CENTURY => {
                log::debug!("cmos: ignoring write {value:#x} to time register {reg:#x}");
            }
            REG_STATUS_A => self.nvram[REG_STATUS_A as usize] = value & !STATUS_A_UIP,
            REG_STATUS_C | REG_STATUS_D => {}
            _ => self.nvram[usize::from(reg & INDEX_MASK)] = value,
        }
    }
}

impl Cmos {
    /// Saves the index and NVRAM.
    pub fn state(&self) -> CmosState {
        CmosState {
            version: CMOS_STATE_VERSION,
            index: self.index,
            nvram: self.nvram.to_vec(),
        }
    }

    /// Restores a state saved by [`Self::state`]; nothing changes on error.
    pub fn restore_state(&mut self, state: &CmosState) -> Result<(), StateError> {
        check_version("cmos", state.version, CMOS_STATE_VERSION)?;
        if state.nvram.len() != CMOS_SIZE {
            return Err(StateError::Invalid {
                device: "cmos",
                reason: format!("{} NVRAM bytes, expected {CMOS_SIZE}", state.nvram.len()),
            });
        }
        self.nvram.copy_from_slice(&state.nvram);
        self.index = state.index & INDEX_MASK;
        Ok(())
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (DATA_OFFSET, 1) => data[0] = self.read_register(self.index, host_unix_time()),
            // The index port is write-only.
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data) {
            (INDEX_OFFSET, &[v]) => self.index = v & INDEX_MASK,
            (DATA_OFFSET, &[v]) => self.write_register(self.index, v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select_and_read(cmos: &mut Cmos, reg: u8) -> u8 {
        cmos.write(0x70, 0, &[reg]);
        let mut b = [0u8];
        cmos.read(0x70, 1, &mut b);
        b[0]
    }

    fn from_bcd(v: u8) -> u64 {
        u64::from(v >> 4) * 10 + u64::from(v & 0xf)
    }

    #[test]
    fn calendar_conversion() {
        let cases = [
            (0, (1970, 1, 1, 5, 0, 0, 0)),
            // 2000-02-29 12:34:56, a Tuesday.
            (951_827_696, (2000, 2, 29, 3, 12, 34, 56)),
            // 2024-12-31 23:59:59, a Tuesday.
            (1_735_689_599, (2024, 12, 31, 3, 23, 59, 59)),
            // 2100-03-01 00:00:00 (2100 is not a leap year), a Monday.
            (4_107_542_400, (2100, 3, 1, 2, 0, 0, 0)),
        ];
        for (secs, (year, month, day, weekday, hour, minute, second)) in cases {
            let expected = DateTime {
                year,
                month,
                day,
                weekday,
                hour,
                minute,
                second,
            };
            assert_eq!(datetime_from_unix(secs), expected, "{secs}");
        }
    }

    #[test]
    fn encodes_bcd_24h_binary_and_12h() {
        let mut cmos = Cmos::new(0, 0);
        // 2024-12-31 23:59:59 Tuesday.
        let now = 1_735_689_599;
        let r = |c: &Cmos, reg| c.read_register(reg, now);
        assert_eq!(r(&cmos, REG_HOURS), 0x23);
        assert_eq!(r(&cmos, REG_YEAR), 0x24);
        assert_eq!(r(&cmos, REG_CENTURY), 0x20);
        assert_eq!(r(&cmos, REG_MONTH), 0x12);
        assert_eq!(r(&cmos, REG_DAY_OF_WEEK), 0x03);
        cmos.write_register(REG_STATUS_B, STATUS_B_BINARY | STATUS_B_24H);
        assert_eq!(r(&cmos, REG_SECONDS), 59);
        assert_eq!(r(&cmos, REG_YEAR), 24);
        cmos.write_register(REG_STATUS_B, 0); // BCD, 12-hour
        assert_eq!(r(&cmos, REG_HOURS), 0x11 | HOUR_PM);
        assert_eq!(cmos.read_register(REG_HOURS, 0), 0x12, "midnight is 12 AM");
    }

    #[test]
    fn reads_host_time_in_bcd() {
        let mut cmos = Cmos::new(0, 0);
        let before = host_unix_time();
        let sec = select_and_read(&mut cmos, REG_SECONDS);
        let min = select_and_read(&mut cmos, REG_MINUTES);
        let hour = select_and_read(&mut cmos, REG_HOURS);
        let day = select_and_read(&mut cmos, REG_DAY_OF_MONTH);
        let month = select_and_read(&mut cmos, REG_MONTH);
        let year = select_and_read(&mut cmos, REG_YEAR);
        let century = select_and_read(&mut cmos, REG_CENTURY);
        for v in [sec, min, hour, day, month, year, century] {
            assert!(v & 0xf < 10 && v >> 4 < 10, "{v:#x} is not BCD");
        }
        let t = datetime_from_unix(before);
        assert_eq!(from_bcd(century) * 100 + from_bcd(year), u64::from(t.year));
        // Compare time-of-day within a few seconds (tolerating midnight wrap).
        let tod = from_bcd(hour) * 3600 + from_bcd(min) * 60 + from_bcd(sec);
        let diff = (tod + 86_400 - before % 86_400) % 86_400;
        assert!(diff <= 3, "RTC is {diff}s off the host clock");
        assert!(from_bcd(month) >= 1 && from_bcd(month) <= 12);
        assert!(from_bcd(day) >= 1 && from_bcd(day) <= 31);
    }

    #[test]
    fn status_registers() {
        let mut cmos = Cmos::new(0, 0);
        assert_eq!(select_and_read(&mut cmos, REG_STATUS_A), 0x26);
        assert_eq!(select_and_read(&mut cmos, REG_STATUS_B), 0x02);
        assert_eq!(select_and_read(&mut cmos, REG_STATUS_C), 0);
        assert_eq!(select_and_read(&mut cmos, REG_STATUS_D), 0x80);
        // UIP can never be set by the guest; status D is read-only.
        cmos.write(0x70, 0, &[REG_STATUS_A]);
        cmos.write(0x70, 1, &[0xa6]);
        assert_eq!(select_and_read(&mut cmos, REG_STATUS_A), 0x26);
        cmos.write(0x70, 0, &[REG_STATUS_D]);
        cmos.write(0x70, 1, &[0]);
        assert_eq!(select_and_read(&mut cmos, REG_STATUS_D), 0x80);
    }

    #[test]
    fn nvram_write_read_back_and_time_writes_ignored() {
        let mut cmos = Cmos::new(0, 0);
        for (reg, v) in [(0x0eu8, 0x5a), (0x40, 0xa5), (0x7f, 0x11)] {
            cmos.write(0x70, 0, &[reg]);
            cmos.write(0x70, 1, &[v]);
            assert_eq!(select_and_read(&mut cmos, reg), v);
        }
        // NMI mask bit in the index is ignored.
        cmos.write(0x70, 0, &[0x80 | 0x40]);
        let mut b = [0u8];
        cmos.read(0x70, 1, &mut b);
        assert_eq!(b[0], 0xa5);
        // Writing the year does not change what is read back.
        let year = select_and_read(&mut cmos, REG_YEAR);
        cmos.write(0x70, 1, &[year.wrapping_add(0x10)]);
        assert_eq!(select_and_read(&mut cmos, REG_YEAR), year);
    }

    #[test]
    fn memory_size_registers() {
        let mib = 1u64 << 20;
        let cmos = Cmos::new(128 * mib, 0);
        // (128 - 16) MiB / 64 KiB = 1792 = 0x700.
        assert_eq!(cmos.nvram[0x34], 0x00);
        assert_eq!(cmos.nvram[0x35], 0x07);
        assert_eq!(&cmos.nvram[0x5b..0x5e], &[0, 0, 0]);

        // 6 GiB guest: 3 GiB below the 32-bit hole, 3 GiB above 4 GiB.
        let mut cmos = Cmos::new(3072 * mib, 3072 * mib);
        // (3072 - 16) MiB / 64 KiB = 48896 = 0xbf00; 3 GiB / 64 KiB = 0xc000.
        assert_eq!(select_and_read(&mut cmos, 0x34), 0x00);
        assert_eq!(select_and_read(&mut cmos, 0x35), 0xbf);
        assert_eq!(select_and_read(&mut cmos, 0x5b), 0x00);
        assert_eq!(select_and_read(&mut cmos, 0x5c), 0xc0);
        assert_eq!(select_and_read(&mut cmos, 0x5d), 0x00);

        // Tiny and huge guests saturate instead of wrapping.
        let cmos = Cmos::new(mib, u64::MAX);
        assert_eq!(&cmos.nvram[0x34..0x36], &[0, 0]);
        assert_eq!(&cmos.nvram[0x5b..0x5e], &[0xff, 0xff, 0xff]);
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        let mut cmos = Cmos::new(0, 0);
        let mut wide = [0u8; 8];
        cmos.read(0x70, 1, &mut wide);
        assert_eq!(wide, [0xff; 8]);
        let mut one = [0u8];
        cmos.read(0x70, 0, &mut one);
        assert_eq!(one, [0xff]);
        cmos.read(0x70, u64::MAX, &mut one);
        cmos.read(0x70, 1, &mut []);
        cmos.write(0x70, 0, &[0xff, 0xff]);
        cmos.write(0x70, 1, &[1, 2, 3, 4, 5, 6, 7, 8]);
        cmos.write(0x70, 2, &[1]);
        cmos.write(0x70, u64::MAX, &[1]);
        cmos.write(0x70, 0, &[]);
        for reg in 0..=255u8 {
            cmos.write(0x70, 0, &[reg]);
            cmos.write(0x70, 1, &[0xff]);
            cmos.read(0x70, 1, &mut one);
        }
    }

    #[test]
    fn state_round_trip_and_bad_state() {
        let mut cmos = Cmos::new(1 << 30, 0);
        cmos.write(0x70, 0, &[0x40]);
        cmos.write(0x70, 1, &[0x5a]);
        let json = serde_json::to_string(&cmos.state()).unwrap();
        let saved: CmosState = serde_json::from_str(&json).unwrap();
        let mut fresh = Cmos::new(0, 0);
        fresh.restore_state(&saved).unwrap();
        let mut b = [0u8];
        fresh.read(0x70, 1, &mut b);
        assert_eq!(b[0], 0x5a, "index and NVRAM restored");
        assert_eq!(fresh.state(), saved);
        let mut bad = saved.clone();
        bad.nvram.push(0);
        assert!(fresh.restore_state(&bad).is_err());
        bad = saved;
        bad.version = 2;
        assert!(matches!(
            fresh.restore_state(&bad),
            Err(StateError::Version { version: 2, .. })
        ));
    }
}
