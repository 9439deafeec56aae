//! Tests of [`super::parse_args`] on accepted and rejected command lines.

use super::*;
use crate::config::{CoreScheduling, CpusConfig, DiskConfig, NetConfig, RngConfig};

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
fn cpus_accepted() {
    let cpus = vm(&["--cpus", "boot=2"]).cpus;
    assert_eq!((cpus.boot_vcpus, cpus.max_vcpus), (2, 2));
    let cpus = vm(&["--cpus", "boot=2,max=8"]).cpus;
    assert_eq!((cpus.boot_vcpus, cpus.max_vcpus), (2, 8));
    let cpus = vm(&["--cpus", "max=4"]).cpus;
    assert_eq!((cpus.boot_vcpus, cpus.max_vcpus), (1, 4));
    let cpus = vm(&["--cpus", "boot=254"]).cpus;
    assert_eq!((cpus.boot_vcpus, cpus.max_vcpus), (254, 254));
}

#[test]
fn cpus_features() {
    let keep = |value: &str| vm(&["--cpus", value]).cpus.features.keep;
    assert_eq!(keep("features=[xsave,cx16]"), vec!["xsave", "cx16"]);
    assert_eq!(
        keep("boot=2,features=[XSAVE,popcnt,xsave],max=2"),
        vec!["xsave", "popcnt"]
    );
    assert_eq!(keep("features=all"), vec!["all"]);
    assert!(keep("features=[]").is_empty());
    assert_eq!(
        error(&["--cpus", "features=[xsave,,cx16]"]),
        "--cpus: features=[xsave,,cx16]: empty list element"
    );
    assert_eq!(
        error(&["--cpus", "features=[a-b]"]),
        "--cpus: features=[a-b]: invalid feature name 'a-b'"
    );
    assert_eq!(
        error(&["--cpus", "features=[xsave"]),
        "--cpus: unbalanced brackets in 'features=[xsave'"
    );
}

#[test]
fn cpus_cloud_hypervisor_keys() {
    let cpus = vm(&[
        "--cpus",
        "boot=2,max=4,topology=2:2:1:1,kvm_hyperv=off,max_phys_bits=40,nested=off,\
         affinity=[0@[0],1@[0-1]],core_scheduling=vcpu",
    ])
    .cpus;
    let t = cpus.topology.unwrap();
    assert_eq!(
        (
            t.threads_per_core,
            t.cores_per_die,
            t.dies_per_package,
            t.packages
        ),
        (2, 2, 1, 1)
    );
    assert_eq!(
        (cpus.max_phys_bits, cpus.nested, cpus.kvm_hyperv),
        (40, false, false)
    );
    let affinity = cpus.affinity.unwrap();
    assert_eq!(affinity[1].host_cpus, [0, 1]);
    assert_eq!(cpus.core_scheduling, CoreScheduling::Vcpu);
    for (value, message) in [
        (
            "topology=1:2:1",
            "topology=1:2:1: expected threads_per_core:cores_per_die:dies_per_package:packages",
        ),
        (
            "topology=0:1:1:1",
            "topology=0:1:1:1: each count must be between 1 and 255",
        ),
        (
            "affinity=[x@[1]]",
            "affinity=[x@[1]]: 'x' is not a vCPU number",
        ),
        (
            "affinity=[0@[3-1]]",
            "affinity=[0@[3-1]]: range 3-1 is backwards",
        ),
        (
            "core_scheduling=all",
            "core_scheduling=all: expected vm, vcpu or off",
        ),
        (
            "kvm_hyperv=on",
            "cpus.kvm_hyperv=true: not supported by chv (chv has no Hyper-V enlightenments)",
        ),
        (
            "boot=6,topology=3:2:1:1",
            "cpus.topology: not supported by chv (threads_per_core=3 must be a power of two \
             when a higher level has more than one member (vCPU ids are contiguous))",
        ),
    ] {
        let text = error(&["--cpus", value]);
        assert!(text.ends_with(message), "{value}: {text}");
    }
}

#[test]
fn cpus_rejected() {
    assert_eq!(
        error(&["--cpus", "boot=0"]),
        "--cpus: boot=0: must be between 1 and 254"
    );
    assert_eq!(
        error(&["--cpus", "boot=255"]),
        "--cpus: boot=255: must be between 1 and 254"
    );
    assert_eq!(
        error(&["--cpus", "boot=2,max=1"]),
        "--cpus: max=1: must be between boot (2) and 254"
    );
    assert_eq!(
        error(&["--cpus", "boot=2,foo=1"]),
        "--cpus: unknown option 'foo' (expected boot, max, topology, kvm_hyperv, max_phys_bits, \
         affinity, nested, core_scheduling or features)"
    );
    assert_eq!(
        error(&["--cpus", "boot=two"]),
        "--cpus: boot=two: not a non-negative decimal number"
    );
    assert_eq!(
        error(&["--cpus", "boot"]),
        "--cpus: 'boot' needs a value (boot=...)"
    );
    assert_eq!(
        error(&["--cpus", "boot=1,boot=2"]),
        "--cpus: 'boot' given more than once"
    );
    assert_eq!(error(&["--cpus", ""]), "--cpus: empty value");
    assert_eq!(
        error(&["--cpus", "boot=2,topology=1:1:1:1"]),
        "--cpus: cpus.topology: threads_per_core=1 x cores_per_die=1 x dies_per_package=1 x \
         packages=1 must be max_vcpus=2 (and none zero)"
    );
}

