//! End-to-end tests of chv's PCI bus and virtio-pci devices, driven by the
//! tiny test guest's own polling virtio driver (tests/guest/pci.c,
//! virtio*.c) through real KVM exits.
//!
//! Covers: PCI enumeration through 0xCF8/0xCFC and ECAM (which must agree),
//! BAR0 sizing, the virtio capabilities; virtio-blk read/write/GET_ID/FLUSH
//! with the image bytes checked afterwards, and a read-only disk; virtio-rng;
//! virtio-console output to a file; MSI-X delivery into the guest LAPIC
//! (plus ISR read-to-clear, masking with the pending bit, bad vectors); and a
//! hostile driver (bad descriptor chains, bad transport writes) after which
//! the device must recover with a reset.
//!
//! Needs /dev/kvm. The chv binary is found as described in the crate docs.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use chv_tests::{run_to_exit, testguest, Chv};

/// How long one scenario may run; each normally takes well under a second,
/// but CI runs these beside Linux boots on 2 cores.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Disk serial the guest's GET_ID must return.
const SERIAL: &str = "chv-test-serial";
/// Size of the temporary disk images.
const IMAGE_SIZE: usize = 1 << 20;

/// The byte at image offset `o` before the guest writes (guest: host_pattern).
fn host_pattern(o: usize) -> u8 {
    (o % 251) as u8
}

/// The byte at offset `i` of the sector the guest writes (guest_pattern).
fn guest_pattern(i: usize) -> u8 {
    (0xa5 ^ i ^ (i >> 8)) as u8
}

/// A temporary file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("chv-testguest-virtio-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        TempFile(path)
    }

    /// A raw disk image filled with [`host_pattern`].
    fn image(tag: &str) -> Self {
        let f = Self::new(tag);
        let data: Vec<u8> = (0..IMAGE_SIZE).map(host_pattern).collect();
        std::fs::write(&f.0, data).expect("write disk image");
        f
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A finished (or killed) chv run of one scenario.
struct Run {
    status: Option<ExitStatus>,
    chv: Chv,
    stdout: String,
    stderr: String,
}

/// Boots the test guest with `cmdline` and extra chv `devices` arguments and
/// waits for chv to exit (killing it after `timeout`).
fn run(cmdline: &str, devices: &[String], timeout: Duration) -> Run {
    let mut args: Vec<String> = [
        "--kernel",
        &testguest().display().to_string(),
        "--cmdline",
        cmdline,
        "--cpus",
        "boot=1",
        "--memory",
        "size=64M",
        "--serial",
        "tty",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(devices.iter().cloned());
    let (status, chv) = run_to_exit(&args, timeout);
    let stdout = chv.stdout();
    let stderr = chv.stderr();
    Run {
        status,
        chv,
        stdout,
        stderr,
    }
}

/// `--disk` arguments for an image.
fn disk(img: &TempFile, extra: &str) -> Vec<String> {
    vec![
        "--disk".into(),
        format!("path={},serial={SERIAL}{extra}", img.arg()),
    ]
}

/// At most `max` bytes of `s` from its start and end (stderr can be huge).
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut head = max / 2;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - max / 2;
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{}\n[... {} bytes, {} lines left out ...]\n{}",
        &s[..head],
        tail - head,
        s[head..tail].lines().count(),
        &s[tail..]
    )
}

impl Run {
    fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\nchv status {:?} after {:.1?}\n----- console -----\n{}\n----- stderr ({} bytes) -----\n{}\n-----",
            self.status,
            self.chv.elapsed(),
            clip(&self.stdout, 16 * 1024),
            self.stderr.len(),
            clip(&self.stderr, 8 * 1024)
        )
    }

    fn check(&self, cond: bool, msg: &str) {
        if !cond {
            self.fail(msg)
        }
    }

    fn lines(&self) -> Vec<&str> {
        self.stdout
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .collect()
    }

    /// The console line starting with `prefix` (fails if there is none).
    fn line(&self, prefix: &str) -> String {
        match self.lines().into_iter().find(|l| l.starts_with(prefix)) {
            Some(l) => l.to_string(),
            None => self.fail(&format!("no console line starting with {prefix:?}")),
        }
    }

    fn has_line(&self, want: &str) -> bool {
        self.lines().contains(&want)
    }

    /// The scenario passed, chv exited 0 by the guest's power-off, no panic.
    fn expect_pass(&self, test: &str) {
        self.check(
            self.status.is_some(),
            "chv did not exit (killed after the timeout)",
        );
        self.check(
            !self.stdout.contains("TESTGUEST-FAIL"),
            "the guest reported a failure",
        );
        self.check(
            self.has_line(&format!("TESTGUEST-PASS {test}")),
            "no PASS line",
        );
        self.expect_clean_exit();
    }

    /// Exit code 0 and no panic or crash.
    fn expect_clean_exit(&self) {
        for text in ["panicked", "internal error", "RUST_BACKTRACE"] {
            self.check(
                !self.stderr.contains(text),
                &format!("chv stderr contains {text:?}"),
            );
        }
        match self.status {
            Some(st) => self.check(
                st.code() == Some(0),
                &format!("chv exit status {st}, want 0"),
            ),
            None => self.fail("chv did not exit (killed after the timeout)"),
        }
    }
}

