//! Command-line parsing into a [`crate::config::VmConfig`].
//!
//! The syntax follows Cloud Hypervisor: each device or resource option takes
//! one `key=value,key=value` string (see [`options`]). clap handles the
//! option names; the values are parsed here so that every error is a single
//! line naming the option and the problem, e.g.
//! `--cpus: boot=0: must be between 1 and 254`.

mod console_options;
mod cpus_options;
mod device_options;
mod memory_options;
mod options;
mod platform_options;
mod rate_limit_options;
mod restore_options;
pub use restore_options::parse_net_fds;
#[cfg(test)]
mod tests;
mod vhost_options;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{ArgAction, Parser};
use thiserror::Error;

use crate::config::{ConfigError, ConsoleConfig, MemoryConfig, PayloadConfig, VmConfig};
use console_options::parse_console;
use cpus_options::parse_cpus;
use device_options::{parse_disk, parse_net, parse_rng, parse_vsock};
use memory_options::{parse_balloon, parse_memory, parse_memory_zone};
use options::parse_u64;
pub use options::{parse_size, split_options, OptionError, OptionItem, SizeError};
use platform_options::parse_platform;
use rate_limit_options::parse_rate_limit_group;
use restore_options::parse_restore;
use vhost_options::{parse_fs, parse_pmem};

/// What the command line asks chv to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Cli {
    /// The VM to create and boot; `None` when no `--kernel` was given (the
    /// VM is then expected to come through the API).
    pub vm: Option<VmConfig>,
    /// `--log-file`: where log output goes (stderr when absent).
    pub log_file: Option<PathBuf>,
    /// Number of `-v` flags given.
    pub verbosity: u8,
    /// `--api-socket`, raw (`path=...`, `fd=...` or a bare path); checked for
    /// syntax only, not used yet.
    pub api_socket: Option<String>,
    /// `--seccomp`: how the VMM's own system calls are filtered.
    pub seccomp: SeccompMode,
    /// `--restore`: start from a snapshot instead of a payload.
    pub restore: Option<crate::snapshot::RestoreConfig>,
}

pub use devices::seccomp::SeccompMode;

/// Why [`parse_args`] did not produce a [`Cli`].
///
/// Except for [`CliError::Display`], the `Display` text is one line that
/// names the offending option.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CliError {
    /// `--help` or `--version` was given: print this text to stdout and exit
    /// with status 0.
    #[error("{0}")]
    Display(String),
    /// Rejected by the option grammar itself: unknown option, missing
    /// value, option repeated, stray argument.
    #[error("{0}")]
    Usage(String),
    /// The value of an option is malformed or out of range.
    #[error("{option}: {source}")]
    Option {
        /// The option, e.g. `--cpus`.
        option: &'static str,
        /// What is wrong with its value.
        source: OptionError,
    },
    /// A path option was given an empty string.
    #[error("{option}: empty path")]
    EmptyPath {
        /// The option, e.g. `--kernel`.
        option: &'static str,
    },
    /// A path option is not valid UTF-8 (the API's JSON could not carry it).
    #[error("{option}: path is not valid UTF-8")]
    NonUtf8Path {
        /// The option, e.g. `--kernel`.
        option: &'static str,
    },
    /// A VM option was given without `--kernel`, so no VM would be created.
    #[error("{option} requires --kernel")]
    RequiresKernel {
        /// The option given without `--kernel`.
        option: &'static str,
    },
    /// The assembled configuration failed [`VmConfig::validate`].
    #[error("{option}: {source}")]
    Config {
        /// The option the failing field came from.
        option: &'static str,
        /// The validation failure.
        source: ConfigError,
    },
}

/// clap's view of the command line; values stay raw strings and are parsed
/// by the functions below.
#[derive(Debug, Parser)]
#[command(
    name = "chv",
    bin_name = "chv",
    version,
    about = "chv: a lightweight KVM virtual machine monitor (Cloud Hypervisor syntax)",
    after_help = "Example:\n  chv --kernel vmlinux --initramfs initramfs.cpio \\\n      \
                  --cmdline \"console=ttyS0\" --cpus boot=2 --memory size=512M --serial tty"
)]
struct Args {
    /// Kernel to boot: ELF vmlinux (PVH note or 64-bit entry) or bzImage.
    /// Without --kernel no VM is created.
    #[arg(long, value_name = "PATH", value_parser = clap::value_parser!(OsString))]
    kernel: Option<OsString>,

