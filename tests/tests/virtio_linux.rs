//! End-to-end checks of chv's virtio-pci devices with the real Linux guest
//! kit (see /work/shared/guest/README.md), plus fast `--disk` error cases
//! that need no Linux boot.
//!
//! Two Linux boots (about a minute each here), run one after another in a
//! single test because the second one reads what the first one wrote:
//!
//! 1. Root on an ext4 image this test builds with `mkfs.ext4 -d` from the
//!    kit's initramfs, plus a fresh qcow2 (`serial=`), a qcow2 overlay on a
//!    raw backing file, a `readonly=on` raw disk, `--console file=` and
//!    `--rng`. The guest writes a file on the root and patterns through
//!    `/dev/vdb` and `/dev/vdc`, drops its page cache and reads them back
//!    (and the backing file's patterns through the overlay), fails to write
//!    the read-only disk, writes to `/dev/hvc0`, reads `/dev/hwrng`, reads
//!    the block serial, then sleeps while the host checks that every chv
//!    thread runs under a seccomp filter. After power-off the host reads the
//!    file back with `debugfs`, runs `e2fsck -n` and `qemu-img check`, and
//!    compares `qemu-img convert -O raw` output byte for byte with what the
//!    guest wrote; the backing file and the read-only image are unchanged.
//! 2. The same root with `readonly=on` (`root=/dev/vda ro`), 2 vCPUs, and
//!    the qcow2 with `direct=on,num_queues=2`: the file and the qcow2 data
//!    written by boot 1 are read back through chv, writing the root fails,
//!    a new qcow2 write lands (checked with `qemu-img`), and the root image
//!    is bit-for-bit unchanged.
//!
//! Needs /dev/kvm, the guest kit, and `mkfs.ext4`, `debugfs`, `e2fsck`,
//! `cpio`, `qemu-img`, `sha256sum` on the host. A missing kit fails the boot
//! test unless `CHV_SKIP_LINUX=1`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use chv_tests::host_tools::{run, run_ok};
use chv_tests::{expect_option_error, halted_guest_args, require_guest_kit, Chv, GuestKit};

/// Time to `GUEST-READY`; boots take 40-60 s here, more with a busy host.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Time from `GUEST-READY` to the last check line (each fork costs 1-2 s).
const CMD_TIMEOUT: Duration = Duration::from_secs(240);
/// Console text that ends a wait early as a failure.
const ABORT: &[&str] = &["Kernel panic"];

/// Serializes the Linux boots: each keeps a host core busy for a minute.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const MIB: u64 = 1 << 20;
/// Size of every data disk (qcow2 virtual size, backing and read-only raw).
const DISK_SIZE: u64 = 64 * MIB;

/// Content of the file boot 1 writes on the ext4 root (no newline).
const HELLO: &str = "written-by-the-guest-on-ext4-root";
/// `serial=` of the fresh qcow2 disk (`/dev/vdb`).
const SERIAL: &str = "chv-data-01";
/// Written by boot 1 through `/dev/vdb` at [`DATA_OFF`].
const DATA: &str = "DATA-qcow2-written-by-guest";
const DATA_OFF: u64 = 10 * MIB;
/// Written by boot 2 (direct=on, 2 queues) through `/dev/vdb` at [`DATA2_OFF`].
const DATA2: &str = "DATA2-direct-multiqueue-write";
const DATA2_OFF: u64 = 40 * MIB + 8192;
/// Written by the host into base.raw at [`BACKING_OFF`]; the guest's overlay
/// write at [`OVL_OFF`] shares its 64 KiB cluster (copy-on-write).
const BACKING: &str = "BACKING-pattern-at-1MiB";
const BACKING_OFF: u64 = MIB;
/// Written by the host into base.raw in a cluster the guest never writes.
const BACKING2: &str = "BACKING2-pattern-untouched-8MiB";
const BACKING2_OFF: u64 = 8 * MIB;
/// Written by boot 1 through the overlay (`/dev/vdc`).
const OVL: &str = "OVERLAY-written-by-guest";
const OVL_OFF: u64 = MIB + 4096;
/// At offset 0 of the read-only disk (`/dev/vdd`).
const RO_PATTERN: &str = "READONLY-disk-pattern";
/// What the guest writes to `/dev/hvc0`.
const HVC: &str = "hello-hvc";

