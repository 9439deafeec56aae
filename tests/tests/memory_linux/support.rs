//! What the memory_linux tests share: reading the guest's MemTotal at its
//! command loop, numbers in vm.info's JSON, the host-side RSS of chv, and
//! the snapshot/restore and migration steps the tests put a VM through.

use std::path::Path;
use std::time::Duration;

use chv_tests::{Chv, Scratch};

use super::ABORT;

/// Reads the guest's `MemTotal` (KiB) with shell builtins only (the first
/// line of /proc/meminfo), printed after `tag`.
pub(crate) fn memtotal_cmd(tag: &str) -> String {
    format!("read -r k v u </proc/meminfo; echo {tag}:$v:{tag}-END")
}

/// The KiB the guest printed after the last `tag:`.
pub(crate) fn printed_kib(chv: &Chv, tag: &str) -> u64 {
    let out = chv.stdout();
    let needle = format!("{tag}:");
    let Some(at) = out.rfind(&needle) else {
        chv.fail(&format!("the guest printed no {needle}"));
    };
    out[at + needle.len()..]
        .split(':')
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| chv.fail(&format!("{needle} is not followed by a number")))
}

/// Has the guest poll its `MemTotal` (once a second, up to a minute) until
/// it exceeds `kib` (the guest onlines hot-added memory asynchronously);
/// returns the last value, printed after `tag`.
pub(crate) fn wait_memtotal_above(chv: &mut Chv, kib: u64, tag: &str) -> u64 {
    chv.send_line(&format!(
        "i=0; while [ $i -lt 60 ]; do read -r k v u </proc/meminfo; [ $v -gt {kib} ] && break; \
         sleep 1; i=$((i+1)); done; {}",
        memtotal_cmd(tag)
    ));
    chv.expect(&format!("{tag}-END"), ABORT, Duration::from_secs(120));
    printed_kib(chv, tag)
}

/// As [`wait_memtotal_above`], until `MemTotal` drops below `kib`.
pub(crate) fn wait_memtotal_below(chv: &mut Chv, kib: u64, tag: &str) -> u64 {
    chv.send_line(&format!(
        "i=0; while [ $i -lt 60 ]; do read -r k v u </proc/meminfo; [ $v -lt {kib} ] && break; \
         sleep 1; i=$((i+1)); done; {}",
        memtotal_cmd(tag)
    ));
    chv.expect(&format!("{tag}-END"), ABORT, Duration::from_secs(120));
    printed_kib(chv, tag)
}

/// Has the guest poll its `MemTotal` until two reads 2 s apart agree (up
/// to a minute): virtio-mem's unplug removes memory blocks asynchronously
/// and `MemTotal` moves while it does. Returns the value, printed after `tag`.
pub(crate) fn wait_memtotal_stable(chv: &mut Chv, tag: &str) -> u64 {
    chv.send_line(&format!(
        "i=0; read -r k v u </proc/meminfo; while [ $i -lt 30 ]; do sleep 2; \
         read -r k w u </proc/meminfo; [ $v -eq $w ] && break; v=$w; i=$((i+1)); done; {}",
        memtotal_cmd(tag)
    ));
    chv.expect(&format!("{tag}-END"), ABORT, Duration::from_secs(120));
    printed_kib(chv, tag)
}

/// `"key":<number>` in a JSON body, if there.
pub(crate) fn json_number(body: &str, key: &str) -> Option<u64> {
    let at = body.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = body[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Boots the guest kit at its command loop (`base_snapshot::LOOP`) with
/// `memory` options, the serial console on stdio, no virtio console and an
/// API socket at `api`.
pub(crate) fn spawn_loop_guest(kit: &chv_tests::GuestKit, memory: &[&str], api: &Path) -> Chv {
    let api = api.display().to_string();
    let mut extra = memory.to_vec();
    extra.extend(["--serial", "tty", "--console", "off", "--api-socket", &api]);
    Chv::spawn_with_input(&kit.args(chv_tests::base_snapshot::LOOP, &extra))
}

/// `"key":<number>` inside the JSON object that follows `"section":` in
/// `body` (the first such key after it), if there.
pub(crate) fn json_section_number(body: &str, section: &str, key: &str) -> Option<u64> {
    let at = body.find(&format!("\"{section}\":"))?;
    json_number(&body[at..], key)
}

/// `VmRSS` and `VmHWM` (peak) of process `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Pauses and snapshots the VM `chv` serves on `api` into `scratch`, kills
/// it and returns a new chv restored from the snapshot, resumed and at the
/// guest's command loop.
pub(crate) fn snapshot_and_restore(mut chv: Chv, api: &Path, scratch: &Scratch) -> Chv {
    use chv_tests::api_client::http;
    std::thread::sleep(Duration::from_millis(500));
    let (status, body) = http(api, "PUT", "vm.pause", None);
    chv.check(status == 204, &format!("vm.pause: {status} {body}"));
    let snap = scratch.path("snap");
    let url = format!(r#"{{"destination_url":"file://{}"}}"#, snap.display());
    let (status, body) = http(api, "PUT", "vm.snapshot", Some(&url));
    chv.check(status == 204, &format!("vm.snapshot: {status} {body}"));
    chv.kill();
    let _ = std::fs::remove_file(api);
    let mut chv = Chv::spawn_with_input(&[
        "--api-socket".to_string(),
        api.display().to_string(),
        "--restore".into(),
        format!("source_url=file://{},resume=true", snap.display()),
    ]);
    chv_tests::base_snapshot::wait_ready(&mut chv);
    chv
}

/// Polls `vm.info` (up to a minute) until `memory_actual_size` is `want`;
/// returns the last value.
pub(crate) fn wait_actual_size(api: &Path, want: u64) -> Option<u64> {
    let mut last = None;
    for _ in 0..120 {
        let (_, info) = chv_tests::api_client::http(api, "GET", "vm.info", None);
        last = json_number(&info, "memory_actual_size");
        if last == Some(want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    last
}

/// Live-migrates the VM `chv` serves on `api` to a new chv listening on
/// `dst_api` (`vm.receive-migration` over a Unix socket in `scratch`) and
/// returns the receiver once the source has exited; the guest's serial
/// console is then the receiver's stdin/stdout.
pub(crate) fn migrate(mut chv: Chv, api: &Path, dst_api: &Path, scratch: &Scratch) -> Chv {
    let dst = Chv::spawn_with_input(&["--api-socket", &dst_api.display().to_string()]);
    chv_tests::migration::migrate_over_unix(
        &mut chv,
        api,
        &dst,
        dst_api,
        &scratch.path("mig.sock"),
    );
    chv.assert_no_panic();
    dst
}
