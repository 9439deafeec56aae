//! The common configuration structure (virtio 1.2 §4.1.4.3): feature
//! negotiation, device status (reset, FEATURES_OK, DRIVER_OK → activation)
//! and per-queue setup through `queue_select`.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddressSpace;

use super::{VirtioPciDevice, COMMON_CFG_SIZE, VIRTIO_MSI_NO_VECTOR};
use crate::device::ActivatedQueue;

/// Device status bits (virtio 1.2 §2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// The driver knows how to drive the device.
pub const STATUS_DRIVER: u8 = 2;
/// The driver is set up and ready to drive the device.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// The device hit an error it cannot recover from without a reset.
pub const STATUS_NEEDS_RESET: u8 = 0x40;
/// The driver gave up on the device.
pub const STATUS_FAILED: u8 = 0x80;

/// Feature bit: virtio 1.x device (modern interface).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit: `used_event`/`avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Field offsets in the common configuration.
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

/// Which ring address a write targets.
#[derive(Clone, Copy)]
enum Ring {
    Desc,
    Driver,
    Device,
}

impl VirtioPciDevice {
    /// The selected queue, if `queue_select` names one.
    fn selected(&self) -> Option<&Queue> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// Device status as the driver reads it.
    pub(super) fn status(&self) -> u8 {
        self.device_status
            | if self.needs_reset || (self.activated && self.device.needs_reset()) {
                STATUS_NEEDS_RESET
            } else {
                0
            }
    }

    /// The common configuration as bytes, for reads at any offset/width.
    fn common_image(&self) -> [u8; COMMON_CFG_SIZE as usize] {
        let mut b = [0u8; COMMON_CFG_SIZE as usize];
        let mut put = |off: u64, bytes: &[u8]| {
            let off = off as usize;
            b[off..off + bytes.len()].copy_from_slice(bytes);
        };
        let features = self.device.features();
        let device_feature = match self.device_feature_select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        let driver_feature = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        put(
            DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        put(DEVICE_FEATURE, &device_feature.to_le_bytes());
        put(
            DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        put(DRIVER_FEATURE, &driver_feature.to_le_bytes());
        put(
            CONFIG_MSIX_VECTOR,
            &self.interrupt.config_vector().to_le_bytes(),
        );
        put(NUM_QUEUES, &(self.queues.len() as u16).to_le_bytes());
        put(DEVICE_STATUS, &[self.status()]);
        put(CONFIG_GENERATION, &[self.config_generation]);
        put(QUEUE_SELECT, &self.queue_select.to_le_bytes());
        let q = usize::from(self.queue_select);
        if let Some(queue) = self.selected() {
            put(QUEUE_SIZE, &queue.size().to_le_bytes());
            put(
                QUEUE_MSIX_VECTOR,
                &self.interrupt.queue_vector(q).to_le_bytes(),
            );
            put(QUEUE_ENABLE, &u16::from(queue.ready()).to_le_bytes());
            put(QUEUE_NOTIFY_OFF, &self.queue_select.to_le_bytes());
            put(QUEUE_DESC, &queue.desc_table().to_le_bytes());
            put(QUEUE_DRIVER, &queue.avail_ring().to_le_bytes());
            put(QUEUE_DEVICE, &queue.used_ring().to_le_bytes());
        } else {
            // No such queue: size 0 tells the driver it does not exist.
            put(QUEUE_MSIX_VECTOR, &VIRTIO_MSI_NO_VECTOR.to_le_bytes());
        }
        b
    }

    /// Guest read of the common configuration.
    pub(super) fn common_read(&self, offset: u64, data: &mut [u8]) {
        let image = self.common_image();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| image.get(o as usize).copied())
                .unwrap_or(0);
        }
    }