/// A scratch directory, removed on drop unless the test failed (then kept
/// and its path printed, for a look at the images).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("chv-virtio-linux-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

fn sha256(path: &Path) -> String {
    let out = run_ok(Path::new("/"), "sha256sum", &[&path.display().to_string()]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all_at(data, offset)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Builds the ext4 root image from the kit's initramfs (`cpio -id`, then
/// `mkfs.ext4 -d`, no loop mount): the same `/init` and busybox.
fn build_root(kit: &GuestKit, dir: &Scratch) -> PathBuf {
    let tree = dir.path("rootfs");
    fs::create_dir_all(&tree).expect("mkdir rootfs");
    let cpio = fs::File::open(&kit.initramfs).expect("open initramfs.cpio");
    let out = Command::new("cpio")
        .args(["-id", "--quiet"])
        .current_dir(&tree)
        .stdin(cpio)
        .output()
        .expect("cannot run cpio (is it installed?)");
    assert!(
        out.status.success(),
        "cpio -id failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tree.join("init").is_file(), "initramfs has no /init");
    let img = dir.path("root.ext4");
    fs::File::create(&img)
        .and_then(|f| f.set_len(32 * MIB))
        .expect("create root.ext4");
    run_ok(
        &dir.0,
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            "chvroot",
            "-E",
            "root_owner=0:0",
            "-d",
            "rootfs",
            "root.ext4",
        ],
    );
    img
}

/// The data disks of boot 1: a fresh qcow2, a raw backing file with two
/// host-written patterns and a qcow2 overlay on it (relative backing path),
/// and a raw image for the read-only disk.
fn build_data_disks(dir: &Scratch) {
    let size = format!("{}M", DISK_SIZE / MIB);
    run_ok(
        &dir.0,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "data.qcow2", &size],
    );
    run_ok(
        &dir.0,
        "qemu-img",
        &["create", "-q", "-f", "raw", "base.raw", &size],
    );
    write_at(&dir.path("base.raw"), BACKING_OFF, BACKING.as_bytes());
    write_at(&dir.path("base.raw"), BACKING2_OFF, BACKING2.as_bytes());
    run_ok(
        &dir.0,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "overlay.qcow2",
        ],
    );
    let ro = dir.path("ro.raw");
    let mut bytes = vec![0u8; MIB as usize];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    bytes[..RO_PATTERN.len()].copy_from_slice(RO_PATTERN.as_bytes());
    fs::write(&ro, bytes).expect("write ro.raw");
}

/// Guest shell fragment: writes `text` to `dev` at byte `offset` (a
/// multiple of 4096) and prints `<key>:<dd exit code>`.
fn guest_write(key: &str, dev: &str, text: &str, offset: u64) -> String {
    assert_eq!(offset % 4096, 0);
    format!(
        "echo -n {text} > /tmp/w; dd if=/tmp/w of={dev} bs=4096 seek={} conv=notrunc,fsync 2>/dev/null; echo {key}:$?",
        offset / 4096
    )
}

/// Guest shell fragment: prints `<key>:<len bytes of dev at offset>`.
fn guest_read(key: &str, dev: &str, offset: u64, len: usize) -> String {
    format!("echo {key}:$(dd if={dev} bs=1 skip={offset} count={len} 2>/dev/null)")
}

/// chv arguments for a Linux boot from the ext4 root.
fn linux_args(kit: &GuestKit, cpus: u8, cmdline: &str, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--kernel".into(),
        kit.kernel.display().to_string(),
        "--cmdline".into(),
        cmdline.into(),
        "--cpus".into(),
        format!("boot={cpus}"),
        "--memory".into(),
        "size=128M".into(),
        "--serial".into(),
        "tty".into(),
    ];
    args.extend_from_slice(extra);
    args
}

/// The value of the single console line `<key>:<value>` (trimmed); fails
/// when there is none or more than one.
fn chk(chv: &Chv, key: &str) -> String {
    let prefix = format!("{key}:");
    let lines = chv.lines();
    let found: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect();
    if found.len() != 1 {
        chv.fail(&format!(
            "want exactly one console line starting with {prefix:?}, found {}",
            found.len()
        ));
    }
    found[0].trim().to_string()
}

/// Asserts that console check `key` printed exactly `want`.
fn want(chv: &Chv, key: &str, want: &str) {
    let got = chk(chv, key);
    chv.check(
        got == want,
        &format!("{key}: guest printed {got:?}, want {want:?}"),
    );
}

