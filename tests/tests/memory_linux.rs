//! Guest RAM backings end to end: the Linux guest kit booted with RAM in
//! two zones, `mem0` a shared memfd and `mem1` a shared, prefaulted
//! user file (`--memory size=0 --memory-zone ...`).
//!
//! One boot checks:
//! - a second host process (this test) opens chv's memfd through /proc,
//!   maps it and finds a pattern the guest wrote into a tmpfs file, in
//!   the memfd or the zone file;
//! - it overwrites the pattern in the mapping and the guest reads the new
//!   bytes from its file (the same pages, both ways);
//! - `mem1`'s mapping is populated (prefault) and shared, `mem0`'s is not
//!   populated. (`mergeable=on` is refused on shared RAM, which KSM
//!   ignores: `config::memory` tests that.)
//!
//! A missing guest kit fails these tests unless `CHV_SKIP_LINUX=1`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chv_tests::{require_guest_kit, Chv, Scratch};

#[path = "memory_linux/support.rs"]
mod support;
use support::*;

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const ABORT: &[&str] = &["Kernel panic"];
const MIB: usize = 1 << 20;

/// The pattern the guest writes: the shell computes it, so the command
/// line (also in guest RAM) does not contain it.
const PATTERN: &[u8] = b"CHVPAT777777777";
/// What the host writes over it (same length).
const HOST_PATTERN: &[u8] = b"CHVHOST88888888";

/// A shared read-write mapping of a whole file, unmapped on drop.
struct SharedMap {
    ptr: *mut u8,
    len: usize,
}

impl SharedMap {
    fn new(file: &File) -> SharedMap {
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: maps `len` bytes of an open file; the mapping is only
        // used through `bytes()` while `self` lives.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        SharedMap {
            ptr: ptr.cast(),
            len,
        }
    }

    #[allow(clippy::mut_from_ref)]
    fn bytes(&self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes and lives as long as `self`;
        // the guest writes it concurrently, which only changes the bytes
        // read.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Overwrites every occurrence of `from` with `to`; returns how many.
    fn replace(&self, from: &[u8], to: &[u8]) -> usize {
        let bytes = self.bytes();
        let mut count = 0;
        let mut i = 0;
        while i + from.len() <= bytes.len() {
            if &bytes[i..i + from.len()] == from {
                bytes[i..i + to.len()].copy_from_slice(to);
                count += 1;
                i += from.len();
            } else {
                i += 1;
            }
        }
        count
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping `new` created.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// chv's guest-RAM memfd, opened through /proc/PID/fd.
fn open_memfd(pid: u32) -> File {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Ok(link) = std::fs::read_link(&path) else {
            continue;
        };
        if link.to_string_lossy().starts_with("/memfd:chv-guest-ram") {
            return std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
        }
    }
    panic!("chv (pid {pid}) has no chv-guest-ram memfd");
}

/// (Rss in KiB, VmFlags) of chv's mappings of `file`, summed over them.
fn mapping_of(pid: u32, file: &Path) -> (u64, String) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let name = file.display().to_string();
    let mut rss = 0;
    let mut flags = String::new();
    let mut inside = false;
    for line in smaps.lines() {
        let is_header = line
            .split_whitespace()
            .next()
            .is_some_and(|range| range.contains('-') && !range.ends_with(':'));
        if is_header {
            inside = line.ends_with(&name);
        } else if inside {
            if let Some(kib) = line.strip_prefix("Rss:") {
                rss += kib
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            } else if let Some(f) = line.strip_prefix("VmFlags:") {
                flags = f.trim().to_owned();
            }
        }
    }
    (rss, flags)
}

