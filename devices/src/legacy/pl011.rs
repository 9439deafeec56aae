//! ARM PrimeCell PL011 UART (`ttyAMA0` of an arm64 guest), on the MMIO bus.
//!
//! Transmission is immediate: every byte written to the data register goes
//! to the host sink at once, so the transmit FIFO is always empty. Host
//! input is queued into a 32-byte receive FIFO. The interrupt line is an
//! [`EventFd`] the VMM registers as a KVM irqfd; the device tree declares
//! it edge-triggered, so the device signals each time an event leaves an
//! enabled interrupt pending (as QEMU's and Cloud Hypervisor's PL011 do).

use std::collections::VecDeque;
use std::io::Write;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use super::{check_version, ConsoleInput, StateError};
use crate::bus::BusDevice;

/// Register offsets (PL011 TRM, table 3-1).
const UARTDR: u64 = 0x000;
const UARTRSR: u64 = 0x004;
const UARTFR: u64 = 0x018;
const UARTILPR: u64 = 0x020;
const UARTIBRD: u64 = 0x024;
const UARTFBRD: u64 = 0x028;
const UARTLCR_H: u64 = 0x02c;
const UARTCR: u64 = 0x030;
const UARTIFLS: u64 = 0x034;
const UARTIMSC: u64 = 0x038;
const UARTRIS: u64 = 0x03c;
const UARTMIS: u64 = 0x040;
const UARTICR: u64 = 0x044;
const UARTDMACR: u64 = 0x048;
/// Peripheral and PrimeCell id registers, 0xfe0-0xffc.
const ID_START: u64 = 0xfe0;
/// Part 0x011, designer ARM (0x41), revision 1; then the PrimeCell id.
const ID_BYTES: [u8; 8] = [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

/// Flag register bits.
const FR_RXFE: u32 = 1 << 4;
const FR_RXFF: u32 = 1 << 6;
const FR_TXFE: u32 = 1 << 7;

/// Interrupt bits (RIS, MIS, IMSC, ICR).
const INT_RX: u32 = 1 << 4;
const INT_TX: u32 = 1 << 5;
const INT_RT: u32 = 1 << 6;
const INT_ALL: u32 = 0x7ff;

/// Reset values (TRM): control with TX, RX enabled; FIFO levels half.
const CR_RESET: u32 = 0x300;
const IFLS_RESET: u32 = 0x12;

/// Bytes the receive FIFO holds.
pub const FIFO_SIZE: usize = 32;

/// Version of [`Pl011State`] this code writes and reads.
pub const PL011_STATE_VERSION: u32 = 1;

/// A snapshot of the UART registers and receive FIFO.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pl011State {
    /// Format version ([`PL011_STATE_VERSION`]).
    pub version: u32,
    /// Control register.
    pub cr: u32,
    /// Line control register.
    pub lcr_h: u32,
    /// Integer and fractional baud rate divisors.
    pub ibrd: u32,
    /// Fractional baud rate divisor.
    pub fbrd: u32,
    /// IrDA low-power counter.
    pub ilpr: u32,
    /// FIFO level select.
    pub ifls: u32,
    /// Interrupt mask set/clear.
    pub imsc: u32,
    /// Raw interrupt status.
    pub ris: u32,
    /// DMA control.
    pub dmacr: u32,
    /// Bytes waiting in the receive FIFO (at most [`FIFO_SIZE`]).
    pub rx_fifo: Vec<u8>,
}

/// A PL011 UART.
pub struct Pl011 {
    cr: u32,
    lcr_h: u32,
    ibrd: u32,
    fbrd: u32,
    ilpr: u32,
    ifls: u32,
    imsc: u32,
    ris: u32,
    dmacr: u32,
    rx: VecDeque<u8>,
    interrupt: EventFd,
    out: Box<dyn Write + Send>,
}

impl Pl011 {
    /// Creates a UART that raises `interrupt` and writes guest output to
    /// `out` (`None` discards it).
    pub fn new(interrupt: EventFd, out: Option<Box<dyn Write + Send>>) -> Self {
        Self {
            cr: CR_RESET,
            lcr_h: 0,
            ibrd: 0,
            fbrd: 0,
            ilpr: 0,
            ifls: IFLS_RESET,
            imsc: 0,
            // The transmit FIFO is always empty.
            ris: INT_TX,
            dmacr: 0,
            rx: VecDeque::with_capacity(FIFO_SIZE),
            interrupt,
            out: out.unwrap_or_else(|| Box::new(std::io::sink())),
        }
    }

    /// Signals the interrupt if an enabled one is pending.
    fn update_interrupt(&self) {
        if self.ris & self.imsc != 0 {
            if let Err(e) = self.interrupt.write(1) {
                log::error!("pl011: cannot raise the interrupt: {e}");
            }
        }
    }

    fn flags(&self) -> u32 {
        let mut fr = FR_TXFE;
        if self.rx.is_empty() {
            fr |= FR_RXFE;
        }
        if self.rx.len() >= FIFO_SIZE {
            fr |= FR_RXFF;
        }
        fr
    }