/// Asserts that console check `key` printed a non-zero exit code.
fn want_failure(chv: &Chv, key: &str) {
    let got = chk(chv, key);
    let rc: Option<u32> = got.parse().ok();
    chv.check(
        matches!(rc, Some(rc) if rc != 0),
        &format!("{key}: the write must fail (non-zero exit code), guest printed {got:?}"),
    );
}

/// Waits for power-off and a clean exit 0, and for `GUEST-CMD-EXIT=0`.
fn expect_poweroff(chv: &mut Chv, what: &str) {
    chv.expect("GUEST-POWEROFF", ABORT, Duration::from_secs(90));
    let st = chv.expect_exit(Duration::from_secs(60));
    eprintln!("{what}: chv exited ({st}) after {:.1?}", chv.elapsed());
    chv.assert_no_panic();
    chv.check(
        st.code() == Some(0),
        &format!("{what}: chv exit status {st}, want 0"),
    );
    let exits: Vec<String> = chv
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("GUEST-CMD-EXIT="))
        .collect();
    chv.check(
        exits == ["GUEST-CMD-EXIT=0"],
        &format!("{what}: want one GUEST-CMD-EXIT=0 line, got {exits:?}"),
    );
}

/// `qemu-img check` must report a clean image.
fn qemu_img_check(dir: &Scratch, img: &str) {
    let out = run(&dir.0, "qemu-img", &["check", img]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("No errors were found on the image"),
        "qemu-img check {img} is not clean ({}):\n{text}",
        out.status
    );
}

/// The image's guest-visible bytes via `qemu-img convert -O raw`.
fn qemu_img_contents(dir: &Scratch, img: &str) -> Vec<u8> {
    let raw = format!("{img}.converted.raw");
    run_ok(&dir.0, "qemu-img", &["convert", "-O", "raw", img, &raw]);
    let data = fs::read(dir.path(&raw)).expect("read converted image");
    let _ = fs::remove_file(dir.path(&raw));
    data
}

/// Asserts `got` equals `want`, naming the first differing offset.
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: size differs");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let end = (i + 48).min(got.len());
        panic!(
            "{what}: first difference at byte {i:#x}: got {:?}, want {:?}",
            String::from_utf8_lossy(&got[i..end]),
            String::from_utf8_lossy(&want[i..end])
        );
    }
}

/// The expected guest-visible image: `base` (or `DISK_SIZE` zero bytes) with
/// `patterns` placed at their offsets.
fn expected_image(base: Option<Vec<u8>>, patterns: &[(u64, &str)]) -> Vec<u8> {
    let mut img = base.unwrap_or_else(|| vec![0u8; DISK_SIZE as usize]);
    for (off, text) in patterns {
        let off = *off as usize;
        img[off..off + text.len()].copy_from_slice(text.as_bytes());
    }
    img
}

/// Boots the guest with `guest_cmd` run from the ext4 root; waits until the
/// guest printed `last` (its last check line).
fn boot(kit: &GuestKit, cpus: u8, root: &str, guest_cmd: &str, extra: &[String]) -> Chv {
    let cmdline =
        format!("console=ttyS0 quiet panic=-1 root=/dev/vda {root} guest_cmd=\"{guest_cmd}\"");
    assert!(cmdline.len() < 4096, "kernel command line too long");
    Chv::spawn(&linux_args(kit, cpus, &cmdline, extra))
}

