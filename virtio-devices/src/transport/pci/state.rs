//! Pausing a virtio-pci device and saving/restoring its whole state
//! (config space, MSI-X, transport registers, queues, device state).

use devices::pci::{MsixTableState, PciConfigurationState};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestAddressSpace;

use super::{VirtioPciDevice, VirtioPciError, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
use super::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_FAILED, VIRTIO_MSI_NO_VECTOR};

/// Version of [`VirtioPciState`] this code writes and reads.
pub const VIRTIO_PCI_STATE_VERSION: u32 = 1;

/// Status bits a driver can have set.
const STATUS_KNOWN: u8 =
    STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK | STATUS_FEATURES_OK | STATUS_FAILED;

/// One queue as the driver configured it, with the device's ring
/// positions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VirtioQueueState {
    /// Largest size the device offers (must match on restore).
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// The driver enabled the queue.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available (driver) ring address.
    pub avail_ring: u64,
    /// Used (device) ring address.
    pub used_ring: u64,
    /// MSI-X vector of the queue ([`VIRTIO_MSI_NO_VECTOR`] for none).
    pub msix_vector: u16,
    /// Next available-ring entry the device will read.
    pub next_avail: u16,
    /// Next used-ring entry the device will write.
    pub next_used: u16,
    /// VIRTIO_F_EVENT_IDX in effect for the queue.
    pub event_idx: bool,
}

/// Everything a virtio-pci device needs to continue where it stopped.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct VirtioPciState {
    /// Format version ([`VIRTIO_PCI_STATE_VERSION`]).
    pub version: u32,
    /// virtio device type (2 = block, …); must match on restore.
    pub device_type: u32,
    /// PCI configuration space.
    pub config: PciConfigurationState,
    /// MSI-X table, PBA and control bits.
    pub msix: MsixTableState,
    /// Status bits the driver set.
    pub device_status: u8,
    /// DEVICE_NEEDS_RESET was being reported.
    pub needs_reset: bool,
    /// `device_feature_select`.
    pub device_feature_select: u32,
    /// `driver_feature_select`.
    pub driver_feature_select: u32,
    /// Features the driver wrote (accepted once FEATURES_OK is set).
    pub driver_features: u64,
    /// MSI-X vector of configuration changes.
    pub msix_config_vector: u16,
    /// `queue_select`.
    pub queue_select: u16,
    /// ISR status bits not yet read by the driver.
    pub isr: u8,
    /// `config_generation`.
    pub config_generation: u8,
    /// The device was running (DRIVER_OK accepted).
    pub activated: bool,
    /// Every queue, in index order.
    pub queues: Vec<VirtioQueueState>,
    /// The device's own state ([`crate::VirtioDevice::snapshot_state`]).
    pub device: serde_json::Value,
}

impl VirtioPciDevice {
    /// Whether the device is paused (its worker stopped by [`Self::pause`]).
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Releases (`false`) or takes back (`true`) the device's host locks
    /// (disk images); call while paused, for a live migration.
    pub fn set_host_locks(&mut self, locked: bool) -> Result<(), VirtioPciError> {
        self.device
            .set_host_locks(locked)
            .map_err(|e| VirtioPciError::State(e.to_string()))
    }

    /// Stops the device's worker, keeping its queues (with their ring
    /// positions) in the transport. A no-op if the device is not running or
    /// already paused. On failure the device is left stopped and reports
    /// DEVICE_NEEDS_RESET.
    pub fn pause(&mut self) -> Result<(), VirtioPciError> {
        if !self.activated || self.paused {
            return Ok(());
        }
        match self.device.pause() {
            Ok(queues) => {
                self.paused_queues.clear();
                for pq in queues {
                    if let Some(slot) = self.queues.get_mut(usize::from(pq.index)) {
                        *slot = pq.queue;
                        self.paused_queues.push(pq.index);
                    }
                }
                self.paused = true;
                Ok(())
            }
            Err(e) => {
                self.activated = false;
                self.needs_reset = true;
                Err(VirtioPciError::Pause(e.to_string()))
            }
        }
    }

    /// Restarts a device stopped by [`Self::pause`] with the queues it
    /// gave back. A no-op if it is not paused. On failure the device stays
    /// stopped and reports DEVICE_NEEDS_RESET.
    pub fn resume(&mut self) -> Result<(), VirtioPciError> {
        if !self.paused {
            return Ok(());
        }
        self.paused = false;
        let only = std::mem::take(&mut self.paused_queues);
        self.activated = false;
        if let Err(e) = self.activate_queues(Some(&only)) {
            self.needs_reset = true;
            return Err(VirtioPciError::Activate(e));
        }
        Ok(())
    }

    /// Lets the device collect state held outside the VMM (a vhost-user
    /// backend's) before [`Self::state`]; it must be paused or inactive.
    pub fn prepare_snapshot(&mut self) -> Result<(), VirtioPciError> {
        if self.activated && !self.paused {
            return Err(VirtioPciError::NotPaused);
        }
        self.device
            .prepare_snapshot()
            .map_err(|e| VirtioPciError::State(e.to_string()))
    }

