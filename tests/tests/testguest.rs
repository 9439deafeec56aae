//! End-to-end tests of chv with the tiny purpose-built test guest
//! (tests/guest/), booted through the Linux 64-bit boot protocol.
//!
//! Covers: exact serial output; the CMOS RTC (host UTC time) and NVRAM;
//! ACPI S5 power-off (exit 0), also with a second, never-started vCPU;
//! reboot via the i8042 (0xFE to port 0x64), the ACPI reset register and a
//! triple fault (the guest starts again); a vCPU halted with interrupts off
//! (chv keeps running and exits on SIGTERM); a hostile guest touching every
//! I/O port and unmapped MMIO (chv survives, exits 0); the e820 map against
//! `--memory` (below and above the 32-bit hole); CPUID (hypervisor bit, KVM
//! signature, features hidden on PVM hosts and `features=` re-exposing one);
//! and clean command-line errors (missing/corrupt kernel, zero vCPUs, too
//! little memory) with exit code 1 and no Rust panic.
//!
//! Needs /dev/kvm. The chv binary is found as described in the crate docs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chv_tests::{console_lines, host_is_pvm, run_to_exit, testguest, unix_time, Chv, Scratch};

/// How long a test-guest scenario may take to print its verdict.
const GUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines that end a wait early as a failure.
const ABORT: &[&str] = &["TESTGUEST-FAIL"];

/// chv arguments booting the test guest with scenario `test`.
fn guest_args(test: &str, cpus: &str, memory: &str) -> Vec<String> {
    vec![
        "--kernel".into(),
        testguest().display().to_string(),
        "--cmdline".into(),
        format!("test={test}"),
        "--cpus".into(),
        cpus.into(),
        "--memory".into(),
        memory.into(),
        "--serial".into(),
        "tty".into(),
    ]
}

/// Boots scenario `test` with 1 vCPU and 64 MiB.
fn boot(test: &str) -> Chv {
    Chv::spawn(&guest_args(test, "boot=1", "size=64M"))
}

/// The value after `key` on the console line starting with `prefix`.
fn field(chv: &Chv, prefix: &str, key: &str) -> String {
    let lines = chv.lines();
    let Some(line) = lines.iter().find(|l| l.starts_with(prefix)) else {
        chv.fail(&format!("no console line starting with {prefix:?}"));
    };
    let Some(rest) = line.split_whitespace().find_map(|w| w.strip_prefix(key)) else {
        chv.fail(&format!("no {key:?} in line {line:?}"));
    };
    rest.to_string()
}

fn hex_field(chv: &Chv, prefix: &str, key: &str) -> u32 {
    let v = field(chv, prefix, key);
    u32::from_str_radix(&v, 16)
        .unwrap_or_else(|e| chv.fail(&format!("bad hex {v:?} for {key}: {e}")))
}

/// Scenario that ends in ACPI S5: chv must exit 0 with only the start line.
fn expect_clean_poweroff(mut chv: Chv) {
    let st = chv.expect_exit(GUEST_TIMEOUT);
    chv.assert_no_panic();
    chv.check(
        st.code() == Some(0),
        &format!("chv exit status {st}, want 0"),
    );
    chv.check(
        chv.stdout() == "TESTGUEST-START\n",
        "console must be exactly the start line (guest ran on after poweroff?)",
    );
}

/// Scenario that resets the VM: the guest must start a second time.
fn expect_reboot(test: &str) {
    let mut chv = boot(test);
    // No early abort on TESTGUEST-FAIL: first see whether it reboots at all.
    chv.expect_count("TESTGUEST-START", 2, &[], GUEST_TIMEOUT);
    let running = chv.wait_exit(Duration::ZERO).is_none();
    chv.check(running, "chv exited after the reset instead of rebooting");
    // Like real hardware, the vCPU must not run on after requesting a reset.
    chv.check(
        !chv.stdout().contains("TESTGUEST-FAIL"),
        "the guest kept running after its reset request",
    );
    chv.kill();
    chv.assert_no_panic();
}

