//! `vm.delete` and `vm.shutdown` give back everything the VM held.
//!
//! `everything_a_vm_held_is_released` (tiny test guest, no Linux): a VM
//! with a disk, a hot-added disk, rng, balloon, vsock, a tap, a pty serial
//! port and a pty virtio-console, two vCPUs (one hot-added) and hot-added
//! memory is booted, then deleted. Afterwards chv holds no KVM descriptor,
//! no image, tap, pty or vsock socket, and runs only the threads it ran
//! before the VM existed; the same configuration then boots again (the
//! images are unlocked) and `vm.shutdown` releases it the same way.

use std::path::Path;
use std::time::{Duration, Instant};

use chv_tests::api_client::http;
use chv_tests::{testguest, Chv, Scratch};

/// What chv's descriptors point at, one entry per descriptor.
fn open_files(pid: u32) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|t| t.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The names of chv's threads.
fn threads(pid: u32) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .map(|c| c.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Descriptors that belong to a VM (KVM, images, taps, ptys, vsock).
fn vm_files(files: &[String], dir: &Path) -> Vec<String> {
    files
        .iter()
        .filter(|f| {
            f.contains("kvm")
                || f.starts_with(&*dir.to_string_lossy())
                || f.contains("/dev/pts")
                || f.contains("ptmx")
                || f.contains("tun")
        })
        .cloned()
        .collect()
}

fn put(chv: &Chv, sock: &Path, endpoint: &str, body: Option<&str>, want: u16) -> String {
    let (st, text) = http(sock, "PUT", endpoint, body);
    chv.check(
        st == want,
        &format!("{endpoint}: {st} {text} (wanted {want})"),
    );
    text
}

/// Waits until the VM's descriptors and threads are gone; fails naming
/// what stayed.
fn expect_released(chv: &Chv, dir: &Path, threads_before: &[String], after: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let files = vm_files(&open_files(chv.pid()), dir);
        let now = threads(chv.pid());
        if files.is_empty() && now == threads_before {
            return;
        }
        if Instant::now() > deadline {
            chv.fail(&format!(
                "after {after} chv still holds {files:?}; threads {now:?} (before the VM: {threads_before:?})"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn everything_a_vm_held_is_released() {
    let dir = Scratch::new("teardown");
    let sock = dir.path("api.sock");
    for img in ["disk.img", "hot.img"] {
        let f = std::fs::File::create(dir.path(img)).expect("image");
        f.set_len(8 << 20).expect("image size");
    }
    let tap = format!("chvtd{}", std::process::id() % 100_000);
    let config = format!(
        r#"{{"cpus":{{"boot_vcpus":1,"max_vcpus":2}},
            "memory":{{"size":67108864,"hotplug_size":134217728}},
            "payload":{{"kernel":"{kernel}","cmdline":"test=ticker"}},
            "disks":[{{"path":"{d}/disk.img"}}],
            "net":[{{"tap":"{tap}"}}],
            "rng":{{"src":"/dev/urandom"}},
            "balloon":{{"size":0}},
            "vsock":{{"cid":7,"socket":"{d}/vsock.sock"}},
            "serial":{{"mode":"Pty"}},
            "console":{{"mode":"Pty"}}}}"#,
        kernel = testguest().display(),
        d = dir.0.display(),
    );
    let mut chv = Chv::spawn(&["--api-socket", &sock.display().to_string()]);
    // The API thread is up once the socket answers.
    let (st, _) = http(&sock, "GET", "vmm.ping", None);
    chv.check(st == 200, "vmm.ping");
    let before = threads(chv.pid());
    chv.check(
        vm_files(&open_files(chv.pid()), &dir.0).is_empty(),
        "chv holds VM files before any VM",
    );

    for (round, end) in [(1, "vm.delete"), (2, "vm.shutdown")] {
        // Round 1 starts with no VM; round 2 follows a vm.delete.
        put(&chv, &sock, "vm.create", Some(&config), 204);
        put(&chv, &sock, "vm.boot", None, 204);
        let hot = format!(r#"{{"path":"{}/hot.img"}}"#, dir.0.display());
        put(&chv, &sock, "vm.add-disk", Some(&hot), 200);
        put(
            &chv,
            &sock,
            "vm.resize",
            Some(r#"{"desired_vcpus":2}"#),
            204,
        );
        put(
            &chv,
            &sock,
            "vm.resize",
            Some(r#"{"desired_ram":201326592}"#),
            204,
        );
        let held = vm_files(&open_files(chv.pid()), &dir.0);
        chv.check(
            held.iter().any(|f| f.ends_with("hot.img")) && held.iter().any(|f| f.contains("kvm")),
            &format!("round {round}: the booted VM's files: {held:?}"),
        );
        put(&chv, &sock, end, None, 204);
        expect_released(&chv, &dir.0, &before, end);
    }

    put(&chv, &sock, "vmm.shutdown", None, 204);
    let exit = chv.expect_exit(Duration::from_secs(30));
    chv.assert_no_panic();
    chv.check(exit.success(), &format!("chv exited with {exit}"));
}
