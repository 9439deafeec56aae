//! `DiskConfig`: a virtio-blk disk.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::*;

/// `--disk path=…,readonly=on,direct=on,…` (Cloud Hypervisor's `DiskConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// Host image file (raw or qcow2).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Expose the disk read-only (VIRTIO_BLK_F_RO) and open the image read-only.
    #[serde(default)]
    pub readonly: bool,
    /// Open the image with O_DIRECT (bypass the host page cache).
    #[serde(default)]
    pub direct: bool,
    /// Place the device behind a virtual IOMMU (chv has none).
    #[serde(default)]
    pub iommu: bool,
    /// Number of request queues.
    #[serde(default = "default_disk_num_queues")]
    pub num_queues: usize,
    /// Size of each request queue.
    #[serde(default = "default_disk_queue_size")]
    pub queue_size: u16,
    /// Served by a vhost-user backend on `vhost_socket` instead of chv.
    #[serde(default)]
    pub vhost_user: bool,
    /// The vhost-user backend's socket.
    #[serde(default)]
    pub vhost_socket: Option<String>,
    /// This disk's own I/O limits (bytes and requests).
    #[serde(default)]
    pub rate_limiter_config: Option<RateLimiterConfig>,
    /// PCI segment (host bridge) the device sits on.
    #[serde(default)]
    pub pci_segment: u16,
    /// PCI device (slot) number on that segment; the first free one when
    /// absent.
    #[serde(default)]
    pub pci_device_id: Option<u8>,
    /// Device identifier (for hot-unplug and counters); generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Serial number returned by VIRTIO_BLK_T_GET_ID (at most 20 bytes).
    #[serde(default)]
    pub serial: Option<String>,
    /// Id of a `rate_limit_groups` entry whose limits this disk shares
    /// (exclusive with `rate_limiter_config`).
    #[serde(default)]
    pub rate_limit_group: Option<String>,
    /// Host CPUs for each queue's worker.
    #[serde(default)]
    pub queue_affinity: Option<Vec<VirtQueueAffinity>>,
    /// Open qcow2 backing files.
    #[serde(default)]
    pub backing_files: bool,
    /// Let discards punch holes in the image (Cloud Hypervisor's default).
    #[serde(default = "default_true")]
    pub sparse: bool,
    /// Image format; detected from the file when absent.
    #[serde(default)]
    pub image_type: Option<ImageType>,
    /// How the image is locked against other writers.
    #[serde(default)]
    pub lock_granularity: LockGranularity,
    /// Cloud Hypervisor test switch: no io_uring (chv never uses it).
    #[serde(default)]
    pub disable_io_uring: bool,
    /// Cloud Hypervisor test switch: no Linux AIO (chv never uses it).
    #[serde(default)]
    pub disable_aio: bool,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            path: None,
            readonly: false,
            direct: false,
            iommu: false,
            num_queues: default_disk_num_queues(),
            queue_size: default_disk_queue_size(),
            vhost_user: false,
            vhost_socket: None,
            rate_limiter_config: None,
            pci_segment: 0,
            pci_device_id: None,
            id: None,
            serial: None,
            rate_limit_group: None,
            queue_affinity: None,
            backing_files: false,
            sparse: true,
            image_type: None,
            lock_granularity: LockGranularity::default(),
            disable_io_uring: false,
            disable_aio: false,
        }
    }
}

/// Disk image formats, spelled as Cloud Hypervisor's API (chv's lower-case
/// names are accepted too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageType {
    /// Flat VMDK.
    FlatVmdk,
    /// Fixed VHD.
    FixedVhd,
    /// QEMU copy-on-write v2/v3.
    #[serde(alias = "qcow2")]
    Qcow2,
    /// Raw bytes.
    #[serde(alias = "raw")]
    Raw,
    /// VHDX.
    Vhdx,
    /// Not known (Cloud Hypervisor: vhost-user disks only); chv detects it.
    Unknown,
}

impl ImageType {
    /// The format name chv's image layer knows (`None`: detect).
    pub fn format_name(self) -> Option<&'static str> {
        match self {
            ImageType::Raw => Some("raw"),
            ImageType::Qcow2 => Some("qcow2"),
            _ => None,
        }
    }
}

/// Image locking (Cloud Hypervisor's `LockGranularity`), honoured as CH
/// does: an OFD `fcntl` lock, write for a writable disk, read for a
/// read-only one, covering these bytes of the image file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockGranularity {
    /// Bytes `[0, size)`: the larger of the file length and the virtual
    /// disk size.
    #[default]
    ByteRange,
    /// The whole file (`l_start` 0, `l_len` 0).
    Full,
}

/// Host CPUs for one virtqueue's worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtQueueAffinity {
    /// The queue.
    pub queue_index: u16,
    /// Host CPU numbers.
    pub host_cpus: Vec<usize>,
}

/// Default number of virtio-blk queues (as Cloud Hypervisor).
pub fn default_disk_num_queues() -> usize {
    1
}

