//! End-to-end boots of the real Linux guest kit (patched 6.1 vmlinux + busybox
//! initramfs, see /work/shared/guest/README.md) under chv. Slow: each boot
//! takes about 20-30 s on the PVM host, so there are only five, run one
//! after another (2 host cores).
//!
//! Covers:
//! - 1 vCPU, 128 MiB: the guest reaches `GUEST-READY`, runs a command
//!   (`nproc` prints exactly `1`, MemTotal is between 100 and 128 MiB), the
//!   command exits 0, the guest powers off through ACPI and chv exits 0;
//! - 2 vCPUs: `nproc` prints exactly `2` (the AP came up), chv exits 0;
//! - reboot: `reboot -f` from the guest restarts the kernel (the
//!   `Linux version` banner appears a second time after `GUEST-READY`);
//! - bzImage: the same kernel as a bzImage, entered through the Linux boot
//!   protocol's 64-bit entry with a zero page (slow: it decompresses itself);
//! - `acpi=off` with 2 vCPUs: the guest finds both CPUs and its IO-APIC
//!   routing in chv's MP table alone (`nproc` prints `2`, the serial line is
//!   an IO-APIC interrupt) and halts at power-off, as a guest without ACPI
//!   does.
//!
//! A missing guest kit fails these tests unless `CHV_SKIP_LINUX=1`.

use std::sync::Mutex;
use std::time::Duration;

use chv_tests::{require_guest_kit, Chv, GuestKit};

/// Per-boot limit; boots take 40-60 s here, more when the host is busy.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// Console text that ends a wait early as a failure.
const ABORT: &[&str] = &["Kernel panic"];

/// Serializes the boots: each one keeps a host core busy for a minute.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn linux_args(kit: &GuestKit, cpus: u8, cmdline: &str) -> Vec<String> {
    vec![
        "--kernel".into(),
        kit.kernel.display().to_string(),
        "--initramfs".into(),
        kit.initramfs.display().to_string(),
        "--cmdline".into(),
        cmdline.into(),
        "--cpus".into(),
        format!("boot={cpus}"),
        "--memory".into(),
        "size=128M".into(),
        "--serial".into(),
        "tty".into(),
    ]
}

/// Boots with `guest_cmd` and returns the command's output lines (between
/// `GUEST-UPTIME` and `GUEST-CMD-EXIT=0`) after chv exited 0; `None` when
/// skipped for lack of a guest kit.
fn boot_and_run(cpus: u8, guest_cmd: &str) -> Option<Vec<String>> {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let kit = require_guest_kit()?;
    let cmdline = format!("console=ttyS0 quiet panic=-1 guest_cmd=\"{guest_cmd}\"");
    let mut chv = Chv::spawn(&linux_args(&kit, cpus, &cmdline));
    chv.expect("GUEST-READY", ABORT, BOOT_TIMEOUT);
    eprintln!("{cpus} vCPU(s): GUEST-READY after {:.1?}", chv.elapsed());
    chv.expect("GUEST-POWEROFF", ABORT, Duration::from_secs(120));
    let st = chv.expect_exit(Duration::from_secs(60));
    eprintln!(
        "{cpus} vCPU(s): chv exited ({st}) after {:.1?}",
        chv.elapsed()
    );
    chv.assert_no_panic();
    chv.check(
        st.code() == Some(0),
        &format!("chv exit status {st}, want 0 after poweroff"),
    );
    let lines = chv.lines();
    chv.check(
        lines.iter().filter(|l| l.as_str() == "GUEST-READY").count() == 1,
        "want exactly one GUEST-READY line (rebooted?)",
    );
    let start = lines.iter().position(|l| l.starts_with("GUEST-UPTIME "));
    let end = lines.iter().position(|l| l.starts_with("GUEST-CMD-EXIT="));
    let (Some(start), Some(end)) = (start, end) else {
        chv.fail("missing GUEST-UPTIME or GUEST-CMD-EXIT line");
    };
    chv.check(start < end, "GUEST-CMD-EXIT before GUEST-UPTIME");
    chv.check(lines[end] == "GUEST-CMD-EXIT=0", "guest command failed");
    Some(lines[start + 1..end].to_vec())
}

#[test]
fn linux_one_vcpu_runs_command_and_powers_off() {
    let Some(out) = boot_and_run(1, "nproc; grep MemTotal /proc/meminfo") else {
        return;
    };
    assert_eq!(
        out.first().map(String::as_str),
        Some("1"),
        "nproc output: {out:?}"
    );
    let kib: u64 = out
        .iter()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal line in {out:?}"));
    assert!(
        (100 * 1024..=128 * 1024).contains(&kib),
        "MemTotal {kib} kB not between 100 and 128 MiB"
    );
}