#[test]
fn shared_zones_are_seen_by_another_process_both_ways() {
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let scratch = Scratch::new("memory-linux");
    let zone_file = scratch.path("zone1");
    let guest_cmd = "P=CHVPAT$((7*111111111)); echo $P > /tmp/p; echo CHK-WROTE; \
                     while read -r L </tmp/p; [ ${L#CHVHOST} = $L ]; do sleep 1; done; \
                     echo CHK-SEEN:$L:SEEN-END";
    let cmdline = format!("console=ttyS0 quiet panic=-1 guest_cmd=\"{guest_cmd}\"");
    let args: Vec<String> = vec![
        "--kernel".into(),
        kit.kernel.display().to_string(),
        "--initramfs".into(),
        kit.initramfs.display().to_string(),
        "--cmdline".into(),
        cmdline,
        "--memory".into(),
        "size=0".into(),
        "--memory-zone".into(),
        "id=mem0,size=96M,shared=on".into(),
        format!(
            "id=mem1,size=32M,file={},shared=on,prefault=on",
            zone_file.display()
        ),
        "--serial".into(),
        "tty".into(),
    ];
    File::create(&zone_file).unwrap();
    let mut chv = Chv::spawn(&args);
    chv.expect("CHK-WROTE", ABORT, BOOT_TIMEOUT);
    let pid = chv.pid();

    let (rss1, flags1) = mapping_of(pid, &zone_file);
    chv.check(
        rss1 >= 32 << 10,
        &format!("mem1 (prefault=on) is populated: Rss {rss1} KiB, want 32768"),
    );
    chv.check(
        flags1.split(' ').any(|f| f == "sh"),
        &format!("mem1 is shared: VmFlags {flags1}"),
    );

    let memfd = open_memfd(pid);
    chv.check(
        memfd.metadata().unwrap().len() == (96 * MIB) as u64,
        "the memfd holds mem0's 96 MiB",
    );
    let mem0 = SharedMap::new(&memfd);
    let mem1 = SharedMap::new(
        &File::options()
            .read(true)
            .write(true)
            .open(&zone_file)
            .unwrap(),
    );
    let in0 = mem0.replace(PATTERN, HOST_PATTERN);
    let in1 = mem1.replace(PATTERN, HOST_PATTERN);
    eprintln!("pattern found {in0}x in the memfd, {in1}x in the zone file");
    chv.check(
        in0 + in1 > 0,
        "the guest's pattern is in the memfd or the zone file",
    );
    // The line ends in a marker: the serial console delivers it a byte at
    // a time, so matching only its start may see the tag without the value.
    chv.expect(":SEEN-END", ABORT, Duration::from_secs(60));
    chv.check(
        chv.stdout().contains("CHK-SEEN:CHVHOST88888888:SEEN-END"),
        "the guest reads what the host wrote into its pages",
    );
    chv.expect("GUEST-POWEROFF", ABORT, Duration::from_secs(60));
    let st = chv.expect_exit(Duration::from_secs(60));
    chv.assert_no_panic();
    chv.check(st.code() == Some(0), &format!("chv exit status {st}"));
}

