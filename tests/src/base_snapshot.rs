//! A snapshot of the guest kit booted to a shell that runs each line of
//! serial input, so Linux tests can start from a restore (well under a
//! second) instead of a boot (20-60 s on this host).
//!
//! The snapshot is made once per chv build and guest kit, under
//! `target/test-snapshots/`, by whichever test asks first; later tests (and
//! later test binaries) reuse it. Its VM has 1 vCPU (up to 2 by hotplug),
//! 128 MiB, the serial port on stdio and no PCI device: tests hot-add what
//! they need through the API after the restore.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::api_client::http;
use crate::{chv_bin, require_guest_kit, target_dir, Chv, GuestKit};

/// Printed by the guest's command loop once it waits for input.
pub const READY: &str = "CMD-LOOP-READY";

/// The guest's command loop: turns the console's echo off (so markers in
/// a command are not seen before they are printed), then reads a line from
/// the console and runs it. The kernel command line cannot carry the
/// quotes of `eval "$c"`, so globbing is off while `$c` is split and back
/// on for the command itself.
pub const LOOP: &str =
    "stty -echo; echo CMD-LOOP-READY; while read -r c; do set -f; eval set +f \\; $c; done";

/// A key for the files the snapshot depends on (size and mtime of each).
fn fingerprint(paths: &[&Path]) -> String {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .map(|m| format!("{:x}-{:x}", m.size(), m.mtime()))
                .unwrap_or_else(|_| "missing".into())
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Boots the kit to the command loop and snapshots it into `dir`.
fn make(kit: &GuestKit, dir: &Path) {
    let scratch = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("snapshot scratch dir");
    // In the temp dir: a socket path must fit in 108 bytes.
    let sock = std::env::temp_dir().join(format!("chv-base-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let sock_arg = sock.display().to_string();
    let mut chv = Chv::spawn(&kit.args(
        LOOP,
        &[
            "--cpus",
            "boot=1,max=2",
            "--memory",
            "size=128M",
            "--serial",
            "tty",
            "--console",
            "off",
            "--api-socket",
            &sock_arg,
        ],
    ));
    chv.expect(READY, &["Kernel panic"], Duration::from_secs(300));
    // Let the shell reach its read() before the guest stops.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        http(&sock, "PUT", "vm.pause", None).0,
        204,
        "{}",
        chv.dump()
    );
    let url = format!(
        "{{\"destination_url\":\"file://{}\"}}",
        scratch.join("snap").display()
    );
    let (status, body) = http(&sock, "PUT", "vm.snapshot", Some(&url));
    assert_eq!(status, 204, "vm.snapshot: {body}\n{}", chv.dump());
    chv.kill();
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(scratch.join("snap"), dir).expect("move the snapshot into place");
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The directory of the base snapshot, made on first use; `None` only when
/// there is no guest kit and `CHV_SKIP_LINUX=1` says to skip.
pub fn base_snapshot() -> Option<PathBuf> {
    static MADE: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    let kit = require_guest_kit()?;
    let cell = MADE.get_or_init(|| Mutex::new(None));
    let mut made = cell.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = made.as_ref() {
        return Some(dir.clone());
    }
    let key = fingerprint(&[&chv_bin(), &kit.kernel, &kit.initramfs]);
    let root = target_dir().join("test-snapshots");
    std::fs::create_dir_all(&root).expect("target/test-snapshots");
    let dir = root.join(format!("base-{key}"));
    // Test binaries may run at the same time (two `cargo test`s): one
    // makes the snapshot, the others wait for it.
    let lock = std::fs::File::create(root.join("lock")).expect("snapshot lock file");
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    if !dir.join("state.json").is_file() {
        let started = std::time::Instant::now();
        make(&kit, &dir);
        // Snapshots of older builds are of no use any more.
        for old in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let path = old.path();
            let stale = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("base-") && path != dir && !n.contains(".tmp"));
            if stale {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        eprintln!(
            "made the base snapshot {} in {:?}",
            dir.display(),
            started.elapsed()
        );
    }
    *made = Some(dir.clone());
    Some(dir)
}

/// The chv arguments that restore the base snapshot with an API socket at
/// `sock`, followed by `extra`; start chv with [`Chv::spawn_with_input`].
pub fn restore_args(sock: &Path, extra: &[String]) -> Option<Vec<String>> {
    let base = base_snapshot()?;
    let mut args = vec![
        "--api-socket".to_string(),
        sock.display().to_string(),
        "--restore".into(),
        format!("source_url=file://{},resume=true", base.display()),
    ];
    args.extend_from_slice(extra);
    Some(args)
}

/// Restores the base snapshot in a new chv with an API socket at `sock`
/// and serial input from [`Chv::send_line`]; returns once the guest runs
/// commands ([`wait_ready`]). `extra` goes on the chv command line.
pub fn restore(sock: &Path, extra: &[String]) -> Option<Chv> {
    let mut chv = Chv::spawn_with_input(&restore_args(sock, extra)?);
    wait_ready(&mut chv);
    Some(chv)
}

/// Waits until a restored guest answers a probe command on its console
/// (the probe is sent again every few seconds, so input the guest missed
/// while it resumed cannot stall a test); fails the test after a minute.
pub fn wait_ready(chv: &mut Chv) {
    const ANSWER: &str = "CMD-PROBE-42";
    for _ in 0..20 {
        // An empty line first ends any partial line the guest holds.
        chv.send_line("");
        chv.send_line("echo CMD-PROBE-$((40+2))");
        let seen = chv.wait_until(Duration::from_secs(3), "probe answer", |c| {
            (c.count(ANSWER) > 0).then_some(())
        });
        if seen.is_ok() {
            return;
        }
    }
    chv.fail("the restored guest does not answer on its serial console");
}
