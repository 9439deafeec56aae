//! The type-0 PCI configuration header: 256 bytes of standard config space
//! with per-register write masks, BARs (with the sizing protocol) and a
//! capability list. The extended space (0x100..0x1000) reads as zero and
//! ignores writes.
//!
//! Everything here is reached by guest config accesses: any offset and any
//! length must be handled without panicking.

use serde::{Deserialize, Serialize};

use super::{BarReprogram, BarRequest};

/// Bytes of the standard configuration space modelled.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Bytes of the (ECAM) extended configuration space of one function.
pub const EXTENDED_CONFIG_SPACE_SIZE: u64 = 4096;
/// Number of BAR registers in a type-0 header.
pub const NUM_BARS: usize = 6;

/// Register offsets in a type-0 header.
const VENDOR_ID: usize = 0x00;
const DEVICE_ID: usize = 0x02;
const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const REVISION_ID: usize = 0x08;
const PROG_IF: usize = 0x09;
const SUBCLASS: usize = 0x0a;
const CLASS_CODE: usize = 0x0b;
const CACHE_LINE_SIZE: usize = 0x0c;
const LATENCY_TIMER: usize = 0x0d;
const HEADER_TYPE: usize = 0x0e;
const BAR0: usize = 0x10;
const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
const SUBSYSTEM_ID: usize = 0x2e;
const CAPABILITIES_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
/// First byte after the header: capabilities are placed from here.
const FIRST_CAPABILITY: usize = 0x40;

/// Command register bits the guest may change: I/O space, memory space, bus
/// master, parity error response, SERR# enable, interrupt disable.
const COMMAND_WRITABLE: u16 = 0x0001 | 0x0002 | 0x0004 | 0x0040 | 0x0100 | 0x0400;
/// Command register: memory space decoding enabled.
pub const COMMAND_MEMORY_SPACE: u16 = 0x0002;
/// Command register: the device may master the bus (DMA, MSI).
pub const COMMAND_BUS_MASTER: u16 = 0x0004;
/// Status register: the capability list is valid.
const STATUS_CAPABILITIES_LIST: u16 = 0x0010;
/// BAR type bits: 64-bit memory BAR.
const BAR_MEM_64BIT: u32 = 0x4;
/// BAR type bits: prefetchable memory.
const BAR_MEM_PREFETCHABLE: u32 = 0x8;
/// Low bits of a memory BAR that hold its type, not its address.
const BAR_MEM_TYPE_MASK: u32 = 0xf;

/// Errors from building a configuration header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The BAR index is out of range or a 64-bit BAR does not fit.
    #[error("invalid BAR index {0}")]
    InvalidBarIndex(u8),
    /// The BAR (or its upper half) is already in use.
    #[error("BAR {0} is already in use")]
    BarInUse(u8),
    /// The BAR size is not a power of two of at least 16 bytes, or a 32-bit
    /// BAR is 4 GiB or larger.
    #[error("invalid BAR size {0:#x}")]
    InvalidBarSize(u64),
    /// The capability does not fit in the standard config space.
    #[error("no room for a capability of {0} bytes")]
    CapabilitySpaceFull(usize),
    /// A write mask longer than the capability body.
    #[error("capability write mask longer than its body")]
    InvalidWriteMask,
    /// Saved state that does not belong to this header (another device,
    /// another layout, another version, or BARs placed elsewhere).
    #[error("PCI configuration state mismatch: {0}")]
    StateMismatch(String),
}

/// Version of [`PciConfigurationState`] this code writes and reads.
pub const PCI_CONFIGURATION_STATE_VERSION: u32 = 1;

/// One used BAR as saved: where it decoded (the address the VMM must
/// re-apply before restoring) and its shape.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PciBarState {
    /// BAR index (the lower register of a 64-bit BAR).
    pub index: u8,
    /// Size in bytes.
    pub size: u64,
    /// 64-bit memory BAR.
    pub is_64bit: bool,
    /// Address the BAR was decoded at.
    pub base: u64,
}

