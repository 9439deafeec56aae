//! 16550A UART (COM1) backed by `vm_superio::Serial`.
//!
//! Guest output goes to an optional host sink; host input is queued into the
//! receive FIFO. The interrupt line is an [`EventFd`] the VMM registers as a
//! KVM irqfd (IRQ 4 for COM1).

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{Error as SerialError, NoEvents, SerialState};
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use super::{check_version, EventFdTrigger, StateError};
use crate::bus::BusDevice;

/// Number of byte registers a 16550 decodes.
const UART_REGISTERS: u64 = 8;
/// Bytes the 16550 receive FIFO holds (as `vm_superio`).
const FIFO_SIZE: usize = 64;

/// Version of [`SerialDeviceState`] this code writes and reads.
pub const SERIAL_STATE_VERSION: u32 = 1;

/// A snapshot of the UART registers and receive FIFO (a serde mirror of
/// `vm_superio`'s `SerialState`, which has no serde support).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SerialDeviceState {
    /// Format version ([`SERIAL_STATE_VERSION`]).
    pub version: u32,
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Bytes waiting in the receive FIFO (at most 64).
    pub in_buffer: Vec<u8>,
}

/// Host output sink type.
type Sink = Box<dyn Write + Send>;

/// A 16550A serial port on the port-I/O bus.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, Sink>,
}

impl SerialDevice {
    /// Creates a UART that raises `interrupt` and writes guest output to
    /// `out` (`None` discards it). Every byte is flushed as it is written.
    pub fn new(interrupt: EventFd, out: Option<Box<dyn Write + Send>>) -> Self {
        let out = out.unwrap_or_else(|| Box::new(std::io::sink()));
        Self {
            serial: Serial::new(EventFdTrigger(interrupt), out),
        }
    }

    /// Pushes host input towards the guest. Bytes that do not fit in the
    /// 64-byte receive FIFO are dropped (logged at debug level).
    pub fn enqueue_input(&mut self, bytes: &[u8]) {
        match self.serial.enqueue_raw_bytes(bytes) {
            Ok(n) if n < bytes.len() => {
                log::debug!(
                    "serial: receive FIFO full, dropped {} bytes",
                    bytes.len() - n
                );
            }
            Ok(_) => {}
            Err(SerialError::FullFifo) => {
                log::debug!("serial: receive FIFO full, dropped {} bytes", bytes.len());
            }
            Err(e) => log::warn!("serial: queueing input: {e}"),
        }
    }

