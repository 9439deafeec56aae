//! Snapshots of a paused VM: a directory holding `state.json` (a versioned,
//! self-describing description of the VM: its config, the KVM state of
//! every vCPU and of the in-kernel irqchip/PIT/clock, every device's state),
//! `config.json` (the config alone, editable before a restore, see
//! [`config_file`]) and `memory.bin` (guest RAM, see [`memory`]).
//!
//! `state.json` is written last, through a rename, so an interrupted
//! snapshot has none and is refused as "not a snapshot" on restore.

pub mod config_file;
pub mod memory;
pub mod overrides;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::device_manager::DevicesSnapshot;
use crate::platform_devices::LegacyDevicesState;

pub use memory::{MemoryRange, MemoryRestoreMode};
pub use overrides::RestoredVsockConfig;

/// Value of the `format` field, identifying a chv snapshot.
pub const SNAPSHOT_FORMAT: &str = "chv-snapshot";
/// Version of the state file this chv writes and the newest it reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state.json";
/// Name of the guest memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory.bin";

/// Why a snapshot could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The URL is not a `file://` URL of a directory.
    #[error("{0}")]
    Url(String),
    /// Reading or writing a snapshot file failed.
    #[error("{0}")]
    Io(String),
    /// The snapshot is not one this chv can restore (version, corruption).
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    /// Guest memory could not be mapped.
    #[error("guest memory: {0}")]
    Memory(String),
    /// Capturing or applying KVM state failed.
    #[error("KVM state: {0}")]
    Kvm(String),
    /// A device could not be saved or restored.
    #[error("device {0}")]
    Device(String),
    /// The VM is not in a state that allows the operation.
    #[error("{0}")]
    State(String),
    /// A device cannot be snapshotted at all (a vhost-user backend without
    /// the protocol feature it takes): a client error, not a failure.
    #[error("device {0}")]
    Unsupported(String),
}

/// Marker in a device's snapshot refusal that makes it
/// [`SnapshotError::Unsupported`] (the backend lacks a protocol feature).
pub const UNSUPPORTED_MARKER: &str = "lacks VHOST_USER_PROTOCOL_F_";

/// Everything `state.json` holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSnapshot {
    /// Always [`SNAPSHOT_FORMAT`].
    pub format: String,
    /// Format version ([`SNAPSHOT_VERSION`] when written by this chv).
    pub version: u32,
    /// The chv version that wrote it (informational).
    pub chv_version: String,
    /// The VM configuration, including hot-plugged devices.
    pub config: VmConfig,
    /// Where each guest RAM region is in [`MEMORY_FILE`].
    pub memory: Vec<MemoryRange>,
    /// VM-wide in-kernel state (x86_64: irqchip, PIT and clock).
    pub vm: arch::VmState,
    /// One entry per vCPU, by id.
    pub vcpus: Vec<arch::VcpuState>,
    /// Serial port, RTC and the other platform devices.
    pub legacy: LegacyDevicesState,
    /// The PCI devices and their slots.
    pub devices: DevicesSnapshot,
    /// The ranges of RAM hot-added through ACPI (also in `memory`).
    #[serde(default)]
    pub memory_hotplug: Vec<devices::acpi::MemorySlot>,
    /// State the host could not provide and that is therefore not saved
    /// (for example nested virtualization state on PVM hosts).
    pub omitted: Vec<String>,
    /// Guest address of the VM generation ID the firmware tables describe
    /// (absent in snapshots of VMs without one); a restore renews it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_id: Option<u64>,
}

/// `vm.snapshot`'s body (Cloud Hypervisor's `VmSnapshotConfig`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// `file:///dir` to write the snapshot into.
    pub destination_url: String,
}

/// `vm.restore`'s body and `--restore` (Cloud Hypervisor's `RestoreConfig`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RestoreConfig {
    /// `file:///dir` of the snapshot.
    pub source_url: String,
    /// Copy guest memory in before running (true) or map it lazily.
    #[serde(default)]
    pub prefault: bool,
    /// Resume the guest right after the restore (otherwise it stays paused
    /// until `vm.resume`).
    #[serde(default)]
    pub resume: bool,
    /// New tap fds for network devices, instead of the taps the snapshot
    /// names (Cloud Hypervisor's `net_fds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_fds: Option<Vec<RestoredNetConfig>>,
    /// Cloud Hypervisor's memory restore mode: `Copy` reads guest memory in
    /// before the guest runs (as `prefault`), `OnDemand` maps it lazily.
    /// Absent: `prefault` decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_restore_mode: Option<ChMemoryRestoreMode>,
    /// VFIO device fds (Cloud Hypervisor's; chv has no VFIO: only
    /// `null` or `[]` is accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfio_fds: Option<Vec<serde_json::Value>>,
    /// iommufd fd (Cloud Hypervisor's; only `null` is accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommufd_fd: Option<i32>,
    /// Host NUMA nodes for memory zones (Cloud Hypervisor's; chv VMs have
    /// no zones: only `[]` is accepted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zone_updates: Vec<serde_json::Value>,
    /// chv extension: the serial port's new host side (a clone's own file,
    /// socket or pty), see [`overrides`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<crate::config::ConsoleConfig>,
    /// chv extension: the virtio console's new host side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<crate::config::ConsoleConfig>,
    /// chv extension: the vsock device's new guest CID and host socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<RestoredVsockConfig>,
}