    /// Saves the device. It must be paused or never have been activated.
    pub fn state(&self) -> Result<VirtioPciState, VirtioPciError> {
        if self.activated && !self.paused {
            return Err(VirtioPciError::NotPaused);
        }
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| VirtioQueueState {
                max_size: q.max_size(),
                size: q.size(),
                ready: q.ready(),
                desc_table: q.desc_table(),
                avail_ring: q.avail_ring(),
                used_ring: q.used_ring(),
                msix_vector: self.interrupt.queue_vector(i),
                next_avail: q.next_avail(),
                next_used: q.next_used(),
                event_idx: q.event_idx_enabled(),
            })
            .collect();
        Ok(VirtioPciState {
            version: VIRTIO_PCI_STATE_VERSION,
            device_type: self.device.device_type(),
            config: self.config.state(),
            msix: self.interrupt.msix().state(),
            device_status: self.device_status,
            needs_reset: self.needs_reset || (self.activated && self.device.needs_reset()),
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            msix_config_vector: self.interrupt.config_vector(),
            queue_select: self.queue_select,
            isr: self.interrupt.isr(),
            config_generation: self.config_generation,
            activated: self.activated,
            queues,
            device: self.device.snapshot_state(),
        })
    }

    /// Restores a saved state into this freshly built device (same
    /// configuration, same slot) before any vCPU runs. The VMM must have
    /// re-applied the BAR addresses first: they are checked, not moved.
    /// MSI-X routes are re-reported to the interrupt group and, if the
    /// device was running, it is activated with the saved queues. Every
    /// check is done before anything changes; a failed activation leaves
    /// the device reporting DEVICE_NEEDS_RESET.
    pub fn restore(&mut self, state: &VirtioPciState) -> Result<(), VirtioPciError> {
        let bad = |m: String| Err(VirtioPciError::State(m));
        if self.activated || self.paused {
            return bad("the device is already in use".into());
        }
        if state.version != VIRTIO_PCI_STATE_VERSION {
            return bad(format!("unknown version {}", state.version));
        }
        let device_type = self.device.device_type();
        if state.device_type != device_type {
            return bad(format!(
                "saved device type {}, this device is type {device_type}",
                state.device_type
            ));
        }
        let queues = self.restored_queues(state)?;
        if state.driver_features & !self.device.features() != 0 {
            return bad(format!(
                "driver features {:#x} not offered (offered {:#x})",
                state.driver_features,
                self.device.features()
            ));
        }
        let status = state.device_status;
        if status & !STATUS_KNOWN != 0 {
            return bad(format!("device status {status:#x}"));
        }
        if status & STATUS_DRIVER_OK != 0 && status & STATUS_FEATURES_OK == 0 {
            return bad("DRIVER_OK without FEATURES_OK".into());
        }
        if state.activated && status & STATUS_DRIVER_OK == 0 {
            return bad("activated without DRIVER_OK".into());
        }
        let activate = state.activated && !state.needs_reset;
        if activate {
            let mem = self.mem.memory();
            if !queues.iter().any(|q| q.ready()) {
                return bad("active device without a ready queue".into());
            }
            for (i, q) in queues.iter().enumerate() {
                if q.ready() && !q.is_valid(&*mem) {
                    return bad(format!("queue {i}: rings outside guest memory"));
                }
            }
        }
        let mut config = self.config.clone();
        config.restore_state(&state.config)?;
        self.interrupt.msix().check_state(&state.msix)?;
        self.device
            .restore_state(&state.device)
            .map_err(|e| VirtioPciError::State(e.to_string()))?;

        // Everything checked: commit.
        self.interrupt.msix().restore_state(&state.msix)?;
        self.config = config;
        self.queues = queues;
        for (i, q) in state.queues.iter().enumerate() {
            self.interrupt.set_queue_vector(i, q.msix_vector);
        }
        self.interrupt.set_config_vector(state.msix_config_vector);
        self.interrupt.set_isr(state.isr);
        self.device_feature_select = state.device_feature_select;
        self.driver_feature_select = state.driver_feature_select;
        self.driver_features = state.driver_features;
        self.device_status = status;
        self.queue_select = state.queue_select;
        self.config_generation = state.config_generation;
        self.needs_reset = state.needs_reset;
        if status & STATUS_FEATURES_OK != 0 {
            self.device.ack_features(state.driver_features);
        }
        if activate {
            if let Err(e) = self.activate_queues(None) {
                self.needs_reset = true;
                return Err(VirtioPciError::Activate(e));
            }
        }
        Ok(())
    }

    /// The transport queues `state` describes, validated against this
    /// device (sizes, alignment, vectors).
    fn restored_queues(&self, state: &VirtioPciState) -> Result<Vec<Queue>, VirtioPciError> {
        let bad = |m: String| Err(VirtioPciError::State(m));
        let max_sizes = self.device.queue_max_sizes();
        if state.queues.len() != max_sizes.len() {
            return bad(format!(
                "{} queues saved, device has {}",
                state.queues.len(),
                max_sizes.len()
            ));
        }
        let vectors = self.interrupt.msix().num_vectors();
        let vector_ok = |v: u16| v == VIRTIO_MSI_NO_VECTOR || v < vectors;
        if !vector_ok(state.msix_config_vector) {
            return bad(format!("config vector {}", state.msix_config_vector));
        }
        let mut queues = Vec::with_capacity(max_sizes.len());
        for (i, (s, &max)) in state.queues.iter().zip(max_sizes).enumerate() {
            if s.max_size != max {
                return bad(format!(
                    "queue {i}: maximum size {} saved, device offers {max}",
                    s.max_size
                ));
            }
            if !vector_ok(s.msix_vector) {
                return bad(format!("queue {i}: vector {}", s.msix_vector));
            }
            let q = Queue::try_from(QueueState {
                max_size: max,
                next_avail: s.next_avail,
                next_used: s.next_used,
                event_idx_enabled: s.event_idx,
                size: s.size,
                ready: s.ready,
                desc_table: s.desc_table,
                avail_ring: s.avail_ring,
                used_ring: s.used_ring,
            })
            .map_err(|e| VirtioPciError::State(format!("queue {i}: {e}")))?;
            queues.push(q);
        }
        Ok(queues)
    }
}