/// ACPI memory hotplug (Kata's `clh` path: `memory.hotplug_size`, then
/// `vm.resize desired_ram`) together with a balloon, in one VM (issue #13):
/// one boot of the guest kit at its command loop with 128 MiB, 384 MiB of
/// hotplug room and `--balloon size=0` checks that
/// - bad `desired_ram` values are refused naming the field (above
///   size + hotplug_size, below the current size, not 128 MiB granular);
/// - `desired_ram` = 384 MiB answers 204, `vm.info` reports the new
///   `config.memory.size` and `memory_actual_size`, and the guest's
///   `MemTotal` grows by about 256 MiB (Linux onlines the new range);
/// - inflating the balloon by 32 MiB (`desired_balloon`) on top of the
///   hot-added memory lowers `MemTotal` by 32 MiB, and `vm.info`'s
///   `memory_actual_size` (RAM less the balloon) becomes 352 MiB while
///   `config.memory.size` stays 384 MiB; `vm.counters` reports the
///   balloon's 32 MiB;
/// - a snapshot of the grown, ballooned VM restores in a new chv with the
///   same `MemTotal`, `config.memory.size` 384 MiB, `balloon.size` 32 MiB
///   and `memory_actual_size` 352 MiB;
/// - deflating after the restore gives `MemTotal` back its grown value,
///   and a further resize (one more 128 MiB range) still works.
#[test]
fn acpi_hotplug_and_balloon_survive_snapshot_restore() {
    use chv_tests::api_client::http;
    use chv_tests::base_snapshot::READY;
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let scratch = Scratch::new("memory-acpi");
    let api = scratch.path("api.sock");
    let mut chv = spawn_loop_guest(
        &kit,
        &[
            "--memory",
            "size=128M,hotplug_size=384M",
            "--balloon",
            "size=0",
        ],
        &api,
    );
    chv.expect(READY, ABORT, BOOT_TIMEOUT);
    chv.send_line(&memtotal_cmd("CHK-MEM0"));
    chv.expect("CHK-MEM0-END", ABORT, Duration::from_secs(30));
    let before = printed_kib(&chv, "CHK-MEM0");

    let resize = |ram: u64| {
        http(
            &api,
            "PUT",
            "vm.resize",
            Some(&format!(r#"{{"desired_ram":{ram}}}"#)),
        )
    };
    let balloon = |bytes: u64| {
        http(
            &api,
            "PUT",
            "vm.resize",
            Some(&format!(r#"{{"desired_balloon":{bytes}}}"#)),
        )
    };
    for (ram, what) in [
        (1024 * MIB as u64, "must not exceed size + hotplug_size"),
        (64 * MIB as u64, "ACPI memory hotplug cannot remove memory"),
        (200 * MIB as u64, "must be a multiple of 128 MiB"),
    ] {
        let (status, body) = resize(ram);
        chv.check(
            status == 400 && body.contains("desired_ram") && body.contains(what),
            &format!("desired_ram={ram}: {status} {body}"),
        );
    }
    let (status, body) = resize(384 * MIB as u64);
    chv.check(status == 204, &format!("vm.resize: {status} {body}"));
    let (_, info) = http(&api, "GET", "vm.info", None);
    chv.check(
        json_section_number(&info, "memory", "size") == Some(384 * MIB as u64)
            && json_number(&info, "memory_actual_size") == Some(384 * MIB as u64),
        &format!("vm.info after the resize: {info}"),
    );

    // The guest onlines the new memory asynchronously.
    let after = wait_memtotal_above(&mut chv, before + (250 << 10) - 1, "CHK-MEM1");
    chv.check(
        after >= before + (250 << 10),
        &format!("MemTotal grows by ~256 MiB: {before} KiB -> {after} KiB"),
    );

    // Inflate the balloon by 32 MiB on top of the hot-added memory; the
    // guest inflates 1 MiB at a time: wait for all of it.
    let (status, body) = balloon(32 * MIB as u64);
    chv.check(status == 204, &format!("desired_balloon: {status} {body}"));
    let inflated = wait_memtotal_below(&mut chv, after - (32 << 10) + 1, "CHK-MEM1B");
    chv.check(
        after - inflated >= 32 << 10,
        &format!("MemTotal drops by 32 MiB: {after} -> {inflated} KiB"),
    );
    // The guest writes the balloon's `actual` after each 1 MiB it
    // inflates, so the API may lag a moment.
    let actual = wait_actual_size(&api, 352 * MIB as u64);
    chv.check(
        actual == Some(352 * MIB as u64),
        &format!("vm.info memory_actual_size after inflating: {actual:?}"),
    );
    let (_, info) = http(&api, "GET", "vm.info", None);
    chv.check(
        json_section_number(&info, "memory", "size") == Some(384 * MIB as u64)
            && json_section_number(&info, "balloon", "size") == Some(32 * MIB as u64),
        &format!("vm.info config after inflating: {info}"),
    );
    let (_, counters) = http(&api, "GET", "vm.counters", None);
    chv.check(
        json_number(&counters, "actual_bytes") == Some(32 * MIB as u64),
        &format!("vm.counters balloon size after inflating: {counters}"),
    );

    // Snapshot and restore the grown, ballooned VM.
    let mut chv = snapshot_and_restore(chv, &api, &scratch);
    chv.send_line(&memtotal_cmd("CHK-MEM2"));
    chv.expect("CHK-MEM2-END", ABORT, Duration::from_secs(30));
    let restored = printed_kib(&chv, "CHK-MEM2");
    chv.check(
        restored == inflated,
        &format!("MemTotal after the restore: {restored} KiB, before {inflated} KiB"),
    );
    let (_, info) = http(&api, "GET", "vm.info", None);
    chv.check(
        json_section_number(&info, "memory", "size") == Some(384 * MIB as u64)
            && json_section_number(&info, "balloon", "size") == Some(32 * MIB as u64)
            && json_number(&info, "memory_actual_size") == Some(352 * MIB as u64),
        &format!("vm.info after the restore: {info}"),
    );
    let (_, counters) = http(&api, "GET", "vm.counters", None);
    chv.check(
        json_number(&counters, "actual_bytes") == Some(32 * MIB as u64),
        &format!("vm.counters balloon size after the restore: {counters}"),
    );

    // Deflate: the guest gets the grown size back.
    let (status, body) = balloon(0);
    chv.check(status == 204, &format!("deflate: {status} {body}"));
    let deflated = wait_memtotal_above(&mut chv, after - 1, "CHK-MEM2D");
    chv.check(
        deflated == after,
        &format!("deflating gives the memory back: {restored} -> {deflated} KiB (was {after})"),
    );
    let actual = wait_actual_size(&api, 384 * MIB as u64);
    chv.check(
        actual == Some(384 * MIB as u64),
        &format!("vm.info memory_actual_size after deflating: {actual:?}"),
    );

    // The restored VM keeps its slots: one more 128 MiB range.
    let (status, body) = resize(512 * MIB as u64);
    chv.check(
        status == 204,
        &format!("vm.resize after restore: {status} {body}"),
    );
    let last = wait_memtotal_above(&mut chv, deflated + (120 << 10) - 1, "CHK-MEM3");
    chv.check(
        last >= deflated + (120 << 10),
        &format!("MemTotal grows again after the restore: {deflated} KiB -> {last} KiB"),
    );
    eprintln!(
        "MemTotal KiB: boot {before}, grown {after}, ballooned {inflated}, restored {restored}, \
         deflated {deflated}, grown again {last}"
    );
    chv.kill();
    chv.assert_no_panic();
}

/// virtio-balloon end to end, one boot of the guest kit at its command
/// loop with 256 MiB and `--balloon size=0,free_page_reporting=on`:
/// - free page reporting: the guest touches 64 MiB (`dd` with a 64 MiB
///   buffer) and frees it; chv's RSS then drops from its peak by most of
///   it, and `vm.counters` reports the bytes under `balloon`;
/// - `desired_balloon` = 32 MiB lowers the guest's `MemTotal` by 32 MiB,
///   and `vm.info`'s `memory_actual_size` and the counters follow; the
///   guest's statistics (`total_memory`) appear in `vm.counters`;
/// - bad `desired_balloon` values are refused naming the field;
/// - a snapshot with the inflated balloon restores with the same
///   `MemTotal` and balloon size, and deflating it after the restore gives
///   the guest its memory back.
#[test]
fn balloon_reports_free_pages_inflates_and_survives_snapshot_restore() {
    use chv_tests::api_client::http;
    use chv_tests::base_snapshot::{wait_ready, READY};
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let scratch = Scratch::new("memory-balloon");
    let api = scratch.path("api.sock");
    let mut chv = spawn_loop_guest(
        &kit,
        &[
            "--memory",
            "size=256M",
            "--balloon",
            "size=0,free_page_reporting=on",
        ],
        &api,
    );
    chv.expect(READY, ABORT, BOOT_TIMEOUT);
    let pid = chv.pid();
    // Let the boot's own freed pages be reported first.
    std::thread::sleep(Duration::from_secs(5));
    let (rss0, _) = rss_kib(pid);

    let started = std::time::Instant::now();
    chv.send_line("dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; echo CHK-TOUCHED-END");
    chv.expect("CHK-TOUCHED-END", ABORT, Duration::from_secs(480));
    eprintln!("touching 64 MiB took {:?}", started.elapsed());
    let mut low = u64::MAX;
    let mut peak = 0;
    for _ in 0..30 {
        let (rss, hwm) = rss_kib(pid);
        (low, peak) = (low.min(rss), hwm);
        if peak.saturating_sub(low) >= 48 << 10 {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("chv RSS: before {rss0} KiB, peak {peak} KiB, after {low} KiB");
    chv.check(
        peak >= rss0 + (48 << 10),
        &format!("the guest's 64 MiB show in chv's RSS: {rss0} -> peak {peak} KiB"),
    );
    chv.check(
        peak.saturating_sub(low) >= 48 << 10,
        &format!("free page reporting gives most of it back: peak {peak} -> {low} KiB"),
    );
    let (_, counters) = http(&api, "GET", "vm.counters", None);
    chv.check(
        json_number(&counters, "reported_bytes").is_some_and(|b| b >= 48 << 20),
        &format!("vm.counters reports the freed pages: {counters}"),
    );

    chv.send_line(&memtotal_cmd("CHK-B0"));
    chv.expect("CHK-B0-END", ABORT, Duration::from_secs(30));
    let full = printed_kib(&chv, "CHK-B0");
    let balloon = |bytes: u64| {
        http(
            &api,
            "PUT",
            "vm.resize",
            Some(&format!(r#"{{"desired_balloon":{bytes}}}"#)),
        )
    };
    for bytes in [(256 * MIB + 4096) as u64, 1000] {
        let (status, body) = balloon(bytes);
        chv.check(
            status == 400 && body.contains("desired_balloon"),
            &format!("desired_balloon={bytes}: {status} {body}"),
        );
    }
    let (status, body) = balloon(32 * MIB as u64);
    chv.check(status == 204, &format!("desired_balloon: {status} {body}"));
    // The guest inflates (and deflates) 1 MiB at a time: wait for all of it.
    let inflated = wait_memtotal_below(&mut chv, full - (32 << 10) + 1, "CHK-B1");
    chv.check(
        full - inflated >= 32 << 10,
        &format!("MemTotal drops by 32 MiB: {full} -> {inflated} KiB"),
    );
    // The guest lowers MemTotal page by page and writes the balloon's
    // `actual` after each 1 MiB it inflates, so the API may lag a moment.
    let actual = wait_actual_size(&api, 224 * MIB as u64);
    chv.check(
        actual == Some(224 * MIB as u64),
        &format!("vm.info memory_actual_size after inflating: {actual:?}"),
    );
    let (_, counters) = http(&api, "GET", "vm.counters", None);
    chv.check(
        json_number(&counters, "actual_bytes") == Some(32 * MIB as u64)
            && json_number(&counters, "total_memory").is_some(),
        &format!("vm.counters balloon size and guest statistics: {counters}"),
    );

    // Snapshot and restore with the balloon inflated.
    std::thread::sleep(Duration::from_millis(500));
    let (status, body) = http(&api, "PUT", "vm.pause", None);
    chv.check(status == 204, &format!("vm.pause: {status} {body}"));
    let snap = scratch.path("snap");
    let url = format!(r#"{{"destination_url":"file://{}"}}"#, snap.display());
    let (status, body) = http(&api, "PUT", "vm.snapshot", Some(&url));
    chv.check(status == 204, &format!("vm.snapshot: {status} {body}"));
    chv.kill();
    let _ = std::fs::remove_file(&api);
    let mut chv = Chv::spawn_with_input(&[
        "--api-socket".to_string(),
        api.display().to_string(),
        "--restore".into(),
        format!("source_url=file://{},resume=true", snap.display()),
    ]);
    wait_ready(&mut chv);
    chv.send_line(&memtotal_cmd("CHK-B2"));
    chv.expect("CHK-B2-END", ABORT, Duration::from_secs(30));
    let restored = printed_kib(&chv, "CHK-B2");
    chv.check(
        restored == inflated,
        &format!("MemTotal after the restore: {restored} KiB, before {inflated} KiB"),
    );
    let (_, info) = http(&api, "GET", "vm.info", None);
    chv.check(
        json_number(&info, "memory_actual_size") == Some(224 * MIB as u64),
        &format!("vm.info after the restore: {info}"),
    );
    let (status, body) = balloon(0);
    chv.check(status == 204, &format!("deflate: {status} {body}"));
    let deflated = wait_memtotal_above(&mut chv, full - 1, "CHK-B3");
    chv.check(
        deflated == full,
        &format!("deflating gives the memory back: {restored} -> {deflated} KiB (was {full})"),
    );
    chv.kill();
    chv.assert_no_panic();
}

/// virtio-mem (`hotplug_method=virtio-mem`): one boot of the guest kit
/// with 256 MiB, 512 MiB of region and 128 MiB plugged at boot
/// (`hotplugged_size`) checks that
/// - the boot-time part is plugged (MemTotal above 256 MiB);
/// - bad `desired_ram` values are refused naming the field (above
///   size + hotplug_size, not a whole number of 2 MiB blocks, below the
///   boot RAM);
/// - growing to 640 MiB plugs 384 MiB (`memory_actual_size`, MemTotal
///   grows) and shrinking to 384 MiB unplugs again (MemTotal falls,
///   `plugged_size` in `vm.counters` follows);
/// - a snapshot restores with the same plug state and MemTotal, and the
///   restored VM grows again;
/// - a live migration of the restored VM keeps MemTotal and the plugged
///   256 MiB (`plugged_size`), and the receiver unplugs on request.
#[test]
fn virtio_mem_grows_shrinks_and_survives_snapshot_restore_and_migration() {
    use chv_tests::api_client::http;
    use chv_tests::base_snapshot::READY;
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let scratch = Scratch::new("memory-virtio-mem");
    let api = scratch.path("api.sock");
    let mut chv = spawn_loop_guest(
        &kit,
        &[
            "--memory",
            "size=256M,hotplug_size=512M,hotplug_method=virtio-mem,hotplugged_size=128M",
        ],
        &api,
    );
    chv.expect(READY, ABORT, BOOT_TIMEOUT);
    let mib = MIB as u64;
    let boot = wait_memtotal_above(&mut chv, 300 << 10, "CHK-VM0");
    chv.check(
        boot > 300 << 10,
        &format!("hotplugged_size=128M is plugged at boot: MemTotal {boot} KiB"),
    );
    chv.check(
        wait_actual_size(&api, 384 * mib) == Some(384 * mib),
        "memory_actual_size after boot is 384 MiB",
    );
    let resize = |ram: u64| {
        http(
            &api,
            "PUT",
            "vm.resize",
            Some(&format!(r#"{{"desired_ram":{ram}}}"#)),
        )
    };
    for (ram, what) in [
        (1024 * mib, "must not exceed size + hotplug_size"),
        (385 * mib, "multiple of the virtio-mem block size"),
        (128 * mib, "below the boot RAM"),
    ] {
        let (status, body) = resize(ram);
        chv.check(
            status == 400 && body.contains("desired_ram") && body.contains(what),
            &format!("desired_ram={ram}: {status} {body}"),
        );
    }
    // Grow.
    let (status, body) = resize(640 * mib);
    chv.check(status == 204, &format!("vm.resize grow: {status} {body}"));
    let grown = wait_memtotal_above(&mut chv, boot + (250 << 10) - 1, "CHK-VM1");
    chv.check(
        grown >= boot + (250 << 10),
        &format!("MemTotal grows by ~256 MiB: {boot} KiB -> {grown} KiB"),
    );
    let actual = wait_actual_size(&api, 640 * mib);
    chv.check(
        actual == Some(640 * mib),
        &format!("memory_actual_size after the grow: {actual:?}"),
    );
    let (_, info) = http(&api, "GET", "vm.info", None);
    chv.check(
        json_number(&info, "hotplugged_size") == Some(384 * mib),
        &format!("config.memory.hotplugged_size follows desired_ram: {info}"),
    );
    // Shrink back.
    let (status, body) = resize(384 * mib);
    chv.check(status == 204, &format!("vm.resize shrink: {status} {body}"));
    wait_memtotal_below(&mut chv, grown - (200 << 10), "CHK-VM2");
    let shrunk = wait_memtotal_stable(&mut chv, "CHK-VM2S");
    chv.check(
        shrunk + (200 << 10) <= grown,
        &format!("MemTotal shrinks again: {grown} KiB -> {shrunk} KiB"),
    );
    let actual = wait_actual_size(&api, 384 * mib);
    chv.check(
        actual == Some(384 * mib),
        &format!("memory_actual_size after the shrink: {actual:?}"),
    );
    let (_, counters) = http(&api, "GET", "vm.counters", None);
    chv.check(
        json_number(&counters, "plugged_size") == Some(128 * mib)
            && json_number(&counters, "unplugs").is_some_and(|n| n > 0),
        &format!("vm.counters virtio-mem: {counters}"),
    );

    // Snapshot and restore keep the plug state.
    let mut chv = snapshot_and_restore(chv, &api, &scratch);
    let restored = wait_memtotal_stable(&mut chv, "CHK-VM3");
    let (_, counters) = http(&api, "GET", "vm.counters", None);
    chv.check(
        restored == shrunk,
        &format!("MemTotal after the restore: {restored} KiB, before {shrunk} KiB; {counters}"),
    );
    let (_, info) = http(&api, "GET", "vm.info", None);
    chv.check(
        json_number(&info, "memory_actual_size") == Some(384 * mib),
        &format!("vm.info after the restore: {info}"),
    );
    let (status, body) = resize(512 * mib);
    chv.check(
        status == 204,
        &format!("vm.resize after restore: {status} {body}"),
    );
    let last = wait_memtotal_above(&mut chv, restored + (120 << 10) - 1, "CHK-VM4");
    chv.check(
        last >= restored + (120 << 10),
        &format!("MemTotal grows again after the restore: {restored} KiB -> {last} KiB"),
    );
    wait_actual_size(&api, 512 * mib);

    // Live migration carries the plug state and the plugged memory.
    let dst_api = scratch.path("dst.sock");
    let mut dst = migrate(chv, &api, &dst_api, &scratch);
    let migrated = wait_memtotal_stable(&mut dst, "CHK-VM5");
    dst.check(
        migrated == last,
        &format!("MemTotal after the migration: {migrated} KiB, before {last} KiB"),
    );
    let (_, counters) = http(&dst_api, "GET", "vm.counters", None);
    dst.check(
        json_number(&counters, "plugged_size") == Some(256 * mib),
        &format!("the receiver's virtio-mem plug state: {counters}"),
    );
    let (status, body) = http(
        &dst_api,
        "PUT",
        "vm.resize",
        Some(&format!(r#"{{"desired_ram":{}}}"#, 384 * mib)),
    );
    dst.check(
        status == 204,
        &format!("vm.resize on the receiver: {status} {body}"),
    );
    let actual = wait_actual_size(&dst_api, 384 * mib);
    dst.check(
        actual == Some(384 * mib),
        &format!("the receiver unplugs again: memory_actual_size {actual:?}"),
    );
    dst.kill();
    dst.assert_no_panic();
}