#[test]
fn pci_enum_cf8_and_ecam_agree_and_list_every_device() {
    let (d1, d2) = (TempFile::image("enum1"), TempFile::image("enum2"));
    let cons = TempFile::new("enum-console");
    let mut devices = disk(&d1, "");
    devices.extend(disk(&d2, ",readonly=on"));
    devices.extend([
        "--rng".into(),
        "src=/dev/urandom".into(),
        "--console".into(),
        format!("file={}", cons.arg()),
    ]);
    let r = run("test=pci-enum", &devices, RUN_TIMEOUT);
    r.expect_pass("pci-enum");
    r.check(!r.stdout.contains("PCI-MISMATCH"), "CF8 and ECAM disagree");
    r.check(r.has_line("PCI-DEVICES 5"), "want 5 PCI functions");
    let bridge = r.line("PCI slot=0 ");
    r.check(
        bridge.contains("id=8086:0d57 class=0600"),
        "slot 0 is not the host bridge",
    );
    // chv adds disks first, then the console, then the rng.
    let want = [
        (1, "1af4:1042", "0100"),
        (2, "1af4:1042", "0100"),
        (3, "1af4:1043", "0780"),
        (4, "1af4:1044", "ff00"),
    ];
    let mut bars = Vec::new();
    for (slot, id, class) in want {
        let l = r.line(&format!("PCI slot={slot} "));
        r.check(
            l.contains(&format!("id={id} class={class}")),
            &format!("slot {slot}: want {id} class {class}: {l}"),
        );
        for cap in ["09/1", "09/2", "09/3", "09/4", "11"] {
            r.check(
                l.split(' ').any(|w| {
                    w.strip_prefix("caps=")
                        .is_some_and(|c| c.split(',').any(|x| x == cap))
                }),
                &format!("slot {slot}: capability {cap} missing: {l}"),
            );
        }
        r.check(
            l.contains("bar0type=04 ") && l.contains("bar0size=0000000000008000"),
            &format!("slot {slot}: BAR0 is not a 32 KiB 64-bit memory BAR: {l}"),
        );
        r.check(
            !l.contains("BROKEN"),
            &format!("slot {slot}: BAR0 unusable after sizing: {l}"),
        );
        let bar = l
            .split(' ')
            .find_map(|w| w.strip_prefix("bar0="))
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .unwrap_or(0);
        r.check(
            bar != 0 && bar % 0x8000 == 0,
            &format!("slot {slot}: bad BAR0 {bar:#x}"),
        );
        bars.push(bar);
    }
    bars.sort_unstable();
    bars.dedup();
    r.check(bars.len() == 4, "two devices share a BAR0");
}

#[test]
fn virtio_blk_read_write_get_id_flush() {
    let img = TempFile::image("rw");
    let r = run("test=virtio-blk-rw", &disk(&img, ""), RUN_TIMEOUT);
    r.expect_pass("virtio-blk-rw");
    let sectors = IMAGE_SIZE / 512;
    for want in [
        format!("BLK-CAPACITY {sectors}"),
        "BLK-HOSTPATTERN ok".into(),
        "BLK-WRITE used len=1 status=00 devstatus=0f".into(),
        "BLK-READBACK ok".into(),
        format!("BLK-ID {SERIAL}"),
        "BLK-FLUSH used len=1 status=00 devstatus=0f".into(),
        "BLK-BEYOND-END used len=1 status=01 devstatus=0f".into(),
    ] {
        r.check(r.has_line(&want), &format!("missing line {want:?}"));
    }
    let data = std::fs::read(img.path()).expect("read image");
    r.check(data.len() == IMAGE_SIZE, "image size changed");
    for (o, &b) in data.iter().enumerate() {
        let want = if (3 * 512..4 * 512).contains(&o) {
            guest_pattern(o - 3 * 512)
        } else {
            host_pattern(o)
        };
        if b != want {
            r.fail(&format!("image byte {o:#x} is {b:#04x}, want {want:#04x}"));
        }
    }
}

