//! How a virtio-pci device interrupts the driver: the ISR status byte plus
//! the MSI-X vector the driver chose for the queue or for config changes.

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};

use devices::pci::MsixTable;

use super::VIRTIO_MSI_NO_VECTOR;
use crate::device::{VirtioInterrupt, VirtioInterruptType};

/// ISR bit: a queue has used buffers.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: the device configuration changed.
pub const ISR_CONFIG: u8 = 2;

/// The transport side of [`VirtioInterrupt`]: shared by the transport (which
/// the driver programs) and the device worker (which triggers).
pub struct VirtioPciInterrupt {
    isr: AtomicU8,
    msix: Mutex<MsixTable>,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
}

impl VirtioPciInterrupt {
    /// Interrupt state for `num_queues` queues, every vector unassigned.
    pub(super) fn new(msix: MsixTable, num_queues: usize) -> Self {
        Self {
            isr: AtomicU8::new(0),
            msix: Mutex::new(msix),
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            queue_vectors: (0..num_queues)
                .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                .collect(),
        }
    }

    /// The MSI-X table.
    pub(super) fn msix(&self) -> MutexGuard<'_, MsixTable> {
        self.msix.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the ISR status and clears it (virtio 1.2 §4.1.4.5).
    pub(super) fn read_and_clear_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::AcqRel)
    }

    /// The ISR status without clearing it (snapshot).
    pub(super) fn isr(&self) -> u8 {
        self.isr.load(Ordering::Acquire)
    }

    /// Sets the ISR status (restore).
    pub(super) fn set_isr(&self, isr: u8) {
        self.isr
            .store(isr & (ISR_QUEUE | ISR_CONFIG), Ordering::Release);
    }

    /// Clears the ISR and unassigns every vector (device reset).
    pub(super) fn reset(&self) {
        self.isr.store(0, Ordering::Release);
        self.config_vector
            .store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        for v in &self.queue_vectors {
            v.store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        }
    }

    /// Validates a vector the driver wrote: in range or NO_VECTOR, anything
    /// else becomes NO_VECTOR (which the driver reads back as a failure).
    fn valid_vector(&self, vector: u16) -> u16 {
        if vector < self.msix().num_vectors() {
            vector
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    /// Vector of configuration-change interrupts.
    pub(super) fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::Acquire)
    }

    /// Sets the configuration-change vector.
    pub(super) fn set_config_vector(&self, vector: u16) {
        let v = self.valid_vector(vector);
        self.config_vector.store(v, Ordering::Release);
    }

    /// Vector of queue `q` (NO_VECTOR for unknown queues).
    pub(super) fn queue_vector(&self, q: usize) -> u16 {
        self.queue_vectors
            .get(q)
            .map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::Acquire))
    }

    /// Sets queue `q`'s vector.
    pub(super) fn set_queue_vector(&self, q: usize, vector: u16) {
        let v = self.valid_vector(vector);
        if let Some(slot) = self.queue_vectors.get(q) {
            slot.store(v, Ordering::Release);
        }
    }
}

impl VirtioInterrupt for VirtioPciInterrupt {
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()> {
        let (bit, vector) = match kind {
            VirtioInterruptType::Config => (ISR_CONFIG, self.config_vector()),
            VirtioInterruptType::Queue(q) => {
                let q = usize::from(q);
                if q >= self.queue_vectors.len() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("no queue {q}"),
                    ));
                }
                (ISR_QUEUE, self.queue_vector(q))
            }
        };
        self.isr.fetch_or(bit, Ordering::AcqRel);
        if vector == VIRTIO_MSI_NO_VECTOR {
            // No INTx line: the driver polls the ISR or has no vector yet.
            return Ok(());
        }
        self.msix().trigger(vector)
    }
}
