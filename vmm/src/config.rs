//! The VM configuration model shared by the CLI and (later) the REST API.
//!
//! Field names and JSON shapes follow Cloud Hypervisor's `VmConfig` so
//! existing clients can send the same bodies.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod rate_limit;

pub use rate_limit::{RateLimitGroupConfig, RateLimiterConfig, TokenBucketConfig};

/// Everything needed to build and boot one VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// vCPU topology and CPUID tweaks.
    #[serde(default)]
    pub cpus: CpusConfig,
    /// Guest RAM.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// What to boot.
    pub payload: PayloadConfig,
    /// Legacy 16550 serial port output.
    #[serde(default = "ConsoleConfig::default_serial")]
    pub serial: ConsoleConfig,
    /// virtio-console output.
    #[serde(default = "ConsoleConfig::default_console")]
    pub console: ConsoleConfig,
    /// virtio-blk disks, in PCI slot order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskConfig>>,
    /// virtio-rng entropy device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngConfig>,
    /// virtio-net devices over tap interfaces, in PCI slot order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Vec<NetConfig>>,
    /// Rate limits shared by the disks naming them in `rate_limit_group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_groups: Option<Vec<RateLimitGroupConfig>>,
    /// virtio-vsock device with the hybrid Unix-socket backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
}

/// `--disk path=…,readonly=on,direct=on,…` (Cloud Hypervisor's `DiskConfig`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Host image file (raw or qcow2).
    pub path: Option<PathBuf>,
    /// Expose the disk read-only (VIRTIO_BLK_F_RO) and open the image read-only.
    #[serde(default)]
    pub readonly: bool,
    /// Open the image with O_DIRECT (bypass the host page cache).
    #[serde(default)]
    pub direct: bool,
    /// Number of request queues.
    #[serde(default = "default_disk_num_queues")]
    pub num_queues: usize,
    /// Size of each request queue.
    #[serde(default = "default_disk_queue_size")]
    pub queue_size: u16,
    /// Serial number returned by VIRTIO_BLK_T_GET_ID (at most 20 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Device identifier (for hot-unplug and counters); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Image format ("raw" or "qcow2"); detected from the file when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<String>,
    /// This disk's own I/O limits (bytes and requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter_config: Option<RateLimiterConfig>,
    /// Id of a `rate_limit_groups` entry whose limits this disk shares
    /// (exclusive with `rate_limiter_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_group: Option<String>,
}

/// Default number of virtio-blk queues (as Cloud Hypervisor).
pub fn default_disk_num_queues() -> usize {
    1
}

/// Default virtio-blk queue size (as Cloud Hypervisor).
pub fn default_disk_queue_size() -> u16 {
    128
}

/// `--rng src=PATH` (Cloud Hypervisor's `RngConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngConfig {
    /// Host entropy source.
    pub src: PathBuf,
}

impl Default for RngConfig {
    fn default() -> Self {
        Self {
            src: PathBuf::from("/dev/urandom"),
        }
    }
}

/// `--net tap=…,mac=…,ip=…` (Cloud Hypervisor's `NetConfig`, without
/// vhost-user).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Tap interface to open or create; `vmtap%d` (kernel-chosen number)
    /// when neither `tap` nor `fds` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// IPv4 address set on the host side of the tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// Netmask for `ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<Ipv4Addr>,
    /// Guest MAC (`12:34:56:78:9a:bc`); random locally administered when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU offered to the guest and set on the tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Total RX+TX queues (even; > 2 enables multi-queue).
    #[serde(default = "default_net_num_queues")]
    pub num_queues: usize,
    /// Size of each queue.
    #[serde(default = "default_net_queue_size")]
    pub queue_size: u16,
    /// Device identifier; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Already opened tap queue fds (one per queue pair) instead of `tap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fds: Option<Vec<i32>>,
    /// Offer TCP segmentation offload (effective with `offload_csum`).
    #[serde(default = "default_true")]
    pub offload_tso: bool,
    /// Offer checksum offload.
    #[serde(default = "default_true")]
    pub offload_csum: bool,
    /// Limits applied to receive and, separately, to transmit (bytes and
    /// frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter_config: Option<RateLimiterConfig>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            tap: None,
            ip: None,
            mask: None,
            mac: None,
            mtu: None,
            num_queues: default_net_num_queues(),
            queue_size: default_net_queue_size(),
            id: None,
            fds: None,
            offload_tso: true,
            offload_csum: true,
            rate_limiter_config: None,
        }
    }
}