#[test]
fn virtio_blk_readonly_refuses_writes() {
    let img = TempFile::image("ro");
    let r = run(
        "test=virtio-blk-ro",
        &disk(&img, ",readonly=on"),
        RUN_TIMEOUT,
    );
    r.expect_pass("virtio-blk-ro");
    r.check(
        r.has_line("BLK-RO-FEATURE 1"),
        "VIRTIO_BLK_F_RO not offered",
    );
    r.check(
        r.has_line("BLK-RO-WRITE used len=1 status=01 devstatus=0f"),
        "write to a read-only disk did not complete with IOERR",
    );
    r.check(r.has_line("BLK-RO-READ ok"), "read failed");
    let data = std::fs::read(img.path()).expect("read image");
    r.check(
        data.iter().enumerate().all(|(o, &b)| b == host_pattern(o)),
        "read-only image was modified",
    );
}

#[test]
fn virtio_rng_returns_random_bytes() {
    let r = run(
        "test=virtio-rng",
        &["--rng".into(), "src=/dev/urandom".into()],
        RUN_TIMEOUT,
    );
    r.expect_pass("virtio-rng");
    let heads: Vec<String> = r
        .lines()
        .iter()
        .filter(|l| l.starts_with("RNG used len=64 "))
        .map(|l| l.split("head=").nth(1).unwrap_or("").to_string())
        .collect();
    r.check(heads.len() == 2, "want two 64-byte RNG completions");
    r.check(
        heads[0] != heads[1],
        "two RNG reads returned the same bytes",
    );
}

#[test]
fn virtio_console_output_reaches_the_file() {
    let out = TempFile::new("console-out");
    let r = run(
        "test=virtio-console",
        &["--console".into(), format!("file={}", out.arg())],
        RUN_TIMEOUT,
    );
    r.expect_pass("virtio-console");
    let text = std::fs::read_to_string(out.path()).unwrap_or_default();
    r.check(
        text == "VIRTIO-CONSOLE-HELLO from the test guest\n",
        &format!("console file holds {text:?}"),
    );
}

#[test]
fn virtio_msix_interrupt_reaches_the_guest_lapic() {
    let img = TempFile::image("msix");
    let r = run("test=virtio-msix", &disk(&img, ""), RUN_TIMEOUT);
    r.expect_pass("virtio-msix");
    let isr = r.line("MSIX-ISR ");
    r.check(
        isr.ends_with("first=01 second=00"),
        &format!("ISR is not read-to-clear: {isr}"),
    );
    r.check(
        r.line("MSIX-IRQ ").ends_with("count=1"),
        "want exactly one interrupt for one request",
    );
    r.check(
        r.line("MSIX-MASKED ")
            .ends_with("while-masked=0 pba=00000001 after-unmask=1 pba=00000000"),
        "masked vector not held pending and delivered on unmask",
    );
    r.check(
        r.has_line("MSIX-BAD-VECTOR readback=ffff"),
        "out-of-range vector accepted",
    );
}

/// Transport and chain cases and what each must show (a substring).
const HOSTILE_EXPECT: &[(&str, &str)] = &[
    // Unusable chains are returned unused-length 0, the status untouched.
    ("oob-header", "used len=0 status=ee"),
    ("oob-data", "used len=0 status=ee"),
    ("huge-len", "used len=0 status=ee"),
    ("status-readonly", "used len=0 status=ee"),
    ("no-status", "used len=0 status=ee"),
    ("next-oob", "used len=0 status=ee"),
    ("indirect-oob", "used len=0 status=ee"),
    // A loop is cut at the queue size; the request is malformed, so the
    // device answers IOERR in the last writable byte (not our status byte).
    ("loop", "used len=1 "),
    // A status byte exists but the header is unusable: IOERR.
    ("self-loop", "used len=1 status=01"),
    ("header-writable", "used len=1 status=01"),
    ("short-header", "used len=1 status=01"),
    // Writes to bad queue sizes / selectors / read-only fields are ignored.
    (
        "qsize-npot",
        "before=00000080 w000c=00000080 w0000=00000080 w0003=00000080 wffff=00000080 w8000=00000080",
    ),
    ("qsel-oob", "queue0=unchanged"),
    ("notify-bogus", "used len=21 status=00"),
    ("ro-fields", "unchanged"),
    // DRIVER_OK without FEATURES_OK, or with no queue: NEEDS_RESET.
    ("status-garbage", "w04=00000040 no-version1=00000003 no-queue=0000004f"),
    ("bad-rings", "devstatus=0000004f"),
    ("misaligned-ring", "desc-kept=00000001 devstatus=0000000f"),
];

