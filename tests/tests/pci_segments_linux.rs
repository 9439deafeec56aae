//! A second PCI segment and the SMBIOS identity, driven as Kata drives
//! them: `vm.create` with `platform.num_pci_segments: 2` (plus
//! `serial_number`, `uuid`, `oem_strings`) and a disk with
//! `pci_segment: 1`, then `vm.boot` of the Linux guest kit.
//!
//! One Linux boot. The guest lists its PCI devices (the disk must be
//! `0001:00:01.0`, behind the second host bridge `PNP0A08` with `_SEG` 1,
//! found through its MCFG entry), and reads the pattern the host wrote at
//! the start of the disk through `/dev/vda`. While it boots, the host
//! checks that hot-adding a disk on segment 1 is refused naming
//! `pci_segment` and that `vm.info` echoes the platform fields.
//!
//! The kit's kernel has no `CONFIG_DMI` (and no `/dev/mem`), so the SMBIOS
//! tables are checked host-side (`arch::x86_64::smbios` unit tests read
//! them back from guest memory the way Linux's DMI scan does); this boot
//! only shows they do not disturb the guest.

use std::time::Duration;

use chv_tests::api_client::http;
use chv_tests::{require_guest_kit, Chv, Scratch};

/// Time to the guest's first marker: Linux boots take 20-60 s here.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Console text that ends a wait early as a failure.
const ABORT: &[&str] = &["Kernel panic", "SEG-FAIL"];
/// Pattern at offset 0 of the disk on segment 1.
const PATTERN: &str = "CHV-SEGMENT-1-DISK-5e1f";

/// Single quotes only: the script is one `guest_cmd="..."` parameter.
const GUEST_SCRIPT: &str = "\
echo SEG-DEVS=$(ls /sys/bus/pci/devices | tr '\\n' ' '); \
[ -e /sys/bus/pci/devices/0001:00:01.0 ] || echo SEG-FAIL-no-device; \
echo SEG-VENDOR=$(cat /sys/bus/pci/devices/0001:00:01.0/vendor):$(cat /sys/bus/pci/devices/0001:00:01.0/device); \
echo SEG-DATA=$(head -c 23 /dev/vda); \
echo SEG-DONE";

#[test]
fn linux_disk_on_pci_segment_1_with_smbios_identity() {
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let dir = Scratch::new("pci-seg");
    let sock = dir.path("api.sock");
    let img = dir.path("seg1.raw");
    let mut data = PATTERN.as_bytes().to_vec();
    data.resize(1 << 20, 0);
    std::fs::write(&img, data).expect("write image");

    let mut chv = Chv::spawn(&["--api-socket".to_string(), sock.display().to_string()]);
    let create = serde_json::json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": 256u64 << 20},
        "payload": {
            "kernel": kit.kernel,
            "initramfs": kit.initramfs,
            "cmdline": format!("console=ttyS0 quiet panic=-1 guest_cmd=\"{GUEST_SCRIPT}\""),
        },
        "serial": {"mode": "Tty"},
        "console": {"mode": "Off"},
        "platform": {
            "num_pci_segments": 2,
            "serial_number": "chv-serial-0042",
            "uuid": "4c4c4544-0042-3010-8036-b4c04f4e3232",
            "oem_strings": ["io.katacontainers.test=1"],
        },
        "disks": [{"path": img, "id": "seg1disk", "pci_segment": 1}],
    })
    .to_string();
    let (status, body) = http(&sock, "PUT", "vm.create", Some(&create));
    assert_eq!(status, 204, "vm.create: {body}\n{}", chv.dump());
    let (status, body) = http(&sock, "PUT", "vm.boot", None);
    chv.check(status == 204, &format!("vm.boot: {status} {body}"));

    // Hotplug is segment 0's: on segment 1 it is refused by name.
    let add = serde_json::json!({"path": img, "id": "hot1", "pci_segment": 1}).to_string();
    let (status, body) = http(&sock, "PUT", "vm.add-disk", Some(&add));
    chv.check(
        (400..500).contains(&status) && body.contains("pci_segment"),
        &format!("hot-add on segment 1: {status} {body}"),
    );
    let (_, info) = http(&sock, "GET", "vm.info", None);
    for needle in [
        r#""num_pci_segments":2"#,
        r#""serial_number":"chv-serial-0042""#,
        "io.katacontainers.test=1",
        r#""pci_segment":1"#,
    ] {
        chv.check(
            info.contains(needle),
            &format!("vm.info lacks {needle}: {info}"),
        );
    }

    chv.expect("SEG-DONE", ABORT, BOOT_TIMEOUT);
    let out = chv.stdout();
    chv.check(
        out.contains("0000:00:00.0") && out.contains("0001:00:00.0 0001:00:01.0"),
        &format!("two host bridges, the disk on segment 1: {out}"),
    );
    chv.check(
        out.contains("SEG-VENDOR=0x1af4:0x1042"),
        "a modern virtio-blk device at 0001:00:01.0",
    );
    chv.check(
        out.contains(&format!("SEG-DATA={PATTERN}")),
        "the guest read the disk on segment 1",
    );
    let st = chv.expect_exit(Duration::from_secs(60));
    chv.assert_no_panic();
    chv.check(st.success(), &format!("chv exited with {st}"));
}