#[test]
fn memory_accepted() {
    let size = |value: &str| vm(&["--memory", value]).memory.size;
    assert_eq!(size("size=128M"), 128 << 20);
    assert_eq!(size("size=1G"), 1 << 30);
    assert_eq!(size("size=512K"), 512 << 10);
    assert_eq!(size("size=4096"), 4096);
    assert_eq!(size("size=1T"), 1 << 40);
    assert_eq!(size("size=256M,shared=off,hugepages=off"), 256 << 20);
    assert_eq!(size("shared=off"), MemoryConfig::default().size);
    let memory = vm(&[
        "--memory",
        "size=1G,shared=on,hugepages=on,hugepage_size=2M,prefault=on,thp=off",
    ])
    .memory;
    if arch::PLATFORM.acpi_hotplug.is_some() {
        let hotplug = vm(&["--memory", "size=1G,hotplug_size=2G"]).memory;
        assert_eq!(hotplug.hotplug_room(), 2 << 30);
    } else {
        // No ACPI memory hotplug here (aarch64): refused by name.
        let refused = error(&["--memory", "size=1G,hotplug_size=2G"]);
        assert!(refused.contains("memory.hotplug_method=acpi"), "{refused}");
    }
    assert!(vm(&["--memory", "size=1G,mergeable=on"]).memory.mergeable);
    let refused = error(&["--memory", "size=1G,shared=on,mergeable=on"]);
    assert!(refused.contains("memory.mergeable"), "{refused}");
    assert_eq!(
        memory,
        MemoryConfig {
            size: 1 << 30,
            shared: true,
            hugepages: true,
            hugepage_size: Some(2 << 20),
            prefault: true,
            thp: false,
            ..MemoryConfig::default()
        }
    );
}

#[test]
fn memory_zones_accepted() {
    let memory = vm(&[
        "--memory",
        "size=0",
        "--memory-zone",
        "id=mem0,size=256M,shared=on",
        "id=mem1,size=128M,file=/dev/shm,prefault=on,mergeable=on",
    ])
    .memory;
    assert_eq!(memory.size, 0);
    assert_eq!(memory.boot_size(), 384 << 20);
    let zones = memory.zones.unwrap();
    assert_eq!(zones.len(), 2);
    assert_eq!((zones[0].id.as_str(), zones[0].size), ("mem0", 256 << 20));
    assert!(zones[0].shared && zones[0].file.is_none());
    assert_eq!(
        zones[1].file.as_deref(),
        Some(std::path::Path::new("/dev/shm"))
    );
    assert!(zones[1].prefault && zones[1].mergeable && !zones[1].shared);
}