    /// Initramfs loaded next to the kernel (requires --kernel).
    #[arg(long, value_name = "PATH", value_parser = clap::value_parser!(OsString))]
    initramfs: Option<OsString>,

    /// Kernel command line (requires --kernel). Quote it as one argument;
    /// it may contain spaces, '--' and start with '-'.
    #[arg(long, value_name = "STRING", allow_hyphen_values = true)]
    cmdline: Option<String>,

    /// vCPUs: boot=<n>,max=<n>,features=[<name>,...]
    ///
    /// boot: vCPUs at boot, 1..=254 (default 1).
    /// max: hotplug bound, boot..=254 (default: boot).
    /// features: CPU features to expose although the host hides them
    /// ('all' for every hidden one); one name or a [bracketed,list].
    #[arg(long, value_name = "OPTIONS", verbatim_doc_comment)]
    cpus: Option<String>,

    /// Guest RAM: size=<bytes>[K|M|G|T][,shared=on|off][,hugepages=on|off]
    /// [,hugepage_size=<bytes>][,prefault=on|off][,thp=on|off]
    /// [,mergeable=on|off][,hotplug_size=<bytes>]
    /// [,hotplug_method=acpi|virtio-mem][,hotplugged_size=<bytes>]
    ///
    /// size: binary units (512M = 512 MiB); a multiple of 4 KiB, at most
    /// 1T (default 512M); 0 with --memory-zone. shared: memfd mapped
    /// MAP_SHARED (vhost-user backends map it). hugepages: from the host's
    /// hugetlb pool (hugepage_size: default the host's). prefault:
    /// populate at start. thp: transparent huge pages (default on).
    /// mergeable: KSM. shared=on is needed by vhost-user backends
    /// (--fs, --disk vhost_user=on). hotplug_size: room for RAM added
    /// later with vm.resize desired_ram (a multiple of 128 MiB).
    /// hotplug_method: acpi (memory devices, grow only) or virtio-mem (a
    /// virtio-mem device, grows and shrinks in 2 MiB blocks).
    /// hotplugged_size: with virtio-mem, the part plugged at boot.
    #[arg(long, value_name = "OPTIONS", verbatim_doc_comment)]
    memory: Option<String>,