    fn read_data(&mut self) -> u32 {
        let byte = self.rx.pop_front().map_or(0, u32::from);
        if self.rx.is_empty() {
            self.ris &= !(INT_RX | INT_RT);
        }
        byte
    }

    fn transmit(&mut self, byte: u8) {
        // Output errors (a closed pipe, a full disk) must not reach the
        // guest; the byte is dropped.
        if let Err(e) = self.out.write_all(&[byte]).and_then(|_| self.out.flush()) {
            log::debug!("pl011: output: {e}");
        }
        self.ris |= INT_TX;
        self.update_interrupt();
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            UARTDR => self.read_data(),
            UARTRSR => 0,
            UARTFR => self.flags(),
            UARTILPR => self.ilpr,
            UARTIBRD => self.ibrd,
            UARTFBRD => self.fbrd,
            UARTLCR_H => self.lcr_h,
            UARTCR => self.cr,
            UARTIFLS => self.ifls,
            UARTIMSC => self.imsc,
            UARTRIS => self.ris,
            UARTMIS => self.ris & self.imsc,
            UARTDMACR => self.dmacr,
            o if (ID_START..ID_START + 32).contains(&o) => {
                u32::from(ID_BYTES[((o - ID_START) / 4) as usize])
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            UARTDR => self.transmit(value as u8),
            UARTRSR => {} // Clears the (never set) error flags.
            UARTILPR => self.ilpr = value & 0xff,
            UARTIBRD => self.ibrd = value & 0xffff,
            UARTFBRD => self.fbrd = value & 0x3f,
            UARTLCR_H => self.lcr_h = value & 0xff,
            UARTCR => self.cr = value & 0xffff,
            UARTIFLS => self.ifls = value & 0x3f,
            UARTIMSC => {
                self.imsc = value & INT_ALL;
                self.update_interrupt();
            }
            UARTICR => self.ris &= !(value & INT_ALL) | INT_TX,
            UARTDMACR => self.dmacr = value & 0x7,
            _ => log::debug!("pl011: write of {value:#x} to read-only offset {offset:#x}"),
        }
    }

    /// Saves the registers and the receive FIFO.
    pub fn state(&self) -> Pl011State {
        Pl011State {
            version: PL011_STATE_VERSION,
            cr: self.cr,
            lcr_h: self.lcr_h,
            ibrd: self.ibrd,
            fbrd: self.fbrd,
            ilpr: self.ilpr,
            ifls: self.ifls,
            imsc: self.imsc,
            ris: self.ris,
            dmacr: self.dmacr,
            rx_fifo: self.rx.iter().copied().collect(),
        }
    }

    /// Restores a state saved by [`Self::state`], keeping this device's
    /// interrupt and sink; a pending enabled interrupt is raised again.
    /// Nothing changes on error.
    pub fn restore_state(&mut self, s: &Pl011State) -> Result<(), StateError> {
        check_version("pl011", s.version, PL011_STATE_VERSION)?;
        if s.rx_fifo.len() > FIFO_SIZE {
            return Err(StateError::Invalid {
                device: "pl011",
                reason: format!("{} bytes in a {FIFO_SIZE}-byte FIFO", s.rx_fifo.len()),
            });
        }
        self.cr = s.cr & 0xffff;
        self.lcr_h = s.lcr_h & 0xff;
        self.ibrd = s.ibrd & 0xffff;
        self.fbrd = s.fbrd & 0x3f;
        self.ilpr = s.ilpr & 0xff;
        self.ifls = s.ifls & 0x3f;
        self.imsc = s.imsc & INT_ALL;
        self.ris = (s.ris & INT_ALL) | INT_TX;
        self.dmacr = s.dmacr & 0x7;
        self.rx = s.rx_fifo.iter().copied().collect();
        self.update_interrupt();
        Ok(())
    }
}

impl ConsoleInput for Pl011 {
    fn enqueue_input(&mut self, bytes: &[u8]) {
        let room = FIFO_SIZE - self.rx.len();
        if bytes.len() > room {
            log::debug!(
                "pl011: receive FIFO full, dropped {} bytes",
                bytes.len() - room
            );
        }
        let taken = bytes.len().min(room);
        if taken == 0 {
            return;
        }
        self.rx.extend(&bytes[..taken]);
        self.ris |= INT_RX | INT_RT;
        self.update_interrupt();
    }

    fn input_capacity(&self) -> usize {
        FIFO_SIZE - self.rx.len()
    }
}