/// Boot 1: every device in one boot (see the module docs). Returns the
/// seccomp failures (checked last, so the other checks still run).
fn boot_one(kit: &GuestKit, dir: &Scratch) -> Vec<String> {
    let cmd = [
        format!("echo -n {HELLO} > /hello.txt; sync; echo CHK-ROOT-WRITE:$?"),
        "read -r v < /sys/block/vdb/serial; echo CHK-SERIAL:$v".into(),
        "read -r v < /sys/block/vdb/size; echo CHK-VDB-SECTORS:$v".into(),
        "read -r v < /sys/block/vdc/size; echo CHK-VDC-SECTORS:$v".into(),
        "read -r v < /sys/block/vdd/ro; echo CHK-VDD-RO:$v".into(),
        guest_write("CHK-VDB-WRITE", "/dev/vdb", DATA, DATA_OFF),
        guest_write("CHK-VDC-WRITE", "/dev/vdc", OVL, OVL_OFF),
        "dd if=/dev/zero of=/dev/vdd bs=4096 count=1 conv=notrunc,fsync 2>/dev/null; echo CHK-RO-DD:$?".into(),
        "echo x > /dev/vdd; echo CHK-RO-ECHO:$?".into(),
        // Reads below must come from the device, not the page cache.
        "sync; echo 3 > /proc/sys/vm/drop_caches".into(),
        guest_read("CHK-VDB-READ", "/dev/vdb", DATA_OFF, DATA.len()),
        guest_read("CHK-VDC-BACKING", "/dev/vdc", BACKING_OFF, BACKING.len()),
        guest_read("CHK-VDC-BACKING2", "/dev/vdc", BACKING2_OFF, BACKING2.len()),
        guest_read("CHK-VDC-OVERLAY", "/dev/vdc", OVL_OFF, OVL.len()),
        guest_read("CHK-VDD-READ", "/dev/vdd", 0, RO_PATTERN.len()),
        format!("echo {HVC} > /dev/hvc0; echo CHK-HVC:$?"),
        "read -r v < /sys/class/misc/hw_random/rng_current; echo CHK-RNG-CURRENT:$v".into(),
        "echo CHK-RNG:$(head -c 64 /dev/hwrng | od -An -tx1)".into(),
        "echo CHK-SECCOMP-WINDOW:now; sleep 3".into(),
    ]
    .join("; ");
    let extra: Vec<String> = [
        "--console".into(),
        format!("file={}", dir.arg("hvc0.out")),
        "--rng".into(),
        "src=/dev/urandom".into(),
        "--disk".into(),
        format!("path={}", dir.arg("root.ext4")),
        "--disk".into(),
        format!(
            "path={},serial={SERIAL},image_type=qcow2",
            dir.arg("data.qcow2")
        ),
        "--disk".into(),
        format!("path={}", dir.arg("overlay.qcow2")),
        "--disk".into(),
        format!("path={},readonly=on", dir.arg("ro.raw")),
    ]
    .into();
    let base_sha = sha256(&dir.path("base.raw"));
    let ro_sha = sha256(&dir.path("ro.raw"));
    let base_bytes = fs::read(dir.path("base.raw")).expect("read base.raw");

    let mut chv = boot(kit, 1, "rw", &cmd, &extra);
    chv.expect("GUEST-READY", ABORT, BOOT_TIMEOUT);
    eprintln!("boot 1: GUEST-READY after {:.1?}", chv.elapsed());
    chv.expect("CHK-SECCOMP-WINDOW:now", ABORT, CMD_TIMEOUT);
    let threads = chv_tests::threads::seccomp_modes(chv.pid());
    let still_running = chv.wait_exit(Duration::ZERO).is_none();
    chv.check(
        still_running && !chv.stdout().contains("GUEST-POWEROFF"),
        "seccomp check: the guest was no longer running while /proc was read",
    );
    eprintln!("boot 1: chv threads (tid, name, Seccomp): {threads:?}");
    chv.check(
        threads.len() >= 2,
        "seccomp check: want at least 2 chv threads",
    );
    let seccomp_failures = chv_tests::threads::unfiltered(&threads);
    expect_poweroff(&mut chv, "boot 1");

    // Guest-side results.
    want(&chv, "CHK-ROOT-WRITE", "0");
    want(&chv, "CHK-SERIAL", SERIAL);
    let sectors = (DISK_SIZE / 512).to_string();
    want(&chv, "CHK-VDB-SECTORS", &sectors);
    want(&chv, "CHK-VDC-SECTORS", &sectors);
    want(&chv, "CHK-VDD-RO", "1");
    want(&chv, "CHK-VDB-WRITE", "0");
    want(&chv, "CHK-VDC-WRITE", "0");
    want_failure(&chv, "CHK-RO-DD");
    want_failure(&chv, "CHK-RO-ECHO");
    want(&chv, "CHK-VDB-READ", DATA);
    want(&chv, "CHK-VDC-BACKING", BACKING);
    want(&chv, "CHK-VDC-BACKING2", BACKING2);
    want(&chv, "CHK-VDC-OVERLAY", OVL);
    want(&chv, "CHK-VDD-READ", RO_PATTERN);
    want(&chv, "CHK-HVC", "0");
    let rng_current = chk(&chv, "CHK-RNG-CURRENT");
    chv.check(
        rng_current.starts_with("virtio_rng"),
        &format!("rng_current is {rng_current:?}, want the virtio_rng device"),
    );
    let rng = chk(&chv, "CHK-RNG");
    let bytes: Vec<&str> = rng.split_whitespace().collect();
    chv.check(
        bytes.len() == 64
            && bytes
                .iter()
                .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit())),
        &format!("want 64 hex bytes from /dev/hwrng, got {rng:?}"),
    );
    chv.check(
        bytes.iter().any(|b| *b != bytes[0]),
        &format!("/dev/hwrng returned 64 identical bytes: {rng:?}"),
    );
    let stderr = chv.stderr();
    if !stderr.trim().is_empty() {
        eprintln!("boot 1: chv stderr:\n{stderr}");
    }

    // Host-side results.
    let hvc = fs::read(dir.path("hvc0.out")).expect("read the --console file");
    assert_eq!(
        String::from_utf8_lossy(&hvc),
        format!("{HVC}\r\n"),
        "--console file content (hvc0 is a tty: its default `onlcr` turns \\n into \\r\\n)"
    );
    let out = run_ok(&dir.0, "debugfs", &["-R", "cat /hello.txt", "root.ext4"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        HELLO,
        "/hello.txt read back from root.ext4 with debugfs"
    );
    let fsck = run(&dir.0, "e2fsck", &["-f", "-n", "root.ext4"]);
    assert!(
        fsck.status.success(),
        "e2fsck -fn root.ext4 is not clean ({}):\n{}{}",
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    qemu_img_check(dir, "data.qcow2");
    qemu_img_check(dir, "overlay.qcow2");
    assert_same_bytes(
        &qemu_img_contents(dir, "data.qcow2"),
        &expected_image(None, &[(DATA_OFF, DATA)]),
        "data.qcow2 after boot 1 (only the guest's write, zeros elsewhere)",
    );
    assert_same_bytes(
        &qemu_img_contents(dir, "overlay.qcow2"),
        &expected_image(Some(base_bytes), &[(OVL_OFF, OVL)]),
        "overlay.qcow2 after boot 1 (base.raw plus the guest's write)",
    );
    assert_eq!(sha256(&dir.path("base.raw")), base_sha, "base.raw changed");
    assert_eq!(
        sha256(&dir.path("ro.raw")),
        ro_sha,
        "read-only ro.raw changed"
    );
    seccomp_failures
}

/// Boot 2: read-only root, 2 vCPUs, the qcow2 with O_DIRECT and 2 queues.
fn boot_two(kit: &GuestKit, dir: &Scratch) {
    let cmd = [
        "read -r v < /hello.txt; echo CHK-HELLO:$v".to_string(),
        "read -r v < /sys/block/vda/ro; echo CHK-VDA-RO:$v".into(),
        "dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=notrunc,fsync 2>/dev/null; echo CHK-ROOT-DD:$?".into(),
        "echo CHK-VDB-QUEUES:$(ls /sys/block/vdb/mq)".into(),
        "echo CHK-NPROC:$(nproc)".into(),
        guest_read("CHK-VDB-READ", "/dev/vdb", DATA_OFF, DATA.len()),
        guest_write("CHK-VDB-WRITE2", "/dev/vdb", DATA2, DATA2_OFF),
        "sync; echo 3 > /proc/sys/vm/drop_caches".into(),
        guest_read("CHK-VDB-READ2", "/dev/vdb", DATA2_OFF, DATA2.len()),
    ]
    .join("; ");
    let extra: Vec<String> = [
        "--disk".into(),
        format!("path={},readonly=on", dir.arg("root.ext4")),
        format!(
            "path={},direct=on,num_queues=2,queue_size=64,id=data",
            dir.arg("data.qcow2")
        ),
    ]
    .into();
    let root_sha = sha256(&dir.path("root.ext4"));
    let mut chv = boot(kit, 2, "ro", &cmd, &extra);
    chv.expect("GUEST-READY", ABORT, BOOT_TIMEOUT);
    eprintln!("boot 2: GUEST-READY after {:.1?}", chv.elapsed());
    expect_poweroff(&mut chv, "boot 2");
    want(&chv, "CHK-HELLO", HELLO);
    want(&chv, "CHK-VDA-RO", "1");
    want_failure(&chv, "CHK-ROOT-DD");
    want(&chv, "CHK-VDB-QUEUES", "0 1");
    want(&chv, "CHK-NPROC", "2");
    want(&chv, "CHK-VDB-READ", DATA);
    want(&chv, "CHK-VDB-WRITE2", "0");
    want(&chv, "CHK-VDB-READ2", DATA2);
    let stderr = chv.stderr();
    if !stderr.trim().is_empty() {
        eprintln!("boot 2: chv stderr:\n{stderr}");
    }
    assert_eq!(
        sha256(&dir.path("root.ext4")),
        root_sha,
        "root.ext4 changed although it was attached readonly=on"
    );
    qemu_img_check(dir, "data.qcow2");
    assert_same_bytes(
        &qemu_img_contents(dir, "data.qcow2"),
        &expected_image(None, &[(DATA_OFF, DATA), (DATA2_OFF, DATA2)]),
        "data.qcow2 after boot 2",
    );
}

#[test]
fn linux_virtio_disks_console_rng_and_seccomp() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let dir = Scratch::new("boot");
    build_root(&kit, &dir);
    build_data_disks(&dir);
    let seccomp_failures = boot_one(&kit, &dir);
    boot_two(&kit, &dir);
    assert!(
        seccomp_failures.is_empty(),
        "SECCOMP: every chv thread must run under a seccomp filter (`Seccomp:\\t2` in \
         /proc/<pid>/task/*/status) while the guest runs, but: {}",
        seccomp_failures.join("; ")
    );
}