    /// Guest RAM zones (with --memory size=0); one flag may take several,
    /// and may be repeated: id=<id>,size=<bytes>[,file=<path>]
    /// [,shared=on|off][,hugepages=on|off][,hugepage_size=<bytes>]
    /// [,prefault=on|off][,mergeable=on|off]
    ///
    /// Zones are laid out in guest-physical order as given. file: back the
    /// zone with this file (a directory: an unnamed file in it).
    #[arg(
        long = "memory-zone",
        value_name = "ZONE",
        num_args = 1..,
        action = ArgAction::Append,
        verbatim_doc_comment
    )]
    memory_zone: Vec<String>,

    /// Legacy serial port (ttyS0): off|null|tty|file=<path> (default null)
    ///
    /// off: no device; null: device present, output discarded;
    /// tty: host terminal (stdin forwarded); file=<path>: append output.
    #[arg(long, value_name = "MODE", verbatim_doc_comment)]
    serial: Option<String>,

    /// virtio console (hvc0): off|null|tty|file=<path> (default off)
    ///
    /// Same modes as --serial. Cloud Hypervisor's default is tty; chv's
    /// is off, so a plain boot has one console (the serial port).
    #[arg(long, value_name = "MODE", verbatim_doc_comment)]
    console: Option<String>,

    /// virtio-blk disks; one flag may take several, and may be repeated:
    /// path=<image>[,readonly=on|off][,direct=on|off][,num_queues=<n>]
    /// [,queue_size=<n>][,serial=<s>][,id=<id>][,image_type=raw|qcow2]
    /// [,bw_size=<bytes>,bw_refill_time=<ms>][,ops_size=<n>,ops_refill_time=<ms>]
    /// [,rate_limit_group=<id>]
    /// or vhost_user=on,socket=<path>[,num_queues=<n>][,queue_size=<n>][,id=<id>]
    ///
    /// path: raw or qcow2 image (required unless vhost_user=on).
    /// vhost_user=on: a vhost-user-blk backend (qemu-storage-daemon, SPDK)
    /// on socket serves the disk; needs --memory shared=on.
    /// readonly: read-only disk (default off). direct: O_DIRECT (default off).
    /// num_queues: 1..=16 (default 1). queue_size: power of two, 2..=1024
    /// (default 128). serial: at most 20 bytes. id: unique device id.
    /// image_type: default detected from the file. iommu=off is accepted.
    /// bw_*/ops_*: this disk's rate limit; rate_limit_group: share the
    /// limit of a --rate-limit-group instead.
    #[arg(
        long,
        value_name = "DISK",
        num_args = 1..,
        action = ArgAction::Append,
        verbatim_doc_comment
    )]
    disk: Vec<String>,

    /// virtio-net devices over taps or vhost-user; one flag may take several, and may be
    /// repeated: [tap=<name>|fd=<fd>|fd=[<fd>,...]][,mac=<mac>][,ip=<ipv4>]
    /// [,mask=<ipv4>][,mtu=<n>][,num_queues=<n>][,queue_size=<n>][,id=<id>]
    /// [,offload_tso=on|off][,offload_csum=on|off]
    ///
    /// tap: interface to open, created if missing (default vmtap<N>).
    /// fd: already opened tap queue(s), one per RX/TX pair.
    /// mac: guest MAC (default random, locally administered).
    /// ip, mask: IPv4 address/netmask of the host side of the tap.
    /// mtu: offered to the guest and set on the tap (68..=65535).
    /// num_queues: even, 2..=32 (default 2); more than 2 is multi-queue.
    /// queue_size: power of two, 2..=4096 (default 256).
    /// offload_tso, offload_csum: default on. iommu=off and offload_ufo=off
    /// are accepted. bw_*/ops_*: rate limits, see --rate-limit-group.
    /// Or vhost_user=on,socket=<path>[,vhost_mode=client|server][,mac=<mac>]
    /// [,queue_size=<n>][,offload_*][,id=<id>]: a vhost-user-net backend
    /// (DPDK's vhost PMD) moves the frames; one queue pair; needs --memory
    /// shared=on. vhost_mode=client (default): chv connects to the socket;
    /// server: chv creates it and waits up to 30 s for the backend.
    #[arg(
        long,
        value_name = "NET",
        num_args = 1..,
        action = ArgAction::Append,
        verbatim_doc_comment
    )]
    net: Vec<String>,

    /// Rate limits shared by disks; one flag may take several, and may be
    /// repeated: id=<id>[,bw_size=<bytes>,bw_refill_time=<ms>]
    /// [,bw_one_time_burst=<bytes>][,ops_size=<n>,ops_refill_time=<ms>]
    /// [,ops_one_time_burst=<n>]
    ///
    /// A disk joins with --disk ...,rate_limit_group=<id>. --disk and
    /// --net take the same bw_*/ops_* keys for a limit of their own (net:
    /// receive and transmit are limited separately). bw_* sizes accept
    /// K/M/G suffixes; each bucket needs its size and refill_time.
    #[arg(
        long = "rate-limit-group",
        value_name = "GROUP",
        num_args = 1..,
        action = ArgAction::Append,
        verbatim_doc_comment
    )]
    rate_limit_group: Vec<String>,

    /// virtio-balloon: size=<bytes>[,deflate_on_oom=on|off]
    /// [,free_page_reporting=on|off][,id=<id>][,pci_segment=<n>]
    ///
    /// size: how much RAM the guest gives back at start (grown or shrunk
    /// later with vm.resize desired_balloon). deflate_on_oom: the guest
    /// takes pages back when it runs out of memory. free_page_reporting:
    /// the guest reports the pages it frees, and chv returns them to the
    /// host. Statistics and counters appear in vm.counters.
    #[arg(long, value_name = "OPTIONS", verbatim_doc_comment)]
    balloon: Option<String>,

    /// virtio-rng entropy device: src=<path> (default src=/dev/urandom)
    ///
    /// Cloud Hypervisor always adds one; chv adds it only when --rng is
    /// given, since every PCI device costs guest boot time on PVM hosts.
    #[arg(long, value_name = "RNG", verbatim_doc_comment)]
    rng: Option<String>,

    /// virtio-vsock device: cid=<cid>,socket=<path>[,id=<id>]
    ///
    /// cid: the guest's context id (3..=4294967294). socket: Unix socket
    /// the VMM listens on (its directory must exist); host programs connect
    /// and write "CONNECT <port>\n" to reach guest port <port>, and guest
    /// connections to host port P go to the socket <path>_P.
    #[arg(long, value_name = "VSOCK", verbatim_doc_comment)]
    vsock: Option<String>,

    /// Platform: num_pci_segments=<n>,serial_number=<s>,uuid=<u>,oem_strings=[<s>,...]
    ///
    /// num_pci_segments: PCI host bridges (1..=96), each with its own ECAM
    /// window; devices choose one with pci_segment=<n>. serial_number, uuid
    /// and oem_strings: the SMBIOS identity the guest reads.
    #[arg(long, value_name = "PLATFORM", verbatim_doc_comment)]
    platform: Option<String>,
    /// virtio-fs shares served by a vhost-user backend (virtiofsd); one
    /// flag may take several, and may be repeated:
    /// tag=<tag>,socket=<path>[,num_queues=<n>][,queue_size=<n>][,id=<id>]
    ///
    /// tag: the guest's mount tag, 1 to 36 bytes. socket: the backend's
    /// vhost-user socket. num_queues: request queues (default 1).
    /// queue_size: power of two up to 32768 (default 1024). Needs
    /// --memory shared=on. pci_segment=0 and iommu=off are accepted.
    #[arg(
        long,
        value_name = "FS",
        num_args = 1..,
        action = ArgAction::Append,
        verbatim_doc_comment
    )]
    fs: Vec<String>,

    /// virtio-pmem devices (the guest's /dev/pmem<N>); one flag may take
    /// several, and may be repeated:
    /// file=<path>[,size=<bytes>][,discard_writes=on|off][,id=<id>]
    ///
    /// file: backing file (created/extended to size unless
    /// discard_writes). size: a multiple of 2 MiB (default: the file's).
    /// discard_writes: map the file privately, so it never changes.
    #[arg(
        long,
        value_name = "PMEM",
        num_args = 1..,
        action = ArgAction::Append,
        verbatim_doc_comment
    )]
    pmem: Vec<String>,

    /// Write log messages to this file instead of stderr.
    #[arg(long, value_name = "PATH", value_parser = clap::value_parser!(OsString))]
    log_file: Option<OsString>,

    /// More log output; repeat for more (-v info, -vv debug, -vvv trace).
    #[arg(short = 'v', action = ArgAction::Count)]
    verbosity: u8,

    /// REST API socket: path=<path>|fd=<fd> (accepted, not served yet).
    #[arg(long, value_name = "SOCKET")]
    api_socket: Option<String>,

    /// System call filtering of the VMM: true|false|log.
    #[arg(long, value_name = "MODE", default_value = "true")]
    seccomp: String,

    /// Restore a snapshot: source_url=file://<dir>[,prefault=on|off]
    /// [,resume=true|false]
    ///
    /// prefault: copy guest memory in before the guest runs (default off:
    /// pages load on first touch). resume: run the guest right away
    /// (default false: it waits, paused, for vm.resume). Replaces --kernel
    /// and the device options: the snapshot holds the VM's configuration.
    #[arg(long, value_name = "RESTORE", verbatim_doc_comment)]
    restore: Option<String>,
}

