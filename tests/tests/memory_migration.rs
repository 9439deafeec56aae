//! Live migration of a VM whose RAM grew by ACPI memory hotplug (tiny test
//! guest, no Linux).
//!
//! `hot_added_memory_migrates_where_the_guest_knows_it`: a source chv with
//! `--memory size=64M,shared=on,hotplug_size=256M` grows to 192 MiB
//! (`vm.resize desired_ram`), so its RAM is boot RAM plus a hot-added
//! region at another guest address, each in its own memfd. The test writes
//! a pattern into the hot-added memfd through /proc (as a vhost-user
//! backend would), migrates to a second chv and finds the pattern in the
//! receiver's RAM memfd at the hot-added region's place (64 MiB into its
//! single 192 MiB memfd). The receiver reports 192 MiB, its guest keeps
//! ticking, and it can grow again to the full 320 MiB (the hotplug slots
//! came along) but not beyond. A balloon target set on the source
//! (`desired_balloon`) is the receiver's too.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use chv_tests::api_client::http;
use chv_tests::migration::migrate_over_unix;
use chv_tests::{testguest, Chv, Scratch};

const MIB: u64 = 1 << 20;
/// Written by the test into hot-added memory, looked for after migration.
const PATTERN: &[u8] = b"CHV-HOT-ADDED-PAGE-MIGRATED";
/// Where in the hot-added region the pattern goes.
const PATTERN_OFFSET: u64 = 3 * MIB + 123;

/// chv's guest-RAM memfds as (size, file), opened through /proc.
fn ram_memfds(pid: u32) -> Vec<(u64, File)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let is_ram = std::fs::read_link(&path)
            .is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:chv-guest-ram"));
        if !is_ram {
            continue;
        }
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            if let Ok(m) = f.metadata() {
                out.push((m.len(), f));
            }
        }
    }
    out
}

fn put(chv: &Chv, sock: &Path, endpoint: &str, body: &str, want: u16) -> String {
    let (st, text) = http(sock, "PUT", endpoint, Some(body));
    chv.check(
        st == want,
        &format!("{endpoint} {body}: {st} {text} (wanted {want})"),
    );
    text
}

#[test]
fn hot_added_memory_migrates_where_the_guest_knows_it() {
    let dir = Scratch::new("memmig");
    let src_sock = dir.path("src.sock");
    let dst_sock = dir.path("dst.sock");
    let mig_sock = dir.path("mig.sock");
    let mut src = Chv::spawn(&[
        "--kernel".to_string(),
        testguest().display().to_string(),
        "--cmdline".into(),
        "test=ticker".into(),
        "--memory".into(),
        "size=64M,shared=on,hotplug_size=256M".into(),
        "--balloon".into(),
        "size=0,free_page_reporting=on".into(),
        "--serial".into(),
        "tty".into(),
        "--console".into(),
        "off".into(),
        "--api-socket".into(),
        src_sock.display().to_string(),
    ]);
    src.expect("TICK 3", &[], Duration::from_secs(30));
    put(
        &src,
        &src_sock,
        "vm.resize",
        r#"{"desired_ram":201326592}"#,
        204,
    );
    put(
        &src,
        &src_sock,
        "vm.resize",
        r#"{"desired_balloon":33554432}"#,
        204,
    );

    let fds = ram_memfds(src.pid());
    let hot = fds.iter().find(|(len, _)| *len == 128 * MIB);
    let Some((_, hot)) = hot else {
        src.fail(&format!(
            "no 128 MiB hot-added memfd; RAM memfds: {:?}",
            fds.iter().map(|(l, _)| l).collect::<Vec<_>>()
        ));
    };
    hot.write_all_at(PATTERN, PATTERN_OFFSET)
        .expect("write into hot-added memory");

    let mut dst = Chv::spawn(&["--api-socket", &dst_sock.display().to_string()]);
    migrate_over_unix(&mut src, &src_sock, &dst, &dst_sock, &mig_sock);

    // The hot-added bytes sit at the hot-added region's place.
    let fds = ram_memfds(dst.pid());
    let Some((_, ram)) = fds.iter().find(|(len, _)| *len == 192 * MIB) else {
        dst.fail(&format!(
            "the receiver has no 192 MiB RAM memfd: {:?}",
            fds.iter().map(|(l, _)| l).collect::<Vec<_>>()
        ));
    };
    let mut seen = vec![0u8; PATTERN.len()];
    ram.read_exact_at(&mut seen, 64 * MIB + PATTERN_OFFSET)
        .expect("read the receiver's RAM");
    dst.check(
        seen == PATTERN,
        &format!(
            "hot-added memory after migration: {:?}",
            String::from_utf8_lossy(&seen)
        ),
    );

    let (st, info) = http(&dst_sock, "GET", "vm.info", None);
    dst.check(
        st == 200 && info.contains(r#""memory_actual_size":201326592"#),
        &format!("receiver vm.info: {st} {info}"),
    );
    dst.check(
        info.contains(r#""balloon":{"id":"#) && info.contains(r#""size":33554432"#),
        &format!("the balloon target did not migrate: {info}"),
    );
    // The guest runs on the receiver: its console is the receiver's tty.
    dst.expect("TICK", &[], Duration::from_secs(30));
    // The hotplug slots migrated: the rest of hotplug_size can be added,
    // nothing beyond.
    put(
        &dst,
        &dst_sock,
        "vm.resize",
        r#"{"desired_ram":469762048}"#,
        400,
    );
    put(
        &dst,
        &dst_sock,
        "vm.resize",
        r#"{"desired_ram":335544320}"#,
        204,
    );
    let (_, info) = http(&dst_sock, "GET", "vm.info", None);
    dst.check(
        info.contains(r#""memory_actual_size":335544320"#),
        &format!("receiver vm.info after growing: {info}"),
    );
    put(&dst, &dst_sock, "vmm.shutdown", "", 204);
    let exit = dst.expect_exit(Duration::from_secs(30));
    dst.assert_no_panic();
    src.assert_no_panic();
    dst.check(exit.success(), &format!("the receiver exited with {exit}"));
}