/// Cloud Hypervisor's `MemoryRestoreMode` spellings.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChMemoryRestoreMode {
    /// Copy all of guest memory in before resuming (chv: prefault).
    Copy,
    /// Fault pages in as the guest touches them (chv: lazy mapping).
    OnDemand,
}

/// Tap fds a restored network device uses instead of its saved tap
/// (Cloud Hypervisor's `RestoredNetConfig`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RestoredNetConfig {
    /// The network device's id (`_net0` for the first one without an id).
    pub id: String,
    /// How many fds (one per queue pair).
    pub num_fds: usize,
    /// The fds, already open in chv (inherited); the REST API cannot pass
    /// them, so they come from `--restore`.
    #[serde(default)]
    pub fds: Option<Vec<i32>>,
}

impl RestoredNetConfig {
    /// Points the network device `self.id` of `config` at `self.fds`.
    pub fn apply(&self, config: &mut VmConfig) -> Result<(), SnapshotError> {
        let bad = |m: String| SnapshotError::Invalid(format!("net_fds: {}: {m}", self.id));
        let fds = self.fds.clone().unwrap_or_default();
        if fds.len() != self.num_fds {
            return Err(bad(format!(
                "num_fds={} but {} fds given",
                self.num_fds,
                fds.len()
            )));
        }
        let nets = config.net.get_or_insert_with(Vec::new);
        let position = nets.iter().enumerate().position(|(i, n)| match &n.id {
            Some(id) => *id == self.id,
            None => format!("_net{i}") == self.id,
        });
        let net = position
            .and_then(|i| nets.get_mut(i))
            .ok_or_else(|| bad("no network device with this id in the snapshot".into()))?;
        let pairs = (net.num_queues / 2).max(1);
        if fds.len() != pairs {
            return Err(bad(format!(
                "{} fds for a device with {pairs} queue pairs",
                fds.len()
            )));
        }
        net.tap = None;
        net.fds = Some(fds);
        Ok(())
    }
}

impl RestoreConfig {
    /// Applies `net_fds` and the host-side overrides to the snapshot's
    /// configuration.
    pub fn apply_overrides(&self, config: &mut VmConfig) -> Result<(), SnapshotError> {
        for net in self.net_fds.iter().flatten() {
            net.apply(config)?;
        }
        overrides::apply(
            config,
            self.serial.as_ref(),
            self.console.as_ref(),
            self.vsock.as_ref(),
        )
    }

    /// How guest memory comes back.
    pub fn memory_mode(&self) -> MemoryRestoreMode {
        let copy = match self.memory_restore_mode {
            Some(ChMemoryRestoreMode::Copy) => true,
            Some(ChMemoryRestoreMode::OnDemand) => false,
            None => self.prefault,
        };
        if copy {
            MemoryRestoreMode::Prefault
        } else {
            MemoryRestoreMode::Lazy
        }
    }

    /// Refuses what chv cannot honour, naming the field.
    pub fn check_supported(&self) -> Result<(), SnapshotError> {
        let refuse = |field: &str, why: &str| {
            Err(SnapshotError::Unsupported(format!(
                "{field}: not supported by chv ({why})"
            )))
        };
        if self.prefault && self.memory_restore_mode == Some(ChMemoryRestoreMode::OnDemand) {
            return refuse(
                "prefault=true with memory_restore_mode=OnDemand",
                "choose one",
            );
        }
        if self.vfio_fds.as_ref().is_some_and(|v| !v.is_empty()) {
            return refuse("vfio_fds", "no VFIO");
        }
        if self.iommufd_fd.is_some() {
            return refuse("iommufd_fd", "no VFIO");
        }
        if !self.zone_updates.is_empty() {
            return refuse("zone_updates", "zones are not bound to host NUMA nodes");
        }
        Ok(())
    }
}

/// Turns a `file:///dir` URL (or a plain path) into the directory path.
pub fn dir_from_url(url: &str, field: &str) -> Result<PathBuf, SnapshotError> {
    let path = match url.split_once("://") {
        Some(("file", rest)) => rest,
        Some((scheme, _)) => {
            return Err(SnapshotError::Url(format!(
                "{field}: unsupported URL scheme {scheme}:// (chv supports file://)"
            )))
        }
        None => url,
    };
    if path.is_empty() {
        return Err(SnapshotError::Url(format!(
            "{field}: empty path in {url:?}"
        )));
    }
    Ok(PathBuf::from(path))
}