/// Parses argv (including argv\[0\]) into a [`Cli`].
///
/// `--help` and `--version` come back as [`CliError::Display`]; every other
/// error's `Display` is one line naming the option and the problem. Files
/// are not checked for existence; the VMM reports that when opening them.
pub fn parse_args<I, T>(args: I) -> Result<Cli, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut args = Args::try_parse_from(args).map_err(clap_error)?;
    let log_file = args
        .log_file
        .take()
        .map(|path| non_empty_path("--log-file", path))
        .transpose()?;
    let api_socket = args
        .api_socket
        .take()
        .map(|raw| {
            check_api_socket(&raw).map_err(|source| CliError::Option {
                option: "--api-socket",
                source,
            })?;
            Ok::<_, CliError>(raw)
        })
        .transpose()?;
    let seccomp = parse_seccomp(&args.seccomp)?;
    let verbosity = args.verbosity;
    let restore = args
        .restore
        .take()
        .map(|raw| parse_restore(&raw))
        .transpose()
        .map_err(|source| CliError::Option {
            option: "--restore",
            source,
        })?;
    let vm = build_vm(args)?;
    if restore.is_some() && vm.is_some() {
        return Err(CliError::Option {
            option: "--restore",
            source: OptionError::Conflict("--restore".into(), "--kernel".into()),
        });
    }
    Ok(Cli {
        vm,
        log_file,
        verbosity,
        api_socket,
        seccomp,
        restore,
    })
}

