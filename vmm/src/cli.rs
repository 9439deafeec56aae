//! Command-line parsing into a [`crate::config::VmConfig`].
//!
//! The syntax follows Cloud Hypervisor: each device or resource option takes
//! one `key=value,key=value` string (see [`options`]). clap handles the
//! option names; the values are parsed here so that every error is a single
//! line naming the option and the problem, e.g.
//! `--cpus: boot=0: must be between 1 and 254`.

mod options;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{ArgAction, Parser};
use thiserror::Error;

use crate::config::{
    ConfigError, ConsoleConfig, ConsoleOutputMode, CpuFeatures, CpusConfig, MemoryConfig,
    PayloadConfig, VmConfig, MAX_MEMORY_SIZE, MAX_VCPUS, MEMORY_ALIGNMENT,
};
pub use options::{OptionError, SizeError};
use options::{parse_list, parse_size, parse_toggle, parse_u64, split_options, OptionItem};

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
}

/// `--seccomp true|false|log`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// Filters installed; a forbidden system call kills the VMM (`true`).
    #[default]
    Enabled,
    /// Filters installed; forbidden system calls are only logged (`log`).
    Log,
    /// No filters (`false`).
    Disabled,
}

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

    /// Guest RAM: size=<bytes>[K|M|G|T]
    ///
    /// size: binary units (512M = 512 MiB); a multiple of 4 KiB, at most
    /// 1T (default 512M). shared=off and hugepages=off are accepted;
    /// 'on' is not supported.
    #[arg(long, value_name = "OPTIONS", verbatim_doc_comment)]
    memory: Option<String>,

    /// Legacy serial port (ttyS0): off|null|tty|file=<path> (default null)
    ///
    /// off: no device; null: device present, output discarded;
    /// tty: host terminal (stdin forwarded); file=<path>: append output.
    #[arg(long, value_name = "MODE", verbatim_doc_comment)]
    serial: Option<String>,

    /// virtio console (hvc0): off|null|tty|file=<path> (default off)
    #[arg(long, value_name = "MODE")]
    console: Option<String>,

    /// Write log messages to this file instead of stderr.
    #[arg(long, value_name = "PATH", value_parser = clap::value_parser!(OsString))]
    log_file: Option<OsString>,

    /// More log output; repeat for more (-v info, -vv debug, -vvv trace).
    #[arg(short = 'v', action = ArgAction::Count)]
    verbosity: u8,

    /// REST API socket: path=<path>|fd=<fd> (accepted, not served yet).
    #[arg(long, value_name = "SOCKET")]
    api_socket: Option<String>,

    /// System call filtering of the VMM: true|false|log (default true).
    #[arg(long, value_name = "MODE", default_value = "true")]
    seccomp: String,
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
    let args = Args::try_parse_from(args).map_err(clap_error)?;
    let log_file = args
        .log_file
        .map(|path| non_empty_path("--log-file", path))
        .transpose()?;
    let api_socket = args
        .api_socket
        .map(|raw| {
            check_api_socket(&raw).map_err(|source| CliError::Option {
                option: "--api-socket",
                source,
            })?;
            Ok::<_, CliError>(raw)
        })
        .transpose()?;
    let seccomp = parse_seccomp(&args.seccomp)?;
    let vm = build_vm(args)?;
    Ok(Cli {
        vm,
        log_file,
        verbosity: args_verbosity_placeholder(),
        api_socket,
        seccomp,
    })
}
