//! Guest RAM in huge pages through snapshot, restore and live migration
//! (tiny test guest, no Linux; a second of runtime).
//!
//! `hugepage_ram_survives_snapshot_restore_and_migration` reserves 2 MiB
//! huge pages on the host for its lifetime and starts the ticker guest with
//! `--memory size=64M,hugepages=on,hugepage_size=2M`. It checks that
//! - the guest's 64 MiB sit in a hugetlb mapping (`KernelPageSize: 2048 kB`
//!   in `/proc/PID/smaps`);
//! - a snapshot of the paused VM restores in a new chv whose RAM is again
//!   64 MiB of huge pages, and the ticker goes on from the next tick (guest
//!   memory came back, nothing rebooted);
//! - the source, resumed, live-migrates to a third chv whose RAM is huge
//!   pages too, where the ticker goes on and `vm.info` still says
//!   `hugepages: true`;
//! - with the reserved pool used up, a restore fails with an error naming
//!   `hugepages` instead of falling back to small pages.

use std::path::Path;
use std::time::Duration;

use chv_tests::api_client::http;
use chv_tests::migration::migrate_over_unix;
use chv_tests::ticker::{first_tick, last_tick};
use chv_tests::{testguest, Chv, Scratch};

const HUGEPAGE_KIB: u64 = 2048;
const NR_HUGEPAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
const FREE_HUGEPAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";
/// Guest RAM of the test, in 2 MiB pages.
const GUEST_PAGES: u64 = 32;

fn read_u64(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Adds `n` huge pages to the host's pool until dropped.
struct HugepagePool(u64);

impl HugepagePool {
    fn reserve(n: u64) -> Self {
        let now = read_u64(NR_HUGEPAGES);
        std::fs::write(NR_HUGEPAGES, format!("{}", now + n)).expect("tests run as root");
        Self(n)
    }
}

impl Drop for HugepagePool {
    fn drop(&mut self) {
        let now = read_u64(NR_HUGEPAGES);
        let _ = std::fs::write(NR_HUGEPAGES, format!("{}", now.saturating_sub(self.0)));
    }
}

/// KiB of process `pid`'s mappings backed by 2 MiB huge pages.
fn hugetlb_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let field = |line: &str, name: &str| -> Option<u64> {
        line.strip_prefix(name)?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let (mut total, mut size) = (0, 0);
    for line in smaps.lines() {
        if let Some(kib) = field(line, "Size:") {
            size = kib;
        } else if field(line, "KernelPageSize:") == Some(HUGEPAGE_KIB) {
            total += size;
        }
    }
    total
}

fn put(chv: &Chv, sock: &Path, endpoint: &str, body: Option<&str>) {
    let (status, text) = http(sock, "PUT", endpoint, body);
    chv.check(status == 204, &format!("{endpoint}: {status} {text}"));
}

/// Waits for `chv`'s ticker to pass `last` + 2 and checks that it went on
/// at `last` + 1 (not from the start; + 2 allowed with `slack`, for a
/// migration that may cut a line in two), in huge pages.
fn ticks_on_in_hugepages(chv: &Chv, last: u64, slack: bool, what: &str) {
    chv.wait_until(Duration::from_secs(30), "ticks", |c| {
        last_tick(&c.stdout_text()).filter(|n| *n > last + 2)
    })
    .unwrap_or_else(|e| chv.fail(&format!("{what}: the ticker did not go on: {e}")));
    let first = first_tick(&chv.stdout());
    chv.check(
        first == Some(last + 1) || (slack && first == Some(last + 2)),
        &format!("{what}: the ticker went on at {first:?}, not {}", last + 1),
    );
    let kib = hugetlb_kib(chv.pid());
    chv.check(
        kib >= GUEST_PAGES * HUGEPAGE_KIB,
        &format!("{what}: {kib} KiB in huge pages, not the guest's 64 MiB"),
    );
}

#[test]
fn hugepage_ram_survives_snapshot_restore_and_migration() {
    // Source, restored copy and receiver overlap two at a time.
    let _pool = HugepagePool::reserve(2 * GUEST_PAGES + 2);
    assert!(
        read_u64(FREE_HUGEPAGES) >= 2 * GUEST_PAGES,
        "could not reserve {} huge pages",
        2 * GUEST_PAGES
    );
    let dir = Scratch::new("hugepages");
    let sock = dir.path("src.sock");
    let snap = dir.path("snap");
    let mut src = Chv::spawn(&[
        "--kernel".to_string(),
        testguest().display().to_string(),
        "--cmdline".into(),
        "test=ticker".into(),
        "--memory".into(),
        "size=64M,hugepages=on,hugepage_size=2M".into(),
        "--serial".into(),
        "tty".into(),
        "--console".into(),
        "off".into(),
        "--api-socket".into(),
        sock.display().to_string(),
    ]);
    src.expect("TICK 3\n", &["FAIL"], Duration::from_secs(30));
    let kib = hugetlb_kib(src.pid());
    src.check(
        kib >= GUEST_PAGES * HUGEPAGE_KIB,
        &format!("the source has {kib} KiB in huge pages, not 64 MiB"),
    );

    // Snapshot, then restore in a new chv while the source waits paused.
    put(&src, &sock, "vm.pause", None);
    let url = format!(r#"{{"destination_url":"file://{}"}}"#, snap.display());
    put(&src, &sock, "vm.snapshot", Some(&url));
    let last = last_tick(&src.stdout()).unwrap_or_else(|| src.fail("no ticks"));
    let restore = format!("source_url=file://{},resume=true", snap.display());
    let mut restored = Chv::spawn(&[
        "--api-socket",
        &dir.path("restored.sock").display().to_string(),
        "--restore",
        &restore,
    ]);
    ticks_on_in_hugepages(&restored, last, false, "restored");

    // Both copies hold the pool now: one more restore finds no huge pages
    // and says so.
    let mut starved = Chv::spawn(&["--restore", &restore]);
    let exit = starved.expect_exit(Duration::from_secs(30));
    let err = starved.stderr();
    starved.check(
        !exit.success() && err.contains("hugepages"),
        &format!("a restore without free huge pages exited {exit}: {err}"),
    );
    restored.kill();
    restored.assert_no_panic();

    // Live migration of the resumed source.
    put(&src, &sock, "vm.resume", None);
    src.wait_until(Duration::from_secs(30), "ticks after resume", |c| {
        last_tick(&c.stdout_text()).filter(|n| *n > last)
    })
    .unwrap_or_else(|e| src.fail(&format!("the resumed source: {e}")));
    let dst_sock = dir.path("dst.sock");
    let mut dst = Chv::spawn(&["--api-socket", &dst_sock.display().to_string()]);
    migrate_over_unix(&mut src, &sock, &dst, &dst_sock, &dir.path("mig.sock"));
    let moved = last_tick(&src.stdout()).unwrap_or(last);
    ticks_on_in_hugepages(&dst, moved, true, "migrated");
    let (_, info) = http(&dst_sock, "GET", "vm.info", None);
    dst.check(
        info.contains(r#""hugepages":true"#),
        &format!("the receiver's vm.info: {info}"),
    );
    put(&dst, &dst_sock, "vmm.shutdown", None);
    let exit = dst.expect_exit(Duration::from_secs(30));
    dst.check(exit.success(), &format!("the receiver exited with {exit}"));
    dst.assert_no_panic();
    src.assert_no_panic();
}
