//! Tests of [`super::parse_args`] on accepted and rejected command lines.

use super::*;
use crate::config::{
    ConsoleOutputMode, CoreScheduling, CpusConfig, DiskConfig, NetConfig, RngConfig,
};

mod cpus_memory;
mod devices;
mod vhost_restore_platform;

/// Parses `chv --kernel /vmlinux <extra...>`.
fn with_kernel(extra: &[&str]) -> Result<Cli, CliError> {
    let mut args = vec!["chv", "--kernel", "/vmlinux"];
    args.extend_from_slice(extra);
    parse_args(args)
}

/// The VM config of an accepted command line with a kernel.
fn vm(extra: &[&str]) -> VmConfig {
    match with_kernel(extra) {
        Ok(cli) => cli.vm.expect("--kernel given, so a VM config"),
        Err(err) => panic!("{extra:?} rejected: {err}"),
    }
}

/// The one-line error text of a rejected command line with a kernel.
fn error(extra: &[&str]) -> String {
    match with_kernel(extra) {
        Ok(cli) => panic!("{extra:?} accepted: {cli:?}"),
        Err(err) => {
            let text = err.to_string();
            assert!(!text.contains('\n'), "multi-line error: {text:?}");
            text
        }
    }
}

#[test]
fn defaults_with_only_a_kernel() {
    let cli = with_kernel(&[]).unwrap();
    assert_eq!(cli.verbosity, 0);
    assert_eq!(cli.seccomp, SeccompMode::Enabled);
    assert_eq!(cli.log_file, None);
    assert_eq!(cli.api_socket, None);
    let vm = cli.vm.unwrap();
    assert_eq!(vm.payload.kernel, Some(PathBuf::from("/vmlinux")));
    assert_eq!(vm.cpus, CpusConfig::default());
    assert_eq!(vm.memory, MemoryConfig::default());
    assert_eq!(vm.serial, ConsoleConfig::default_serial());
    assert_eq!(vm.console, ConsoleConfig::default_console());
    assert_eq!(vm.console.mode, ConsoleOutputMode::Off);
    assert_eq!(vm.disks, None);
    assert_eq!(vm.rng, None);
}

#[test]
fn no_kernel_means_no_vm() {
    let cli = parse_args(["chv", "-vv", "--api-socket", "/tmp/chv.sock"]).unwrap();
    assert_eq!(cli.vm, None);
    assert_eq!(cli.verbosity, 2);
    assert_eq!(cli.api_socket.as_deref(), Some("/tmp/chv.sock"));
}

#[test]
fn vm_options_without_kernel_name_kernel() {
    for (option, value) in [
        ("--initramfs", "/initrd"),
        ("--cmdline", "quiet"),
        ("--cpus", "boot=2"),
        ("--memory", "size=1G"),
        ("--serial", "tty"),
        ("--console", "tty"),
        ("--disk", "path=/disk.img"),
        ("--rng", "src=/dev/random"),
        ("--net", "tap=tap0"),
    ] {
        let err = parse_args(["chv", option, value]).unwrap_err();
        assert_eq!(err, CliError::RequiresKernel { option });
        assert_eq!(err.to_string(), format!("{option} requires --kernel"));
    }
}

#[test]
fn payload_options() {
    let vm = vm(&[
        "--initramfs",
        "/initrd.cpio",
        "--cmdline",
        "console=ttyS0 quiet",
    ]);
    assert_eq!(vm.payload.initramfs, Some(PathBuf::from("/initrd.cpio")));
    assert_eq!(vm.payload.cmdline.as_deref(), Some("console=ttyS0 quiet"));
}