/// A snapshot of a configuration header: every register byte (BAR
/// registers and capabilities included) plus the decoded BAR addresses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PciConfigurationState {
    /// Format version ([`PCI_CONFIGURATION_STATE_VERSION`]).
    pub version: u32,
    /// The 256 bytes of standard config space.
    pub regs: Vec<u8>,
    /// The used BARs.
    pub bars: Vec<PciBarState>,
}

/// Fixed identity of a function, written once when the header is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciHeaderIds {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision_id: u8,
    /// Base class code.
    pub class_code: u8,
    /// Subclass code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
}

/// One BAR (the lower register of a 64-bit BAR).
#[derive(Clone, Copy, Debug, Default)]
struct Bar {
    /// Size in bytes; 0 = unused register.
    size: u64,
    is_64bit: bool,
    /// Address the MMIO range is currently decoded at (what the VMM mapped).
    active_base: u64,
}

/// A type-0 configuration header with write masks, BARs and capabilities.
#[derive(Clone, Debug)]
pub struct PciConfiguration {
    regs: [u8; CONFIG_SPACE_SIZE],
    write_mask: [u8; CONFIG_SPACE_SIZE],
    bars: [Bar; NUM_BARS],
    /// `true` for the upper register of a 64-bit BAR.
    bar_upper: [bool; NUM_BARS],
    /// Offset of the last capability added (to chain the next one).
    last_capability: Option<usize>,
    /// Where the next capability goes.
    next_capability: usize,
}

impl PciConfiguration {
    /// A header with `ids`, all BARs unused and no capabilities.
    pub fn new(ids: PciHeaderIds) -> Self {
        let mut c = Self {
            regs: [0; CONFIG_SPACE_SIZE],
            write_mask: [0; CONFIG_SPACE_SIZE],
            bars: [Bar::default(); NUM_BARS],
            bar_upper: [false; NUM_BARS],
            last_capability: None,
            next_capability: FIRST_CAPABILITY,
        };
        c.set_u16(VENDOR_ID, ids.vendor_id);
        c.set_u16(DEVICE_ID, ids.device_id);
        c.regs[REVISION_ID] = ids.revision_id;
        c.regs[PROG_IF] = ids.prog_if;
        c.regs[SUBCLASS] = ids.subclass;
        c.regs[CLASS_CODE] = ids.class_code;
        c.regs[HEADER_TYPE] = 0;
        c.set_u16(SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor_id);
        c.set_u16(SUBSYSTEM_ID, ids.subsystem_id);
        c.write_mask[COMMAND..COMMAND + 2].copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        c.write_mask[CACHE_LINE_SIZE] = 0xff;
        c.write_mask[LATENCY_TIMER] = 0xff;
        c.write_mask[INTERRUPT_LINE] = 0xff;
        c
    }