/// Turns a clap error into [`CliError`]: help/version text verbatim, any
/// real error as its first line without the `error: ` prefix.
fn clap_error(err: clap::Error) -> CliError {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => CliError::Display(err.to_string()),
        _ => {
            let text = err.to_string();
            let line = text.lines().next().unwrap_or_default();
            CliError::Usage(line.strip_prefix("error: ").unwrap_or(line).to_owned())
        }
    }
}

/// Builds the VM configuration from the VM options, or `None` when no
/// `--kernel` was given (then no other VM option may be given either).
fn build_vm(args: Args) -> Result<Option<VmConfig>, CliError> {
    let option_error = |option| move |source| CliError::Option { option, source };
    let cpus = args
        .cpus
        .as_deref()
        .map(parse_cpus)
        .transpose()
        .map_err(option_error("--cpus"))?;
    let memory = args
        .memory
        .as_deref()
        .map(parse_memory)
        .transpose()
        .map_err(option_error("--memory"))?;
    let zones = args
        .memory_zone
        .iter()
        .map(|value| parse_memory_zone(value))
        .collect::<Result<Vec<_>, _>>()
        .map_err(option_error("--memory-zone"))?;
    let serial = args
        .serial
        .as_deref()
        .map(parse_console)
        .transpose()
        .map_err(option_error("--serial"))?;
    let console = args
        .console
        .as_deref()
        .map(parse_console)
        .transpose()
        .map_err(option_error("--console"))?;
    let disks = args
        .disk
        .iter()
        .map(|value| parse_disk(value))
        .collect::<Result<Vec<_>, _>>()
        .map_err(option_error("--disk"))?;
    let balloon = args
        .balloon
        .as_deref()
        .map(parse_balloon)
        .transpose()
        .map_err(option_error("--balloon"))?;
    let rng = args
        .rng
        .as_deref()
        .map(parse_rng)
        .transpose()
        .map_err(option_error("--rng"))?;
    let nets = args
        .net
        .iter()
        .map(|value| parse_net(value))
        .collect::<Result<Vec<_>, _>>()
        .map_err(option_error("--net"))?;
    let vsock = args
        .vsock
        .as_deref()
        .map(parse_vsock)
        .transpose()
        .map_err(option_error("--vsock"))?;
    let groups = args
        .rate_limit_group
        .iter()
        .map(|value| parse_rate_limit_group(value))
        .collect::<Result<Vec<_>, _>>()
        .map_err(option_error("--rate-limit-group"))?;
    let platform = args
        .platform
        .as_deref()
        .map(parse_platform)
        .transpose()
        .map_err(option_error("--platform"))?;
    let fs = args
        .fs
        .iter()
        .map(|value| parse_fs(value))
        .collect::<Result<Vec<_>, _>>()
        .map_err(option_error("--fs"))?;
    let pmem = args
        .pmem
        .iter()
        .map(|value| parse_pmem(value))
        .collect::<Result<Vec<_>, _>>()
        .map_err(option_error("--pmem"))?;
    let initramfs = args
        .initramfs
        .map(|path| non_empty_path("--initramfs", path))
        .transpose()?;

    let Some(kernel) = args.kernel else {
        let given = [
            ("--initramfs", initramfs.is_some()),
            ("--cmdline", args.cmdline.is_some()),
            ("--cpus", cpus.is_some()),
            ("--memory", memory.is_some()),
            ("--memory-zone", !zones.is_empty()),
            ("--serial", serial.is_some()),
            ("--console", console.is_some()),
            ("--disk", !disks.is_empty()),
            ("--rng", rng.is_some()),
            ("--balloon", balloon.is_some()),
            ("--net", !nets.is_empty()),
            ("--rate-limit-group", !groups.is_empty()),
            ("--vsock", vsock.is_some()),
            ("--platform", platform.is_some()),
            ("--fs", !fs.is_empty()),
            ("--pmem", !pmem.is_empty()),
        ];
        return match given.iter().find(|(_, present)| *present) {
            Some((option, _)) => Err(CliError::RequiresKernel { option }),
            None => Ok(None),
        };
    };
    let config = VmConfig {
        cpus: cpus.unwrap_or_default(),
        memory: MemoryConfig {
            zones: (!zones.is_empty()).then_some(zones),
            ..memory.unwrap_or_default()
        },
        payload: PayloadConfig {
            kernel: Some(non_empty_path("--kernel", kernel)?),
            initramfs,
            cmdline: args.cmdline,
            ..PayloadConfig::default()
        },
        serial: serial.unwrap_or_else(ConsoleConfig::default_serial),
        console: console.unwrap_or_else(ConsoleConfig::default_console),
        disks: (!disks.is_empty()).then_some(disks),
        rng,
        balloon,
        net: (!nets.is_empty()).then_some(nets),
        rate_limit_groups: (!groups.is_empty()).then_some(groups),
        vsock,
        platform,
        fs: (!fs.is_empty()).then_some(fs),
        pmem: (!pmem.is_empty()).then_some(pmem),
        ..VmConfig::default()
    };
    config.validate().map_err(|source| CliError::Config {
        option: config_error_option(&source),
        source,
    })?;
    Ok(Some(config))
}