#[test]
fn disk_missing_image_is_a_clean_error() {
    let dir = Scratch::new("missing");
    let path = dir.arg("missing.raw");
    expect_option_error(
        &["--disk".into(), format!("path={path}")],
        &["--disk", &path, "No such file"],
    );
}

#[test]
fn disk_unknown_image_type_is_a_clean_error() {
    let dir = Scratch::new("imagetype");
    let path = dir.path("disk.raw");
    fs::write(&path, vec![0u8; 65536]).expect("write disk.raw");
    expect_option_error(
        &[
            "--disk".into(),
            format!("path={},image_type=vmdk", path.display()),
        ],
        &["--disk", "image_type=vmdk", "raw or qcow2"],
    );
}

#[test]
fn disk_directory_is_a_clean_error() {
    let dir = Scratch::new("directory");
    let path = dir.arg("");
    let path = path.trim_end_matches('/');
    expect_option_error(
        &["--disk".into(), format!("path={path}")],
        &["--disk", path, "directory"],
    );
}

#[test]
fn disk_corrupt_qcow2_headers_are_clean_errors() {
    let dir = Scratch::new("corrupt");
    // Magic, then garbage (the version field reads 0xa5a5a5a5).
    let mut garbage = b"QFI\xfb".to_vec();
    garbage.extend(std::iter::repeat_n(0xa5u8, 1020));
    // Magic and version 3, then garbage (cluster_bits etc. out of range).
    let mut v3 = b"QFI\xfb\0\0\0\x03".to_vec();
    v3.extend((0..1016u32).map(|i| (i.wrapping_mul(151) ^ 0x5c) as u8));
    // Nothing but the magic.
    let cases: [(&str, Vec<u8>); 3] = [
        ("garbage.qcow2", garbage),
        ("v3-garbage.qcow2", v3),
        ("magic-only.qcow2", b"QFI\xfb".to_vec()),
    ];
    for (name, bytes) in cases {
        let path = dir.path(name);
        fs::write(&path, bytes).expect("write corrupt image");
        let path = path.display().to_string();
        expect_option_error(
            &["--disk".into(), format!("path={path}")],
            &["--disk", &path],
        );
    }
}