/// Default number of virtio-net queues: one RX/TX pair (as Cloud
/// Hypervisor).
pub fn default_net_num_queues() -> usize {
    2
}

/// Default virtio-net queue size (as Cloud Hypervisor).
pub fn default_net_queue_size() -> u16 {
    256
}

fn default_true() -> bool {
    true
}

/// Most queues (RX + TX) one net device may have: 16 pairs.
pub const MAX_NET_QUEUES: usize = 32;

/// Largest virtio-net queue size.
pub const MAX_NET_QUEUE_SIZE: u16 = 4096;

/// Smallest MTU a guest driver accepts (the IPv4 minimum).
pub const MIN_NET_MTU: u16 = 68;

impl NetConfig {
    /// Checks one net device; `index` is its position in `VmConfig::net`.
    /// Whether the tap or fds can be opened is checked by the VMM.
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let q = self.num_queues;
        if !(2..=MAX_NET_QUEUES).contains(&q) || !q.is_multiple_of(2) {
            return Err(ConfigError::NetNumQueues { index, value: q });
        }
        let size = self.queue_size;
        if !size.is_power_of_two() || !(2..=MAX_NET_QUEUE_SIZE).contains(&size) {
            return Err(ConfigError::NetQueueSize { index, value: size });
        }
        if let Some(mac) = &self.mac {
            check_mac(mac).map_err(|reason| ConfigError::NetMac {
                index,
                value: mac.clone(),
                reason,
            })?;
        }
        if let Some(mtu) = self.mtu {
            if mtu < MIN_NET_MTU {
                return Err(ConfigError::NetMtu { index, value: mtu });
            }
        }
        if let Some(name) = &self.tap {
            if !valid_tap_name(name) {
                return Err(ConfigError::NetTapName {
                    index,
                    name: name.clone(),
                });
            }
            if self.fds.is_some() {
                return Err(ConfigError::NetTapAndFds(index));
            }
        }
        if let Some(fds) = &self.fds {
            if fds.len() * 2 != q || fds.iter().any(|&fd| fd < 0) {
                return Err(ConfigError::NetFds {
                    index,
                    fds: fds.len(),
                    num_queues: q,
                });
            }
        }
        if let Some(id) = &self.id {
            if !valid_device_id(id) {
                return Err(ConfigError::NetId {
                    index,
                    id: id.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Whether `name` can name a Linux interface: 1 to 15 bytes, no `/`,
/// whitespace or NUL (a `%d` pattern is allowed).
pub fn valid_tap_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

/// Checks a MAC string: six hex bytes, unicast, not all zero.
pub fn check_mac(mac: &str) -> Result<(), String> {
    let parsed: virtio_devices::net::MacAddr = mac.parse().map_err(|_| {
        "not a MAC address (expected six hex bytes like 12:34:56:78:9a:bc)".to_string()
    })?;
    if parsed.0[0] & 1 != 0 {
        return Err("multicast address; the guest NIC needs a unicast one".into());
    }
    if parsed.0 == [0; 6] {
        return Err("all-zero address".into());
    }
    Ok(())
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            cpus: CpusConfig::default(),
            memory: MemoryConfig::default(),
            payload: PayloadConfig::default(),
            serial: ConsoleConfig::default_serial(),
            console: ConsoleConfig::default_console(),
            disks: None,
            rng: None,
            net: None,
            rate_limit_groups: None,
            vsock: None,
        }
    }
}

/// `--cpus boot=N,max=M,features=...`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpusConfig {
    /// vCPUs started at boot.
    pub boot_vcpus: u8,
    /// Upper bound for hotplug; equals `boot_vcpus` when not given.
    pub max_vcpus: u8,
    /// CPUID feature overrides.
    #[serde(default)]
    pub features: CpuFeatures,
}

impl Default for CpusConfig {
    fn default() -> Self {
        Self {
            boot_vcpus: 1,
            max_vcpus: 1,
            features: CpuFeatures::default(),
        }
    }
}

/// CPUID feature overrides from `--cpus features=a,b`.
///
/// On PVM hosts chv hides CPU features that host's instruction emulator cannot
/// run; each name listed here is exposed to the guest again (`all` re-exposes
/// every hidden feature).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuFeatures {
    /// Feature names to keep even where the host would have them hidden.
    #[serde(default)]
    pub keep: Vec<String>,
}

/// `--memory size=...`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Guest RAM in bytes.
    pub size: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self { size: 512 << 20 }
    }
}