/// The command-line option a validation failure stems from.
fn config_error_option(err: &ConfigError) -> &'static str {
    match err {
        ConfigError::BootVcpus(_) | ConfigError::MaxVcpus { .. } | ConfigError::EmptyFeature => {
            "--cpus"
        }
        ConfigError::MemoryZero
        | ConfigError::MemoryUnaligned(_)
        | ConfigError::MemoryTooLarge(_) => "--memory",
        ConfigError::CmdlineNul => "--cmdline",
        ConfigError::EmptyPath("payload.initramfs") => "--initramfs",
        ConfigError::ConsoleFileMissing("serial") | ConfigError::EmptyPath("serial") => "--serial",
        ConfigError::ConsoleFileMissing(_) | ConfigError::EmptyPath("console") => "--console",
        ConfigError::DiskPath(_)
        | ConfigError::DiskNumQueues { .. }
        | ConfigError::DiskQueueSize { .. }
        | ConfigError::DiskSerialTooLong { .. }
        | ConfigError::DiskImageType { .. }
        | ConfigError::DiskId { .. }
        | ConfigError::DuplicateId { .. }
        | ConfigError::DiskRateLimiter { .. }
        | ConfigError::DiskRateLimitGroup { .. }
        | ConfigError::DiskRateLimitConflict(_) => "--disk",
        ConfigError::RateLimitGroup { .. } | ConfigError::RateLimitGroupId { .. } => {
            "--rate-limit-group"
        }
        ConfigError::EmptyPath("rng.src") => "--rng",
        ConfigError::NetNumQueues { .. }
        | ConfigError::NetQueueSize { .. }
        | ConfigError::NetMac { .. }
        | ConfigError::NetMtu { .. }
        | ConfigError::NetTapName { .. }
        | ConfigError::NetTapAndFds(_)
        | ConfigError::NetFds { .. }
        | ConfigError::NetId { .. }
        | ConfigError::NetDuplicateId { .. }
        | ConfigError::NetRateLimiter { .. } => "--net",
        ConfigError::VsockCid(_)
        | ConfigError::VsockId(_)
        | ConfigError::EmptyPath("vsock.socket") => "--vsock",
        ConfigError::KernelMissing | ConfigError::EmptyPath(_) => "--kernel",
        ConfigError::Unsupported { field, .. } | ConfigError::Invalid { field, .. } => {
            option_of_field(field)
        }
    }
}

/// The command-line option that sets a configuration field (by the field
/// path's first part: `disks[1].iommu` → `--disk`).
fn option_of_field(field: &str) -> &'static str {
    if field.starts_with("memory.zones") {
        return "--memory-zone";
    }
    let top = field.split(['.', '[', '=']).next().unwrap_or_default();
    match top {
        "cpus" => "--cpus",
        "memory" => "--memory",
        "payload" => "--kernel",
        "disks" => "--disk",
        "net" => "--net",
        "rng" => "--rng",
        "serial" => "--serial",
        "console" => "--console",
        "vsock" => "--vsock",
        "balloon" => "--balloon",
        "fs" => "--fs",
        "pmem" => "--pmem",
        "platform" => "--platform",
        "rate_limit_groups" => "--rate-limit-group",
        _ => "--api",
    }
}