impl BusDevice for Pl011 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let value = self.read_register(offset & !3);
        let bytes = value.to_le_bytes();
        let shift = (offset & 3) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(shift + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset & 3 != 0 || data.is_empty() || data.len() > 4 {
            log::debug!("pl011: unaligned write at {offset:#x} ignored");
            return;
        }
        let mut bytes = [0u8; 4];
        bytes[..data.len()].copy_from_slice(data);
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn uart() -> (Pl011, EventFd, Capture) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let out = Capture::default();
        let dev = Pl011::new(evt.try_clone().unwrap(), Some(Box::new(out.clone())));
        (dev, evt, out)
    }

    fn read32(dev: &mut Pl011, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        dev.read(0, offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(dev: &mut Pl011, offset: u64, v: u32) {
        dev.write(0, offset, &v.to_le_bytes());
    }

    fn fired(evt: &EventFd) -> bool {
        evt.read().is_ok()
    }

    #[test]
    fn identifies_as_a_pl011_primecell() {
        let (mut dev, _, _) = uart();
        let id: Vec<u32> = (0..8).map(|i| read32(&mut dev, 0xfe0 + 4 * i)).collect();
        let periph = id[0] | id[1] << 8 | id[2] << 16 | id[3] << 24;
        assert_eq!(periph & 0x000f_ffff, 0x0004_1011);
        assert_eq!(&id[4..], &[0x0d, 0xf0, 0x05, 0xb1]);
    }

    #[test]
    fn transmit_goes_to_the_sink_and_raises_tx_when_enabled() {
        let (mut dev, evt, out) = uart();
        write32(&mut dev, UARTDR, u32::from(b'h'));
        assert!(!fired(&evt), "TX interrupt masked");
        write32(&mut dev, UARTIMSC, INT_TX);
        assert!(fired(&evt), "enabling TX with an empty FIFO interrupts");
        write32(&mut dev, UARTDR, u32::from(b'i'));
        assert!(fired(&evt));
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
        assert_eq!(
            read32(&mut dev, UARTFR) & (FR_TXFE | FR_RXFE),
            FR_TXFE | FR_RXFE
        );
        assert_eq!(read32(&mut dev, UARTMIS), INT_TX);
    }

    #[test]
    fn receive_fifo_fills_flags_and_drains() {
        let (mut dev, evt, _) = uart();
        write32(&mut dev, UARTIMSC, INT_RX | INT_RT);
        assert!(!fired(&evt));
        dev.enqueue_input(b"ab");
        assert!(fired(&evt));
        assert_eq!(read32(&mut dev, UARTMIS), INT_RX | INT_RT);
        assert_eq!(read32(&mut dev, UARTFR) & FR_RXFE, 0);
        assert_eq!(read32(&mut dev, UARTDR), u32::from(b'a'));
        assert_eq!(read32(&mut dev, UARTDR), u32::from(b'b'));
        assert_eq!(read32(&mut dev, UARTFR) & FR_RXFE, FR_RXFE);
        assert_eq!(read32(&mut dev, UARTMIS), 0);
        // An empty FIFO reads as 0, never panics.
        assert_eq!(read32(&mut dev, UARTDR), 0);
    }

    #[test]
    fn overflowing_input_is_dropped_not_grown() {
        let (mut dev, _, _) = uart();
        dev.enqueue_input(&[b'x'; 100]);
        assert_eq!(dev.input_capacity(), 0);
        assert_eq!(read32(&mut dev, UARTFR) & FR_RXFF, FR_RXFF);
        dev.enqueue_input(b"y");
        assert_eq!(dev.state().rx_fifo.len(), FIFO_SIZE);
    }

    #[test]
    fn icr_clears_rx_but_tx_stays_while_the_fifo_is_empty() {
        let (mut dev, _, _) = uart();
        dev.enqueue_input(b"z");
        write32(&mut dev, UARTICR, INT_ALL);
        assert_eq!(read32(&mut dev, UARTRIS), INT_TX);
    }

    #[test]
    fn hostile_accesses_are_harmless() {
        let (mut dev, _, _) = uart();
        let mut one = [0u8; 1];
        dev.read(0, 0xfff, &mut one);
        dev.read(0, 0x7ff0, &mut [0u8; 8]);
        dev.write(0, 0x3, &[1, 2, 3, 4, 5, 6]);
        dev.write(0, 0x18, &[0xff; 4]);
        write32(&mut dev, 0x9999, 1);
        assert_eq!(read32(&mut dev, UARTCR), CR_RESET);
    }

    #[test]
    fn state_round_trips_and_bad_state_is_refused() {
        let (mut dev, evt, _) = uart();
        write32(&mut dev, UARTLCR_H, 0x70);
        write32(&mut dev, UARTIMSC, INT_RX);
        dev.enqueue_input(b"q");
        let _ = fired(&evt);
        let saved = dev.state();
        let (mut other, evt2, _) = uart();
        other.restore_state(&saved).unwrap();
        assert!(fired(&evt2), "pending RX raised again");
        assert_eq!(other.state(), saved);
        assert_eq!(read32(&mut other, UARTDR), u32::from(b'q'));

        let mut bad = saved.clone();
        bad.rx_fifo = vec![0; FIFO_SIZE + 1];
        assert!(other.restore_state(&bad).is_err());
        bad = saved;
        bad.version = 9;
        assert!(other.restore_state(&bad).is_err());
    }
}