#[test]
fn serial_output_is_exact() {
    let chv = boot("serial");
    chv.expect("TESTGUEST-END\n", ABORT, GUEST_TIMEOUT);
    let ascii: String = (b' '..=b'~').map(char::from).collect();
    let long: String = (0..1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let want = format!(
        "TESTGUEST-START\nSERIAL-ASCII {ascii}\nSERIAL-LONG {long}\nTESTGUEST-PASS serial\nTESTGUEST-END\n"
    );
    let got = chv.stdout_bytes();
    chv.check(
        got == want.as_bytes(),
        "serial output differs from the exact expected bytes",
    );
    chv.assert_no_panic();
}

#[test]
fn cmos_rtc_matches_host_utc_and_nvram_works() {
    let chv = boot("cmos");
    chv.expect("TESTGUEST-PASS cmos", ABORT, GUEST_TIMEOUT);
    let host = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let lines = chv.lines();
    let line = lines
        .iter()
        .find_map(|l| l.strip_prefix("CMOS-TIME "))
        .unwrap_or_else(|| chv.fail("no CMOS-TIME line"));
    let nums: Vec<u32> = line
        .split(['-', ' ', ':'])
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| chv.fail(&format!("bad CMOS-TIME {line:?}")))
        })
        .collect();
    chv.check(nums.len() == 6, &format!("bad CMOS-TIME {line:?}"));
    let guest = unix_time(
        i64::from(nums[0]),
        nums[1],
        nums[2],
        nums[3],
        nums[4],
        nums[5],
    );
    chv.check(
        (guest - host).abs() <= 5,
        &format!("guest RTC {line} is {}s off host UTC", guest - host),
    );
    chv.check(
        lines.iter().any(|l| l == "CMOS-NVRAM 00005aa5"),
        "CMOS NVRAM byte 0x40 did not read back",
    );
    chv.assert_no_panic();
}

#[test]
fn acpi_poweroff_exits_zero() {
    expect_clean_poweroff(boot("poweroff"));
}

#[test]
fn acpi_poweroff_with_idle_second_vcpu_exits_zero() {
    // The second vCPU never gets a SIPI: it sits in KVM_RUN waiting, and chv
    // still has to stop it to exit.
    expect_clean_poweroff(Chv::spawn(&guest_args("poweroff", "boot=2", "size=64M")));
}

#[test]
fn i8042_reset_reboots() {
    expect_reboot("reset-i8042");
}

#[test]
fn acpi_reset_register_reboots() {
    expect_reboot("reset-acpi");
}

#[test]
fn triple_fault_reboots() {
    expect_reboot("triple-fault");
}

#[test]
fn halted_vcpu_keeps_running_and_sigterm_exits() {
    let mut chv = boot("hlt");
    chv.expect("HLT-NOW", ABORT, GUEST_TIMEOUT);
    std::thread::sleep(Duration::from_secs(1));
    let running = chv.wait_exit(Duration::ZERO).is_none();
    chv.check(running, "chv exited while the vCPU was halted");
    chv.signal(libc::SIGTERM);
    let exited = chv.wait_exit(Duration::from_secs(5)).is_some();
    chv.check(exited, "chv did not exit on SIGTERM");
    let st = chv.wait_exit(Duration::from_secs(5));
    let Some(st) = st else {
        chv.fail("chv did not exit within 5 s of SIGTERM");
    };
    // chv documents exit code 0 for a stop by SIGINT/SIGTERM.
    chv.check(
        st.code() == Some(0),
        &format!("exit status {st} after SIGTERM, want 0"),
    );
    chv.check(
        !chv.stdout().contains("TESTGUEST-FAIL"),
        "guest woke from hlt",
    );
    chv.assert_no_panic();
}

#[test]
fn hostile_io_is_survived() {
    let chv = boot("hostile-io");
    chv.expect("TESTGUEST-PASS hostile-io", ABORT, Duration::from_secs(300));
    let lines = chv.lines();
    for port in ["00003fff", "00007fff", "0000bfff", "0000ffff"] {
        let want = format!("HOSTILE-PIO {port}");
        chv.check(
            lines.contains(&want),
            &format!("missing progress line {want:?}"),
        );
    }
    chv.check(
        lines.iter().any(|l| l == "HOSTILE-MMIO done"),
        "MMIO pokes not done",
    );
    eprintln!("hostile-io took {:.1?}", chv.elapsed());
    let mut chv = chv;
    let st = chv.expect_exit(GUEST_TIMEOUT);
    chv.assert_no_panic();
    chv.check(
        st.code() == Some(0),
        &format!("chv exit status {st}, want 0"),
    );
}