/// Rejects an empty path argument, and one that is not UTF-8 (the VM
/// configuration must stay representable as the API's JSON).
fn non_empty_path(option: &'static str, path: OsString) -> Result<PathBuf, CliError> {
    if path.is_empty() {
        return Err(CliError::EmptyPath { option });
    }
    if path.to_str().is_none() {
        return Err(CliError::NonUtf8Path { option });
    }
    Ok(PathBuf::from(path))
}

/// Checks `--api-socket`: a bare path, `path=PATH` or `fd=N`.
fn check_api_socket(value: &str) -> Result<(), OptionError> {
    if value.is_empty() {
        return Err(OptionError::Empty);
    }
    if !value.starts_with("path=") && !value.starts_with("fd=") {
        return Ok(());
    }
    let mut seen: Option<String> = None;
    for item in split_options(value)? {
        match item.key.as_str() {
            "path" => {
                item.non_empty_value()?;
            }
            "fd" => {
                let fd = parse_u64(&item.key, item.value()?)?;
                if fd > i32::MAX as u64 {
                    return Err(OptionError::invalid(
                        &item.key,
                        item.value()?,
                        "not a valid fd",
                    ));
                }
            }
            _ => {
                return Err(OptionError::UnknownKey {
                    key: item.key,
                    expected: "path or fd",
                })
            }
        }
        if let Some(previous) = seen {
            return Err(OptionError::Conflict(previous, item.key));
        }
        seen = Some(item.key);
    }
    Ok(())
}

/// Parses `--seccomp true|false|log`.
fn parse_seccomp(value: &str) -> Result<SeccompMode, CliError> {
    match value {
        "true" => Ok(SeccompMode::Enabled),
        "log" => Ok(SeccompMode::Log),
        "false" => Ok(SeccompMode::Disabled),
        _ => Err(CliError::Option {
            option: "--seccomp",
            source: OptionError::UnknownValue {
                value: value.to_owned(),
                expected: "true, false or log",
            },
        }),
    }
}

/// Parses one `--disk` value (`path=…,readonly=on,…`) into a [`DiskConfig`],
/// for clients such as `chv-remote add-disk`.
pub fn parse_disk_option(value: &str) -> Result<crate::config::DiskConfig, CliError> {
    parse_disk(value).map_err(|source| CliError::Option {
        option: "--disk",
        source,
    })
}

/// Parses one `--net` value (`tap=…,mac=…,…`) into a [`NetConfig`](crate::config::NetConfig),
/// for clients such as `chv-remote add-net`.
pub fn parse_net_option(value: &str) -> Result<crate::config::NetConfig, CliError> {
    parse_net(value).map_err(|source| CliError::Option {
        option: "--net",
        source,
    })
}

/// Parses one `--vsock` value (`cid=N,socket=PATH[,id=X]`) into a
/// [`VsockConfig`](crate::config::VsockConfig), for clients such as
/// `chv-remote add-vsock`.
pub fn parse_vsock_option(value: &str) -> Result<crate::config::VsockConfig, CliError> {
    parse_vsock(value).map_err(|source| CliError::Option {
        option: "--vsock",
        source,
    })
}

#[cfg(test)]
mod hot_add_option_tests {
    use super::*;

    #[test]
    fn net_and_vsock_options_parse_like_the_cli() {
        let net = parse_net_option("tap=hp0,mac=12:34:56:78:9a:bc,id=n1").unwrap();
        assert_eq!(net.tap.as_deref(), Some("hp0"));
        assert_eq!(net.id.as_deref(), Some("n1"));
        let err = parse_net_option("tap=hp0,bogus=1").unwrap_err();
        assert!(err.to_string().contains("--net"), "{err}");
        let vsock = parse_vsock_option("cid=7,socket=/tmp/v.sock").unwrap();
        assert_eq!(vsock.cid, 7);
        assert_eq!(vsock.socket, PathBuf::from("/tmp/v.sock"));
        assert!(
            parse_vsock_option("socket=/tmp/v.sock").is_err(),
            "cid is required"
        );
    }
}
