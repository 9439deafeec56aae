//! `--disk`, `--net`, `--rng`, `--console` and `--vsock`, accepted and rejected.

use super::*;

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