    fn set_u16(&mut self, off: usize, v: u16) {
        self.regs[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.regs[off], self.regs[off + 1]])
    }

    fn u32_at(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.regs[off..off + 4]);
        u32::from_le_bytes(b)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16_at(COMMAND)
    }

    /// Declares a memory BAR; its address starts at 0 until
    /// [`Self::set_bar_base`].
    pub fn add_bar(&mut self, req: &BarRequest) -> Result<(), ConfigError> {
        let i = usize::from(req.index);
        let regs = if req.is_64bit { 2 } else { 1 };
        if i + regs > NUM_BARS {
            return Err(ConfigError::InvalidBarIndex(req.index));
        }
        if (i..i + regs).any(|r| self.bars[r].size != 0 || self.bar_upper[r]) {
            return Err(ConfigError::BarInUse(req.index));
        }
        let size = req.size;
        if size < 16 || !size.is_power_of_two() || (!req.is_64bit && size > u64::from(u32::MAX)) {
            return Err(ConfigError::InvalidBarSize(size));
        }
        let mask = !(size - 1);
        let off = BAR0 + 4 * i;
        let mut ty = 0;
        if req.is_64bit {
            ty |= BAR_MEM_64BIT;
        }
        if req.prefetchable {
            ty |= BAR_MEM_PREFETCHABLE;
        }
        self.regs[off..off + 4].copy_from_slice(&ty.to_le_bytes());
        let low_mask = (mask as u32) & !BAR_MEM_TYPE_MASK;
        self.write_mask[off..off + 4].copy_from_slice(&low_mask.to_le_bytes());
        if req.is_64bit {
            let high_mask = (mask >> 32) as u32;
            self.write_mask[off + 4..off + 8].copy_from_slice(&high_mask.to_le_bytes());
            self.bar_upper[i + 1] = true;
        }
        self.bars[i] = Bar {
            size,
            is_64bit: req.is_64bit,
            active_base: 0,
        };
        Ok(())
    }

    /// Address BAR `index` currently decodes at (as last mapped), or `None`
    /// when the BAR is unused.
    pub fn bar_base(&self, index: u8) -> Option<u64> {
        let b = self.bars.get(usize::from(index))?;
        (b.size != 0).then_some(b.active_base)
    }

    /// Size of BAR `index`, or `None` when unused.
    pub fn bar_size(&self, index: u8) -> Option<u64> {
        let b = self.bars.get(usize::from(index))?;
        (b.size != 0).then_some(b.size)
    }

    /// Programs BAR `index` to `base` (the VMM's initial placement).
    pub fn set_bar_base(&mut self, index: u8, base: u64) -> Result<(), ConfigError> {
        let i = usize::from(index);
        let bar = match self.bars.get(i) {
            Some(b) if b.size != 0 => *b,
            _ => return Err(ConfigError::InvalidBarIndex(index)),
        };
        if base & (bar.size - 1) != 0 || (!bar.is_64bit && base > u64::from(u32::MAX)) {
            return Err(ConfigError::InvalidBarSize(bar.size));
        }
        let off = BAR0 + 4 * i;
        let ty = self.u32_at(off) & BAR_MEM_TYPE_MASK;
        let low = (base as u32) | ty;
        self.regs[off..off + 4].copy_from_slice(&low.to_le_bytes());
        if bar.is_64bit {
            self.regs[off + 4..off + 8].copy_from_slice(&((base >> 32) as u32).to_le_bytes());
        }
        self.bars[i].active_base = base;
        Ok(())
    }

    /// Address the BAR registers of `i` hold now.
    fn programmed_base(&self, i: usize) -> u64 {
        let off = BAR0 + 4 * i;
        let low = u64::from(self.u32_at(off) & !BAR_MEM_TYPE_MASK);
        if self.bars[i].is_64bit {
            low | (u64::from(self.u32_at(off + 4)) << 32)
        } else {
            low
        }
    }

    /// Appends a read-only capability with `id` and `body` (everything after
    /// the ID and next-pointer bytes); returns its config-space offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<usize, ConfigError> {
        self.add_capability_with_mask(id, body, &[])
    }

    /// Like [`Self::add_capability`], with `write_mask` (at most as long as
    /// `body`) marking which body bits the guest may change.
    pub fn add_capability_with_mask(
        &mut self,
        id: u8,
        body: &[u8],
        write_mask: &[u8],
    ) -> Result<usize, ConfigError> {
        if write_mask.len() > body.len() {
            return Err(ConfigError::InvalidWriteMask);
        }
        let len = body.len() + 2;
        let off = self.next_capability;
        let end = off + len;
        if end > CONFIG_SPACE_SIZE {
            return Err(ConfigError::CapabilitySpaceFull(len));
        }
        self.regs[off] = id;
        self.regs[off + 1] = 0;
        self.regs[off + 2..end].copy_from_slice(body);
        self.write_mask[off + 2..off + 2 + write_mask.len()].copy_from_slice(write_mask);
        match self.last_capability {
            Some(prev) => self.regs[prev + 1] = off as u8,
            None => self.regs[CAPABILITIES_POINTER] = off as u8,
        }
        let status = self.u16_at(STATUS) | STATUS_CAPABILITIES_LIST;
        self.set_u16(STATUS, status);
        self.last_capability = Some(off);
        self.next_capability = end.next_multiple_of(4);
        Ok(off)
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the standard space
    /// read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.regs.get(o).copied())
                .unwrap_or(0);
        }
    }

    /// Reads a little-endian dword-or-smaller value at `offset` (helper for
    /// owners of the header).
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset as u64, &mut b);
        u32::from_le_bytes(b)
    }

    /// Writes bytes the device itself owns, ignoring write masks (e.g. to
    /// update a capability field it emulates).
    pub fn write_unmasked(&mut self, offset: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            if let Some(r) = offset.checked_add(i).and_then(|o| self.regs.get_mut(o)) {
                *r = b;
            }
        }
    }

    /// Guest write of `data` at `offset`, through the write masks; returns
    /// the BARs whose decoded address changed.
    ///
    /// A dword write of all-ones to a BAR register is the sizing protocol:
    /// the register then reads back the size mask, but the BAR keeps
    /// decoding at its old address until a real address is written.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Vec<BarReprogram> {
        let Ok(start) = usize::try_from(offset) else {
            return Vec::new();
        };
        for (i, &b) in data.iter().enumerate() {
            let Some(o) = start.checked_add(i).filter(|&o| o < CONFIG_SPACE_SIZE) else {
                break;
            };
            let m = self.write_mask[o];
            self.regs[o] = (self.regs[o] & !m) | (b & m);
        }
        let sizing = data.len() == 4 && data.iter().all(|&b| b == 0xff);
        let end = start.saturating_add(data.len());
        let bar_end = BAR0 + 4 * NUM_BARS;
        let mut moved = Vec::new();
        if sizing || end <= BAR0 || start >= bar_end {
            return moved;
        }
        for i in 0..NUM_BARS {
            let bar = self.bars[i];
            if bar.size == 0 {
                continue;
            }
            let lo = BAR0 + 4 * i;
            let hi = lo + if bar.is_64bit { 8 } else { 4 };
            if end <= lo || start >= hi {
                continue;
            }
            let new_base = self.programmed_base(i);
            if new_base != bar.active_base {
                moved.push(BarReprogram {
                    index: i as u8,
                    old_base: bar.active_base,
                    new_base,
                    len: bar.size,
                });
                self.bars[i].active_base = new_base;
            }
        }
        moved
    }
}