    /// Free space in the receive FIFO, so callers can avoid dropping input.
    pub fn input_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// Saves the registers and the receive FIFO.
    pub fn state(&self) -> SerialDeviceState {
        let s = self.serial.state();
        SerialDeviceState {
            version: SERIAL_STATE_VERSION,
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Restores a state saved by [`Self::state`], keeping this device's
    /// interrupt eventfd and output sink. An interrupt the restored
    /// registers say is asserted is raised again. Nothing changes on error.
    pub fn restore_state(&mut self, state: &SerialDeviceState) -> Result<(), StateError> {
        const DEV: &str = "serial";
        check_version(DEV, state.version, SERIAL_STATE_VERSION)?;
        if state.in_buffer.len() > FIFO_SIZE {
            return Err(StateError::Invalid {
                device: DEV,
                reason: format!("{} bytes in a {FIFO_SIZE}-byte FIFO", state.in_buffer.len()),
            });
        }
        let io = |source| StateError::Io {
            device: DEV,
            source,
        };
        let evt = self.serial.interrupt_evt().0.try_clone().map_err(io)?;
        let spare = evt.try_clone().map_err(io)?;
        let placeholder: Sink = Box::new(std::io::sink());
        let old = std::mem::replace(
            &mut self.serial,
            Serial::new(EventFdTrigger(spare), placeholder),
        );
        let out = old.into_writer();
        let saved = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        // The FIFO size was checked, so only raising the interrupt can
        // fail, which takes an eventfd counter overflow.
        self.serial =
            Serial::from_state(&saved, EventFdTrigger(evt), NoEvents, out).map_err(|e| {
                StateError::Invalid {
                    device: DEV,
                    reason: e.to_string(),
                }
            })?;
        Ok(())
    }
}

/// Returns the register index for a meaningful (1-byte, in-range) access.
fn register(offset: u64, len: usize) -> Option<u8> {
    (len == 1 && offset < UART_REGISTERS).then_some(offset as u8)
}

/// UART register offsets and bits the level-triggered RX emulation uses.
const IER: u8 = 1;
const IIR: u8 = 2;
const LCR: u8 = 3;
const IER_RDA: u8 = 0x01;
const IIR_NO_INTERRUPT: u8 = 0x01;
const IIR_ID_MASK: u8 = 0x0f;
const IIR_RDA: u8 = 0x04;
const LCR_DLAB: u8 = 0x80;
/// Receive FIFO size of the emulated 16550A.
const RX_FIFO_SIZE: usize = 64;

impl SerialDevice {
    /// A 16550's "received data available" interrupt is a level: IIR
    /// reports it for as long as the receive FIFO holds data and RDA is
    /// enabled. vm-superio clears it on every IIR read and sets it again
    /// only when new bytes arrive, so a driver that stops reading with
    /// bytes left (Linux reads at most 256 per interrupt, while chv keeps
    /// refilling the FIFO) would never hear about them until more input
    /// came. Report RDA here whenever that condition holds.
    fn level_rx_iir(&mut self, iir: u8) -> u8 {
        let pending = self.serial.fifo_capacity() < RX_FIFO_SIZE;
        let dlab = self.serial.read(LCR) & LCR_DLAB != 0;
        if iir & IIR_NO_INTERRUPT == 0 || !pending || dlab {
            return iir;
        }
        if self.serial.read(IER) & IER_RDA == 0 {
            return iir;
        }
        (iir & !IIR_ID_MASK) | IIR_RDA
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match register(offset, data.len()) {
            Some(IIR) => {
                let iir = self.serial.read(IIR);
                data[0] = self.level_rx_iir(iir);
            }
            Some(reg) => data[0] = self.serial.read(reg),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(reg) = register(offset, data.len()) else {
            return;
        };
        if let Err(e) = self.serial.write(reg, data[0]) {
            // Output sink gone or interrupt failed: the guest keeps running.
            log::debug!("serial: write to register {reg}: {e}");
        }
    }
}

impl super::ConsoleInput for SerialDevice {
    fn enqueue_input(&mut self, bytes: &[u8]) {
        SerialDevice::enqueue_input(self, bytes);
    }

    fn input_capacity(&self) -> usize {
        SerialDevice::input_capacity(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const THR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LSR: u64 = 5;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn evt() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    fn read1(dev: &mut SerialDevice, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(0x3f8, offset, &mut b);
        b[0]
    }

    #[test]
    fn thr_write_reaches_sink_and_lsr_shows_empty() {
        let out = Shared::default();
        let mut dev = SerialDevice::new(evt(), Some(Box::new(out.clone())));
        for b in b"hi\n" {
            dev.write(0x3f8, THR, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
        let lsr = read1(&mut dev, LSR);
        assert_ne!(lsr & 0x20, 0, "THR empty");
        assert_ne!(lsr & 0x40, 0, "transmitter idle");
        assert_eq!(lsr & 0x01, 0, "no data ready");
    }

    #[test]
    fn input_sets_data_ready_and_raises_irq_when_enabled() {
        let irq = evt();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), None);
        // Interrupts disabled: data is queued but no interrupt fires.
        dev.enqueue_input(b"a");
        assert_ne!(read1(&mut dev, LSR) & 0x01, 0);
        assert!(irq.read().is_err(), "no interrupt while IER is 0");
        // Enabling the RX interrupt with data pending asserts it.
        dev.write(0x3f8, IER, &[0x01]);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(read1(&mut dev, IIR) & 0x0f, 0x04, "RX data available");
        assert_eq!(read1(&mut dev, THR), b'a');
        assert_eq!(read1(&mut dev, LSR) & 0x01, 0);
        // New input with IER set raises it directly.
        dev.enqueue_input(b"b");
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(read1(&mut dev, THR), b'b');
    }

    #[test]
    fn rx_interrupt_is_a_level_while_the_fifo_holds_data() {
        let irq = evt();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), None);
        dev.write(0x3f8, IER, &[0x01]);
        dev.enqueue_input(b"abc");
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(read1(&mut dev, IIR) & 0x0f, 0x04);
        // The driver reads one byte and leaves (as Linux does after its
        // per-interrupt budget): the next IIR read still reports data.
        assert_eq!(read1(&mut dev, THR), b'a');
        assert_eq!(read1(&mut dev, IIR) & 0x0f, 0x04, "data left: RDA");
        assert_eq!(read1(&mut dev, THR), b'b');
        assert_eq!(read1(&mut dev, THR), b'c');
        assert_eq!(
            read1(&mut dev, IIR) & 0x01,
            0x01,
            "FIFO empty: no interrupt"
        );
        // With RDA disabled, pending data does not show as an interrupt.
        dev.write(0x3f8, IER, &[0x00]);
        dev.enqueue_input(b"d");
        assert_eq!(read1(&mut dev, IIR) & 0x01, 0x01);
    }

    #[test]
    fn fifo_overflow_is_dropped_quietly() {
        let mut dev = SerialDevice::new(evt(), None);
        let cap = dev.input_capacity();
        dev.enqueue_input(&vec![b'x'; cap + 10]);
        assert_eq!(dev.input_capacity(), 0);
        dev.enqueue_input(b"more");
        for _ in 0..cap {
            assert_eq!(read1(&mut dev, THR), b'x');
        }
        assert_eq!(read1(&mut dev, LSR) & 0x01, 0);
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        let out = Shared::default();
        let mut dev = SerialDevice::new(evt(), Some(Box::new(out.clone())));
        let mut wide = [0u8; 8];
        dev.read(0x3f8, 0, &mut wide);
        assert_eq!(wide, [0xff; 8]);
        let mut one = [0u8; 1];
        dev.read(0x3f8, 8, &mut one);
        assert_eq!(one, [0xff]);
        dev.read(0x3f8, u64::MAX, &mut one);
        dev.read(0x3f8, 0, &mut []);
        dev.write(0x3f8, 0, &[1, 2, 3, 4, 5, 6, 7, 8]);
        dev.write(0x3f8, 0, &[]);
        dev.write(0x3f8, 256, b"z");
        dev.write(0x3f8, u64::MAX, b"z");
        assert!(out.0.lock().unwrap().is_empty());
    }

    #[test]
    fn state_round_trip_keeps_sink_and_raises_pending_irq() {
        let out = Shared::default();
        let irq = evt();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Some(Box::new(out.clone())));
        dev.write(0x3f8, 7, &[0x42]); // scratch
        dev.write(0x3f8, IER, &[0x01]);
        dev.enqueue_input(b"xy");
        irq.read().unwrap();
        let json = serde_json::to_string(&dev.state()).unwrap();
        let saved: SerialDeviceState = serde_json::from_str(&json).unwrap();

        let mut fresh = SerialDevice::new(irq.try_clone().unwrap(), Some(Box::new(out.clone())));
        fresh.restore_state(&saved).unwrap();
        assert_eq!(irq.read().unwrap(), 1, "RX interrupt raised again");
        assert_eq!(read1(&mut fresh, 7), 0x42);
        assert_eq!(read1(&mut fresh, THR), b'x');
        assert_eq!(read1(&mut fresh, THR), b'y');
        fresh.write(0x3f8, THR, b"!");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"!", "sink kept");

        let mut bad = saved.clone();
        bad.in_buffer = vec![0; 65];
        assert!(fresh.restore_state(&bad).is_err());
        bad = saved;
        bad.version = 9;
        assert!(fresh.restore_state(&bad).is_err());
    }
}
