//! Snapshot and restore of a running Linux guest, end to end (one boot of
//! the guest kit, then restores that take well under a second each).
//!
//! The guest draws a random nonce into a shell variable (guest RAM) and
//! runs a counter that prints `TICK <n> <nonce> <first line of /dev/vda>`
//! once a second, dropping the page cache before each read so every tick
//! really reads the disk through virtio-blk.
//!
//! - The host pauses the VM, snapshots it, kills chv and rewrites the disk.
//! - A new chv restores the snapshot (lazy memory): `vm.info` says Paused,
//!   then Running after `vm.resume`; the counter continues past where it
//!   stopped with the same nonce (no reboot: no second `GUEST-READY`), and
//!   the next ticks show the rewritten disk line (disk I/O after restore).
//! - Before resuming, that restored VM is snapshotted again. A third chv
//!   restores the first snapshot again, with `prefault=on,resume=true`,
//!   and a fourth restores the second snapshot: both continue the same way.
//! - Between the snapshot and the restores, the running guest migrates
//!   live to a second chv (`vm.receive-migration` / `vm.send-migration`
//!   over a Unix socket): the source exits 0, the counter goes on at the
//!   destination with the same nonce and reads the disk rewritten there.
//! - Broken snapshots (truncated state file, a newer format version, a
//!   truncated memory file, a missing directory) make chv exit 1 with a
//!   one-line error naming the problem, without starting a guest.

use std::path::Path;
use std::time::{Duration, Instant};

use chv_tests::api_client::http;
use chv_tests::ticker::{first_tick, last_tick};
use chv_tests::{open_tap, require_guest_kit, run_to_exit, Chv, Scratch};

/// Time to the guest's first tick: Linux boots take 20-60 s here.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Time for a restored guest to print new ticks.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// Console text that ends a wait early as a failure.
const ABORT: &[&str] = &["Kernel panic", "GUEST-CMD-EXIT"];

/// The guest's counter. Only shell builtins run per tick except `sleep`.
const GUEST_SCRIPT: &str = "N=$(cat /proc/sys/kernel/random/uuid); i=0; \
     while true; do i=$((i+1)); echo 3 > /proc/sys/vm/drop_caches; \
     read -r L < /dev/vda; echo TICK $i $N $L; sleep 1; done";

const DISK_BEFORE: &str = "DISK-BEFORE-SNAPSHOT";
const DISK_AFTER: &str = "DISK-AFTER-RESTORE";

/// A 1 MiB raw disk whose first line is `line`.
fn write_disk(path: &Path, line: &str) {
    let mut data = vec![0u8; 1 << 20];
    data[..line.len()].copy_from_slice(line.as_bytes());
    data[line.len()] = b'\n';
    std::fs::write(path, data).expect("write disk");
}

/// Every complete `TICK <n> <nonce> <disk line>` line the console shows,
/// in order (a pause can stop the guest in the middle of a line).
fn ticks(console: &str) -> Vec<(u64, String, String)> {
    let complete = console.rfind('\n').map_or("", |end| &console[..end]);
    complete
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("TICK ")? + 5..];
            let mut it = rest.split_whitespace();
            let n = it.next()?.parse().ok()?;
            let nonce = it.next()?.to_string();
            let disk = it.next().unwrap_or("").to_string();
            Some((n, nonce, disk))
        })
        .collect()
}

/// Whether `next`, the first complete tick after a pause, continues from
/// `last`, the last complete one before it: the pause may have split the
/// line of tick `last + 1`, which then completes after the restore.
fn follows(last: u64, next: u64) -> bool {
    next == last + 1 || next == last + 2
}

/// The `"state"` of `vm.info`.
fn vm_state(sock: &Path) -> String {
    let (status, body) = http(sock, "GET", "vm.info", None);
    assert_eq!(status, 200, "vm.info: {body}");
    let at = body.find("\"state\":\"").expect("state in vm.info") + 9;
    body[at..].split('"').next().unwrap_or_default().to_string()
}

