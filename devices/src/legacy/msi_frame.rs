//! A GICv2m-compatible MSI frame (`arm,gic-v2m-frame`) on the MMIO bus, for
//! arm64 guests whose GICv3 has no ITS: `MSI_TYPER` tells the guest which
//! SPIs the frame hands out, and a write of one of those SPI numbers to the
//! `MSI_SETSPI_NS` doorbell raises that SPI (through the irqfd the VMM
//! registered for it).
//!
//! PCI devices' MSI-X messages name the same doorbell, but chv never writes
//! them to the bus: it routes each vector's irqfd straight to the SPI. The
//! frame sees only what a guest CPU writes, and the registers the guest's
//! driver reads.

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Offset of `MSI_TYPER`: the first SPI (bits 25:16) and the SPI count
/// (bits 9:0).
pub const MSI_TYPER: u64 = 0x008;
/// Offset of the doorbell, `MSI_SETSPI_NS`: write an SPI's INTID to raise it.
pub const MSI_SETSPI_NS: u64 = 0x040;
/// Offset of `MSI_IIDR`, the implementer id. It reads 0: no vendor quirks
/// (Linux keys its SPI-offset quirks on the X-Gene and NS2 values).
pub const MSI_IIDR: u64 = 0xfcc;

/// Largest SPI number and count the 10-bit `MSI_TYPER` fields hold.
const TYPER_FIELD_MASK: u32 = 0x3ff;

/// The MSI frame: a range of SPIs, each with the eventfd that raises it.
pub struct MsiFrame {
    first_intid: u32,
    spis: Vec<EventFd>,
}

impl MsiFrame {
    /// A frame for SPIs `first_intid..first_intid + spis.len()`; `spis[i]`
    /// raises SPI `first_intid + i`. The VMM keeps both within the 10-bit
    /// fields of `MSI_TYPER` (INTIDs below 1020).
    pub fn new(first_intid: u32, spis: Vec<EventFd>) -> Self {
        Self { first_intid, spis }
    }

    fn typer(&self) -> u32 {
        let count = u32::try_from(self.spis.len()).unwrap_or(u32::MAX);
        ((self.first_intid & TYPER_FIELD_MASK) << 16) | count.min(TYPER_FIELD_MASK)
    }

    /// Raises SPI `intid` if it is one of the frame's; others are ignored,
    /// as the hardware does.
    fn set_spi(&self, intid: u32) {
        let Some(evt) = intid
            .checked_sub(self.first_intid)
            .and_then(|i| self.spis.get(i as usize))
        else {
            log::debug!("msi frame: doorbell write of SPI {intid}, not one of the frame's");
            return;
        };
        if let Err(e) = evt.write(1) {
            log::error!("msi frame: cannot raise SPI {intid}: {e}");
        }
    }
}

impl BusDevice for MsiFrame {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let word = match offset & !3 {
            MSI_TYPER => self.typer(),
            // MSI_IIDR and every other register (the doorbell is write-only).
            _ => 0,
        };
        let bytes = word.to_le_bytes();
        let shift = (offset & 3) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(shift + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, <[u8; 4]>::try_from(data)) {
            (MSI_SETSPI_NS, Ok(word)) => self.set_spi(u32::from_le_bytes(word)),
            _ => log::debug!(
                "msi frame: {}-byte write at {offset:#x} ignored",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(first: u32, count: usize) -> MsiFrame {
        let spis = (0..count)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        MsiFrame::new(first, spis)
    }

    fn read32(dev: &mut MsiFrame, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        dev.read(0, offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Which of the frame's eventfds were raised (and clears them).
    fn raised(dev: &MsiFrame) -> Vec<usize> {
        (0..dev.spis.len())
            .filter(|&i| dev.spis[i].read().is_ok())
            .collect()
    }

    #[test]
    fn typer_gives_the_first_spi_and_the_count_as_gicv2m_does() {
        let mut dev = frame(64, 64);
        assert_eq!(read32(&mut dev, MSI_TYPER), (64 << 16) | 64);
        assert_eq!(read32(&mut dev, MSI_IIDR), 0);
        assert_eq!(read32(&mut dev, MSI_SETSPI_NS), 0, "the doorbell reads 0");
        // A narrow read takes its bytes of the register.
        let mut hi = [0u8; 2];
        dev.read(0, MSI_TYPER + 2, &mut hi);
        assert_eq!(u16::from_le_bytes(hi), 64);
        // Reads running past the word get zeros, never a panic.
        let mut wide = [0xffu8; 8];
        dev.read(0, MSI_TYPER + 3, &mut wide);
        assert_eq!(wide, [0; 8]);
    }

    #[test]
    fn a_doorbell_write_raises_that_spi_only() {
        let mut dev = frame(64, 4);
        dev.write(0, MSI_SETSPI_NS, &66u32.to_le_bytes());
        assert_eq!(raised(&dev), vec![2]);
        dev.write(0, MSI_SETSPI_NS, &64u32.to_le_bytes());
        dev.write(0, MSI_SETSPI_NS, &67u32.to_le_bytes());
        assert_eq!(raised(&dev), vec![0, 3]);
    }

    #[test]
    fn hostile_writes_raise_nothing() {
        let mut dev = frame(64, 4);
        for intid in [0u32, 63, 68, 1019, u32::MAX] {
            dev.write(0, MSI_SETSPI_NS, &intid.to_le_bytes());
        }
        // Wrong size, wrong register, unaligned.
        dev.write(0, MSI_SETSPI_NS, &[65]);
        dev.write(0, MSI_SETSPI_NS, &65u64.to_le_bytes());
        dev.write(0, MSI_TYPER, &65u32.to_le_bytes());
        dev.write(0, MSI_SETSPI_NS + 1, &65u32.to_le_bytes());
        dev.write(0, u64::MAX, &65u32.to_le_bytes());
        assert!(raised(&dev).is_empty());
        assert_eq!(read32(&mut dev, MSI_TYPER), (64 << 16) | 4, "read-only");
    }
}