impl VmSnapshot {
    /// Writes `state.json` into `dir` (the memory file is written first by
    /// [`memory::save`]). The write goes through a temporary file and a
    /// rename so a crash never leaves a partial state file.
    pub fn write(&self, dir: &Path) -> Result<(), SnapshotError> {
        config_file::write(dir, &self.config)?;
        let json = serde_json::to_vec(self)
            .map_err(|e| SnapshotError::Io(format!("encoding the state: {e}")))?;
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, &json)
            .map_err(|e| SnapshotError::Io(format!("writing {}: {e}", tmp.display())))?;
        let file = std::fs::File::open(&tmp)
            .map_err(|e| SnapshotError::Io(format!("opening {}: {e}", tmp.display())))?;
        file.sync_all()
            .map_err(|e| SnapshotError::Io(format!("syncing {}: {e}", tmp.display())))?;
        let dst = dir.join(STATE_FILE);
        std::fs::rename(&tmp, &dst)
            .map_err(|e| SnapshotError::Io(format!("renaming to {}: {e}", dst.display())))
    }

    /// Reads and checks `dir/state.json`: the format marker and version
    /// first (so a snapshot from a newer chv gets a clear message rather
    /// than a parse error), then the whole structure.
    pub fn read(dir: &Path) -> Result<Self, SnapshotError> {
        let path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).map_err(|e| {
            SnapshotError::Io(format!(
                "{}: {e} (is {} a chv snapshot directory?)",
                path.display(),
                dir.display()
            ))
        })?;
        let mut snapshot = Self::parse(&bytes)?;
        if let Some(edited) = config_file::read_edited(dir, &snapshot.config)? {
            snapshot.config = edited;
        }
        Ok(snapshot)
    }

    /// Parses a state file's bytes (see [`Self::read`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            SnapshotError::Invalid(format!("{STATE_FILE} is not valid JSON (truncated?): {e}"))
        })?;
        let format = value.get("format").and_then(|v| v.as_str());
        if format != Some(SNAPSHOT_FORMAT) {
            return Err(SnapshotError::Invalid(format!(
                "{STATE_FILE} is not a chv snapshot (format {format:?})"
            )));
        }
        let version = value.get("version").and_then(|v| v.as_u64());
        match version {
            Some(v) if v == u64::from(SNAPSHOT_VERSION) => {}
            Some(v) if v > u64::from(SNAPSHOT_VERSION) => {
                return Err(SnapshotError::Invalid(format!(
                    "snapshot format version {v} is newer than this chv supports \
                     ({SNAPSHOT_VERSION}); restore it with the chv that wrote it"
                )))
            }
            other => {
                let msg = format!("unsupported snapshot format version {other:?}");
                return Err(SnapshotError::Invalid(format!(
                    "{msg} (this chv reads {SNAPSHOT_VERSION})"
                )));
            }
        }
        let snapshot: Self = serde_json::from_value(value)
            .map_err(|e| SnapshotError::Invalid(format!("{STATE_FILE}: {e}")))?;
        if snapshot.vcpus.len() != usize::from(snapshot.config.cpus.boot_vcpus) {
            return Err(SnapshotError::Invalid(format!(
                "{} vCPU states for a VM with {} vCPUs",
                snapshot.vcpus.len(),
                snapshot.config.cpus.boot_vcpus
            )));
        }
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_directories() {
        assert_eq!(
            dir_from_url("file:///var/lib/chv/s1", "destination_url").unwrap(),
            PathBuf::from("/var/lib/chv/s1")
        );
        assert_eq!(
            dir_from_url("/tmp/s", "x").unwrap(),
            PathBuf::from("/tmp/s")
        );
        let e = dir_from_url("http://h/s", "source_url").unwrap_err();
        assert!(e.to_string().contains("source_url"), "{e}");
        assert!(dir_from_url("file://", "x").is_err());
    }

    #[test]
    fn foreign_newer_and_broken_state_files_are_refused() {
        let e = VmSnapshot::parse(b"{\"format\":\"chv-snapshot\",\"vers")
            .err()
            .unwrap();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = VmSnapshot::parse(b"{\"format\":\"qemu\"}").err().unwrap();
        assert!(e.to_string().contains("not a chv snapshot"), "{e}");
        let e = VmSnapshot::parse(b"{\"format\":\"chv-snapshot\",\"version\":99}")
            .err()
            .unwrap();
        assert!(e.to_string().contains("newer"), "{e}");
        let e = VmSnapshot::parse(b"{\"format\":\"chv-snapshot\",\"version\":1}")
            .err()
            .unwrap();
        assert!(e.to_string().contains("missing field"), "{e}");
    }
}
