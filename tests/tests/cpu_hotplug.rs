//! vCPU hotplug through `vm.resize` (`desired_vcpus`), end to end.
//!
//! - `resize_api_with_test_guest` (fast, no Linux): with `--cpus
//!   boot=1,max=2`, `desired_vcpus` 0 or 3 answers 400 naming the limit,
//!   `desired_ram` 400 naming `memory.hotplug_size`, an empty body 204;
//!   resizing to 2 answers 204 and `vm.info` reports `boot_vcpus` 2;
//!   resizing back to 1 asks the guest to eject vCPU 1, which the tiny
//!   guest (no ACPI) never does, so the next resize answers 429. A VM
//!   started without headroom (`boot=1`) answers 400 to `desired_vcpus` 2
//!   and 204 to 1.
//! - `linux_cpu_hotplug` (one Linux boot of the guest kit, `boot=1,max=2`):
//!   the guest sees 2 possible CPUs and 1 online; after `vm.resize` to 2
//!   it gets `cpu1` (onlining it if the kernel did not), and
//!   `/sys/devices/system/cpu/online` reads `0-1`; after `vm.resize` to 1
//!   the guest offlines and ejects it and the file reads `0`; a resize to 2
//!   brings vCPU 1 back (on its parked KVM fd) and the file reads `0-1`
//!   again; the guest then powers off and chv exits 0.

use std::time::Duration;

use chv_tests::api_client::http;
use chv_tests::{testguest, Chv, Scratch};

/// Time to the guest's first marker: Linux boots take 40-60 s here.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Time for one guest step (each fork in the guest costs 1-2 s).
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// Console text that ends a wait early as a failure.
const ABORT: &[&str] = &["Kernel panic", "CPU-FAIL"];

/// `PUT vm.resize` with `body`; returns (status, body).
fn resize(sock: &std::path::Path, body: &str) -> (u16, String) {
    http(sock, "PUT", "vm.resize", Some(body))
}

/// chv running the tiny ticker guest with `cpus`, serving the API on `sock`.
fn ticker(sock: &std::path::Path, cpus: &str) -> Chv {
    let chv = Chv::spawn(&[
        "--kernel".to_string(),
        testguest().display().to_string(),
        "--cmdline".into(),
        "test=ticker".into(),
        "--cpus".into(),
        cpus.into(),
        "--memory".into(),
        "size=64M".into(),
        "--serial".into(),
        "tty".into(),
        "--console".into(),
        "off".into(),
        "--api-socket".into(),
        sock.display().to_string(),
    ]);
    chv.expect("TICK 3", &[], Duration::from_secs(30));
    chv
}