#[test]
fn cmdline_with_dashes() {
    let vm1 = vm(&["--cmdline", "console=ttyS0 quiet -- echo hi"]);
    assert_eq!(
        vm1.payload.cmdline.as_deref(),
        Some("console=ttyS0 quiet -- echo hi")
    );
    let vm2 = vm(&["--cmdline", "-- echo hi"]);
    assert_eq!(vm2.payload.cmdline.as_deref(), Some("-- echo hi"));
    let vm3 = vm(&["--cmdline", "-s"]);
    assert_eq!(vm3.payload.cmdline.as_deref(), Some("-s"));
    let vm4 = vm(&["--cmdline=--verbose init=/bin/sh"]);
    assert_eq!(
        vm4.payload.cmdline.as_deref(),
        Some("--verbose init=/bin/sh")
    );
    // Options after the cmdline are still recognised.
    let vm5 = vm(&["--cmdline", "-x", "--cpus", "boot=3"]);
    assert_eq!(vm5.payload.cmdline.as_deref(), Some("-x"));
    assert_eq!(vm5.cpus.boot_vcpus, 3);
}

#[test]
fn empty_paths_are_rejected() {
    assert_eq!(
        parse_args(["chv", "--kernel", ""]).unwrap_err().to_string(),
        "--kernel: empty path"
    );
    assert_eq!(error(&["--initramfs", ""]), "--initramfs: empty path");
    assert_eq!(error(&["--log-file", ""]), "--log-file: empty path");
}

#[test]
fn serial_and_console_modes() {
    let serial = |value: &str| vm(&["--serial", value]).serial;
    assert_eq!(serial("tty").mode, ConsoleOutputMode::Tty);
    assert_eq!(serial("off").mode, ConsoleOutputMode::Off);
    assert_eq!(serial("null").mode, ConsoleOutputMode::Null);
    assert_eq!(
        serial("file=/tmp/x"),
        ConsoleConfig {
            file: Some(PathBuf::from("/tmp/x")),
            ..ConsoleConfig::with_mode(ConsoleOutputMode::File)
        }
    );
    assert_eq!(
        serial("file=\"/tmp/a,b\",iommu=off").file,
        Some(PathBuf::from("/tmp/a,b"))
    );
    let both = vm(&["--console", "off", "--serial", "tty"]);
    assert_eq!(both.console.mode, ConsoleOutputMode::Off);
    assert_eq!(both.serial.mode, ConsoleOutputMode::Tty);
    let console = vm(&["--console", "file=/tmp/hvc"]).console;
    assert_eq!(console.mode, ConsoleOutputMode::File);
}

#[test]
fn serial_and_console_rejected() {
    assert_eq!(
        error(&["--serial", "bogus"]),
        "--serial: invalid value 'bogus' (expected off, null, pty, tty, file=PATH or socket=PATH)"
    );
    assert_eq!(
        error(&["--console", "bogus=1"]),
        "--console: unknown option 'bogus' (expected off, null, pty, tty, file=PATH or \
         socket=PATH)"
    );
    assert_eq!(
        error(&["--serial", "file="]),
        "--serial: file=: empty value"
    );
    assert_eq!(
        error(&["--serial", "file"]),
        "--serial: 'file' needs a value (file=...)"
    );
    assert_eq!(
        error(&["--serial", "tty=1"]),
        "--serial: tty=1: takes no value"
    );
    assert_eq!(
        error(&["--serial", "tty,file=/tmp/x"]),
        "--serial: 'tty' and 'file' cannot be combined"
    );
    assert_eq!(
        error(&["--console", "pty=1"]),
        "--console: pty=1: takes no value"
    );
    assert_eq!(
        error(&["--serial", "socket="]),
        "--serial: socket=: empty value"
    );
    let serial = vm(&["--serial", "socket=/tmp/s.sock"]).serial;
    assert_eq!(serial.mode, ConsoleOutputMode::Socket);
    assert_eq!(
        serial.socket.as_deref(),
        Some(std::path::Path::new("/tmp/s.sock"))
    );
    assert_eq!(
        vm(&["--console", "pty"]).console.mode,
        ConsoleOutputMode::Pty
    );
    assert_eq!(
        error(&["--serial", "iommu=off"]),
        "--serial: missing output mode (off, null, pty, tty, file=PATH or socket=PATH)"
    );
}