#[test]
fn memory_rejected() {
    assert_eq!(
        error(&["--memory", "size=12Q"]),
        "--memory: size=12Q: invalid size suffix 'Q' (expected K, M, G or T)"
    );
    assert_eq!(
        error(&["--memory", "size=0"]),
        "--memory: memory.size=0: must not be zero"
    );
    assert_eq!(error(&["--memory", "size="]), "--memory: size=: empty size");
    assert_eq!(
        error(&["--memory", "size=4097"]),
        "--memory: size=4097: must be a multiple of 4 KiB"
    );
    assert_eq!(
        error(&["--memory", "size=2T"]),
        "--memory: size=2T: must not exceed 1 TiB"
    );
    assert_eq!(
        error(&["--memory", "size=99999999T"]),
        "--memory: size=99999999T: size does not fit in 64 bits"
    );
    assert_eq!(
        error(&["--memory", "hugepages=maybe"]),
        "--memory: hugepages=maybe: expected on or off"
    );
    assert_eq!(
        error(&["--memory", "128M"]),
        "--memory: unknown option '128M' (expected size, shared, hugepages, hugepage_size, \
         prefault, thp, mergeable, hotplug_method, hotplug_size or hotplugged_size)"
    );
    if arch::PLATFORM.acpi_hotplug.is_some() {
        assert_eq!(
            error(&["--memory", "size=1G,hotplug_size=100M"]),
            "--memory: memory.hotplug_size=104857600: must be a multiple of 128 MiB"
        );
    }
    // virtio-mem and ACPI hotplug need the platform's hotplug window
    // (aarch64 refuses both by name).
    if arch::PLATFORM.acpi_hotplug.is_some() {
        assert_eq!(
            error(&[
                "--memory",
                "size=1G,hotplug_size=1G,hotplug_method=virtio-mem,hotplugged_size=3M"
            ]),
            "--memory: memory.hotplugged_size=3145728: must be a multiple of the 2 MiB virtio-mem \
             block size, at most memory.hotplug_size"
        );
        assert_eq!(
            error(&[
                "--memory",
                "size=1G,hotplug_size=128M,hotplug_method=virtio-mem,hotplugged_size=256M"
            ]),
            "--memory: memory.hotplugged_size=268435456: must be a multiple of the 2 MiB virtio-mem \
             block size, at most memory.hotplug_size"
        );
        assert_eq!(
            error(&[
                "--memory",
                "size=1G,hotplug_method=virtio-mem,hotplugged_size=2M"
            ]),
            "--memory: memory.hotplugged_size=2097152: needs memory.hotplug_size"
        );
        assert!(
            error(&["--memory", "size=1G,hotplug_size=1G,hotplugged_size=2M"])
                .starts_with("--memory: memory.hotplugged_size: not supported by chv")
        );
    }
    assert_eq!(
        error(&["--memory", "hotplug_method=dimm"]),
        "--memory: hotplug_method=dimm: expected acpi or virtio-mem"
    );
    assert_eq!(
        error(&["--memory", "size=1G,hugepage_size=3M,hugepages=on"]),
        "--memory: memory.hugepage_size=3145728: must be a power of two of at least 4 KiB"
    );
    assert_eq!(
        error(&["--memory", "size=1G,hugepage_size=2M"]),
        "--memory: memory.hugepage_size=2097152: needs hugepages=on"
    );
    assert_eq!(
        error(&["--memory", "size=1G", "--memory-zone", "id=a,size=1G"]),
        "--memory: memory.size=1073741824: must be 0 when memory.zones define the RAM"
    );
    assert_eq!(
        error(&["--memory", "size=0", "--memory-zone", "size=1G"]),
        "--memory-zone: missing id=ID"
    );
    assert_eq!(
        error(&["--memory", "size=0", "--memory-zone", "id=a,size=0"]),
        "--memory-zone: size=0: must not be zero"
    );
    assert_eq!(
        error(&[
            "--memory",
            "size=0",
            "--memory-zone",
            "id=a,size=1G",
            "id=a,size=1G"
        ]),
        "--memory-zone: memory.zones[a].id: is used by another zone"
    );
    assert_eq!(
        error(&["--memory", "size=0", "--memory-zone", "id=a,size=1G,host_numa_node=0"]),
        "--memory-zone: memory.zones[a].host_numa_node: not supported by chv (not implemented by chv yet)"
    );
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

/// The disks of an accepted command line.
fn disks(extra: &[&str]) -> Vec<DiskConfig> {
    vm(extra).disks.expect("--disk given, so disks")
}

/// A disk with chv's defaults and this path.
fn plain_disk(path: &str) -> DiskConfig {
    DiskConfig {
        path: Some(PathBuf::from(path)),
        num_queues: 1,
        queue_size: 128,
        ..DiskConfig::default()
    }
}

#[test]
fn disk_defaults_and_all_keys() {
    assert_eq!(
        disks(&["--disk", "path=/a.img"]),
        vec![plain_disk("/a.img")]
    );
    let all = disks(&[
        "--disk",
        "path=/b.qcow2,readonly=on,direct=on,num_queues=4,queue_size=256,\
         serial=ABC123,id=data,image_type=qcow2,iommu=off",
    ]);
    assert_eq!(
        all,
        vec![DiskConfig {
            path: Some(PathBuf::from("/b.qcow2")),
            readonly: true,
            direct: true,
            num_queues: 4,
            queue_size: 256,
            serial: Some("ABC123".into()),
            id: Some("data".into()),
            image_type: Some(crate::config::ImageType::Qcow2),
            rate_limiter_config: None,
            rate_limit_group: None,
            ..DiskConfig::default()
        }]
    );
    let off = &disks(&["--disk", "readonly=off,direct=false,path=/c,image_type=raw"])[0];
    assert!(!off.readonly && !off.direct);
    assert_eq!(off.image_type, Some(crate::config::ImageType::Raw));
    // Limits themselves are accepted; quotes protect commas in paths.
    let edge = &disks(&[
        "--disk",
        "path=\"/x,y.img\",num_queues=16,queue_size=1024,serial=12345678901234567890",
    ])[0];
    assert_eq!(edge.path, Some(PathBuf::from("/x,y.img")));
    assert_eq!((edge.num_queues, edge.queue_size), (16, 1024));
    assert_eq!(disks(&["--disk", "path=/d,queue_size=2"])[0].queue_size, 2);
    assert_eq!(disks(&["--disk", "path=/d,num_queues=1"])[0].num_queues, 1);
}

#[test]
fn several_disks() {
    let expected = vec![plain_disk("/a"), plain_disk("/b"), plain_disk("/c")];
    // Several values after one flag (Cloud Hypervisor style) ...
    assert_eq!(
        disks(&["--disk", "path=/a", "path=/b", "path=/c"]),
        expected
    );
    // ... repeated flags ...
    assert_eq!(
        disks(&["--disk", "path=/a", "--disk", "path=/b", "--disk=path=/c"]),
        expected
    );
    // ... and both mixed, with other options in between; order is kept.
    let vm = vm(&[
        "--disk", "path=/a", "path=/b", "--cpus", "boot=2", "--disk", "path=/c",
    ]);
    assert_eq!(vm.disks, Some(expected));
    assert_eq!(vm.cpus.boot_vcpus, 2);
    let named = disks(&["--disk", "path=/a,id=x", "path=/b,id=y"]);
    assert_eq!(named[1].id.as_deref(), Some("y"));
}

#[test]
fn disk_rejected() {
    for (value, message) in [
        (
            "path=/a,queue_size=100",
            "queue_size=100: must be a power of two between 2 and 1024",
        ),
        (
            "path=/a,queue_size=1",
            "queue_size=1: must be a power of two between 2 and 1024",
        ),
        (
            "path=/a,queue_size=2048",
            "queue_size=2048: must be a power of two between 2 and 1024",
        ),
        (
            "path=/a,queue_size=65536",
            "queue_size=65536: must be a power of two between 2 and 1024",
        ),
        (
            "path=/a,queue_size=0",
            "queue_size=0: must be a power of two between 2 and 1024",
        ),
        (
            "path=/a,queue_size=big",
            "queue_size=big: not a non-negative decimal number",
        ),
        (
            "path=/a,num_queues=0",
            "num_queues=0: must be between 1 and 16",
        ),
        (
            "path=/a,num_queues=17",
            "num_queues=17: must be between 1 and 16",
        ),
        (
            "path=/a,serial=123456789012345678901",
            "serial=123456789012345678901: 21 bytes, at most 20 allowed",
        ),
        ("path=/a,serial=", "serial=: empty value"),
        (
            "path=/a,image_type=vmdk",
            "image_type=vmdk: expected raw or qcow2",
        ),
        ("path=/a,image_type=", "image_type=: expected raw or qcow2"),
        (
            "path=/a,image_type=vhdx",
            "'image_type=vhdx' is not supported by chv",
        ),
        ("path=", "path=: empty value"),
        ("path", "'path' needs a value (path=...)"),
        ("readonly=on", "missing path (path=...)"),
        ("path=/a,readonly=yes", "readonly=yes: expected on or off"),
        ("path=/a,direct", "'direct' needs a value (direct=...)"),
        ("path=/a,id=", "id=: empty value"),
        (
            "path=/a,id=__rng",
            "id=__rng: ids starting with '__' are reserved for chv",
        ),
        ("path=/a,path=/b", "'path' given more than once"),
        ("", "empty value"),
        (
            "path=/a,cache=none",
            "unknown option 'cache' (expected path, readonly, direct, num_queues, \
             queue_size, serial, id, image_type, bw_*/ops_* limits, rate_limit_group, vhost_user, socket, pci_segment \
             or iommu=off)",
        ),
        (
            "/disk.img",
            "unknown option '/disk.img' (expected path, readonly, direct, num_queues, \
             queue_size, serial, id, image_type, bw_*/ops_* limits, rate_limit_group, vhost_user, socket, pci_segment \
             or iommu=off)",
        ),
        ("path=/a,iommu=on", "'iommu=on' is not supported by chv"),
    ] {
        assert_eq!(
            error(&["--disk", value]),
            format!("--disk: {message}"),
            "{value}"
        );
    }
}

#[test]
fn disk_unsupported_cloud_hypervisor_keys() {
    for key in ["queue_affinity", "backing_files", "sparse"] {
        assert_eq!(
            error(&["--disk", &format!("path=/a,{key}=1")]),
            format!("--disk: '{key}' is not supported by chv")
        );
    }
}

#[test]
fn disk_errors_in_later_disks() {
    // One bad disk among several, in one flag or in a repeated flag.
    assert_eq!(
        error(&["--disk", "path=/a", "path=/b,queue_size=3"]),
        "--disk: queue_size=3: must be a power of two between 2 and 1024"
    );
    assert_eq!(
        error(&["--disk", "path=/a", "--disk", "path=/b,bogus=1"]),
        "--disk: unknown option 'bogus' (expected path, readonly, direct, num_queues, \
         queue_size, serial, id, image_type, bw_*/ops_* limits, rate_limit_group, vhost_user, socket, pci_segment \
             or iommu=off)"
    );
    // Duplicate ids across disks, in both spellings.
    assert_eq!(
        error(&["--disk", "path=/a,id=data", "path=/b,id=data"]),
        "--disk: disks[1].id=data: used by more than one disk"
    );
    assert_eq!(
        error(&[
            "--disk",
            "path=/a,id=x",
            "--disk",
            "path=/b",
            "--disk",
            "path=/c,id=x"
        ]),
        "--disk: disks[2].id=x: used by more than one disk"
    );
    // A flag without any value is a usage error.
    assert!(matches!(with_kernel(&["--disk"]), Err(CliError::Usage(_))));
}

#[test]
fn rng_accepted_and_rejected() {
    assert_eq!(
        vm(&["--rng", "src=/dev/hwrng"]).rng,
        Some(RngConfig {
            src: PathBuf::from("/dev/hwrng"),
            ..RngConfig::default()
        })
    );
    assert_eq!(vm(&["--rng", "iommu=off"]).rng, Some(RngConfig::default()));
    assert_eq!(RngConfig::default().src, PathBuf::from("/dev/urandom"));
    assert_eq!(error(&["--rng", "src="]), "--rng: src=: empty value");
    assert_eq!(error(&["--rng", ""]), "--rng: empty value");
    assert_eq!(
        error(&["--rng", "src=/a,iommu=on"]),
        "--rng: 'iommu=on' is not supported by chv"
    );
    assert_eq!(
        error(&["--rng", "size=4"]),
        "--rng: unknown option 'size' (expected src, pci_segment or iommu=off)"
    );
    assert!(matches!(
        with_kernel(&["--rng", "src=/a", "--rng", "src=/b"]),
        Err(CliError::Usage(_))
    ));
}

#[test]
fn console_modes_for_virtio_console() {
    let console = |value: &str| vm(&["--console", value]).console;
    assert_eq!(console("tty").mode, ConsoleOutputMode::Tty);
    assert_eq!(console("null").mode, ConsoleOutputMode::Null);
    assert_eq!(console("off").mode, ConsoleOutputMode::Off);
    assert_eq!(
        console("file=/tmp/hvc.log").file,
        Some(PathBuf::from("/tmp/hvc.log"))
    );
}

#[test]
fn device_validation_errors_map_to_options() {
    assert_eq!(config_error_option(&ConfigError::DiskPath(0)), "--disk");
    assert_eq!(
        config_error_option(&ConfigError::DuplicateId {
            index: 1,
            id: "x".into()
        }),
        "--disk"
    );
    assert_eq!(
        config_error_option(&ConfigError::EmptyPath("rng.src")),
        "--rng"
    );
}

/// The net devices of an accepted command line.
fn nets(extra: &[&str]) -> Vec<NetConfig> {
    let mut args = vec!["--net"];
    args.extend_from_slice(extra);
    vm(&args).net.expect("--net given, so net devices")
}

#[test]
fn net_defaults_and_all_keys() {
    assert_eq!(vm(&[]).net, None);
    assert_eq!(
        nets(&["tap=tap0"]),
        vec![NetConfig {
            tap: Some("tap0".into()),
            ..NetConfig::default()
        }]
    );
    let d = NetConfig::default();
    assert_eq!((d.num_queues, d.queue_size), (2, 256));
    assert!(d.offload_tso && d.offload_csum && d.mac.is_none());
    let all = nets(&[
        "tap=vm%d,mac=52:54:00:AB:cd:ef,ip=192.168.10.1,mask=255.255.255.0,\
                      mtu=9000,num_queues=4,queue_size=1024,id=n1,offload_tso=off,\
                      offload_csum=false,offload_ufo=off,iommu=off",
    ]);
    assert_eq!(
        all,
        vec![NetConfig {
            tap: Some("vm%d".into()),
            ip: Some("192.168.10.1".parse().unwrap()),
            mask: Some("255.255.255.0".parse().unwrap()),
            mac: Some("52:54:00:ab:cd:ef".into()),
            mtu: Some(9000),
            num_queues: 4,
            queue_size: 1024,
            id: Some("n1".into()),
            fds: None,
            offload_tso: false,
            offload_csum: false,
            offload_ufo: false,
            rate_limiter_config: None,
            ..NetConfig::default()
        }]
    );
    // No tap and no fd: the device creates vmtap<N>.
    assert_eq!(nets(&["mac=02:00:00:00:00:01"])[0].tap, None);
    // fd lists set the queue count.
    let fds = &nets(&["fd=[3,4]"])[0];
    assert_eq!((fds.fds.clone(), fds.num_queues), (Some(vec![3, 4]), 4));
    assert_eq!(nets(&["fd=5"])[0].fds, Some(vec![5]));
    // Several devices, in one flag or repeated.
    let two = nets(&["tap=a,id=x", "tap=b,id=y", "--net", "tap=c"]);
    assert_eq!(two.len(), 3);
    assert_eq!(two[2].tap.as_deref(), Some("c"));
}

#[test]
fn net_rejected() {
    for (value, message) in [
        (
            "mac=52:54:00:ab:cd",
            "mac=52:54:00:ab:cd: not a MAC address (expected six hex bytes like 12:34:56:78:9a:bc)",
        ),
        (
            "mac=01:00:5e:00:00:01",
            "mac=01:00:5e:00:00:01: multicast address; the guest NIC needs a unicast one",
        ),
        ("mac=00:00:00:00:00:00", "mac=00:00:00:00:00:00: all-zero address"),
        ("ip=10.0.0.300", "ip=10.0.0.300: not an IPv4 address"),
        ("mask=x", "mask=x: not an IPv4 address"),
        ("mtu=67", "mtu=67: must be between 68 and 65535"),
        ("mtu=65536", "mtu=65536: must be between 68 and 65535"),
        ("num_queues=3", "num_queues=3: must be an even number between 2 and 32"),
        ("num_queues=34", "num_queues=34: must be an even number between 2 and 32"),
        ("queue_size=100", "queue_size=100: must be a power of two between 2 and 4096"),
        (
            "tap=averyveryverylongname",
            "tap=averyveryverylongname: interface names are 1 to 15 bytes without '/', ':' or spaces",
        ),
        ("tap=a,fd=3", "'tap' and 'fd' cannot be combined"),
        (
            "fd=[3,4],num_queues=2",
            "fd=[3, 4]: 2 fds for num_queues=2 (one fd per RX/TX queue pair)",
        ),
        ("fd=-1", "fd=-1: not a valid fd"),
        ("id=__x", "id=__x: ids starting with '__' are reserved for chv"),
        ("offload_tso=maybe", "offload_tso=maybe: expected on or off"),
        ("iommu=on", "'iommu=on' is not supported by chv"),
        ("tap=a,tap=b", "'tap' given more than once"),
        ("", "empty value"),
    ] {
        assert_eq!(error(&["--net", value]), format!("--net: {message}"), "{value}");
    }
    assert!(error(&["--net", "colour=red"]).starts_with("--net: unknown option 'colour'"));
    assert_eq!(
        error(&["--net", "tap=a,pci_segment=1"]),
        "--net: net[0].pci_segment=1: the VM has 1 PCI segment(s) (platform.num_pci_segments)"
    );
    assert_eq!(
        error(&["--net", "tap=a,host_mac=02:00:00:00:00:01"]),
        "--net: 'host_mac' is not supported by chv"
    );
    assert_eq!(
        error(&["--net", "tap=a,id=x", "tap=b,id=x"]),
        "--net: net[1].id=x: used by more than one device"
    );
    assert_eq!(
        error(&["--disk", "path=/a,id=x", "--net", "tap=b,id=x"]),
        "--net: net[0].id=x: used by more than one device"
    );
}

#[test]
fn net_config_validation_and_json() {
    let bad = |net: NetConfig| {
        VmConfig {
            payload: PayloadConfig {
                kernel: Some(PathBuf::from("/k")),
                ..PayloadConfig::default()
            },
            net: Some(vec![net]),
            ..VmConfig::default()
        }
        .validate()
        .unwrap_err()
    };
    assert_eq!(
        bad(NetConfig {
            tap: Some("t".into()),
            fds: Some(vec![3]),
            ..NetConfig::default()
        }),
        ConfigError::NetTapAndFds(0)
    );
    assert_eq!(
        bad(NetConfig {
            fds: Some(vec![3]),
            num_queues: 4,
            ..NetConfig::default()
        })
        .to_string(),
        "net[0].fds: 1 fds for num_queues=4 (one valid fd per RX/TX pair needed)"
    );
    assert!(matches!(
        bad(NetConfig {
            mac: Some("zz".into()),
            ..NetConfig::default()
        }),
        ConfigError::NetMac { index: 0, .. }
    ));
    // Cloud Hypervisor-style JSON with defaults filled in.
    let net: NetConfig =
        serde_json::from_str(r#"{"tap":"tap0","ip":"192.168.1.1","mac":"02:00:00:00:00:02"}"#)
            .unwrap();
    assert_eq!(net.ip, Some("192.168.1.1".parse().unwrap()));
    assert_eq!(
        (net.num_queues, net.queue_size, net.offload_tso),
        (2, 256, true)
    );
    let json = serde_json::to_string(&net).unwrap();
    assert!(
        json.contains(r#""tap":"tap0""#) && json.contains(r#""fds":null"#),
        "{json}"
    );
    let vhost: NetConfig = serde_json::from_str(r#"{"vhost_user":true}"#).unwrap();
    assert!(bad(vhost).to_string().contains("net[0].vhost_socket"));
}

#[test]
fn vhost_user_net_options() {
    let vm = vm(&[
        "--memory",
        "size=128M,shared=on",
        "--net",
        "vhost_user=on,socket=/tmp/n.sock,vhost_mode=server,mac=02:00:00:00:00:09",
        "vhost_user=on,socket=/tmp/m.sock,queue_size=512",
    ]);
    let net = vm.net.unwrap();
    assert!(net[0].vhost_user);
    assert_eq!(net[0].vhost_socket.as_deref(), Some("/tmp/n.sock"));
    assert_eq!(net[0].vhost_mode, crate::config::VhostMode::Server);
    assert_eq!(net[1].vhost_mode, crate::config::VhostMode::Client);
    assert_eq!(net[1].queue_size, 512);
    // CH's JSON spelling of the mode.
    let json: NetConfig =
        serde_json::from_str(r#"{"vhost_user":true,"vhost_socket":"/s","vhost_mode":"Server"}"#)
            .unwrap();
    assert_eq!(json.vhost_mode, crate::config::VhostMode::Server);
    let shared = "size=128M,shared=on";
    for (value, message) in [
        (
            "vhost_user=on",
            "net[0].vhost_socket: vhost_user=true needs the backend's socket",
        ),
        ("vhost_user=on,socket=/s,tap=t", "net[0].tap"),
        ("vhost_user=on,socket=/s,ip=10.0.0.1", "net[0].ip/mask"),
        ("vhost_user=on,socket=/s,mtu=1400", "net[0].mtu"),
        (
            "vhost_user=on,socket=/s,num_queues=4",
            "net[0].num_queues=4",
        ),
        (
            "vhost_user=on,socket=/s,bw_size=1000,bw_refill_time=10",
            "net[0].rate_limiter_config",
        ),
        (
            "socket=/s,tap=t",
            "net[0].vhost_socket: not supported by chv (only with vhost_user=true)",
        ),
        (
            "vhost_user=on,socket=/s,vhost_mode=both",
            "vhost_mode=both: client or server",
        ),
    ] {
        let e = error(&["--memory", shared, "--net", value]);
        assert!(e.contains(message), "{value}: {e}");
    }
    assert!(
        error(&["--net", "vhost_user=on,socket=/s"])
            .contains("net[0].vhost_user=true is a vhost-user device"),
        "needs memory.shared"
    );
}

#[test]
fn vsock_accepted_and_rejected() {
    let dir = std::env::temp_dir();
    let sock = dir.join("chv-cli-vsock.sock");
    let value = format!("cid=3,socket={}", sock.display());
    assert_eq!(
        vm(&["--vsock", &value]).vsock,
        Some(crate::config::VsockConfig {
            cid: 3,
            socket: sock.clone(),
            iommu: false,
            id: None,
            pci_segment: 0,
            pci_device_id: None,
        })
    );
    let with_id = format!("cid=4294967294,socket={},id=v0,iommu=off", sock.display());
    let v = vm(&["--vsock", &with_id]).vsock.unwrap();
    assert_eq!((v.cid, v.id.as_deref()), (u32::MAX - 1, Some("v0")));
    // A relative socket lives in the current directory.
    assert!(vm(&["--vsock", "cid=5,socket=v.sock"]).vsock.is_some());
    assert_eq!(vm(&[]).vsock, None);
    let bad = |v: &str| error(&["--vsock", v]);
    assert_eq!(
        bad("cid=2,socket=/tmp/v"),
        "--vsock: cid=2: must be between 3 and 4294967294 (0-2 are reserved)"
    );
    assert!(bad("cid=4294967295,socket=/tmp/v").starts_with("--vsock: cid=4294967295:"));
    assert!(bad("cid=x,socket=/tmp/v").starts_with("--vsock: cid=x"));
    assert_eq!(
        bad("cid=3,socket=/nonexistent-chv-dir/v.sock"),
        "--vsock: socket=/nonexistent-chv-dir/v.sock: directory /nonexistent-chv-dir does not exist"
    );
    assert_eq!(bad("socket=/tmp/v"), "--vsock: missing cid (cid=...)");
    assert_eq!(bad("cid=3"), "--vsock: missing socket (socket=...)");
    assert_eq!(bad("cid=3,socket="), "--vsock: socket=: empty value");
    assert_eq!(
        bad("cid=3,socket=/tmp/v,iommu=on"),
        "--vsock: 'iommu=on' is not supported by chv"
    );
    assert_eq!(
        bad("cid=3,socket=/tmp/v,pci_segment=1"),
        "--vsock: vsock.pci_segment=1: the VM has 1 PCI segment(s) (platform.num_pci_segments)"
    );
    assert!(bad("cid=3,socket=/tmp/v,id=__x").contains("reserved"));
    assert!(bad("cid=3,socket=/tmp/v,foo=1").starts_with("--vsock: unknown option 'foo'"));
    // Needs a kernel, like every VM option.
    let err = parse_args(["chv", "--vsock", "cid=3,socket=/tmp/v"]).unwrap_err();
    assert!(err.to_string().contains("--vsock"), "{err}");
    // An id clashing with a disk's is caught by validation.
    let text = error(&[
        "--disk",
        "path=/a,id=d0",
        "--vsock",
        "cid=3,socket=/tmp/v,id=d0",
    ]);
    assert!(text.starts_with("--vsock: vsock.id='d0'"), "{text}");
}

#[test]
fn non_utf8_kernel_path_is_rejected() {
    use std::os::unix::ffi::OsStringExt;
    let bad = std::ffi::OsString::from_vec(b"/\xff".to_vec());
    let args = vec![
        std::ffi::OsString::from("chv"),
        std::ffi::OsString::from("--kernel"),
        bad,
    ];
    let Err(err) = parse_args(args) else {
        panic!("non-UTF-8 path accepted");
    };
    assert_eq!(err.to_string(), "--kernel: path is not valid UTF-8");
}

/// `--restore`'s options, CLI syntax of Cloud Hypervisor.
#[test]
fn restore_options() {
    let cli = parse_args([
        "chv",
        "--restore",
        "source_url=file:///s,prefault=on,resume=true,net_fds=[net0@[3,4],_net1@[5]]",
    ])
    .expect("accepted");
    let r = cli.restore.expect("restore");
    assert_eq!(r.source_url, "file:///s");
    assert!(r.prefault && r.resume);
    let nets = r.net_fds.expect("net_fds");
    assert_eq!(nets.len(), 2);
    assert_eq!(nets[0].id, "net0");
    assert_eq!(nets[0].fds, Some(vec![3, 4]));
    assert_eq!(nets[1].num_fds, 1);
    // chv's clone overrides.
    let cli = parse_args([
        "chv",
        "--restore",
        "source_url=/s,serial=\"socket=/c/s.sock\",console=pty,vsock_cid=9,vsock_socket=/c/v",
    ])
    .expect("accepted");
    let r = cli.restore.expect("restore");
    let serial = r.serial.expect("serial");
    assert_eq!(serial.socket, Some("/c/s.sock".into()));
    assert_eq!(r.console.expect("console").mode, ConsoleOutputMode::Pty);
    let vsock = r.vsock.expect("vsock");
    assert_eq!(vsock.cid, Some(9));
    assert_eq!(vsock.socket, Some("/c/v".into()));

    let bad = |v: &str| {
        let e = parse_args(["chv", "--restore", v])
            .expect_err(v)
            .to_string();
        assert!(e.contains("--restore"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        e
    };
    assert!(bad("prefault=on").contains("source_url"));
    assert!(bad("source_url=http://x/s").contains("file://"));
    assert!(bad("source_url=/s,net_fds=[net0@[x]]").contains("net_fds"));
    assert!(bad("source_url=/s,net_fds=[@[3]]").contains("net_fds"));
    assert!(bad("source_url=/s,net_fds=net0").contains("net_fds"));
    assert!(bad("source_url=/s,colour=red").contains("colour"));
    assert!(bad("source_url=/s,vsock_cid=x").contains("vsock_cid"));
    assert!(bad("source_url=/s,serial=loud").contains("loud"));
    let e = parse_args(["chv", "--kernel", "/k", "--restore", "source_url=/s"])
        .expect_err("both")
        .to_string();
    assert!(e.contains("--kernel"), "{e}");
}

#[test]
fn platform_segments_and_device_pci_segment() {
    let vm = vm(&[
        "--platform",
        "num_pci_segments=2",
        "--disk",
        "path=/d,pci_segment=1",
        "--net",
        "tap=t0,pci_segment=1",
        "--rng",
        "pci_segment=1",
        "--vsock",
        "cid=3,socket=/tmp/v,pci_segment=1",
    ]);
    let platform = vm.platform.as_ref().unwrap();
    assert_eq!(platform.num_pci_segments, 2);
    assert_eq!(vm.disks.unwrap()[0].pci_segment, 1);
    assert_eq!(vm.net.unwrap()[0].pci_segment, 1);
    assert_eq!(vm.rng.unwrap().pci_segment, 1);
    assert_eq!(vm.vsock.unwrap().pci_segment, 1);
    assert_eq!(
        error(&["--platform", "num_pci_segments=97"]),
        "--platform: platform.num_pci_segments=97: must be between 1 and 96"
    );
    // SMBIOS identity: taken where the platform has SMBIOS, refused by
    // name where it has none (aarch64).
    match vm_of(&["--platform", "serial_number=s1,oem_strings=[a,b]"]) {
        Ok(vm) if arch::PLATFORM.smbios => {
            assert_eq!(vm.platform.as_ref().unwrap().serial(), Some("s1"));
        }
        Err(e) if !arch::PLATFORM.smbios => {
            assert!(
                e.contains("platform.serial_number") && e.contains("not supported"),
                "{e}"
            );
        }
        r => panic!("SMBIOS fields on {}: {r:?}", arch::PLATFORM.name),
    }
}

/// The VM `args` (after a kernel) describe, or the one-line error.
fn vm_of(args: &[&str]) -> Result<VmConfig, String> {
    let mut argv = vec!["chv", "--kernel", "/vmlinux"];
    argv.extend_from_slice(args);
    parse_args(argv)
        .map(|cli| cli.vm.expect("a VM"))
        .map_err(|e| e.to_string())
}

#[test]
fn fs_pmem_and_vhost_user_disks_parse_as_cloud_hypervisor() {
    let vm = vm_of(&[
        "--memory",
        "size=256M,shared=on",
        "--fs",
        "tag=kataShared,socket=/run/fs.sock,num_queues=1,queue_size=512,id=share",
        "tag=second,socket=/run/fs2.sock",
        "--pmem",
        "file=/img,size=64M,discard_writes=on,id=rootfs",
        "--disk",
        "vhost_user=on,socket=/run/blk.sock,num_queues=2",
    ])
    .unwrap();
    assert!(vm.memory.shared);
    let fs = vm.fs.unwrap();
    assert_eq!(fs[0].tag, "kataShared");
    assert_eq!(fs[0].socket, PathBuf::from("/run/fs.sock"));
    assert_eq!((fs[0].num_queues, fs[0].queue_size), (1, 512));
    assert_eq!(fs[0].id.as_deref(), Some("share"));
    assert_eq!(
        (fs[1].num_queues, fs[1].queue_size),
        (1, 1024),
        "CH defaults"
    );
    let pmem = vm.pmem.unwrap();
    assert_eq!(pmem[0].size, Some(64 << 20));
    assert!(pmem[0].discard_writes);
    let disk = &vm.disks.unwrap()[0];
    assert!(disk.vhost_user && disk.path.is_none());
    assert_eq!(disk.vhost_socket.as_deref(), Some("/run/blk.sock"));
    assert_eq!(disk.num_queues, 2);
}

#[test]
fn fs_pmem_and_vhost_user_disk_errors_name_the_option() {
    for (args, message) in [
        (
            &["--fs", "tag=a,socket=/s"][..],
            "--memory: memory.shared=false: fs[0] is a vhost-user device",
        ),
        (
            &["--disk", "vhost_user=on,socket=/s"],
            "--memory: memory.shared=false: disks[0].vhost_user=true is a vhost-user device",
        ),
        (&["--fs", "socket=/s"], "--fs: missing tag (tag=...)"),
        (&["--fs", "tag=a"], "--fs: missing socket (socket=...)"),
        (
            &["--fs", "tag=a,socket=/s,queue_size=1000"],
            "--fs: queue_size=1000: must be a power of two",
        ),
        (
            &["--fs", "tag=a,socket=/s,cache=always"],
            "--fs: unknown option 'cache'",
        ),
        (
            &[
                "--memory",
                "shared=on",
                "--fs",
                &format!("tag={},socket=/s", "t".repeat(37)),
            ],
            "--fs: fs[0].tag=ttt",
        ),
        (
            &[
                "--memory",
                "shared=on",
                "--fs",
                "tag=a,socket=/s,pci_segment=1",
            ],
            "--fs: fs[0].pci_segment=1: the VM has 1 PCI segment(s)",
        ),
        (
            &[
                "--memory",
                "shared=on",
                "--fs",
                "tag=a,socket=/s,id=x",
                "--pmem",
                "file=/f,id=x",
            ],
            "--pmem: pmem[0].id=x: used by more than one device",
        ),
        (&["--pmem", "size=1G"], "--pmem: missing file (file=...)"),
        (&["--pmem", "file=/f,size=lots"], "--pmem: size=lots: "),
        (
            &["--pmem", "file=/f,size=3M"],
            "--pmem: pmem[0].size=3145728: must be a non-zero multiple of 2 MiB",
        ),
        (
            &["--pmem", "file=/f,discard_writes=maybe"],
            "--pmem: discard_writes=maybe: expected on or off",
        ),
        (
            &["--disk", "vhost_user=on"],
            "--disk: missing socket (vhost_user=on,socket=...)",
        ),
        (
            &["--disk", "path=/a,vhost_user=on,socket=/s"],
            "--disk: 'path' and 'vhost_user=on' cannot be combined",
        ),
        (
            &["--disk", "path=/a,socket=/s"],
            "--disk: 'socket' and 'vhost_user=off' cannot be combined",
        ),
        (
            &[
                "--memory",
                "shared=on",
                "--disk",
                "vhost_user=on,socket=/s,readonly=on",
            ],
            "--disk: disks[0].readonly=true: not supported by chv",
        ),
    ] {
        let err = vm_of(args).unwrap_err();
        assert!(err.starts_with(message), "{args:?}: {err}");
    }
}