/// Boots `memsize` with `mib` MiB and checks the e820 RAM total and layout.
fn check_memsize(mib: u64) {
    let chv = Chv::spawn(&guest_args("memsize", "boot=1", &format!("size={mib}M")));
    chv.expect("TESTGUEST-PASS memsize", ABORT, GUEST_TIMEOUT);
    let lines = chv.lines();
    let total: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("E820-RAM-TOTAL "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| chv.fail("no valid E820-RAM-TOTAL line"));
    let size = mib << 20;
    chv.check(
        total <= size && total >= size - (1 << 20),
        &format!("e820 RAM total {total} not within 1 MiB below --memory {size}"),
    );
    // No RAM entry may cover the legacy hole (EBDA..1 MiB) or the 32-bit MMIO hole.
    for line in lines.iter().filter(|l| l.starts_with("E820 ")) {
        let w: Vec<&str> = line.split_whitespace().collect();
        chv.check(w.len() == 4, &format!("bad e820 line {line:?}"));
        let addr = u64::from_str_radix(w[1], 16).unwrap_or(u64::MAX);
        let len = u64::from_str_radix(w[2], 16).unwrap_or(u64::MAX);
        if w[3] != "1" {
            continue;
        }
        let end = addr.saturating_add(len);
        let overlaps = |lo: u64, hi: u64| addr < hi && end > lo;
        chv.check(
            !overlaps(0x9fc00, 0x10_0000) && !overlaps(0xc000_0000, 0x1_0000_0000),
            &format!("e820 RAM entry {line:?} overlaps a hole"),
        );
    }
    chv.assert_no_panic();
}

#[test]
fn e820_matches_memory_size() {
    check_memsize(64);
}

#[test]
fn e820_matches_memory_size_above_4g() {
    check_memsize(4096);
}

#[test]
fn cpuid_shows_kvm_and_hides_pvm_unsupported_features() {
    let chv = boot("cpuid");
    chv.expect("TESTGUEST-PASS cpuid", ABORT, GUEST_TIMEOUT);
    let ecx = hex_field(&chv, "CPUID-1 ", "ECX=");
    chv.check(ecx & (1 << 31) != 0, "hypervisor bit clear");
    chv.check(
        field(&chv, "CPUID-HV ", "SIG=") == "KVMKVMKVM",
        "wrong hypervisor signature",
    );
    if host_is_pvm() {
        // A PVM host merges its own leaf-1 bits back into the guest CPUID for
        // some features; chv must then say so instead of staying silent.
        let stderr = chv.stderr();
        for (bit, name) in [(26, "xsave"), (13, "cx16"), (23, "popcnt")] {
            let hidden = ecx & (1 << bit) == 0;
            let warned = stderr.contains("re-exposes") && stderr.contains(name);
            chv.check(
                hidden || warned,
                &format!("{name} exposed on a PVM host without a warning"),
            );
        }
    }
    chv.assert_no_panic();
}

#[test]
fn cpuid_features_keeps_cx16() {
    // CX16 is a feature this PVM host lets chv hide, so keeping it is visible.
    let chv = Chv::spawn(&guest_args("cpuid", "boot=1,features=[cx16]", "size=64M"));
    chv.expect("TESTGUEST-PASS cpuid", ABORT, GUEST_TIMEOUT);
    let ecx = hex_field(&chv, "CPUID-1 ", "ECX=");
    chv.check(
        ecx & (1 << 13) != 0,
        "CX16 not exposed with features=[cx16]",
    );
    chv.assert_no_panic();
}

/// Runs chv expecting a configuration error: exit code 1 quickly, an error
/// on stderr, no panic and no guest output. Returns stderr.
fn expect_config_error(args: &[String]) -> String {
    let (st, chv) = run_to_exit(args, Duration::from_secs(20));
    let Some(st) = st else {
        chv.fail("chv kept running instead of rejecting its configuration");
    };
    chv.assert_no_panic();
    chv.check(st.code() == Some(1), &format!("exit status {st}, want 1"));
    chv.check(!chv.stdout().contains("TESTGUEST"), "the guest ran");
    let err = chv.stderr();
    chv.check(!err.trim().is_empty(), "no error message on stderr");
    err
}