/// The kernel, initramfs and command line to boot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    /// ELF vmlinux (PVH or 64-bit entry) or bzImage.
    pub kernel: Option<PathBuf>,
    /// Optional initramfs loaded next to the kernel.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
}

/// Where a console device's output goes (Cloud Hypervisor's `ConsoleConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Output mode.
    pub mode: ConsoleOutputMode,
    /// Output file when `mode` is `File`.
    pub file: Option<PathBuf>,
}

impl ConsoleConfig {
    /// Serial default: present, output discarded (as Cloud Hypervisor).
    pub fn default_serial() -> Self {
        Self {
            mode: ConsoleOutputMode::Null,
            file: None,
        }
    }
    /// virtio-console default: absent.
    pub fn default_console() -> Self {
        Self {
            mode: ConsoleOutputMode::Off,
            file: None,
        }
    }
}

/// Console output modes, spelled as in Cloud Hypervisor's API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleOutputMode {
    /// Device absent.
    Off,
    /// Host terminal (stdin/stdout); input is forwarded to the guest.
    Tty,
    /// Appended to a file.
    File,
    /// Device present, output discarded.
    Null,
}

/// Most vCPUs a VM may have (the x2APIC-less MADT/MP table limit, as in
/// Cloud Hypervisor).
pub const MAX_VCPUS: u8 = 254;

/// Guest RAM must be a whole number of these (4 KiB pages; a power of two).
pub const MEMORY_ALIGNMENT: u64 = 4 << 10;

/// Upper bound on guest RAM accepted by the configuration (1 TiB).
pub const MAX_MEMORY_SIZE: u64 = 1 << 40;

/// Most request queues one virtio-blk disk may have.
pub const MAX_DISK_QUEUES: usize = 16;

/// Largest virtio-blk queue size (queue sizes are powers of two from 2).
pub const MAX_DISK_QUEUE_SIZE: u16 = 1024;

/// Longest disk serial: the size of the VIRTIO_BLK_T_GET_ID reply.
pub const MAX_DISK_SERIAL_BYTES: usize = 20;

/// Image formats chv can open, as spelled in `image_type`.
pub const DISK_IMAGE_TYPES: [&str; 2] = ["raw", "qcow2"];

/// Device ids starting with this are reserved for the ids chv generates.
pub const RESERVED_ID_PREFIX: &str = "__";

