//! `FsConfig`: a virtio-fs share served by a vhost-user backend.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use virtio_devices::fs::TAG_LEN;

use super::*;

/// `--fs tag=…,socket=…` (Cloud Hypervisor's `FsConfig`): virtio-fs served
/// by a vhost-user backend such as virtiofsd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsConfig {
    /// Mount tag the guest uses.
    pub tag: String,
    /// The backend's socket.
    pub socket: PathBuf,
    /// Request queues.
    #[serde(default = "default_fs_num_queues")]
    pub num_queues: usize,
    /// Queue size.
    #[serde(default = "default_fs_queue_size")]
    pub queue_size: u16,
    /// Device id.
    #[serde(default)]
    pub id: Option<String>,
    /// PCI segment.
    #[serde(default)]
    pub pci_segment: u16,
    /// PCI device (slot) number.
    #[serde(default)]
    pub pci_device_id: Option<u8>,
    /// Virtual IOMMU (chv has none; Cloud Hypervisor accepts the key).
    #[serde(default)]
    pub iommu: bool,
}

/// Cloud Hypervisor's default virtio-fs request queue count.
pub fn default_fs_num_queues() -> usize {
    1
}

/// Cloud Hypervisor's default virtio-fs queue size.
pub fn default_fs_queue_size() -> u16 {
    1024
}

/// Most request queues of one virtio-fs device (the vhost-user frontend's
/// limit, one less for the high-priority queue).
pub const MAX_FS_QUEUES: usize = 254;

/// Largest virtio-fs queue size.
pub const MAX_FS_QUEUE_SIZE: u16 = 32768;

impl FsConfig {
    /// Checks share `index` of `VmConfig::fs` (errors name `fs[index].…`).
    /// Whether the backend listens is found out when chv connects.
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let field = |name: &str| format!("fs[{index}].{name}");
        if self.tag.is_empty() || self.tag.len() > TAG_LEN {
            return Err(invalid(
                field(&format!("tag={}", self.tag)),
                format!("must be 1 to {TAG_LEN} bytes"),
            ));
        }
        if self.socket.as_os_str().is_empty() {
            return Err(invalid(field("socket"), "must not be empty"));
        }
        if !(1..=MAX_FS_QUEUES).contains(&self.num_queues) {
            return Err(invalid(
                field(&format!("num_queues={}", self.num_queues)),
                format!("must be between 1 and {MAX_FS_QUEUES}"),
            ));
        }
        let q = self.queue_size;
        if !q.is_power_of_two() || !(2..=MAX_FS_QUEUE_SIZE).contains(&q) {
            return Err(invalid(
                field(&format!("queue_size={q}")),
                format!("must be a power of two between 2 and {MAX_FS_QUEUE_SIZE}"),
            ));
        }
        refuse_if(self.iommu, field("iommu=true"), "no virtual IOMMU")?;
        refuse_placement(&field("pci_device_id"), self.pci_device_id)?;
        check_id(&field, self.id.as_deref())
    }
}

/// Checks a user-given device id.
pub(crate) fn check_id(
    field: &dyn Fn(&str) -> String,
    id: Option<&str>,
) -> Result<(), ConfigError> {
    match id {
        Some(id) if !valid_device_id(id) => Err(invalid(
            field(&format!("id={id}")),
            format!("must be non-empty and not start with '{RESERVED_ID_PREFIX}'"),
        )),
        _ => Ok(()),
    }
}

/// Checks the virtio-fs shares and pmem devices of `config`: each entry,
/// ids unique across every device, and shared guest RAM for the
/// vhost-user devices (virtio-fs, `vhost_user` disks), whose backends map
/// it.
pub(crate) fn validate_fs_and_pmem(config: &VmConfig) -> Result<(), ConfigError> {
    let fs = config.fs.as_deref().unwrap_or_default();
    let pmem = config.pmem.as_deref().unwrap_or_default();
    for (i, f) in fs.iter().enumerate() {
        f.validate(i)?;
    }
    for (i, p) in pmem.iter().enumerate() {
        p.validate(i)?;
    }
    let mut seen: Vec<&str> = Vec::new();
    let others = config
        .disks
        .iter()
        .flatten()
        .map(|d| d.id.as_deref())
        .chain(config.net.iter().flatten().map(|n| n.id.as_deref()))
        .chain(config.vsock.iter().map(|v| v.id.as_deref()));
    seen.extend(others.flatten());
    let mine = fs
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("fs[{i}].id"), f.id.as_deref()))
        .chain(
            pmem.iter()
                .enumerate()
                .map(|(i, p)| (format!("pmem[{i}].id"), p.id.as_deref())),
        );
    for (field, id) in mine {
        let Some(id) = id else { continue };
        if seen.contains(&id) {
            return Err(invalid(
                format!("{field}={id}"),
                "used by more than one device",
            ));
        }
        seen.push(id);
    }
    let vhost_user = fs.first().map(|_| "fs[0]".to_string()).or_else(|| {
        config
            .disks
            .iter()
            .flatten()
            .position(|d| d.vhost_user)
            .map(|i| format!("disks[{i}].vhost_user=true"))
            .or_else(|| {
                let mut net = config.net.iter().flatten();
                net.position(|n| n.vhost_user)
                    .map(|i| format!("net[{i}].vhost_user=true"))
            })
    });
    if let (Some(device), false) = (vhost_user, config.memory.shared) {
        return Err(invalid(
            "memory.shared=false",
            format!(
                "{device} is a vhost-user device, whose backend maps guest RAM: \
                 set memory.shared=true (--memory shared=on)"
            ),
        ));
    }
    Ok(())
}