#[test]
fn missing_kernel_is_a_one_line_error() {
    let mut args = guest_args("serial", "boot=1", "size=64M");
    args[1] = "/nonexistent".into();
    let err = expect_config_error(&args);
    let lines: Vec<String> = console_lines(err.trim())
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "want exactly one stderr line, got:\n{err}");
    assert!(
        lines[0].contains("/nonexistent"),
        "error does not name the path: {err}"
    );
}

#[test]
fn corrupt_kernel_is_a_clear_error() {
    let path = std::env::temp_dir().join(format!("chv-test-corrupt-kernel-{}", std::process::id()));
    let mut x: u32 = 0x2545_f491;
    let data: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(&path, data).expect("write corrupt kernel");
    let mut args = guest_args("serial", "boot=1", "size=64M");
    args[1] = path.display().to_string();
    let err = expect_config_error(&args);
    let _ = std::fs::remove_file(&path);
    assert!(
        err.to_lowercase().contains("kernel"),
        "error does not mention the kernel: {err}"
    );
}

#[test]
fn zero_vcpus_is_rejected() {
    expect_config_error(&guest_args("serial", "boot=0", "size=64M"));
}

#[test]
fn too_little_memory_is_rejected() {
    expect_config_error(&guest_args("serial", "boot=1", "size=1M"));
}

/// Executable `PT_LOAD` ranges `[start, end)` of a 64-bit ELF file.
fn elf_exec_ranges(path: &std::path::Path) -> Vec<(u64, u64)> {
    let elf = std::fs::read(path).expect("read the test guest ELF");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    (0..usize::from(phnum))
        .map(|i| phoff + i * usize::from(phentsize))
        .filter(|&ph| u32_at(ph) == 1 && u32_at(ph + 4) & 1 != 0)
        .map(|ph| (u64_at(ph + 0x10), u64_at(ph + 0x10) + u64_at(ph + 0x28)))
        .collect()
}

#[test]
fn guest_profile_samples_the_guest_rip() {
    let scratch = Scratch::new("guest-profile");
    let profile = scratch.path("profile.txt");
    let profile_str = profile.display().to_string();
    let mut args = guest_args("ticker", "boot=1", "size=64M");
    args.extend(["--seccomp".to_string(), "false".to_string()]);
    // The ticker busy-waits between ticks, so the vCPU burns CPU time.
    let mut chv = Chv::spawn_with_env(&args, &[("CHV_GUEST_PROFILE", &profile_str)]);
    chv.expect("TICK 20", ABORT, GUEST_TIMEOUT);
    chv.signal(libc::SIGTERM);
    let exited = chv.wait_exit(Duration::from_secs(5)).is_some();
    chv.check(exited, "chv did not exit on SIGTERM");
    let text = std::fs::read_to_string(&profile).unwrap_or_default();
    let ranges = elf_exec_ranges(&testguest());
    let mut samples = 0;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        chv.check(fields.len() == 3, &format!("bad profile line {line:?}"));
        chv.check(
            fields[1] == "0",
            &format!("sample of a vCPU that does not exist: {line}"),
        );
        let rip = u64::from_str_radix(fields[2], 16).unwrap_or(u64::MAX);
        chv.check(
            ranges.iter().any(|&(s, e)| (s..e).contains(&rip)),
            &format!("RIP {rip:#x} is outside the test guest's code {ranges:x?}"),
        );
        samples += 1;
    }
    // 20 ticks take 400 ms of guest time; one sample per host tick of CPU.
    chv.check(
        samples >= 10,
        &format!("only {samples} samples in {profile_str}"),
    );

    // With the seccomp filters on, chv refuses to arm the timers, says so,
    // and runs normally.
    let mut chv = Chv::spawn_with_env(
        &guest_args("ticker", "boot=1", "size=64M"),
        &[("CHV_GUEST_PROFILE", &profile_str)],
    );
    chv.expect("TICK 5", ABORT, GUEST_TIMEOUT);
    chv.check(
        chv.stderr().contains("needs --seccomp false"),
        "no warning that profiling needs --seccomp false",
    );
    chv.kill();
}
