//! Why a configuration is refused: every message names the field.

use super::*;

/// Why a [`VmConfig`] is not usable, whichever front end (CLI or API) built
/// it. Messages name the configuration field concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A Cloud Hypervisor setting chv cannot honour (refused, never
    /// ignored).
    #[error("{field}: not supported by chv ({reason})")]
    Unsupported {
        /// The field and the value asked for, e.g. `disks[0].iommu=true`.
        field: String,
        /// Why, or what chv offers instead.
        reason: String,
    },
    /// A value that is wrong in itself.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field (with its value where that helps).
        field: String,
        /// What is expected.
        reason: String,
    },
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
