//! The modern (virtio 1.x) virtio-pci transport (virtio 1.2 §4.1).
//!
//! One 64-bit memory BAR0 holds every structure the driver uses:
//!
//! | offset   | what                                   |
//! |----------|----------------------------------------|
//! | `0x0000` | common configuration (`0x38` bytes)    |
//! | `0x1000` | ISR status (1 byte, read-to-clear)     |
//! | `0x2000` | device-specific configuration          |
//! | `0x3000` | notifications, 4 bytes per queue       |
//! | `0x4000` | MSI-X table (16 bytes per vector)      |
//! | `0x6000` | MSI-X pending-bit array                |
//!
//! The driver finds them through vendor capabilities in config space; the
//! `VIRTIO_PCI_CAP_PCI_CFG` window gives config-space access to the BAR too.
//! Queue notifications are writes to the notify region: the VMM registers
//! [`VirtioPciDevice::ioeventfds`] with KVM so they never exit to userspace;
//! a trapped write signals the same eventfd.

mod common_config;
mod interrupt;
mod state;
#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use devices::pci::msix::{msix_capability_body, MSIX_CAPABILITY_ID};
use devices::pci::{
    BarReprogram, BarRequest, ConfigError, MsiInterruptGroup, MsixError, MsixTable,
    PciConfiguration, PciDevice, PciHeaderIds,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use common_config::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
    STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
pub use interrupt::{VirtioPciInterrupt, ISR_CONFIG, ISR_QUEUE};
pub use state::{VirtioPciState, VirtioQueueState, VIRTIO_PCI_STATE_VERSION};

use crate::device::{GuestMemory, VirtioDevice, VirtioInterrupt, VirtioInterruptType};

/// PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern virtio PCI device IDs are this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem ID of our devices (modern devices use 0x40 and up).
const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x40;
/// Revision ID: 1 marks a modern-only (non-transitional) device.
const VIRTIO_PCI_REVISION: u8 = 1;
/// MSI-X "no vector" value in the common configuration.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;
/// Most queues a device behind this transport may have.
pub const MAX_QUEUES: usize = 256;

/// Size of BAR0.
pub const BAR0_SIZE: u64 = 0x8000;
/// BAR0 offset of the common configuration.
const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Bytes of the common configuration structure (virtio 1.2 without the
/// optional `queue_notif_config_data`/`queue_reset` fields).
const COMMON_CFG_SIZE: u64 = 0x38;
/// BAR0 offset of the ISR status byte.
const ISR_OFFSET: u64 = 0x1000;
/// BAR0 offset of the device configuration.
const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Bytes of BAR0 given to the device configuration.
const DEVICE_CFG_SIZE: u64 = 0x1000;
/// BAR0 offset of the notification region.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes of BAR0 given to notifications.
const NOTIFY_SIZE: u64 = 0x1000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// BAR0 offset of the MSI-X table.
const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// BAR0 offset of the MSI-X pending-bit array.
const MSIX_PBA_OFFSET: u64 = 0x6000;

/// Vendor-specific PCI capability ID (virtio structures).
const PCI_CAP_ID_VENDOR: u8 = 0x09;
/// `cfg_type` values of virtio PCI capabilities.
const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;
/// Bytes of `struct virtio_pci_cap`.
const VIRTIO_PCI_CAP_LEN: u8 = 16;
/// Offsets inside the `VIRTIO_PCI_CAP_PCI_CFG` capability.
const PCI_CFG_CAP_BAR: usize = 4;
const PCI_CFG_CAP_OFFSET: usize = 8;
const PCI_CFG_CAP_LENGTH: usize = 12;
const PCI_CFG_CAP_DATA: usize = 16;

/// Errors from building a virtio-pci device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The device has no queues or more than [`MAX_QUEUES`].
    #[error("unsupported number of queues: {0}")]
    QueueCount(usize),
    /// A queue's maximum size is not a power of two in 1..=32768.
    #[error("invalid maximum size {size} of queue {index}")]
    QueueSize {
        /// Queue index.
        index: usize,
        /// The size the device reported.
        size: u16,
    },
    /// Building the config header failed.
    #[error("PCI configuration: {0}")]
    Config(#[from] ConfigError),
    /// Building the MSI-X table failed.
    #[error("MSI-X: {0}")]
    Msix(#[from] MsixError),
    /// Creating a notification eventfd failed.
    #[error("creating a queue eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The device could not be paused (its worker is gone).
    #[error("pausing the device: {0}")]
    Pause(String),
    /// The device could not be (re)started after a resume or restore.
    #[error("activating the device: {0}")]
    Activate(String),
    /// The device could not take hot-added guest memory.
    #[error("hot-added memory: {0}")]
    Memory(String),
    /// [`VirtioPciDevice::state`] on a running device: pause it first.
    #[error("the device is running; pause it before saving its state")]
    NotPaused,
    /// Saved state that does not fit this device.
    #[error("virtio-pci state mismatch: {0}")]
    State(String),
}

/// Number of MSI-X vectors the transport gives `device` (one per queue and
/// one for configuration changes): the size of the `MsiInterruptGroup` the
/// VMM must create for it.
pub fn msix_vectors_for(device: &dyn VirtioDevice) -> u16 {
    (device.queue_max_sizes().len().min(MAX_QUEUES) + 1) as u16
}

/// PCI class and subclass for a virtio device type.
fn class_for(device_type: u32) -> (u8, u8) {
    match device_type {
        1 => (0x02, 0x00), // network controller
        2 => (0x01, 0x00), // mass storage
        3 => (0x07, 0x80), // communication, other
        _ => (0xff, 0x00), // unassigned class
    }
}

/// A virtio device on PCI: its config header, BAR0 and the driver-visible
/// transport state.
pub struct VirtioPciDevice {
    config: PciConfiguration,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<VirtioPciInterrupt>,
    queues: Vec<Queue>,
    notify_evts: Vec<EventFd>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    /// Status bits the driver set (DEVICE_NEEDS_RESET kept apart).
    device_status: u8,
    needs_reset: bool,
    config_generation: u8,
    queue_select: u16,
    activated: bool,
    /// The worker is stopped by [`Self::pause`]; `queues` hold its rings.
    paused: bool,
    /// Queues the paused device gave back (resumed with exactly those).
    paused_queues: Vec<u16>,
    msix_cap: usize,
    pci_cfg_cap: usize,
}

impl VirtioPciDevice {
    /// Wraps `device`; MSI-X messages go to `msi`, which must have
    /// [`msix_vectors_for`]`(device)` vectors.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        msi: Arc<dyn MsiInterruptGroup>,
    ) -> Result<Self, VirtioPciError> {
        let max_sizes = device.queue_max_sizes().to_vec();
        let num_queues = max_sizes.len();
        if num_queues == 0 || num_queues > MAX_QUEUES {
            return Err(VirtioPciError::QueueCount(num_queues));
        }
        let mut queues = Vec::with_capacity(num_queues);
        let mut notify_evts = Vec::with_capacity(num_queues);
        for (index, &size) in max_sizes.iter().enumerate() {
            queues.push(Queue::new(size).map_err(|_| VirtioPciError::QueueSize { index, size })?);
            notify_evts.push(EventFd::new(EFD_NONBLOCK).map_err(VirtioPciError::EventFd)?);
        }
        let num_vectors = (num_queues + 1) as u16;
        let msix = MsixTable::new(num_vectors, msi)?;
        let interrupt = Arc::new(VirtioPciInterrupt::new(msix, num_queues));

        let device_type = device.device_type();
        let (class_code, subclass) = class_for(device_type);
        let mut config = PciConfiguration::new(PciHeaderIds {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id: VIRTIO_PCI_DEVICE_ID_BASE.wrapping_add(device_type as u16),
            revision_id: VIRTIO_PCI_REVISION,
            class_code,
            subclass,
            prog_if: 0,
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
        });
        config.add_bar(&Self::bar0_request())?;
        let notify_len = num_queues as u32 * NOTIFY_OFF_MULTIPLIER;
        let regions = [
            (
                VIRTIO_PCI_CAP_COMMON_CFG,
                COMMON_CFG_OFFSET,
                COMMON_CFG_SIZE as u32,
            ),
            (VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1),
            (
                VIRTIO_PCI_CAP_DEVICE_CFG,
                DEVICE_CFG_OFFSET,
                DEVICE_CFG_SIZE as u32,
            ),
        ];
        for (cfg_type, offset, len) in regions {
            config.add_capability(
                PCI_CAP_ID_VENDOR,
                &virtio_cap_body(cfg_type, 0, offset, len, 0),
            )?;
        }
        let mut notify =
            virtio_cap_body(VIRTIO_PCI_CAP_NOTIFY_CFG, 0, NOTIFY_OFFSET, notify_len, 4);
        notify.extend_from_slice(&NOTIFY_OFF_MULTIPLIER.to_le_bytes());
        config.add_capability(PCI_CAP_ID_VENDOR, &notify)?;
        // PCI_CFG: bar, offset, length and the data window are writable.
        let mut body = virtio_cap_body(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 0, 4);
        body.extend_from_slice(&[0; 4]);
        let mut mask = vec![0u8; body.len()];
        mask[PCI_CFG_CAP_BAR - 2] = 0xff;
        mask[PCI_CFG_CAP_OFFSET - 2..].fill(0xff);
        let pci_cfg_cap = config.add_capability_with_mask(PCI_CAP_ID_VENDOR, &body, &mask)?;
        let (body, mask) = msix_capability_body(
            num_vectors,
            0,
            MSIX_TABLE_OFFSET as u32,
            MSIX_PBA_OFFSET as u32,
        );
        let msix_cap = config.add_capability_with_mask(MSIX_CAPABILITY_ID, &body, &mask)?;

        Ok(Self {
            config,
            device,
            mem,
            interrupt,
            queues,
            notify_evts,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            device_status: 0,
            needs_reset: false,
            config_generation: 0,
            queue_select: 0,
            activated: false,
            paused: false,
            paused_queues: Vec::new(),
            msix_cap,
            pci_cfg_cap,
        })
    }

    /// BAR0 as the transport needs it.
    fn bar0_request() -> BarRequest {
        BarRequest {
            index: 0,
            size: BAR0_SIZE,
            is_64bit: true,
            prefetchable: false,
        }
    }

    /// Where BAR0 is decoded now (follows guest reprogramming).
    pub fn bar0_base(&self) -> Option<u64> {
        self.config.bar_base(0)
    }

    /// The notification address of every queue for BAR0 at `bar0_base`, with
    /// the eventfd a write there must signal. The VMM registers them with
    /// KVM_IOEVENTFD (any access length, no datamatch) and moves them when
    /// the guest moves BAR0.
    pub fn ioeventfds(&self, bar0_base: u64) -> Vec<(u64, &EventFd)> {
        self.notify_evts
            .iter()
            .enumerate()
            .filter_map(|(q, evt)| {
                let off = NOTIFY_OFFSET + q as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
                bar0_base.checked_add(off).map(|addr| (addr, evt))
            })
            .collect()
    }

    /// The interrupt the device raises through (ISR + MSI-X).
    pub fn interrupt(&self) -> Arc<VirtioPciInterrupt> {
        self.interrupt.clone()
    }

    /// The wrapped device's name, for logs.
    pub fn name(&self) -> &str {
        self.device.name()
    }

    /// Whether the device is running (DRIVER_OK accepted and activated).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Hands the device guest RAM that was hot-added (`mem`, already in the
    /// shared map; see [`VirtioDevice::memory_added`]). On failure the
    /// device reports DEVICE_NEEDS_RESET and the driver gets a
    /// configuration interrupt to notice.
    pub fn memory_added(&mut self, mem: &GuestMemoryMmap) -> Result<(), VirtioPciError> {
        self.device.memory_added(mem).map_err(|e| {
            if self.activated {
                let _ = self.interrupt.trigger(VirtioInterruptType::Config);
            }
            VirtioPciError::Memory(e.to_string())
        })
    }

    /// Guest read of BAR0.
    fn bar0_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        let within = |start: u64, size: u64| {
            offset >= start && offset.checked_add(len).is_some_and(|e| e <= start + size)
        };
        if within(COMMON_CFG_OFFSET, COMMON_CFG_SIZE) {
            self.common_read(offset - COMMON_CFG_OFFSET, data);
        } else if offset == ISR_OFFSET && !data.is_empty() {
            data[0] = self.interrupt.read_and_clear_isr();
        } else if within(DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE) {
            self.device.read_config(offset - DEVICE_CFG_OFFSET, data);
        } else if within(MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) {
            self.interrupt
                .msix()
                .table_read(offset - MSIX_TABLE_OFFSET, data);
        } else if within(MSIX_PBA_OFFSET, BAR0_SIZE - MSIX_PBA_OFFSET) {
            self.interrupt
                .msix()
                .pba_read(offset - MSIX_PBA_OFFSET, data);
        }
    }

    /// Guest write of BAR0.
    fn bar0_write(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        let within = |start: u64, size: u64| {
            offset >= start && offset.checked_add(len).is_some_and(|e| e <= start + size)
        };
        if within(COMMON_CFG_OFFSET, COMMON_CFG_SIZE) {
            self.common_write(offset - COMMON_CFG_OFFSET, data);
        } else if within(DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE) {
            self.device.write_config(offset - DEVICE_CFG_OFFSET, data);
        } else if within(NOTIFY_OFFSET, NOTIFY_SIZE) {
            let q = (offset - NOTIFY_OFFSET) / u64::from(NOTIFY_OFF_MULTIPLIER);
            if let Some(evt) = usize::try_from(q)
                .ok()
                .and_then(|q| self.notify_evts.get(q))
            {
                if let Err(e) = evt.write(1) {
                    log::warn!("{}: queue {q} notification lost: {e}", self.device.name());
                }
            }
        } else if within(MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) {
            self.interrupt
                .msix()
                .table_write(offset - MSIX_TABLE_OFFSET, data);
        }
    }

    /// Whether `[offset, offset + len)` touches config bytes `[at, at + n)`.
    fn overlaps(offset: u64, len: usize, at: usize, n: usize) -> bool {
        let (at, n) = (at as u64, n as u64);
        offset < at + n && offset.saturating_add(len as u64) > at
    }

    /// The BAR access the PCI_CFG capability selects: (bar, offset, length),
    /// if valid (BAR0, length 1/2/4, naturally aligned, inside the BAR).
    fn pci_cfg_access(&self) -> Option<(u64, usize)> {
        let cap = self.pci_cfg_cap;
        let bar = self.config.read_u32(cap + PCI_CFG_CAP_BAR) as u8;
        let offset = u64::from(self.config.read_u32(cap + PCI_CFG_CAP_OFFSET));
        let length = self.config.read_u32(cap + PCI_CFG_CAP_LENGTH) as usize;
        let ok = bar == 0
            && matches!(length, 1 | 2 | 4)
            && offset % length as u64 == 0
            && offset + length as u64 <= BAR0_SIZE;
        ok.then_some((offset, length))
    }
}

/// Body (after ID and next pointer) of a `virtio_pci_cap` of `extra` more
/// bytes than the basic 16.
fn virtio_cap_body(cfg_type: u8, bar: u8, offset: u64, length: u32, extra: u8) -> Vec<u8> {
    let mut b = vec![VIRTIO_PCI_CAP_LEN + extra, cfg_type, bar, 0, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&length.to_le_bytes());
    b
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        let data_at = self.pci_cfg_cap + PCI_CFG_CAP_DATA;
        if Self::overlaps(offset, data.len(), data_at, 4) {
            if let Some((bar_off, len)) = self.pci_cfg_access() {
                let mut buf = [0u8; 4];
                self.bar0_read(bar_off, &mut buf[..len]);
                self.config.write_unmasked(data_at, &buf);
            }
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u64, data: &[u8]) -> Vec<BarReprogram> {
        let moved = self.config.write(offset, data);
        let control_at = self.msix_cap + 2;
        if Self::overlaps(offset, data.len(), control_at, 2) {
            let control = self.config.read_u32(control_at) as u16;
            self.interrupt.msix().set_control(control);
        }
        let data_at = self.pci_cfg_cap + PCI_CFG_CAP_DATA;
        if Self::overlaps(offset, data.len(), data_at, 4) {
            if let Some((bar_off, len)) = self.pci_cfg_access() {
                let value = self.config.read_u32(data_at).to_le_bytes();
                self.bar0_write(bar_off, &value[..len]);
            }
        }
        moved
    }

    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]) {
        if index == 0 {
            self.bar0_read(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) {
        if index == 0 {
            self.bar0_write(offset, data);
        }
    }

    fn bar_requests(&self) -> Vec<BarRequest> {
        vec![Self::bar0_request()]
    }

    fn set_bar_base(&mut self, index: u8, base: u64) {
        if let Err(e) = self.config.set_bar_base(index, base) {
            log::error!(
                "{}: cannot place BAR {index} at {base:#x}: {e}",
                self.device.name()
            );
        }
    }
}