    /// Guest write of the common configuration; only naturally sized
    /// accesses to writable fields have an effect.
    pub(super) fn common_write(&mut self, offset: u64, data: &[u8]) {
        let v = data
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v as u32,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v as u32,
            (DRIVER_FEATURE, 4) => self.write_driver_features(v as u32),
            (CONFIG_MSIX_VECTOR, 2) => self.interrupt.set_config_vector(v as u16),
            (DEVICE_STATUS, 1) => self.write_status(v as u8),
            (QUEUE_SELECT, 2) => self.queue_select = v as u16,
            (QUEUE_SIZE, 2) => self.with_queue(|q, _| {
                if q.try_set_size(v as u16).is_err() {
                    log::debug!("virtio-pci: ignoring queue size {v}");
                }
            }),
            (QUEUE_MSIX_VECTOR, 2) => {
                let sel = usize::from(self.queue_select);
                if self.queue_writable() {
                    self.interrupt.set_queue_vector(sel, v as u16);
                }
            }
            (QUEUE_ENABLE, 2) => self.with_queue(|q, _| {
                // Writing 0 is not allowed (virtio 1.2 §4.1.4.3.2).
                if v == 1 {
                    q.set_ready(true);
                }
            }),
            (QUEUE_DESC, 4 | 8) => self.write_ring(Ring::Desc, Some(v), data.len() == 8),
            (QUEUE_DRIVER, 4 | 8) => self.write_ring(Ring::Driver, Some(v), data.len() == 8),
            (QUEUE_DEVICE, 4 | 8) => self.write_ring(Ring::Device, Some(v), data.len() == 8),
            _ => {}
        }
        // High halves of the ring addresses (handled apart: `v` is the high dword).
        if data.len() == 4 {
            let high = Some(v as u32);
            match offset {
                o if o == QUEUE_DESC + 4 => {
                    self.with_queue(|q, _| q.set_desc_table_address(None, high))
                }
                o if o == QUEUE_DRIVER + 4 => {
                    self.with_queue(|q, _| q.set_avail_ring_address(None, high))
                }
                o if o == QUEUE_DEVICE + 4 => {
                    self.with_queue(|q, _| q.set_used_ring_address(None, high))
                }
                _ => {}
            }
        }
    }

    /// Queue fields may change until DRIVER_OK (and not after an error).
    fn queue_writable(&self) -> bool {
        self.device_status & STATUS_DRIVER_OK == 0
            && usize::from(self.queue_select) < self.queues.len()
    }

    /// Runs `f` on the selected queue if queue fields are writable.
    fn with_queue(&mut self, f: impl FnOnce(&mut Queue, usize)) {
        if !self.queue_writable() {
            return;
        }
        let sel = usize::from(self.queue_select);
        if let Some(q) = self.queues.get_mut(sel) {
            f(q, sel);
        }
    }

    /// Low-half (or full 64-bit) write of a ring address.
    fn write_ring(&mut self, ring: Ring, value: Option<u64>, full: bool) {
        let Some(v) = value else {
            return;
        };
        let low = Some(v as u32);
        let high = full.then_some((v >> 32) as u32);
        self.with_queue(|q, _| match ring {
            Ring::Desc => q.set_desc_table_address(low, high),
            Ring::Driver => q.set_avail_ring_address(low, high),
            Ring::Device => q.set_used_ring_address(low, high),
        });
    }

    /// `driver_feature` write for the half `driver_feature_select` names;
    /// frozen once FEATURES_OK is set.
    fn write_driver_features(&mut self, v: u32) {
        if self.device_status & STATUS_FEATURES_OK != 0 {
            return;
        }
        let v = u64::from(v);
        self.driver_features = match self.driver_feature_select {
            0 => (self.driver_features & !0xffff_ffff) | v,
            1 => (self.driver_features & 0xffff_ffff) | (v << 32),
            _ => self.driver_features,
        };
    }

    /// `device_status` write: reset, feature check, activation.
    fn write_status(&mut self, value: u8) {
        let value = value & !STATUS_NEEDS_RESET;
        if value == 0 {
            self.reset();
            return;
        }
        let current = self.device_status;
        if current & !value != 0 {
            log::warn!(
                "{}: driver cleared status bits ({current:#x} -> {value:#x}); ignored",
                self.device.name()
            );
            return;
        }
        let new = value & !current;
        self.device_status = value;
        if new & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            let accepted = self.driver_features;
            if accepted & !offered != 0 || accepted & VIRTIO_F_VERSION_1 == 0 {
                log::warn!(
                    "{}: driver features {accepted:#x} not acceptable (offered {offered:#x})",
                    self.device.name()
                );
                self.device_status &= !STATUS_FEATURES_OK;
            } else {
                self.device.ack_features(accepted);
            }
        }
        if new & STATUS_DRIVER_OK != 0 {
            if self.device_status & STATUS_FEATURES_OK == 0 {
                log::warn!("{}: DRIVER_OK before FEATURES_OK", self.device.name());
                self.device_status &= !STATUS_DRIVER_OK;
                self.needs_reset = true;
            } else if self.activated {
                // Still running: an earlier reset of the device failed.
                self.needs_reset = true;
            } else if let Err(e) = self.activate_queues(None) {
                log::error!("{}: activation failed: {e}", self.device.name());
                self.needs_reset = true;
            }
        }
    }

    /// Validates the enabled queues (all of them, or those in `only`) and
    /// starts the device with them; ring positions come from the queues.
    pub(super) fn activate_queues(&mut self, only: Option<&[u16]>) -> Result<(), String> {
        let mem = self.mem.memory();
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut activated = Vec::new();
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready() || only.is_some_and(|o| !o.contains(&(i as u16))) {
                continue;
            }
            if !q.is_valid(&*mem) {
                return Err(format!("queue {i} is not valid"));
            }
            let mut queue = Queue::try_from(q.state()).map_err(|e| format!("queue {i}: {e:?}"))?;
            queue.set_event_idx(event_idx);
            let notify = self.notify_evts[i]
                .try_clone()
                .map_err(|e| format!("queue {i} eventfd: {e}"))?;
            activated.push(ActivatedQueue {
                index: i as u16,
                queue,
                notify,
            });
        }
        drop(mem);
        self.device
            .activate(self.mem.clone(), self.interrupt.clone(), activated)
            .map_err(|e| e.to_string())?;
        self.activated = true;
        Ok(())
    }

    /// Device reset (status 0): stops the device and returns every transport
    /// field to its initial value. MSI-X table state is PCI state and stays.
    pub(super) fn reset(&mut self) {
        let mut ok = true;
        if self.activated {
            ok = self.device.reset();
            if !ok {
                log::error!("{}: device cannot be reset", self.device.name());
            }
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.reset();
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.device_status = 0;
        self.queue_select = 0;
        // A device that could not stop stays "activated" so it is not
        // started twice; the driver sees NEEDS_RESET at its next DRIVER_OK.
        // The status itself reads 0, as drivers wait for that after a reset.
        self.activated = !ok;
        self.paused = false;
        self.paused_queues.clear();
        self.needs_reset = false;
    }
}