#[test]
fn disk_missing_backing_file_is_a_clean_error() {
    let dir = Scratch::new("backing");
    run_ok(
        &dir.0,
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-u", "-b", "gone.raw", "-F", "raw", "o.qcow2", "64M",
        ],
    );
    expect_option_error(
        &["--disk".into(), format!("path={}", dir.arg("o.qcow2"))],
        &["--disk", &dir.arg("o.qcow2"), &dir.arg("gone.raw")],
    );
}

#[test]
fn disk_qcow2_in_use_by_another_chv_is_a_lock_error() {
    let dir = Scratch::new("lock");
    run_ok(
        &dir.0,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "shared.qcow2", "64M"],
    );
    let disk = format!("path={}", dir.arg("shared.qcow2"));
    let mut args = halted_guest_args();
    args.extend(["--disk".to_string(), disk.clone()]);
    let mut first = Chv::spawn(&args);
    first.expect("HLT-NOW", &["TESTGUEST-FAIL"], Duration::from_secs(30));
    let path = dir.arg("shared.qcow2");
    expect_option_error(
        &["--disk".into(), disk.clone()],
        &["--disk", &path, "locked"],
    );
    // A read-only opener (shared lock) must not get in either.
    expect_option_error(
        &["--disk".into(), format!("{disk},readonly=on")],
        &["--disk", &path, "locked"],
    );
    // chv's lock is an OFD lock as Cloud Hypervisor's, which QEMU sees:
    // qemu-img cannot open the image chv writes.
    let out = run(&dir.0, "qemu-img", &["info", "shared.qcow2"]);
    let text = String::from_utf8_lossy(&out.stderr);
    first.check(
        !out.status.success() && text.contains("lock"),
        &format!(
            "qemu-img info opened the image chv holds ({}): {text}",
            out.status
        ),
    );
    let still_running = first.wait_exit(Duration::ZERO).is_none();
    first.check(
        still_running,
        "the first chv exited while the second one tried the image",
    );
    first.signal(libc::SIGTERM);
    let st = first.expect_exit(Duration::from_secs(10));
    first.assert_no_panic();
    first.check(
        st.code() == Some(0),
        &format!("first chv: exit status {st}, want 0"),
    );
}