/// Restores `snap` in a new chv with `--restore <opts>`; resumes it
/// through the API unless the options resume it; checks the counter goes
/// on with `nonce` past `last` and reads [`DISK_AFTER`]. Returns the time
/// from starting chv to `vm.info` answering Running (with the API round
/// trips of a debug build).
fn restore_and_check(
    dir: &Scratch,
    tag: &str,
    snap: &Path,
    opts: &str,
    nonce: &str,
    last: u64,
    resnapshot: Option<&Path>,
) -> Duration {
    let sock = dir.path(&format!("{tag}.sock"));
    let resumes = opts.contains("resume=true");
    let started = Instant::now();
    let mut chv = Chv::spawn(&[
        "--api-socket".to_string(),
        sock.display().to_string(),
        "--restore".into(),
        format!("source_url=file://{}{opts}", snap.display()),
        "-v".into(),
    ]);
    if !resumes {
        assert_eq!(vm_state(&sock), "Paused", "{}", chv.dump());
        if let Some(again) = resnapshot {
            // The restored VM, still paused, can be snapshotted again (its
            // memory is the lazily mapped file of the first snapshot).
            let url = format!("{{\"destination_url\":\"file://{}\"}}", again.display());
            let (status, body) = http(&sock, "PUT", "vm.snapshot", Some(&url));
            assert_eq!(
                status,
                204,
                "snapshot of the restored VM: {body}\n{}",
                chv.dump()
            );
        }
        let (status, body) = http(&sock, "PUT", "vm.resume", None);
        assert_eq!(status, 204, "vm.resume: {body}");
    }
    assert_eq!(vm_state(&sock), "Running");
    let running = started.elapsed();
    chv.expect(DISK_AFTER, ABORT, STEP_TIMEOUT);
    // Two more ticks, so the counter is seen advancing on the new host.
    let seen = ticks(&chv.stdout()).len();
    chv.wait_until(STEP_TIMEOUT, "two more ticks", |c| {
        (ticks(&c.stdout_text()).len() >= seen + 2).then_some(())
    })
    .unwrap_or_else(|e| chv.fail(&format!("the restored counter stopped: {e}")));
    let after = ticks(&chv.stdout());
    chv.check(
        after.iter().all(|(_, n, _)| n == nonce),
        &format!("{tag}: the nonce changed (the guest rebooted or lost RAM)"),
    );
    chv.check(
        after.first().is_some_and(|(n, _, _)| follows(last, *n)),
        &format!("{tag}: the counter did not continue from {last}: {after:?}"),
    );
    chv.check(
        after.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        &format!("{tag}: ticks are not consecutive: {after:?}"),
    );
    chv.check(
        !chv.stdout().contains("GUEST-READY"),
        &format!("{tag}: the guest booted again"),
    );
    let (status, body) = http(&sock, "PUT", "vmm.shutdown", None);
    assert_eq!(status, 204, "vmm.shutdown: {body}");
    chv.expect_exit(Duration::from_secs(30));
    chv.assert_no_panic();
    running
}