#[test]
fn linux_two_vcpus_are_online() {
    let Some(out) = boot_and_run(2, "nproc") else {
        return;
    };
    assert_eq!(out, vec!["2".to_string()], "nproc output");
}

#[test]
fn linux_without_acpi_finds_its_cpus_in_the_mp_table() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let cmdline =
        "console=ttyS0 quiet panic=-1 acpi=off guest_cmd=\"nproc; grep ttyS0 /proc/interrupts\"";
    let mut chv = Chv::spawn(&linux_args(&kit, 2, cmdline));
    chv.expect("GUEST-READY", ABORT, BOOT_TIMEOUT);
    eprintln!("acpi=off: GUEST-READY after {:.1?}", chv.elapsed());
    // Without ACPI the guest cannot power the machine off: it halts.
    chv.expect("GUEST-POWEROFF", ABORT, Duration::from_secs(120));
    let running = chv.wait_exit(Duration::from_secs(1)).is_none();
    chv.kill();
    chv.assert_no_panic();
    let lines = chv.lines();
    let start = lines.iter().position(|l| l.starts_with("GUEST-UPTIME "));
    let end = lines.iter().position(|l| l.starts_with("GUEST-CMD-EXIT="));
    let (Some(start), Some(end)) = (start, end) else {
        chv.fail("missing GUEST-UPTIME or GUEST-CMD-EXIT line");
    };
    let out = &lines[start + 1..end];
    chv.check(lines[end] == "GUEST-CMD-EXIT=0", "guest command failed");
    chv.check(
        out.first().map(String::as_str) == Some("2"),
        &format!("nproc should print 2 (both CPUs from the MP table): {out:?}"),
    );
    chv.check(
        out.iter()
            .any(|l| l.contains("IO-APIC") && l.contains("ttyS0")),
        &format!("ttyS0 should be an IO-APIC interrupt: {out:?}"),
    );
    chv.check(running, "chv exited although the guest only halted");
}

#[test]
fn linux_reboot_restarts_the_kernel() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(kit) = require_guest_kit() else {
        return;
    };
    // Not `quiet`: loglevel=6 shows the notice-level "Linux version" banner
    // each boot prints, without the info-level flood that slows the boot.
    let cmdline = "console=ttyS0 loglevel=6 panic=-1 guest_cmd=\"reboot -f\"";
    let banner = "Linux version";
    let mut chv = Chv::spawn(&linux_args(&kit, 1, cmdline));
    chv.expect("GUEST-READY", ABORT, BOOT_TIMEOUT);
    eprintln!("reboot test: GUEST-READY after {:.1?}", chv.elapsed());
    chv.expect_count(banner, 2, ABORT, Duration::from_secs(120));
    eprintln!("reboot test: second banner after {:.1?}", chv.elapsed());
    let out = chv.stdout();
    let first = out.find(banner).unwrap_or(usize::MAX);
    let ready = out.find("GUEST-READY").unwrap_or(usize::MAX);
    let second = out.rfind(banner).unwrap_or(0);
    chv.check(
        first < ready && ready < second,
        "want banner, GUEST-READY, banner in this order",
    );
    let running = chv.wait_exit(Duration::ZERO).is_none();
    chv.check(running, "chv exited instead of rebooting");
    chv.kill();
    chv.assert_no_panic();
}

#[test]
fn linux_bzimage_boots_through_the_64bit_entry() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(kit) = require_guest_kit() else {
        return;
    };
    // The kit's bzImage decompresses itself in the guest (gzip in the shared
    // kit, lz4 when built by scripts/guest-kit), which is slow under this
    // host's emulation: allow for it.
    let bzimage = kit.kernel.with_file_name("bzImage");
    assert!(
        bzimage.is_file(),
        "no bzImage beside {}",
        kit.kernel.display()
    );
    let mut args = linux_args(&kit, 1, "console=ttyS0 quiet panic=-1 -- cat /proc/cmdline");
    args[1] = bzimage.display().to_string();
    let mut chv = Chv::spawn(&args);
    chv.expect("GUEST-READY", ABORT, Duration::from_secs(420));
    eprintln!("bzImage: GUEST-READY after {:.1?}", chv.elapsed());
    chv.expect("GUEST-POWEROFF", ABORT, Duration::from_secs(120));
    let st = chv.expect_exit(Duration::from_secs(60));
    chv.assert_no_panic();
    chv.check(
        st.code() == Some(0),
        &format!("chv exit status {st}, want 0"),
    );
    // The command line reached the kernel through the zero page.
    chv.check(
        chv.lines()
            .iter()
            .any(|l| l.contains("quiet panic=-1 -- cat /proc/cmdline")),
        "guest /proc/cmdline does not show the command line chv passed",
    );
    chv.check(
        chv.stdout().contains("GUEST-CMD-EXIT=0"),
        "guest command failed",
    );
}