impl PciConfiguration {
    /// Saves every register and the BAR placements.
    pub fn state(&self) -> PciConfigurationState {
        let bars = self
            .bars
            .iter()
            .enumerate()
            .filter(|(_, b)| b.size != 0)
            .map(|(i, b)| PciBarState {
                index: i as u8,
                size: b.size,
                is_64bit: b.is_64bit,
                base: b.active_base,
            })
            .collect();
        PciConfigurationState {
            version: PCI_CONFIGURATION_STATE_VERSION,
            regs: self.regs.to_vec(),
            bars,
        }
    }

    /// Restores registers saved by [`Self::state`] into a header built the
    /// same way. Read-only bits must match (same device and capability
    /// layout) and every BAR must already decode at its saved address: the
    /// VMM re-applies BAR placements (moving MMIO mappings) before this, so
    /// BAR placement is never changed here. Nothing changes on error.
    pub fn restore_state(&mut self, state: &PciConfigurationState) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::StateMismatch(m));
        if state.version != PCI_CONFIGURATION_STATE_VERSION {
            return bad(format!("unknown version {}", state.version));
        }
        if state.regs.len() != CONFIG_SPACE_SIZE {
            return bad(format!("{} register bytes", state.regs.len()));
        }
        let used = self.bars.iter().filter(|b| b.size != 0).count();
        if state.bars.len() != used {
            return bad(format!("{} BARs saved, {used} present", state.bars.len()));
        }
        for saved in &state.bars {
            let Some(bar) = self
                .bars
                .get(usize::from(saved.index))
                .filter(|b| b.size != 0)
            else {
                return bad(format!("BAR {} is not present", saved.index));
            };
            if bar.size != saved.size || bar.is_64bit != saved.is_64bit {
                return bad(format!("BAR {} has another size or type", saved.index));
            }
            if bar.active_base != saved.base {
                return bad(format!(
                    "BAR {} decodes at {:#x}, saved at {:#x}",
                    saved.index, bar.active_base, saved.base
                ));
            }
        }
        for (o, (&now, &saved)) in self.regs.iter().zip(&state.regs).enumerate() {
            if (now ^ saved) & !self.write_mask[o] != 0 {
                return bad(format!(
                    "read-only bits of byte {o:#x} are {now:#x}, saved {saved:#x}"
                ));
            }
        }
        // BAR registers may hold a sizing pattern at snapshot time; the
        // decoded addresses were checked equal above.
        self.regs.copy_from_slice(&state.regs);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciHeaderIds {
        PciHeaderIds {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision_id: 1,
            class_code: 0x01,
            subclass: 0x00,
            prog_if: 0,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
        }
    }

    fn r32(c: &PciConfiguration, off: u64) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w32(c: &mut PciConfiguration, off: u64, v: u32) -> Vec<BarReprogram> {
        c.write(off, &v.to_le_bytes())
    }

    #[test]
    fn ids_are_read_only_and_command_masked() {
        let mut c = PciConfiguration::new(ids());
        assert_eq!(r32(&c, 0), 0x1042_1af4);
        w32(&mut c, 0, 0xdead_beef);
        assert_eq!(r32(&c, 0), 0x1042_1af4);
        assert_eq!(r32(&c, 8), 0x0100_0001);
        w32(&mut c, 8, 0);
        assert_eq!(r32(&c, 8), 0x0100_0001);
        assert_eq!(r32(&c, 0x2c), 0x0040_1af4);
        w32(&mut c, 0x2c, 0);
        assert_eq!(r32(&c, 0x2c), 0x0040_1af4);
        // Command: only the writable bits stick; status stays read-only.
        w32(&mut c, 4, 0xffff_ffff);
        assert_eq!(c.command(), COMMAND_WRITABLE);
        assert_eq!(r32(&c, 4) >> 16, 0);
        c.write(4, &[0x06]);
        assert_eq!(c.command() & 0xff, 0x06);
        // Interrupt line is writable, interrupt pin is not.
        w32(&mut c, 0x3c, 0xffff_ffff);
        assert_eq!(r32(&c, 0x3c), 0xff);
    }

    #[test]
    fn bar_sizing_32bit() {
        let mut c = PciConfiguration::new(ids());
        c.add_bar(&BarRequest {
            index: 1,
            size: 0x1000,
            is_64bit: false,
            prefetchable: false,
        })
        .unwrap();
        c.set_bar_base(1, 0xc000_1000).unwrap();
        assert_eq!(r32(&c, 0x14), 0xc000_1000);
        assert!(w32(&mut c, 0x14, 0xffff_ffff).is_empty());
        assert_eq!(r32(&c, 0x14), 0xffff_f000);
        assert_eq!(c.bar_base(1), Some(0xc000_1000));
        assert!(w32(&mut c, 0x14, 0xc000_1000).is_empty());
        // Unused BARs read 0 and ignore writes.
        w32(&mut c, 0x10, 0xffff_ffff);
        assert_eq!(r32(&c, 0x10), 0);
        assert_eq!(c.bar_base(0), None);
    }

    #[test]
    fn bar_sizing_64bit_and_reprogram() {
        let mut c = PciConfiguration::new(ids());
        c.add_bar(&BarRequest {
            index: 0,
            size: 0x8000,
            is_64bit: true,
            prefetchable: true,
        })
        .unwrap();
        c.set_bar_base(0, 0x10_0000_0000).unwrap();
        assert_eq!(r32(&c, 0x10), 0xc);
        assert_eq!(r32(&c, 0x14), 0x10);
        // Sizing both halves, then restoring: no reprogram.
        assert!(w32(&mut c, 0x10, 0xffff_ffff).is_empty());
        assert_eq!(r32(&c, 0x10), 0xffff_800c);
        assert!(w32(&mut c, 0x10, 0xc).is_empty());
        assert!(w32(&mut c, 0x14, 0xffff_ffff).is_empty());
        assert_eq!(r32(&c, 0x14), 0xffff_ffff);
        assert!(w32(&mut c, 0x14, 0x10).is_empty());
        // A real move is reported once per change.
        let moved = w32(&mut c, 0x10, 0xc001_0000);
        assert_eq!(
            moved,
            vec![BarReprogram {
                index: 0,
                old_base: 0x10_0000_0000,
                new_base: 0x10_c001_0000,
                len: 0x8000
            }]
        );
        let moved = w32(&mut c, 0x14, 0);
        assert_eq!(moved[0].new_base, 0xc001_0000);
        assert_eq!(c.bar_base(0), Some(0xc001_0000));
        // Writing the same address again is not a move.
        assert!(w32(&mut c, 0x10, 0xc001_0000).is_empty());
        // Unaligned address bits are masked off.
        assert!(w32(&mut c, 0x10, 0xc001_0fff).is_empty());
    }

    #[test]
    fn bar_declaration_errors() {
        let mut c = PciConfiguration::new(ids());
        let req = |index, size, is_64bit| BarRequest {
            index,
            size,
            is_64bit,
            prefetchable: false,
        };
        assert_eq!(
            c.add_bar(&req(5, 0x1000, true)),
            Err(ConfigError::InvalidBarIndex(5))
        );
        assert_eq!(
            c.add_bar(&req(6, 0x1000, false)),
            Err(ConfigError::InvalidBarIndex(6))
        );
        assert_eq!(
            c.add_bar(&req(0, 0x1001, false)),
            Err(ConfigError::InvalidBarSize(0x1001))
        );
        c.add_bar(&req(0, 0x1000, true)).unwrap();
        assert_eq!(
            c.add_bar(&req(1, 0x1000, false)),
            Err(ConfigError::BarInUse(1))
        );
        assert!(c.set_bar_base(0, 0x1234).is_err());
        assert!(c.set_bar_base(3, 0x1000).is_err());
    }

    #[test]
    fn capability_chain() {
        let mut c = PciConfiguration::new(ids());
        assert_eq!(r32(&c, 4) >> 16, 0);
        let a = c.add_capability(0x09, &[1, 2, 3]).unwrap();
        let b = c
            .add_capability_with_mask(0x11, &[0, 0, 0xaa], &[0, 0xff])
            .unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x48);
        assert_ne!(r32(&c, 4) >> 16 & u32::from(STATUS_CAPABILITIES_LIST), 0);
        // Walk the list like a driver.
        let mut seen = Vec::new();
        let mut p = r32(&c, 0x34) as u8;
        while p != 0 {
            let v = r32(&c, u64::from(p));
            seen.push((p, v as u8));
            p = (v >> 8) as u8;
        }
        assert_eq!(seen, vec![(0x40, 0x09), (0x48, 0x11)]);
        // Only masked body bits are writable.
        w32(&mut c, 0x48, 0xffff_ffff);
        assert_eq!(r32(&c, 0x48), 0xff00_0011);
        assert_eq!(r32(&c, 0x40), 0x0201_4809);
        assert_eq!(
            c.add_capability(1, &[0; 300]),
            Err(ConfigError::CapabilitySpaceFull(302))
        );
        assert_eq!(
            c.add_capability_with_mask(1, &[0], &[1, 2]),
            Err(ConfigError::InvalidWriteMask)
        );
    }

    #[test]
    fn hostile_offsets_and_sizes() {
        let mut c = PciConfiguration::new(ids());
        c.add_bar(&BarRequest {
            index: 0,
            size: 0x1000,
            is_64bit: true,
            prefetchable: false,
        })
        .unwrap();
        for off in [
            0xfc,
            0xfd,
            0xff,
            0x100,
            0xfff,
            0x1000,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut d = [0x55u8; 8];
            c.read(off, &mut d);
            c.write(off, &[0xff; 8]);
            c.write(off, &[]);
        }
        let mut d = [0u8; 4];
        c.read(0x100, &mut d);
        assert_eq!(d, [0; 4]);
        // Odd-sized BAR writes still decode.
        for off in 0x0e..0x1a {
            c.write(off, &[0x12, 0x34, 0x56]);
        }
        assert!(c.bar_base(0).is_some());
    }

    fn placed() -> PciConfiguration {
        let mut c = PciConfiguration::new(ids());
        c.add_bar(&BarRequest {
            index: 0,
            size: 0x8000,
            is_64bit: true,
            prefetchable: false,
        })
        .unwrap();
        c.add_capability_with_mask(0x11, &[0, 0, 0], &[0, 0xc0])
            .unwrap();
        c.set_bar_base(0, 0x10_0000_0000).unwrap();
        c
    }

    #[test]
    fn state_round_trip_keeps_bars_and_writable_bits() {
        let mut c = placed();
        w32(&mut c, 4, 0x6);
        c.write(0x43, &[0xc0]);
        // Mid-sizing at snapshot time: the register shows the size mask.
        w32(&mut c, 0x10, 0xffff_ffff);
        let json = serde_json::to_string(&c.state()).unwrap();
        let saved: PciConfigurationState = serde_json::from_str(&json).unwrap();

        let mut fresh = placed();
        fresh.restore_state(&saved).unwrap();
        assert_eq!(fresh.command(), 0x6);
        assert_eq!(r32(&fresh, 0x40) >> 24, 0xc0);
        assert_eq!(r32(&fresh, 0x10), 0xffff_8004);
        assert_eq!(fresh.bar_base(0), Some(0x10_0000_0000));
        assert_eq!(fresh.state(), saved);
    }

    #[test]
    fn state_mismatches_are_errors() {
        let saved = placed().state();
        let mismatch = |c: &mut PciConfiguration, s: &PciConfigurationState| {
            assert!(matches!(
                c.restore_state(s),
                Err(ConfigError::StateMismatch(_))
            ));
        };
        // BAR decoded elsewhere: the VMM did not re-apply it.
        let mut moved = placed();
        moved.set_bar_base(0, 0x20_0000_0000).unwrap();
        mismatch(&mut moved, &saved);
        // Another device (device ID is read-only).
        let mut other = saved.clone();
        other.regs[2] ^= 1;
        mismatch(&mut placed(), &other);
        // A read-only bit of a partly writable byte.
        let mut other = saved.clone();
        other.regs[0x43] |= 0x01;
        mismatch(&mut placed(), &other);
        let mut other = saved.clone();
        other.regs.truncate(100);
        mismatch(&mut placed(), &other);
        let mut other = saved.clone();
        other.version = 99;
        mismatch(&mut placed(), &other);
        let mut other = saved.clone();
        other.bars[0].size = 0x1000;
        mismatch(&mut placed(), &other);
        let mut other = saved.clone();
        other.bars[0].index = 5;
        mismatch(&mut placed(), &other);
        let mut other = saved.clone();
        other.bars.clear();
        let mut c = placed();
        mismatch(&mut c, &other);
        // Nothing changed on error.
        assert_eq!(c.state(), saved);
    }
}