#[test]
fn linux_snapshot_restore_continues_the_guest() {
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let dir = Scratch::new("snap-linux");
    let sock = dir.path("api.sock");
    let disk = dir.path("disk.raw");
    let snap = dir.path("snap");
    write_disk(&disk, DISK_BEFORE);
    let disk_arg = format!("path={}", disk.display());
    let mut chv = Chv::spawn(&kit.args(
        GUEST_SCRIPT,
        &[
            "--memory",
            "size=256M",
            "--serial",
            "tty",
            "--console",
            "off",
            "--disk",
            &disk_arg,
            "--api-socket",
            &sock.display().to_string(),
            "-v",
        ],
    ));
    chv.expect("TICK 3 ", ABORT, BOOT_TIMEOUT);
    let (status, body) = http(&sock, "PUT", "vm.pause", None);
    assert_eq!(status, 204, "vm.pause: {body}");
    let before = ticks(&chv.stdout());
    let (last, nonce, line) = before.last().cloned().expect("ticks before the pause");
    assert_eq!(line, DISK_BEFORE);
    // Paused: the counter holds still.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        ticks(&chv.stdout()).len(),
        before.len(),
        "paused guest kept ticking"
    );

    let url = format!("{{\"destination_url\":\"file://{}\"}}", snap.display());
    let t = Instant::now();
    let (status, body) = http(&sock, "PUT", "vm.snapshot", Some(&url));
    eprintln!("vm.snapshot (256 MiB guest) took {:?}", t.elapsed());
    assert_eq!(status, 204, "vm.snapshot: {body}\n{}", chv.dump());
    // A snapshot needs a paused VM.
    let (status, _) = http(&sock, "PUT", "vm.resume", None);
    assert_eq!(status, 204);
    let (status, body) = http(&sock, "PUT", "vm.snapshot", Some(&url));
    assert_eq!(status, 405, "snapshot of a running VM: {body}");

    // Live migration of the running guest to a second chv.
    let dsock = dir.path("dest.sock");
    let msock = dir.path("migration.sock");
    let mut dest = Chv::spawn(&[
        "--api-socket".to_string(),
        dsock.display().to_string(),
        "-v".into(),
    ]);
    let receiver = {
        let (dsock, msock) = (dsock.clone(), msock.clone());
        std::thread::spawn(move || {
            let body = format!("{{\"receiver_url\":\"unix:{}\"}}", msock.display());
            http(&dsock, "PUT", "vm.receive-migration", Some(&body))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !msock.exists() {
        assert!(Instant::now() < deadline, "the receiver never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let body = format!("{{\"destination_url\":\"unix:{}\"}}", msock.display());
    let t = Instant::now();
    let (status, answer) = http(&sock, "PUT", "vm.send-migration", Some(&body));
    eprintln!("vm.send-migration took {:?}", t.elapsed());
    assert_eq!(
        status,
        204,
        "vm.send-migration: {answer}\n{}\n{}",
        chv.dump(),
        dest.dump()
    );
    let (status, answer) = receiver.join().expect("receiver thread");
    assert_eq!(
        status,
        204,
        "vm.receive-migration: {answer}\n{}",
        dest.dump()
    );
    let exit = chv.expect_exit(Duration::from_secs(30));
    assert!(
        exit.success(),
        "the source exited with {exit:?}\n{}",
        chv.dump()
    );
    let migrated_at = ticks(&chv.stdout()).last().map_or(0, |t| t.0);
    eprintln!(
        "source log: {}",
        chv.stderr()
            .lines()
            .filter(|l| l.contains("migrated"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert_eq!(vm_state(&dsock), "Running");
    // The counter goes on at the destination, with the same nonce, and
    // the destination's disk I/O works (it sees the disk rewritten now).
    dest.expect("TICK ", ABORT, STEP_TIMEOUT);
    write_disk(&disk, DISK_AFTER);
    dest.expect(DISK_AFTER, ABORT, STEP_TIMEOUT);
    let moved = ticks(&dest.stdout());
    dest.check(
        moved.iter().all(|(_, n, _)| *n == nonce),
        "the nonce changed across the migration",
    );
    dest.check(
        moved
            .first()
            .is_some_and(|(n, _, _)| follows(migrated_at, *n)),
        &format!("the counter did not continue from {migrated_at}: {moved:?}"),
    );
    dest.check(
        !dest.stdout().contains("GUEST-READY"),
        "the guest booted again",
    );
    let (status, _) = http(&dsock, "PUT", "vmm.shutdown", None);
    assert_eq!(status, 204);
    dest.expect_exit(Duration::from_secs(30));
    dest.assert_no_panic();

    let snap2 = dir.path("snap2");
    let lazy = restore_and_check(&dir, "lazy", &snap, "", &nonce, last, Some(&snap2));
    eprintln!("restore (lazy) to running: {lazy:?}");
    // The same snapshot again, eagerly.
    let eager = restore_and_check(
        &dir,
        "eager",
        &snap,
        ",prefault=on,resume=true",
        &nonce,
        last,
        None,
    );
    eprintln!("restore (prefault) to running: {eager:?}");
    // The snapshot of the restored VM.
    let again = restore_and_check(&dir, "again", &snap2, ",resume=true", &nonce, last, None);
    eprintln!("restore of the second snapshot to running: {again:?}");
}

/// Runs `chv --restore` on `snap` and returns its stderr, checking it
/// exits 1 without starting a guest.
fn failing_restore(snap: &Path) -> String {
    let (status, chv) = run_to_exit(
        &[
            "--restore".to_string(),
            format!("source_url=file://{}", snap.display()),
        ],
        Duration::from_secs(30),
    );
    let status = status.expect("chv did not exit");
    assert_eq!(status.code(), Some(1), "{}", chv.dump());
    assert!(chv.stdout().is_empty(), "a guest ran: {}", chv.stdout());
    chv.stderr()
}

/// Pauses the test guest's ticker behind `sock`, snapshots it into
/// `snap` and stops chv; returns the last tick printed.
fn pause_snapshot_and_kill(chv: &mut Chv, sock: &Path, snap: &Path) -> u64 {
    assert_eq!(http(sock, "PUT", "vm.pause", None).0, 204);
    let url = format!("{{\"destination_url\":\"file://{}\"}}", snap.display());
    let (status, body) = http(sock, "PUT", "vm.snapshot", Some(&url));
    assert_eq!(status, 204, "vm.snapshot: {body}\n{}", chv.dump());
    let last = last_tick(&chv.stdout()).expect("ticks");
    chv.kill();
    last
}

/// The tiny test guest (milliseconds per run): snapshot it, restore it in
/// a new process, and the ticker goes on from where it stopped; then the
/// snapshot is broken in several ways and each restore fails cleanly.
#[test]
fn test_guest_snapshot_restore_and_broken_snapshots() {
    let dir = Scratch::new("snap-broken");
    let sock = dir.path("api.sock");
    let snap = dir.path("snap");
    let mut chv = Chv::spawn(&[
        "--kernel".to_string(),
        chv_tests::testguest().display().to_string(),
        "--cmdline".into(),
        "test=ticker".into(),
        "--memory".into(),
        "size=32M".into(),
        "--serial".into(),
        "tty".into(),
        "--api-socket".into(),
        sock.display().to_string(),
    ]);
    chv.expect("TICK 5\n", &["FAIL"], Duration::from_secs(30));
    let last = pause_snapshot_and_kill(&mut chv, &sock, &snap);

    let sock2 = dir.path("api2.sock");
    let mut restored = Chv::spawn(&[
        "--api-socket".to_string(),
        sock2.display().to_string(),
        "--restore".into(),
        format!("source_url=file://{},resume=true", snap.display()),
    ]);
    restored
        .wait_until(Duration::from_secs(30), "ticks after the restore", |c| {
            last_tick(&c.stdout_text()).filter(|n| *n > last + 3)
        })
        .unwrap_or_else(|e| restored.fail(&format!("the restored ticker did not go on: {e}")));
    let first = first_tick(&restored.stdout());
    restored.check(
        first == Some(last + 1),
        &format!("restored ticker started at {first:?}, not {}", last + 1),
    );
    restored.check(
        !restored.stdout().contains("TESTGUEST-START"),
        "the test guest started again",
    );
    assert_eq!(vm_state(&sock2), "Running");
    restored.kill();

    let state = std::fs::read(snap.join("state.json")).expect("state.json");
    let copy = |name: &str| {
        let d = dir.path(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(snap.join("memory.bin"), d.join("memory.bin")).unwrap();
        d
    };

    let truncated = copy("truncated");
    std::fs::write(truncated.join("state.json"), &state[..state.len() / 2]).unwrap();
    let err = failing_restore(&truncated);
    assert!(err.contains("truncated"), "{err}");

    let newer = copy("newer");
    let text = String::from_utf8(state.clone()).unwrap();
    let bumped = text.replacen("\"version\":1", "\"version\":99", 1);
    assert_ne!(bumped, text, "state.json has no \"version\":1");
    std::fs::write(newer.join("state.json"), bumped).unwrap();
    let err = failing_restore(&newer);
    assert!(err.contains("newer than this chv supports"), "{err}");

    let short_mem = copy("short-mem");
    std::fs::write(short_mem.join("state.json"), &state).unwrap();
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open(short_mem.join("memory.bin"))
        .unwrap();
    mem.set_len(1 << 20).unwrap();
    let err = failing_restore(&short_mem);
    assert!(err.contains("memory"), "{err}");

    let err = failing_restore(&dir.path("does-not-exist"));
    assert!(err.contains("state.json"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
}

/// A restore re-attaches a network device to tap fds it is handed
/// (`net_fds`, as Cloud Hypervisor's `--restore`) instead of the tap the
/// snapshot names; the REST API refuses fds it cannot carry.
#[test]
fn test_guest_restore_reattaches_the_nic_to_new_tap_fds() {
    use std::os::fd::AsRawFd;
    let dir = Scratch::new("snap-netfds");
    let sock = dir.path("api.sock");
    let snap = dir.path("snap");
    let ns = chv_tests::netns::NetNs::new("snap");
    let mut chv = ns.spawn_chv(&[
        "--kernel".to_string(),
        chv_tests::testguest().display().to_string(),
        "--cmdline".into(),
        "test=ticker".into(),
        "--memory".into(),
        "size=32M".into(),
        "--serial".into(),
        "tty".into(),
        "--net".into(),
        "tap=chvsnapa0".into(),
        "--api-socket".into(),
        sock.display().to_string(),
    ]);
    chv.expect("TICK 3\n", &["FAIL"], Duration::from_secs(30));
    let last = pause_snapshot_and_kill(&mut chv, &sock, &snap);

    let tap = ns.run(|| open_tap("chvsnapb0"));
    let sock2 = dir.path("api2.sock");
    let mut restored = ns.spawn_chv(&[
        "--api-socket".to_string(),
        sock2.display().to_string(),
        "--restore".into(),
        format!(
            "source_url=file://{},resume=true,net_fds=[_net0@[{}]]",
            snap.display(),
            tap.as_raw_fd()
        ),
        "-v".into(),
    ]);
    restored
        .wait_until(Duration::from_secs(30), "ticks after the restore", |c| {
            last_tick(&c.stdout_text()).filter(|n| *n > last + 2)
        })
        .unwrap_or_else(|e| restored.fail(&format!("the restored ticker did not go on: {e}")));
    restored.check(
        restored.stderr().contains("_net0: tap chvsnapb0"),
        "the NIC uses the tap fd it was given",
    );
    let (_, info) = http(&sock2, "GET", "vm.info", None);
    restored.check(
        !info.contains("chvsnapa0"),
        &format!("vm.info still names the old tap: {info}"),
    );
    let body = format!(
        "{{\"source_url\":\"file://{}\",\"net_fds\":[{{\"id\":\"_net0\",\"num_fds\":1,\"fds\":[3]}}]}}",
        snap.display()
    );
    let (status, answer) = http(&sock2, "PUT", "vm.restore", Some(&body));
    assert_eq!(status, 400, "vm.restore with fds: {answer}");
    assert!(answer.contains("net_fds"), "{answer}");
    restored.kill();
}
