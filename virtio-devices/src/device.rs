//! The interface every virtio device implements, whatever its transport.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use virtio_queue::Queue;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as devices see it (atomic so it can grow with hotplug).
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Which interrupt a device raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioInterruptType {
    /// The device configuration changed.
    Config,
    /// Queue `n` has new used buffers.
    Queue(u16),
}

/// How a device notifies the driver; the transport implements it (ISR bit +
/// MSI-X vector for virtio-pci).
pub trait VirtioInterrupt: Send + Sync {
    /// Raises `kind`. Errors mean the notification was lost; devices log them.
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()>;
}

/// One activated queue: its index, the queue state the driver set up and
/// the eventfd the transport signals when the driver notifies it.
pub struct ActivatedQueue {
    /// Queue index within the device.
    pub index: u16,
    /// Queue configured by the driver (addresses, size, ready).
    pub queue: Queue,
    /// Kicked on every driver notification for this queue.
    pub notify: EventFd,
}

/// A queue a paused device gave back: its index and the queue itself,
/// ring positions (`next_avail`, `next_used`) included.
pub struct PausedQueue {
    /// Queue index within the device.
    pub index: u16,
    /// The queue as the worker left it.
    pub queue: Queue,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not set up the queues this device needs.
    #[error("queue setup invalid: {0}")]
    BadQueues(String),
    /// The worker thread or its resources could not be created.
    #[error("cannot start worker: {0}")]
    Worker(std::io::Error),
    /// Anything else specific to the device.
    #[error("{0}")]
    Device(String),
    /// Saved state that does not fit this device (another device type,
    /// another version, a disk of another size, …).
    #[error("device state mismatch: {0}")]
    State(String),
}

/// Serializes a device's state struct for [`VirtioDevice::snapshot_state`].
pub(crate) fn state_to_value<T: Serialize>(state: &T) -> serde_json::Value {
    // Plain structs of integers, strings and vectors always serialize.
    serde_json::to_value(state).unwrap_or(serde_json::Value::Null)
}

/// Parses a device's state struct and checks its `version` (as read by
/// `version_of`) against `expected`.
pub(crate) fn state_from_value<T: DeserializeOwned>(
    name: &str,
    value: &serde_json::Value,
    expected: u32,
    version_of: impl Fn(&T) -> u32,
) -> Result<T, ActivateError> {
    let state = T::deserialize(value)
        .map_err(|e| ActivateError::State(format!("{name}: not a {name} state: {e}")))?;
    let version = version_of(&state);
    if version != expected {
        return Err(ActivateError::State(format!(
            "{name}: unknown state version {version}"
        )));
    }
    Ok(state)
}

/// Copies the bytes of a config space `config` at `offset` into `data`
/// ([`VirtioDevice::read_config`]); bytes past its end read 0.
pub(crate) fn copy_config(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    if let Some(src) = usize::try_from(offset).ok().and_then(|o| config.get(o..)) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// The saved state of a device whose only state is the features its
/// driver accepted (virtio-rng, virtio-pmem: their data lives elsewhere).
#[derive(Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FeaturesState {
    /// The device's state format version.
    pub version: u32,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// [`FeaturesState`] for [`VirtioDevice::snapshot_state`].
pub(crate) fn features_state(version: u32, acked_features: u64) -> serde_json::Value {
    state_to_value(&FeaturesState {
        version,
        acked_features,
    })
}

/// Reads a [`FeaturesState`] of format `version` for device `name`;
/// returns the accepted features, which must be among `offered`.
pub(crate) fn restore_features_state(
    name: &str,
    value: &serde_json::Value,
    version: u32,
    offered: u64,
) -> Result<u64, ActivateError> {
    let s = state_from_value(name, value, version, |s: &FeaturesState| s.version)?;
    if s.acked_features & !offered != 0 {
        return Err(ActivateError::State(format!(
            "{name}: features {:#x} not offered",
            s.acked_features
        )));
    }
    Ok(s.acked_features)
}

/// A virtio device model: what it offers the driver, its config space, and
/// starting/stopping the worker that serves its queues.
pub trait VirtioDevice: Send {
    /// Virtio device ID (2 = block, 3 = console, 4 = entropy, …).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// Features the driver accepted (a subset of [`Self::features`]).
    fn ack_features(&mut self, features: u64);
    /// Reads the device-specific config space; out-of-range bytes read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific config space; read-only fields ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving `queues` (a worker thread under its own seccomp
    /// filter). Called once the driver sets DRIVER_OK.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError>;
    /// Stops the worker and returns the device to its pre-activation state
    /// (driver reset). Returns false if the device cannot be reset.
    fn reset(&mut self) -> bool;
    /// Short name for logs and thread names ("virtio-blk", …).
    fn name(&self) -> &str;
    /// True once the device stopped serving a queue because of bad guest
    /// data; the transport reports DEVICE_NEEDS_RESET until a reset.
    fn needs_reset(&self) -> bool {
        false
    }
    /// Stops an active device's worker and returns its queues with their
    /// ring positions; state the worker held (undelivered input, open
    /// connections) stays in the device. [`Self::activate`] with the same
    /// queues resumes it. An inactive device returns no queues.
    fn pause(&mut self) -> Result<Vec<PausedQueue>, ActivateError> {
        Err(ActivateError::Device(format!(
            "{} cannot be paused",
            self.name()
        )))
    }
    /// Guest RAM grew (ACPI memory hotplug): `mem`, already in the shared
    /// [`GuestMemory`], has regions it did not have. Devices whose queues
    /// are served outside the VMM (vhost-user backends) hand the new
    /// regions on; the others read the shared map on every request and
    /// have nothing to do. An error means the device could not: it then
    /// reports DEVICE_NEEDS_RESET, and the memory stays added.
    fn memory_added(&mut self, mem: &GuestMemoryMmap) -> Result<(), ActivateError> {
        let _ = mem;
        Ok(())
    }
    /// Called (paused or never activated) right before
    /// [`Self::snapshot_state`]: devices whose state lives outside the VMM
    /// (a vhost-user backend's) fetch it here; an error refuses the
    /// snapshot.
    fn prepare_snapshot(&mut self) -> Result<(), ActivateError> {
        Ok(())
    }
    /// The device's own state for a snapshot (acked features and whatever
    /// the device needs beyond the transport); taken while paused or
    /// never activated.
    fn snapshot_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Releases (`false`) or takes back (`true`) host locks the device
    /// holds (disk image locks), while paused, so another VMM on this host
    /// can take over during a live migration.
    fn set_host_locks(&mut self, locked: bool) -> Result<(), ActivateError> {
        let _ = locked;
        Ok(())
    }
    /// Restores [`Self::snapshot_state`] output into a freshly built,
    /// inactive device of the same configuration; a mismatch is an error
    /// and leaves the device unchanged.
    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), ActivateError> {
        if state.is_null() {
            Ok(())
        } else {
            Err(ActivateError::State(format!(
                "{} keeps no state",
                self.name()
            )))
        }
    }
}
