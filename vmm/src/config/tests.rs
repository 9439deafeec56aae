//! Validation and JSON-shape tests of the configuration model.

use std::path::PathBuf;

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
        file: Some(PathBuf::new()),
        ..ConsoleConfig::with_mode(ConsoleOutputMode::File)
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
    let image = |t: ImageType| {
        with_disk(DiskConfig {
            image_type: Some(t),
            ..disk("/b")
        })
    };
    assert_eq!(image(ImageType::Raw), Ok(()));
    assert_eq!(image(ImageType::Qcow2), Ok(()));
    assert_eq!(image(ImageType::Unknown), Ok(()));
    assert_eq!(
        image(ImageType::Vhdx),
        Err(ConfigError::DiskImageType {
            index: 1,
            value: "Vhdx".into()
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
        ..RngConfig::default()
    });
    assert_eq!(config.validate(), Err(ConfigError::EmptyPath("rng.src")));
}

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
        iommu: false,
        id: None,
        pci_segment: 0,
        pci_device_id: None,
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
    assert_eq!(
        back,
        r#"{"cid":4,"socket":"/tmp/v.sock","iommu":false,"id":null,"pci_segment":0,"pci_device_id":null}"#
    );
    assert!(serde_json::from_str::<VsockConfig>(r#"{"cid": 3}"#).is_err());
}

#[test]
fn platform_smbios_identity() {
    let mut p = PlatformConfig {
        serial_number: Some("S1".into()),
        uuid: Some("00112233-4455-6677-8899-aabbccddeeff".into()),
        oem_strings: Some(vec!["a".into(), "b".into()]),
        ..Default::default()
    };
    // Platforms without SMBIOS (aarch64) refuse the identity by name.
    match (p.validate(), arch::PLATFORM.smbios) {
        (Ok(()), true) => {}
        (Err(e), false) => assert!(e.to_string().contains("SMBIOS is not supported"), "{e}"),
        (r, _) => panic!("SMBIOS fields on {}: {r:?}", arch::PLATFORM.name),
    }
    let id = p.identity();
    assert_eq!(id.serial_number.as_deref(), Some("S1"));
    assert_eq!(id.uuid.map(|u| u[0..2].to_vec()), Some(vec![0x00, 0x11]));
    assert_eq!(id.oem_strings, ["a", "b"]);
    p.oem_strings = Some(vec!["x\0y".into()]);
    let e = p.validate().unwrap_err().to_string();
    assert!(e.contains("platform.oem_strings"), "{e}");
}

#[test]
fn mergeable_is_refused_where_ksm_cannot_merge() {
    let mut config = booting();
    config.memory.mergeable = true;
    assert_eq!(config.validate(), Ok(()), "private RAM can be merged");
    config.memory.shared = true;
    let e = config.validate().unwrap_err().to_string();
    assert!(
        e.contains("memory.mergeable") && e.contains("not supported by chv"),
        "{e}"
    );
    config.memory.shared = false;
    config.memory.hugepages = true;
    assert!(config.validate().is_err(), "hugepages + mergeable accepted");

    let mut zoned = booting();
    zoned.memory.size = 0;
    let zone: MemoryZoneConfig =
        serde_json::from_str(r#"{"id":"z0","size":67108864,"file":"/tmp/zone","mergeable":true}"#)
            .expect("zone JSON");
    zoned.memory.zones = Some(vec![zone]);
    assert_eq!(
        zoned.validate(),
        Ok(()),
        "a private file zone can be merged"
    );
    if let Some(z) = zoned.memory.zones.as_mut().and_then(|z| z.first_mut()) {
        z.shared = true;
    }
    let e = zoned.validate().unwrap_err().to_string();
    assert!(e.contains("memory.zones[z0].mergeable"), "{e}");
}

#[test]
fn pci_slots_are_refused_by_name() {
    let mut config = booting();
    config.disks = Some(vec![DiskConfig {
        pci_device_id: Some(5),
        ..disk("/d.img")
    }]);
    let e = config.validate().unwrap_err().to_string();
    assert!(e.contains("disks[0].pci_device_id"), "{e}");
    let mut config = booting();
    config.net = Some(vec![NetConfig {
        pci_device_id: Some(5),
        ..NetConfig::default()
    }]);
    let e = config.validate().unwrap_err().to_string();
    assert!(e.contains("net[0].pci_device_id"), "{e}");
    let mut config = booting();
    config.rng = Some(RngConfig {
        pci_device_id: Some(5),
        ..RngConfig::default()
    });
    let e = config.validate().unwrap_err().to_string();
    assert!(e.contains("rng.pci_device_id"), "{e}");
}