/// Why a [`VmConfig`] is not usable, whichever front end (CLI or API) built
/// it. Messages name the configuration field concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `boot_vcpus` outside `1..=MAX_VCPUS`.
    #[error("cpus.boot_vcpus={0}: must be between 1 and {MAX_VCPUS}")]
    BootVcpus(u8),
    /// `max_vcpus` below `boot_vcpus` or above `MAX_VCPUS`.
    #[error("cpus.max_vcpus={max}: must be between boot_vcpus ({boot}) and {MAX_VCPUS}")]
    MaxVcpus {
        /// The configured `boot_vcpus`.
        boot: u8,
        /// The configured `max_vcpus`.
        max: u8,
    },
    /// An empty CPU feature name.
    #[error("cpus.features.keep: empty feature name")]
    EmptyFeature,
    /// Zero bytes of guest RAM.
    #[error("memory.size=0: must not be zero")]
    MemoryZero,
    /// Guest RAM not a multiple of 4 KiB.
    #[error("memory.size={0}: must be a multiple of 4 KiB")]
    MemoryUnaligned(u64),
    /// Guest RAM above `MAX_MEMORY_SIZE`.
    #[error("memory.size={0}: must not exceed 1 TiB")]
    MemoryTooLarge(u64),
    /// No kernel to boot.
    #[error("payload.kernel: missing (chv boots a kernel directly)")]
    KernelMissing,
    /// A path field that is present but empty.
    #[error("{0}: empty path")]
    EmptyPath(&'static str),
    /// The kernel command line contains a NUL byte, which cannot be passed
    /// to the guest.
    #[error("payload.cmdline: contains a NUL byte")]
    CmdlineNul,
    /// A console in `File` mode without a file.
    #[error("{0}: mode File needs a file path")]
    ConsoleFileMissing(&'static str),
    /// A disk without a path, or with an empty one.
    #[error("disks[{0}].path: missing or empty")]
    DiskPath(usize),
    /// A disk queue count outside `1..=MAX_DISK_QUEUES`.
    #[error("disks[{index}].num_queues={value}: must be between 1 and {MAX_DISK_QUEUES}")]
    DiskNumQueues {
        /// Position of the disk in `disks`.
        index: usize,
        /// The configured count.
        value: usize,
    },
    /// A disk queue size that is not a power of two in `2..=MAX_DISK_QUEUE_SIZE`.
    #[error(
        "disks[{index}].queue_size={value}: must be a power of two between 2 and {MAX_DISK_QUEUE_SIZE}"
    )]
    DiskQueueSize {
        /// Position of the disk in `disks`.
        index: usize,
        /// The configured size.
        value: u16,
    },
    /// A disk serial longer than `MAX_DISK_SERIAL_BYTES`.
    #[error("disks[{index}].serial: {len} bytes, at most {MAX_DISK_SERIAL_BYTES} allowed")]
    DiskSerialTooLong {
        /// Position of the disk in `disks`.
        index: usize,
        /// Length of the serial in bytes.
        len: usize,
    },
    /// An `image_type` other than those in `DISK_IMAGE_TYPES`.
    #[error("disks[{index}].image_type={value}: must be raw or qcow2")]
    DiskImageType {
        /// Position of the disk in `disks`.
        index: usize,
        /// The configured type.
        value: String,
    },
    /// A device id that is empty or uses the reserved `__` prefix.
    #[error("disks[{index}].id='{id}': must be non-empty and not start with '__'")]
    DiskId {
        /// Position of the disk in `disks`.
        index: usize,
        /// The configured id.
        id: String,
    },
    /// Two devices with the same id.
    #[error("disks[{index}].id={id}: used by more than one disk")]
    DuplicateId {
        /// Position of the second disk using the id.
        index: usize,
        /// The id given twice.
        id: String,
    },
    /// A net queue count that is odd or outside `2..=MAX_NET_QUEUES`.
    #[error(
        "net[{index}].num_queues={value}: must be an even number between 2 and {MAX_NET_QUEUES}"
    )]
    NetNumQueues {
        /// Position of the device in `net`.
        index: usize,
        /// The configured count.
        value: usize,
    },
    /// A net queue size that is not a power of two in `2..=MAX_NET_QUEUE_SIZE`.
    #[error(
        "net[{index}].queue_size={value}: must be a power of two between 2 and {MAX_NET_QUEUE_SIZE}"
    )]
    NetQueueSize {
        /// Position of the device in `net`.
        index: usize,
        /// The configured size.
        value: u16,
    },
    /// A MAC address that does not parse or is multicast/all-zero.
    #[error("net[{index}].mac={value}: {reason}")]
    NetMac {
        /// Position of the device in `net`.
        index: usize,
        /// The configured MAC.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An MTU below `MIN_NET_MTU`.
    #[error("net[{index}].mtu={value}: must be between {MIN_NET_MTU} and 65535")]
    NetMtu {
        /// Position of the device in `net`.
        index: usize,
        /// The configured MTU.
        value: u16,
    },
    /// A tap name that is empty or longer than 15 bytes.
    #[error("net[{index}].tap='{name}': must be 1 to 15 bytes without '/' or spaces")]
    NetTapName {
        /// Position of the device in `net`.
        index: usize,
        /// The configured name.
        name: String,
    },
    /// Both a tap name and tap fds.
    #[error("net[{0}]: tap and fds cannot be combined")]
    NetTapAndFds(usize),
    /// A number of tap fds other than one per queue pair, or a negative fd.
    #[error("net[{index}].fds: {fds} fds for num_queues={num_queues} (one valid fd per RX/TX pair needed)")]
    NetFds {
        /// Position of the device in `net`.
        index: usize,
        /// Number of fds given.
        fds: usize,
        /// The configured queue count.
        num_queues: usize,
    },
    /// A device id that is empty or uses the reserved `__` prefix.
    #[error("net[{index}].id='{id}': must be non-empty and not start with '__'")]
    NetId {
        /// Position of the device in `net`.
        index: usize,
        /// The configured id.
        id: String,
    },
    /// A disk's own rate limiter has an unusable bucket.
    #[error("disks[{index}].rate_limiter_config: {reason}")]
    DiskRateLimiter {
        /// Position of the disk in `disks`.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A disk names a rate limit group that does not exist.
    #[error("disks[{index}].rate_limit_group={group}: no such rate limit group")]
    DiskRateLimitGroup {
        /// Position of the disk in `disks`.
        index: usize,
        /// The group named.
        group: String,
    },
    /// A disk with both its own limits and a group.
    #[error("disks[{0}]: rate_limiter_config and rate_limit_group cannot be combined")]
    DiskRateLimitConflict(usize),
    /// A net device's rate limiter has an unusable bucket.
    #[error("net[{index}].rate_limiter_config: {reason}")]
    NetRateLimiter {
        /// Position of the device in `net`.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A rate limit group with an unusable bucket.
    #[error("rate_limit_groups[{index}].rate_limiter_config: {reason}")]
    RateLimitGroup {
        /// Position of the group.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A rate limit group id that is empty or used twice.
    #[error("rate_limit_groups[{index}].id='{id}': must be non-empty and unique")]
    RateLimitGroupId {
        /// Position of the group.
        index: usize,
        /// The id.
        id: String,
    },
    /// A net id already used by another net device or a disk.
    #[error("net[{index}].id={id}: used by more than one device")]
    NetDuplicateId {
        /// Position of the net device.
        index: usize,
        /// The id given twice.
        id: String,
    },
    /// A vsock guest CID that is reserved (0-2) or `u32::MAX`.
    #[error("vsock.cid={0}: must be between {MIN_VSOCK_CID} and {MAX_VSOCK_CID}")]
    VsockCid(u32),
    /// A vsock device id that is empty, reserved or used by another device.
    #[error("vsock.id='{0}': must be non-empty, not start with '__' and be unique")]
    VsockId(String),
}

impl VmConfig {
    /// Checks the whole configuration for values the VMM cannot honour.
    ///
    /// Existence of files is not checked here; the VMM reports those when it
    /// opens them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.cpus.validate()?;
        self.memory.validate()?;
        self.payload.validate()?;
        self.serial.validate("serial")?;
        self.console.validate("console")?;
        let disks = self.disks.as_deref().unwrap_or_default();
        for (index, disk) in disks.iter().enumerate() {
            disk.validate(index)?;
            let id = disk.id.as_ref();
            if id.is_some() && disks[..index].iter().any(|other| other.id.as_ref() == id) {
                return Err(ConfigError::DuplicateId {
                    index,
                    id: id.cloned().unwrap_or_default(),
                });
            }
        }
        if let Some(rng) = &self.rng {
            rng.validate()?;
        }
        let nets = self.net.as_deref().unwrap_or_default();
        for (index, net) in nets.iter().enumerate() {
            net.validate(index)?;
            let Some(id) = &net.id else { continue };
            let clash = nets[..index].iter().any(|o| o.id.as_ref() == Some(id))
                || disks.iter().any(|d| d.id.as_ref() == Some(id));
            if clash {
                return Err(ConfigError::NetDuplicateId {
                    index,
                    id: id.clone(),
                });
            }
        }
        if let Some(vsock) = &self.vsock {
            vsock.validate()?;
            let clash = vsock.id.as_ref().is_some_and(|id| {
                disks.iter().any(|d| d.id.as_ref() == Some(id))
                    || nets.iter().any(|n| n.id.as_ref() == Some(id))
            });
            if clash {
                return Err(ConfigError::VsockId(vsock.id.clone().unwrap_or_default()));
            }
        }
        rate_limit::validate(self)
    }
}

impl DiskConfig {
    /// Checks one disk; `index` is its position in `VmConfig::disks`, used
    /// in error messages. Whether the image exists is checked on open.
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        if self
            .path
            .as_ref()
            .is_none_or(|path| path.as_os_str().is_empty())
        {
            return Err(ConfigError::DiskPath(index));
        }
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
        if let Some(serial) = &self.serial {
            if serial.len() > MAX_DISK_SERIAL_BYTES {
                return Err(ConfigError::DiskSerialTooLong {
                    index,
                    len: serial.len(),
                });
            }
        }
        if let Some(image_type) = &self.image_type {
            if !DISK_IMAGE_TYPES.contains(&image_type.as_str()) {
                return Err(ConfigError::DiskImageType {
                    index,
                    value: image_type.clone(),
                });
            }
        }
        if let Some(id) = &self.id {
            if !valid_device_id(id) {
                return Err(ConfigError::DiskId {
                    index,
                    id: id.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Whether `size` is a usable virtio-blk queue size: a power of two in
/// `2..=MAX_DISK_QUEUE_SIZE`.
pub fn valid_disk_queue_size(size: u16) -> bool {
    size.is_power_of_two() && (2..=MAX_DISK_QUEUE_SIZE).contains(&size)
}

/// Whether a user-given device id is acceptable: non-empty and outside the
/// `RESERVED_ID_PREFIX` namespace chv uses for the ids it generates.
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty() && !id.starts_with(RESERVED_ID_PREFIX)
}

impl RngConfig {
    /// Checks that the entropy source path is not empty.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.src.as_os_str().is_empty() {
            return Err(ConfigError::EmptyPath("rng.src"));
        }
        Ok(())
    }
}

impl CpusConfig {
    /// Checks vCPU counts and feature names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_VCPUS).contains(&self.boot_vcpus) {
            return Err(ConfigError::BootVcpus(self.boot_vcpus));
        }
        if !(self.boot_vcpus..=MAX_VCPUS).contains(&self.max_vcpus) {
            return Err(ConfigError::MaxVcpus {
                boot: self.boot_vcpus,
                max: self.max_vcpus,
            });
        }
        if self.features.keep.iter().any(|name| name.trim().is_empty()) {
            return Err(ConfigError::EmptyFeature);
        }
        Ok(())
    }
}

impl MemoryConfig {
    /// Checks that the RAM size is non-zero, page aligned and at most 1 TiB.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.size == 0 {
            return Err(ConfigError::MemoryZero);
        }
        if self.size & (MEMORY_ALIGNMENT - 1) != 0 {
            return Err(ConfigError::MemoryUnaligned(self.size));
        }
        if self.size > MAX_MEMORY_SIZE {
            return Err(ConfigError::MemoryTooLarge(self.size));
        }
        Ok(())
    }
}