/// Default virtio-blk queue size (as Cloud Hypervisor).
pub fn default_disk_queue_size() -> u16 {
    128
}

/// Most request queues one virtio-blk disk may have.
pub const MAX_DISK_QUEUES: usize = 16;

/// Largest virtio-blk queue size (queue sizes are powers of two from 2).
pub const MAX_DISK_QUEUE_SIZE: u16 = 1024;

/// Longest disk serial: the size of the VIRTIO_BLK_T_GET_ID reply.
pub const MAX_DISK_SERIAL_BYTES: usize = 20;

impl DiskConfig {
    /// Checks one disk; `index` is its position in `VmConfig::disks`, used
    /// in error messages. Whether the image exists is checked on open.
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        refuse_placement(&format!("disks[{index}].pci_device_id"), self.pci_device_id)?;
        if self.vhost_user {
            return self.validate_vhost_user(index);
        }
        refuse_if(
            self.vhost_socket.is_some(),
            format!("disks[{index}].vhost_socket"),
            "only with vhost_user=true",
        )?;
        if self
            .path
            .as_ref()
            .is_none_or(|path| path.as_os_str().is_empty())
        {
            return Err(ConfigError::DiskPath(index));
        }
        self.validate_queues(index)?;
        if let Some(serial) = &self.serial {
            if serial.len() > MAX_DISK_SERIAL_BYTES {
                return Err(ConfigError::DiskSerialTooLong {
                    index,
                    len: serial.len(),
                });
            }
        }
        if let Some(t) = self.image_type {
            if t.format_name().is_none() && t != ImageType::Unknown {
                return Err(ConfigError::DiskImageType {
                    index,
                    value: format!("{t:?}"),
                });
            }
        }
        let field = |name: &str| format!("disks[{index}].{name}");
        refuse_if(self.iommu, field("iommu=true"), "no virtual IOMMU")?;
        refuse_if(
            self.queue_affinity.as_ref().is_some_and(|q| !q.is_empty()),
            field("queue_affinity"),
            "each disk has one worker thread for all its queues",
        )?;
        refuse_if(
            self.backing_files,
            field("backing_files=true"),
            "qcow2 backing files are not opened",
        )?;
        refuse_if(
            !self.sparse,
            field("sparse=false"),
            "images are always sparse",
        )?;
        self.validate_id(index)
    }
}

impl DiskConfig {
    /// Checks a `vhost_user=true` disk: a backend socket and no setting
    /// that only chv's own block device has (the backend owns the image).
    fn validate_vhost_user(&self, index: usize) -> Result<(), ConfigError> {
        let field = |name: &str| format!("disks[{index}].{name}");
        if self.vhost_socket.as_deref().is_none_or(str::is_empty) {
            return Err(invalid(
                field("vhost_socket"),
                "vhost_user=true needs the backend's socket (--disk vhost_user=on,socket=PATH)",
            ));
        }
        let backend = "with vhost_user=true the backend serves the disk";
        refuse_if(self.path.is_some(), field("path"), backend)?;
        refuse_if(self.readonly, field("readonly=true"), backend)?;
        refuse_if(self.direct, field("direct=true"), backend)?;
        refuse_if(self.serial.is_some(), field("serial"), backend)?;
        refuse_if(
            self.rate_limiter_config.is_some() || self.rate_limit_group.is_some(),
            field("rate_limiter_config/rate_limit_group"),
            backend,
        )?;
        refuse_if(
            self.image_type.is_some_and(|t| t != ImageType::Unknown),
            field("image_type"),
            backend,
        )?;
        refuse_if(self.iommu, field("iommu=true"), "no virtual IOMMU")?;
        refuse_if(
            self.queue_affinity.as_ref().is_some_and(|q| !q.is_empty()),
            field("queue_affinity"),
            backend,
        )?;
        refuse_if(self.backing_files, field("backing_files=true"), backend)?;
        self.validate_queues(index)?;
        self.validate_id(index)
    }
}

impl DiskConfig {
    /// Checks `num_queues` and `queue_size`.
    fn validate_queues(&self, index: usize) -> Result<(), ConfigError> {
        if !(1..=MAX_DISK_QUEUES).contains(&self.num_queues) {
            return Err(ConfigError::DiskNumQueues {
                index,
                value: self.num_queues,
            });
        }
        if !valid_disk_queue_size(self.queue_size) {
            return Err(ConfigError::DiskQueueSize {
                index,
                value: self.queue_size,
            });
        }
        Ok(())
    }

    /// Checks a user-given `id`.
    fn validate_id(&self, index: usize) -> Result<(), ConfigError> {
        match &self.id {
            Some(id) if !valid_device_id(id) => Err(ConfigError::DiskId {
                index,
                id: id.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// Whether `size` is a usable virtio-blk queue size: a power of two in
/// `2..=MAX_DISK_QUEUE_SIZE`.
pub fn valid_disk_queue_size(size: u16) -> bool {
    size.is_power_of_two() && (2..=MAX_DISK_QUEUE_SIZE).contains(&size)
}
