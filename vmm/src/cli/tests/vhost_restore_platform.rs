//! `--restore`, `--platform` and `pci_segment`, and the vhost-user devices
//! (`--fs`, `--pmem`, `--disk vhost_user=on`).

use super::*;

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
