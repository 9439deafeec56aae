//! Clones of one snapshot must not share their identity: each restore
//! writes a new VM generation ID and notifies the guest, whose `vmgenid`
//! driver makes Linux reseed its RNG, so two clones read different bytes
//! from `/dev/urandom`.
//!
//! Linux reseeds on a VM fork only once its RNG is initialized (before
//! that, the ID is only mixed into the input pool and the output comes
//! from the early key, the same in every clone). The kit's guest has no
//! hardware RNG, so the template is the shared base snapshot restored once
//! and made to initialize its RNG (a read of `/dev/random` runs the
//! kernel's jitter entropy collector), then snapshotted again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chv_tests::api_client::http;
use chv_tests::{Chv, Scratch};

const STEP_TIMEOUT: Duration = Duration::from_secs(120);
const ABORT: &[&str] = &["Kernel panic"];

/// Sent to a restored guest: the vmgenid driver's binding (a glob, no
/// fork), how often the kernel logged the reseed, and 16 random bytes.
const PROBE: &str = "echo VGEN-DRV /sys/bus/acpi/drivers/vmgenid/VM*; echo FORKS-BEGIN; \
     dmesg | grep -c 'virtual machine fork'; echo RND-BEGIN; od -An -tx1 -N16 /dev/urandom; \
     echo RND-END";

/// The text between the last `begin` and the `end` after it.
fn between(console: &str, begin: &str, end: &str) -> Option<String> {
    let from = console.rfind(begin)? + begin.len();
    let to = from + console[from..].find(end)?;
    Some(
        console[from..to]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(""),
    )
}

/// The template: the base snapshot with its guest RNG initialized.
fn template(dir: &Scratch) -> Option<PathBuf> {
    let sock = dir.path("template.sock");
    let mut chv = chv_tests::base_snapshot::restore(&sock, &[])?;
    chv.send_line("head -c 1 /dev/random >/dev/null; echo CRNG-READY-$((1+1))");
    chv.expect("CRNG-READY-2", ABORT, STEP_TIMEOUT);
    // Let the shell reach its read() again before the guest stops.
    std::thread::sleep(Duration::from_millis(500));
    let (st, body) = http(&sock, "PUT", "vm.pause", None);
    chv.check(st == 204, &format!("vm.pause: {st} {body}"));
    let snap = dir.path("template");
    let url = format!("{{\"destination_url\":\"file://{}\"}}", snap.display());
    let (st, body) = http(&sock, "PUT", "vm.snapshot", Some(&url));
    chv.check(st == 204, &format!("vm.snapshot: {st} {body}"));
    chv.kill();
    Some(snap)
}

/// Restores `snap`, probes the guest and returns (reseeds logged, random
/// bytes as hex).
fn clone_once(dir: &Scratch, snap: &Path, tag: &str) -> (u32, String) {
    let sock = dir.path(&format!("{tag}.sock"));
    let mut chv = Chv::spawn_with_input(&[
        "-v".to_string(),
        "--api-socket".into(),
        sock.display().to_string(),
        "--restore".into(),
        format!("source_url=file://{},resume=true", snap.display()),
    ]);
    chv_tests::base_snapshot::wait_ready(&mut chv);
    chv.send_line(PROBE);
    chv.expect("RND-END", ABORT, STEP_TIMEOUT);
    let console = chv.stdout();
    chv.check(
        console.contains("VGEN-DRV /sys/bus/acpi/drivers/vmgenid/VMGENCTR:00"),
        "the guest's vmgenid driver bound the VM generation ID device",
    );
    let forks = between(&console, "FORKS-BEGIN", "RND-BEGIN")
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or_else(|| chv.fail("no reseed count in the console"));
    let random = between(&console, "RND-BEGIN", "RND-END")
        .unwrap_or_else(|| chv.fail("no random bytes in the console"));
    chv.check(random.len() == 32, &format!("16 bytes of hex: {random:?}"));
    chv.check(
        chv.stderr().contains("new VM generation ID written"),
        "chv logged the new generation ID",
    );
    chv.kill();
    chv.assert_no_panic();
    (forks, random)
}

#[test]
fn linux_clones_of_one_snapshot_get_new_generation_ids_and_distinct_urandom() {
    let dir = Scratch::new("clone-identity");
    let Some(snap) = template(&dir) else {
        return;
    };
    let (forks_a, random_a) = clone_once(&dir, &snap, "a");
    let (forks_b, random_b) = clone_once(&dir, &snap, "b");
    assert!(
        forks_a >= 1 && forks_b >= 1,
        "each clone's kernel reseeded its RNG for a VM fork ({forks_a}, {forks_b})"
    );
    assert_ne!(
        random_a, random_b,
        "two clones of one snapshot read the same /dev/urandom bytes"
    );
    eprintln!("clone a: {random_a}, clone b: {random_b}");
}