/// Whether another open file description holds an OFD lock that a write
/// lock on `path`'s bytes `[start, start + len)` would conflict with.
fn ofd_locked(path: &Path, start: i64, len: i64) -> bool {
    use std::os::unix::io::AsRawFd;
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: len,
        l_pid: 0,
    };
    // SAFETY: `f` stays open for the call; `fl` is a valid flock on this
    // stack frame that the call reads and writes.
    let ret = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    assert_eq!(ret, 0, "F_OFD_GETLK: {}", std::io::Error::last_os_error());
    i32::from(fl.l_type) != libc::F_UNLCK
}

/// chv locks images as Cloud Hypervisor does (OFD `fcntl` locks, not
/// `flock`), so it sees QEMU's locks: an image `qemu-io` holds open for
/// writing (QEMU's OFD locks on bytes 100 and up, 200 and up) is refused
/// with the lock error, and once QEMU lets go chv takes it.
#[test]
fn disk_in_use_by_qemu_is_a_lock_error() {
    let dir = Scratch::new("qemu-lock");
    run_ok(
        &dir.0,
        "qemu-img",
        &["create", "-q", "-f", "raw", "held.raw", "64M"],
    );
    let path = dir.arg("held.raw");
    let mut qemu = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "sleep 120000", &path])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run qemu-io (is qemu-utils installed?): {e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ofd_locked(&dir.path("held.raw"), 100, 200) {
        if std::time::Instant::now() > deadline || qemu.try_wait().ok().flatten().is_some() {
            let _ = qemu.kill();
            let _ = qemu.wait();
            panic!("qemu-io never locked {path}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = std::panic::catch_unwind(|| {
        expect_option_error(
            &["--disk".into(), format!("path={path}")],
            &["--disk", &path, "locked"],
        );
    });
    let _ = qemu.kill();
    let _ = qemu.wait();
    if let Err(e) = refused {
        std::panic::resume_unwind(e);
    }
    // QEMU gone, the lock went with it: chv boots on the image.
    let mut args = halted_guest_args();
    args.extend(["--disk".to_string(), format!("path={path}")]);
    let mut chv = Chv::spawn(&args);
    chv.expect("HLT-NOW", &["TESTGUEST-FAIL"], Duration::from_secs(30));
    chv.check(
        ofd_locked(&dir.path("held.raw"), 0, 0),
        "chv runs on the image but holds no OFD lock on it",
    );
    chv.signal(libc::SIGTERM);
    let st = chv.expect_exit(Duration::from_secs(10));
    chv.assert_no_panic();
    chv.check(
        st.code() == Some(0),
        &format!("chv: exit status {st}, want 0"),
    );
}