#[test]
fn resize_api_with_test_guest() {
    let dir = Scratch::new("cpuhp-api");
    let sock = dir.path("api.sock");
    let mut chv = ticker(&sock, "boot=1,max=2");

    for (body, status, needle) in [
        (r#"{"desired_vcpus":0}"#, 400, "between 1 and max_vcpus (2)"),
        (r#"{"desired_vcpus":3}"#, 400, "between 1 and max_vcpus (2)"),
        (r#"{"desired_vcpus":300}"#, 400, "desired_vcpus=300"),
        // Nothing asked for is a no-op, as in Cloud Hypervisor.
        (r#"{}"#, 204, ""),
        (
            r#"{"desired_ram":134217728}"#,
            400,
            "no memory.hotplug_size",
        ),
        // Unknown keys are ignored, as in Cloud Hypervisor.
        (r#"{"desired_vcpus":1,"bogus":1}"#, 204, ""),
    ] {
        let (st, text) = resize(&sock, body);
        chv.check(
            st == status && text.contains(needle),
            &format!("vm.resize {body}: {st} {text}"),
        );
    }
    // A no-op, then a hot-add: the tiny guest has no ACPI, so vCPU 1
    // simply waits for an INIT/SIPI that never comes.
    let (st, text) = resize(&sock, r#"{"desired_vcpus":1}"#);
    chv.check(st == 204, &format!("resize to 1: {st} {text}"));
    let (st, text) = resize(&sock, r#"{"desired_vcpus":2}"#);
    chv.check(st == 204, &format!("resize to 2: {st} {text}"));
    let (_, info) = http(&sock, "GET", "vm.info", None);
    chv.check(
        info.contains(r#""boot_vcpus":2"#) && info.contains(r#""max_vcpus":2"#),
        &format!("vm.info after resize: {info}"),
    );
    // Removal is requested; the guest never ejects, so it stays pending.
    let (st, text) = resize(&sock, r#"{"desired_vcpus":1}"#);
    chv.check(st == 204, &format!("resize to 1: {st} {text}"));
    let (st, text) = resize(&sock, r#"{"desired_vcpus":2}"#);
    chv.check(
        st == 429 && text.contains("removal"),
        &format!("resize while a removal is pending: {st} {text}"),
    );
    // The guest keeps running through all of it.
    let ticks = chv.stdout().matches("TICK").count();
    chv.expect_count("TICK", ticks + 3, &[], Duration::from_secs(30));
    let (st, _) = http(&sock, "PUT", "vmm.shutdown", None);
    chv.check(st == 204, "vmm.shutdown");
    let exit = chv.expect_exit(Duration::from_secs(30));
    chv.assert_no_panic();
    chv.check(exit.success(), &format!("chv exited with {exit}"));

    // Without headroom the count cannot change.
    let sock = dir.path("api2.sock");
    let mut chv = ticker(&sock, "boot=1");
    let (st, text) = resize(&sock, r#"{"desired_vcpus":2}"#);
    chv.check(
        st == 400 && text.contains("max_vcpus (1)"),
        &format!("resize without max: {st} {text}"),
    );
    let (st, text) = resize(&sock, r#"{"desired_vcpus":1}"#);
    chv.check(st == 204, &format!("resize to the same count: {st} {text}"));
    let (st, _) = http(&sock, "PUT", "vmm.shutdown", None);
    chv.check(st == 204, "vmm.shutdown");
    chv.expect_exit(Duration::from_secs(30));
    chv.assert_no_panic();
}

/// The guest's script: report, wait for cpu1 (online it if needed), report,
/// wait for it to go away, report, wait for it to come back. No double
/// quotes (it is a kernel command-line value).
const GUEST_SCRIPT: &str = "\
c=/sys/devices/system/cpu; \
echo CPU-POSSIBLE=$(cat $c/possible) CPU-ONLINE=$(cat $c/online); \
echo CPU-WAIT-ADD; \
i=0; while [ ! -e $c/cpu1/online ] && [ $i -lt 150 ]; do sleep 1; i=$((i+1)); done; \
[ -e $c/cpu1/online ] || echo CPU-FAIL-no-cpu1; \
[ $(cat $c/cpu1/online) = 1 ] || echo 1 > $c/cpu1/online; \
i=0; while [ $(cat $c/online) != 0-1 ] && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done; \
echo CPU-ADDED=$(cat $c/online) nproc=$(grep -c ^processor /proc/cpuinfo); \
echo CPU-WAIT-REMOVE; \
i=0; while [ $(cat $c/online) != 0 ] && [ $i -lt 150 ]; do sleep 1; i=$((i+1)); done; \
echo CPU-REMOVED=$(cat $c/online) present=$(cat $c/present); \
echo CPU-WAIT-READD; \
i=0; while [ ! -e $c/cpu1/online ] && [ $i -lt 150 ]; do sleep 1; i=$((i+1)); done; \
[ $(cat $c/cpu1/online) = 1 ] || echo 1 > $c/cpu1/online; \
i=0; while [ $(cat $c/online) != 0-1 ] && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done; \
echo CPU-READDED=$(cat $c/online)";

/// Starts from the shared base snapshot (the guest kit booted with
/// `--cpus boot=1,max=2` to a command loop) instead of a boot, and sends
/// the script through the serial console.
#[test]
fn linux_cpu_hotplug() {
    let dir = Scratch::new("cpuhp-linux");
    let sock = dir.path("api.sock");
    let Some(mut chv) = chv_tests::base_snapshot::restore(&sock, &["-v".to_string()]) else {
        return;
    };
    chv.send_line(&format!(
        "{GUEST_SCRIPT}; echo CPU-SCRIPT-DONE; poweroff -f"
    ));
    chv.expect("CPU-WAIT-ADD", ABORT, BOOT_TIMEOUT);
    let booted = chv.elapsed();
    chv.check(
        chv.stdout().contains("CPU-POSSIBLE=0-1 CPU-ONLINE=0"),
        "2 possible CPUs, 1 online at boot",
    );

    let (st, text) = resize(&sock, r#"{"desired_vcpus":2}"#);
    chv.check(st == 204, &format!("resize to 2: {st} {text}"));
    chv.expect("CPU-WAIT-REMOVE", ABORT, STEP_TIMEOUT);
    let added = chv.elapsed();
    chv.check(
        chv.stdout().contains("CPU-ADDED=0-1 nproc=2"),
        "the guest onlined the hot-added vCPU",
    );
    let (_, info) = http(&sock, "GET", "vm.info", None);
    chv.check(
        info.contains(r#""boot_vcpus":2"#),
        &format!("vm.info after resize: {info}"),
    );

    let (st, text) = resize(&sock, r#"{"desired_vcpus":1}"#);
    chv.check(st == 204, &format!("resize to 1: {st} {text}"));
    chv.expect("CPU-WAIT-READD", ABORT, STEP_TIMEOUT);
    let removed = chv.elapsed();
    chv.check(
        chv.stdout().contains("CPU-REMOVED=0 present=0"),
        "the guest offlined and ejected vCPU 1",
    );
    // The eject completed, so the next resize is accepted at once; vCPU 1
    // comes back on the fd it had before (KVM cannot destroy a vCPU).
    let (st, text) = resize(&sock, r#"{"desired_vcpus":2}"#);
    chv.check(st == 204, &format!("resize to 2 again: {st} {text}"));
    chv.expect("CPU-SCRIPT-DONE", ABORT, STEP_TIMEOUT);
    let readded = chv.elapsed();
    chv.check(
        chv.stdout().contains("CPU-READDED=0-1"),
        "the guest onlined the re-added vCPU",
    );

    let st = chv.expect_exit(Duration::from_secs(60));
    chv.assert_no_panic();
    chv.check(st.success(), &format!("chv exited with {st}"));
    eprintln!(
        "boot to script {booted:.1?}, hot-add seen {:.1?} later, removal {:.1?} later, \
         re-add {:.1?} later",
        added - booted,
        removed - added,
        readded - removed
    );
}