impl PayloadConfig {
    /// Checks that a kernel is given and that no path is empty.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.kernel {
            None => return Err(ConfigError::KernelMissing),
            Some(path) if path.as_os_str().is_empty() => {
                return Err(ConfigError::EmptyPath("payload.kernel"))
            }
            Some(_) => {}
        }
        if self
            .initramfs
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return Err(ConfigError::EmptyPath("payload.initramfs"));
        }
        if self.cmdline.as_ref().is_some_and(|c| c.contains('\0')) {
            return Err(ConfigError::CmdlineNul);
        }
        Ok(())
    }
}

impl ConsoleConfig {
    /// Checks that `File` mode has a non-empty path; `device` names the
    /// field (`serial` or `console`) in the error.
    pub fn validate(&self, device: &'static str) -> Result<(), ConfigError> {
        if self.mode == ConsoleOutputMode::File {
            match &self.file {
                None => return Err(ConfigError::ConsoleFileMissing(device)),
                Some(path) if path.as_os_str().is_empty() => {
                    return Err(ConfigError::EmptyPath(device))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod validate_tests {
    use super::*;

    fn booting() -> VmConfig {
        VmConfig {
            payload: PayloadConfig {
                kernel: Some(PathBuf::from("/vmlinux")),
                ..PayloadConfig::default()
            },
            ..VmConfig::default()
        }
    }

    #[test]
    fn default_with_kernel_is_valid() {
        assert_eq!(booting().validate(), Ok(()));
        assert_eq!(
            VmConfig::default().validate(),
            Err(ConfigError::KernelMissing)
        );
    }

    #[test]
    fn vcpu_limits() {
        let mut config = booting();
        config.cpus.boot_vcpus = 0;
        assert_eq!(config.validate(), Err(ConfigError::BootVcpus(0)));
        config.cpus.boot_vcpus = 255;
        config.cpus.max_vcpus = 255;
        assert_eq!(config.validate(), Err(ConfigError::BootVcpus(255)));
        config.cpus.boot_vcpus = 4;
        config.cpus.max_vcpus = 2;
        assert_eq!(
            config.validate(),
            Err(ConfigError::MaxVcpus { boot: 4, max: 2 })
        );
        config.cpus.max_vcpus = 254;
        assert_eq!(config.validate(), Ok(()));
        config.cpus.features.keep = vec![" ".into()];
        assert_eq!(config.validate(), Err(ConfigError::EmptyFeature));
    }

    #[test]
    fn memory_limits() {
        let mut config = booting();
        for (size, expected) in [
            (0, Err(ConfigError::MemoryZero)),
            (4097, Err(ConfigError::MemoryUnaligned(4097))),
            (
                MAX_MEMORY_SIZE + 4096,
                Err(ConfigError::MemoryTooLarge(MAX_MEMORY_SIZE + 4096)),
            ),
            (MAX_MEMORY_SIZE, Ok(())),
            (4096, Ok(())),
        ] {
            config.memory.size = size;
            assert_eq!(config.validate(), expected, "size {size}");
        }
    }

    #[test]
    fn payload_and_consoles() {
        let mut config = booting();
        config.payload.kernel = Some(PathBuf::new());
        assert_eq!(
            config.validate(),
            Err(ConfigError::EmptyPath("payload.kernel"))
        );
        config = booting();
        config.payload.initramfs = Some(PathBuf::new());
        assert_eq!(
            config.validate(),
            Err(ConfigError::EmptyPath("payload.initramfs"))
        );
        config = booting();
        config.payload.cmdline = Some("a\0b".into());
        assert_eq!(config.validate(), Err(ConfigError::CmdlineNul));
        config = booting();
        config.serial.mode = ConsoleOutputMode::File;
        assert_eq!(
            config.validate(),
            Err(ConfigError::ConsoleFileMissing("serial"))
        );
        config.serial.file = Some(PathBuf::from("/tmp/serial.log"));
        assert_eq!(config.validate(), Ok(()));
        config.console = ConsoleConfig {
            mode: ConsoleOutputMode::File,
            file: Some(PathBuf::new()),
        };
        assert_eq!(config.validate(), Err(ConfigError::EmptyPath("console")));
    }

    fn disk(path: &str) -> DiskConfig {
        DiskConfig {
            path: Some(PathBuf::from(path)),
            num_queues: default_disk_num_queues(),
            queue_size: default_disk_queue_size(),
            ..DiskConfig::default()
        }
    }

    fn with_disk(disk: DiskConfig) -> Result<(), ConfigError> {
        VmConfig {
            disks: Some(vec![self::disk("/a.img"), disk]),
            ..booting()
        }
        .validate()
    }

    #[test]
    fn disk_limits() {
        assert_eq!(with_disk(disk("/b.img")), Ok(()));
        assert_eq!(
            with_disk(DiskConfig::default()),
            Err(ConfigError::DiskPath(1))
        );
        assert_eq!(with_disk(disk("")), Err(ConfigError::DiskPath(1)));
        for (value, ok) in [(0, false), (1, true), (16, true), (17, false)] {
            let result = with_disk(DiskConfig {
                num_queues: value,
                ..disk("/b")
            });
            let expected = Err(ConfigError::DiskNumQueues { index: 1, value });
            assert_eq!(result.is_ok(), ok, "num_queues {value}");
            assert!(ok || result == expected, "num_queues {value}");
        }
        for (value, ok) in [
            (0, false),
            (1, false),
            (2, true),
            (3, false),
            (256, true),
            (1024, true),
            (2048, false),
            (1000, false),
        ] {
            let result = with_disk(DiskConfig {
                queue_size: value,
                ..disk("/b")
            });
            let expected = Err(ConfigError::DiskQueueSize { index: 1, value });
            assert_eq!(result.is_ok(), ok, "queue_size {value}");
            assert!(ok || result == expected, "queue_size {value}");
        }
    }

    #[test]
    fn disk_strings() {
        let serial = |s: &str| {
            with_disk(DiskConfig {
                serial: Some(s.into()),
                ..disk("/b")
            })
        };
        assert_eq!(serial("12345678901234567890"), Ok(()));
        assert_eq!(
            serial("123456789012345678901"),
            Err(ConfigError::DiskSerialTooLong { index: 1, len: 21 })
        );
        // Bytes, not characters: 10 two-byte characters fit, 11 do not.
        assert_eq!(serial(&"é".repeat(10)), Ok(()));
        assert!(serial(&"é".repeat(11)).is_err());
        let image = |t: &str| {
            with_disk(DiskConfig {
                image_type: Some(t.into()),
                ..disk("/b")
            })
        };
        assert_eq!(image("raw"), Ok(()));
        assert_eq!(image("qcow2"), Ok(()));
        assert_eq!(
            image("vmdk"),
            Err(ConfigError::DiskImageType {
                index: 1,
                value: "vmdk".into()
            })
        );
        let id = |id: &str| {
            with_disk(DiskConfig {
                id: Some(id.into()),
                ..disk("/b")
            })
        };
        assert_eq!(id("data"), Ok(()));
        assert_eq!(id("_disk0"), Ok(()));
        for bad in ["", "__rng"] {
            assert_eq!(
                id(bad),
                Err(ConfigError::DiskId {
                    index: 1,
                    id: bad.into()
                })
            );
        }
    }

    #[test]
    fn duplicate_disk_ids() {
        let named = |path: &str, id: &str| DiskConfig {
            id: Some(id.into()),
            ..disk(path)
        };
        let mut config = VmConfig {
            disks: Some(vec![named("/a", "x"), disk("/b"), named("/c", "y")]),
            ..booting()
        };
        assert_eq!(config.validate(), Ok(()));
        config.disks = Some(vec![named("/a", "x"), disk("/b"), named("/c", "x")]);
        assert_eq!(
            config.validate(),
            Err(ConfigError::DuplicateId {
                index: 2,
                id: "x".into()
            })
        );
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "disks[2].id=x: used by more than one disk"
        );
    }

    #[test]
    fn rng_source() {
        let mut config = VmConfig {
            rng: Some(RngConfig::default()),
            ..booting()
        };
        assert_eq!(config.validate(), Ok(()));
        config.rng = Some(RngConfig {
            src: PathBuf::new(),
        });
        assert_eq!(config.validate(), Err(ConfigError::EmptyPath("rng.src")));
    }
}

/// `--vsock cid=N,socket=PATH[,id=X]` (Cloud Hypervisor's `VsockConfig`,
/// without `iommu`/`pci_segment`): a virtio-vsock device giving the guest
/// CID `cid`; host programs connect to the Unix socket `socket` and write
/// `CONNECT <port>`, guest connections to host port P reach `socket_P`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Guest context id (3..=u32::MAX-1).
    pub cid: u32,
    /// Path of the listening Unix socket the VMM creates.
    pub socket: PathBuf,
    /// Device id (generated when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Lowest guest CID (0, 1 and 2 are the hypervisor, local and host).
pub const MIN_VSOCK_CID: u32 = 3;
/// Highest guest CID (`u32::MAX` is `VMADDR_CID_ANY`).
pub const MAX_VSOCK_CID: u32 = u32::MAX - 1;

impl VsockConfig {
    /// Checks the CID range, the socket path and the id. Whether the
    /// socket's directory exists is checked when the device binds it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_VSOCK_CID..=MAX_VSOCK_CID).contains(&self.cid) {
            return Err(ConfigError::VsockCid(self.cid));
        }
        if self.socket.as_os_str().is_empty() {
            return Err(ConfigError::EmptyPath("vsock.socket"));
        }
        if let Some(id) = &self.id {
            if !valid_device_id(id) {
                return Err(ConfigError::VsockId(id.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod vsock_tests {
    use super::*;

    fn with(vsock: VsockConfig) -> Result<(), ConfigError> {
        VmConfig {
            payload: PayloadConfig {
                kernel: Some(PathBuf::from("/k")),
                ..PayloadConfig::default()
            },
            disks: Some(vec![DiskConfig {
                path: Some(PathBuf::from("/d")),
                id: Some("disk0".into()),
                num_queues: default_disk_num_queues(),
                queue_size: default_disk_queue_size(),
                ..DiskConfig::default()
            }]),
            vsock: Some(vsock),
            ..VmConfig::default()
        }
        .validate()
    }

    fn vsock(cid: u32) -> VsockConfig {
        VsockConfig {
            cid,
            socket: PathBuf::from("/tmp/v.sock"),
            id: None,
        }
    }

    #[test]
    fn vsock_validation() {
        assert_eq!(with(vsock(3)), Ok(()));
        assert_eq!(with(vsock(2)), Err(ConfigError::VsockCid(2)));
        assert_eq!(with(vsock(u32::MAX)), Err(ConfigError::VsockCid(u32::MAX)));
        let empty = VsockConfig {
            socket: PathBuf::new(),
            ..vsock(3)
        };
        assert_eq!(with(empty), Err(ConfigError::EmptyPath("vsock.socket")));
        for id in ["__x", "", "disk0"] {
            let v = VsockConfig {
                id: Some(id.into()),
                ..vsock(3)
            };
            assert_eq!(with(v), Err(ConfigError::VsockId(id.into())));
        }
    }

    #[test]
    fn vsock_json_matches_cloud_hypervisor() {
        let v: VsockConfig =
            serde_json::from_str(r#"{"cid": 33, "socket": "/run/v.sock", "id": "v0"}"#).unwrap();
        assert_eq!(v.cid, 33);
        assert_eq!(v.id.as_deref(), Some("v0"));
        let back = serde_json::to_string(&vsock(4)).unwrap();
        assert_eq!(back, r#"{"cid":4,"socket":"/tmp/v.sock"}"#);
        assert!(serde_json::from_str::<VsockConfig>(r#"{"cid": 3}"#).is_err());
    }
}