#[test]
fn virtio_hostile_driver_is_survived_and_device_recovers() {
    let img = TempFile::image("hostile");
    let r = run(
        &format!("test=virtio-hostile serial={SERIAL}"),
        &disk(&img, ""),
        RUN_TIMEOUT,
    );
    r.expect_clean_exit();
    for (case, want) in HOSTILE_EXPECT {
        let prefix = format!("HOSTILE {case} ");
        let got: Vec<&str> = r
            .lines()
            .into_iter()
            .filter(|l| l.starts_with(&prefix))
            .collect();
        r.check(!got.is_empty(), &format!("case {case} did not run"));
        r.check(
            got.iter().any(|l| l.contains(want)),
            &format!("case {case}: want {want:?}, got {got:?}"),
        );
        r.check(
            r.has_line(&format!("HOSTILE-RECOVERED {case} yes")),
            &format!("device did not recover after {case}"),
        );
    }
    // head-oob is checked strictly in its own test; here it must only not
    // complete successfully.
    let head = r.line("HOSTILE head-oob ");
    r.check(!head.contains("status=00"), &format!("head-oob: {head}"));
    r.check(
        r.has_line("HOSTILE-RECOVERED head-oob yes"),
        "device did not recover after head-oob",
    );
    r.check(
        r.has_line("VIRTIO-HOSTILE-STILL-WORKS"),
        "no still-works line",
    );
    r.expect_pass("virtio-hostile");
    let data = std::fs::read(img.path()).expect("read image");
    r.check(
        data.iter().enumerate().all(|(o, &b)| b == host_pattern(o)),
        "a hostile (read-only) request modified the image",
    );
}

/// Runs one hostile case on its own; it must end with the device answering
/// (an error completion or NEEDS_RESET), recovering after a reset, and chv
/// exiting 0 without flooding its log.
fn hostile_case_strict(case: &str) {
    let img = TempFile::image(&format!("hostile-{case}"));
    let r = run(
        &format!("test=virtio-hostile serial={SERIAL} case={case}"),
        &disk(&img, ""),
        RUN_TIMEOUT,
    );
    let line = r.line(&format!("HOSTILE {case} "));
    r.check(
        line.contains(" used ") || line.contains(" needs-reset "),
        &format!(
            "{case}: the device neither completed the chain nor set NEEDS_RESET \
             (a driver cannot tell it is stuck): {line}"
        ),
    );
    r.check(
        r.has_line(&format!("HOSTILE-RECOVERED {case} yes")),
        &format!("device did not recover after {case}"),
    );
    r.check(
        r.stderr.len() < 64 * 1024,
        &format!("chv logged {} bytes for one bad request", r.stderr.len()),
    );
    r.expect_pass("virtio-hostile");
}

#[test]
fn virtio_head_index_beyond_queue_size_sets_needs_reset() {
    hostile_case_strict("head-oob");
}

#[test]
fn virtio_avail_idx_jump_is_survived() {
    hostile_case_strict("avail-jump");
}

/// `--platform` SMBIOS fields and a second PCI segment as the guest finds
/// them without Linux: the SMBIOS 3.0 anchor in the F segment (checksum,
/// type 1 serial and UUID bytes, type 11 strings) and, through segment 1's
/// ECAM window, its host bridge in slot 0 and the disk given
/// `pci_segment=1` in slot 1.
#[test]
fn smbios_and_pci_segment_1_seen_by_the_guest() {
    let img = TempFile::image("seg1-disk");
    let devices = vec![
        "--platform".to_string(),
        "num_pci_segments=2,serial_number=TG-SERIAL-7,\
         uuid=00112233-4455-6677-8899-aabbccddeeff,oem_strings=[kata=1,second]"
            .to_string(),
        "--disk".to_string(),
        format!("path={},pci_segment=1", img.arg()),
    ];
    let r = run("test=firmware-id", &devices, RUN_TIMEOUT);
    r.expect_pass("firmware-id");
    for want in [
        "SMBIOS 3.0 checksum=ok",
        "SMBIOS-SERIAL=TG-SERIAL-7",
        // SMBIOS stores the first three UUID fields little-endian.
        "SMBIOS-UUID=33221100554477668899aabbccddeeff",
        "SMBIOS-OEM=kata=1",
        "SMBIOS-OEM=second",
        "SMBIOS-END",
        "SEG1 slot=0 id=8086:0d57",
        "SEG1 slot=1 id=1af4:1042",
    ] {
        r.check(r.has_line(want), &format!("no console line {want:?}"));
    }
}