#[test]
fn logging_seccomp_and_api_socket() {
    let cli = with_kernel(&[
        "-v",
        "--log-file",
        "/tmp/chv.log",
        "-v",
        "--seccomp",
        "log",
        "--api-socket",
        "path=/tmp/api.sock",
    ])
    .unwrap();
    assert_eq!(cli.verbosity, 2);
    assert_eq!(cli.log_file, Some(PathBuf::from("/tmp/chv.log")));
    assert_eq!(cli.seccomp, SeccompMode::Log);
    assert_eq!(cli.api_socket.as_deref(), Some("path=/tmp/api.sock"));
    assert_eq!(
        with_kernel(&["--seccomp", "false"]).unwrap().seccomp,
        SeccompMode::Disabled
    );
    assert_eq!(
        with_kernel(&["--seccomp=true"]).unwrap().seccomp,
        SeccompMode::Enabled
    );
    assert_eq!(
        with_kernel(&["--api-socket", "fd=3"])
            .unwrap()
            .api_socket
            .as_deref(),
        Some("fd=3")
    );
    assert_eq!(
        error(&["--seccomp", "maybe"]),
        "--seccomp: invalid value 'maybe' (expected true, false or log)"
    );
    assert_eq!(
        error(&["--api-socket", "fd=x"]),
        "--api-socket: fd=x: not a non-negative decimal number"
    );
    assert_eq!(
        error(&["--api-socket", "path=/a,fd=3"]),
        "--api-socket: 'path' and 'fd' cannot be combined"
    );
    assert_eq!(error(&["--api-socket", ""]), "--api-socket: empty value");
}

#[test]
fn help_and_version_are_display() {
    for flag in ["--help", "-h"] {
        match parse_args(["chv", flag]) {
            Err(CliError::Display(text)) => {
                assert!(text.contains("--cpus"), "{text}");
                assert!(text.contains("--memory"), "{text}");
                assert!(text.contains("--serial"), "{text}");
                assert!(text.contains("--disk"), "{text}");
                assert!(text.contains("--rng"), "{text}");
            }
            other => panic!("{flag}: {other:?}"),
        }
    }
    match parse_args(["chv", "--version"]) {
        Err(CliError::Display(text)) => assert!(text.contains(env!("CARGO_PKG_VERSION"))),
        other => panic!("--version: {other:?}"),
    }
    assert!(matches!(
        parse_args(["chv", "-V"]),
        Err(CliError::Display(_))
    ));
}

#[test]
fn usage_errors_are_one_line() {
    for args in [
        &["chv", "--bogus"][..],
        &["chv", "stray"],
        &["chv", "--kernel"],
        &["chv", "--kernel", "/a", "--kernel", "/b"],
        &["chv", "--kernel", "/a", "--cpus"],
    ] {
        let err = parse_args(args.iter().copied()).unwrap_err();
        assert!(matches!(err, CliError::Usage(_)), "{args:?}: {err:?}");
        let text = err.to_string();
        assert!(
            !text.contains('\n') && !text.is_empty(),
            "{args:?}: {text:?}"
        );
    }
    let text = parse_args(["chv", "--bogus"]).unwrap_err().to_string();
    assert!(text.contains("--bogus"), "{text}");
}

#[test]
fn validation_errors_map_to_options() {
    assert_eq!(config_error_option(&ConfigError::BootVcpus(0)), "--cpus");
    assert_eq!(config_error_option(&ConfigError::MemoryZero), "--memory");
    assert_eq!(
        config_error_option(&ConfigError::EmptyPath("payload.initramfs")),
        "--initramfs"
    );
    assert_eq!(
        config_error_option(&ConfigError::ConsoleFileMissing("serial")),
        "--serial"
    );
    assert_eq!(
        config_error_option(&ConfigError::EmptyPath("console")),
        "--console"
    );
    assert_eq!(config_error_option(&ConfigError::KernelMissing), "--kernel");
}
