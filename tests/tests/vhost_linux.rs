//! vhost-user and pmem devices end to end, through the real CLI syntax's
//! JSON twin (`vm.add-fs`, `vm.add-pmem`, `vm.add-disk` with
//! `vhost_user`) on the API socket, against real backends (virtiofsd,
//! qemu-storage-daemon). No test boots Linux: each restores the shared
//! base snapshot (`chv_tests::base_snapshot`, the guest kit at a command
//! loop on the serial console), with `memory.shared=true` written into a
//! copy of its `config.json` where a vhost-user backend must map guest RAM,
//! and hot-adds its devices.
//!
//! - `virtiofs_shares_hotplug_read_write_and_survive_backend_loss`: the
//!   guest mounts a hot-added share, reads a host file, writes one the host
//!   sees, renames and deletes; a second hot-added share mounts too and is
//!   hot-removed (the guest ejects it); virtiofsd is killed and chv keeps
//!   running and answering the API. A share without shared memory is
//!   refused naming `memory.shared`.
//! - `vhost_user_blk_writes_reach_the_qemu_storage_daemon_image`: a
//!   `conv=fsync` write is on the image; a snapshot is refused (400 naming
//!   `VHOST_USER_PROTOCOL_F_DEVICE_STATE`); the daemon is killed and a new
//!   one started on the same socket, chv reconnects by itself and the next
//!   write lands too.
//! - `pmem_hotplug_mounts_ext4_and_discard_writes_keeps_the_file`.
//! - `vhost_user_net_pings_the_host_through_dpdk_testpmd`: a hot-added
//!   vhost-user-net NIC served by DPDK's vhost PMD (`dpdk-testpmd`, frames
//!   forwarded to and from a DPDK tap in a network namespace); the guest
//!   pings the namespace's address through it, and it is hot-removed.
//! - `snapshot_and_restore_keep_the_virtiofs_mount_and_open_files_through_a_new_virtiofsd`:
//!   then a live migration to another chv, whose virtiofsd gets the
//!   state of the one before (vhost-user device-state transfer).
//!
//! Needs /dev/kvm, the guest kit, `virtiofsd`, `qemu-storage-daemon` and
//! `dpdk-testpmd` (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chv_tests::api_client::http;
use chv_tests::base_snapshot::{base_snapshot, wait_ready};
use chv_tests::netns::NetNs;
use chv_tests::{Chv, Scratch};

/// Time for one guest step (each fork in the guest costs 1-2 s).
const STEP: Duration = Duration::from_secs(180);
/// Console text that ends a wait early as a failure.
const ABORT: &[&str] = &["Kernel panic", "VU-FAIL"];

/// A backend process, killed and reaped on drop.
struct Backend(Child);

impl Backend {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for a backend's socket to appear.
fn wait_socket(child: Child, socket: &Path, what: &str) -> Backend {
    let backend = Backend(child);
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    backend
}

fn virtiofsd(dir: &Path, socket: &Path) -> Backend {
    virtiofsd_with(dir, socket, &[])
}

/// virtiofsd with `extra` arguments (e.g. its `--migration-mode`).
fn virtiofsd_with(dir: &Path, socket: &Path, extra: &[&str]) -> Backend {
    let child = Command::new("virtiofsd")
        .arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(dir)
        .args(["--sandbox", "none", "--log-level", "warn"])
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .expect("virtiofsd must be on PATH (cargo install virtiofsd; .ci/run does it)");
    wait_socket(child, socket, "virtiofsd")
}

fn qemu_storage_daemon(image: &Path, socket: &Path) -> Backend {
    let child = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=disk,filename={}",
            image.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp,node-name=disk,writable=on,addr.type=unix,addr.path={}",
            socket.display()
        ))
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-storage-daemon must be installed (Debian qemu-utils; .ci/run does it)");
    wait_socket(child, socket, "qemu-storage-daemon")
}

/// A copy of snapshot `src` in `dst` whose `config.json` went through
/// `edit` (the memory file and the rest are symlinked, not copied).
fn edited_snapshot(src: &Path, dst: &Path, edit: impl Fn(String) -> String) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap().flatten() {
        let name = entry.file_name();
        if name == "config.json" {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            std::fs::write(dst.join(&name), edit(text)).unwrap();
        } else {
            std::os::unix::fs::symlink(entry.path(), dst.join(&name)).unwrap();
        }
    }
}

/// `config.json` with `memory.shared` turned on.
fn shared_memory(config: String) -> String {
    let edited = config.replacen("\"shared\": false", "\"shared\": true", 1);
    assert_ne!(edited, config, "no memory.shared in the base config.json");
    edited
}

/// Restores snapshot `dir` (running) with its API socket at `api`,
/// logging at info level; waits until the guest runs commands.
fn restore(dir: &Path, api: &Path) -> Chv {
    let mut chv = Chv::spawn_with_input(&[
        "-v".to_string(),
        "--api-socket".into(),
        api.display().to_string(),
        "--restore".into(),
        format!("source_url=file://{},resume=true", dir.display()),
    ]);
    wait_ready(&mut chv);
    chv
}

/// The base snapshot restored with shared guest RAM, or `None` when the
/// guest kit is missing and Linux tests are skipped.
fn restore_shared(scratch: &Scratch, api: &Path) -> Option<Chv> {
    let snap = scratch.path("base");
    edited_snapshot(&base_snapshot()?, &snap, shared_memory);
    Some(restore(&snap, api))
}

/// PUTs `body` to `endpoint`; returns the status and body.
fn put(api: &Path, endpoint: &str, body: &str) -> (u16, String) {
    http(api, "PUT", endpoint, Some(body))
}

/// A guest command that retries `cmd` each second for a minute, printing
/// `VU-FAIL` if it never succeeds (hot-added devices take a moment).
fn retry(cmd: &str, what: &str) -> String {
    format!(
        "i=0; until {cmd}; do i=$((i+1)); [ $i -gt 60 ] && echo VU-FAIL-{what} && break; sleep 1; done"
    )
}

/// `vm.remove-device` of `id`, then waits for the log line `done`.
fn remove_device(chv: &Chv, api: &Path, id: &str, done: &str, what: &str) {
    let (status, reply) = put(api, "vm.remove-device", &format!(r#"{{"id":"{id}"}}"#));
    chv.check(
        status == 204,
        &format!("vm.remove-device {id}: {status} {reply}"),
    );
    chv.check(wait_log(chv, done), what);
}

/// Waits for the log line `needle` on chv's stderr.
fn wait_log(chv: &Chv, needle: &str) -> bool {
    chv.wait_until(Duration::from_secs(30), needle, |c| {
        c.stderr_text().contains(needle).then_some(())
    })
    .is_ok()
}

#[test]
fn virtiofs_shares_hotplug_read_write_and_survive_backend_loss() {
    let scratch = Scratch::new("vhost-fs");
    let (share, share2) = (scratch.path("share"), scratch.path("share2"));
    std::fs::create_dir_all(&share).unwrap();
    std::fs::create_dir_all(&share2).unwrap();
    std::fs::write(share.join("hello"), "host-file-content").unwrap();
    std::fs::write(share.join("old"), "rename-me").unwrap();
    std::fs::write(share.join("gone"), "delete-me").unwrap();
    std::fs::write(share2.join("hello2"), "second-share").unwrap();
    let (sock, sock2) = (scratch.path("fs.sock"), scratch.path("fs2.sock"));
    let mut fsd = virtiofsd(&share, &sock);
    let _fsd2 = virtiofsd(&share2, &sock2);
    let api = scratch.path("api.sock");

    // Without shared guest RAM a share is refused, naming the field.
    let Some(plain) = base_snapshot() else {
        return;
    };
    let mut chv = restore(&plain, &api);
    let body = format!(r#"{{"tag":"kataShared","socket":"{}"}}"#, sock.display());
    let (status, reply) = put(&api, "vm.add-fs", &body);
    chv.check(
        status == 400 && reply.contains("memory.shared"),
        &format!("vm.add-fs without shared memory: {status} {reply}"),
    );
    chv.kill();
    let _ = std::fs::remove_file(&api);

    let Some(mut chv) = restore_shared(&scratch, &api) else {
        return;
    };
    let body = format!(
        r#"{{"tag":"kataShared","socket":"{}","num_queues":1,"queue_size":1024,"id":"share1"}}"#,
        sock.display()
    );
    let (status, reply) = put(&api, "vm.add-fs", &body);
    assert_eq!(status, 200, "vm.add-fs: {reply}\n{}", chv.dump());
    chv.check(
        reply.contains(r#""id":"share1""#) && reply.contains(r#""bdf":"0000:00:01.0""#),
        &format!("PciDeviceInfo: {reply}"),
    );
    let mount = retry("mount -t virtiofs kataShared /m1 2>/dev/null", "MOUNT1");
    chv.send_line(&format!(
        "mkdir -p /m1 /m2; {mount}; echo CHK-READ:$(cat /m1/hello); \
         echo guest-wrote > /m1/fromguest; mv /m1/old /m1/new; rm /m1/gone; sync; echo CHK-DONE1"
    ));
    chv.expect("CHK-DONE1", ABORT, STEP);
    chv.check(
        chv.stdout().contains("CHK-READ:host-file-content"),
        "guest read the host file through virtio-fs",
    );
    let wrote = std::fs::read_to_string(share.join("fromguest")).unwrap_or_default();
    chv.check(
        wrote == "guest-wrote\n",
        "host sees the file the guest wrote",
    );
    chv.check(
        std::fs::read_to_string(share.join("new")).ok().as_deref() == Some("rename-me")
            && !share.join("old").exists(),
        "guest rename reached the host",
    );
    chv.check(
        !share.join("gone").exists(),
        "guest delete reached the host",
    );

    // A second share, hot-added, mounts; then it is hot-removed.
    let body = format!(r#"{{"tag":"second","socket":"{}"}}"#, sock2.display());
    let (status, reply) = put(&api, "vm.add-fs", &body);
    chv.check(
        status == 200 && reply.contains(r#""id":"_fs0""#),
        &format!("second vm.add-fs: {status} {reply}"),
    );
    let (status, reply) = put(&api, "vm.add-fs", &body.replace("}", r#","id":"share1"}"#));
    chv.check(status == 400, &format!("duplicate id: {status} {reply}"));
    let mount = retry("mount -t virtiofs second /m2 2>/dev/null", "MOUNT2");
    chv.send_line(&format!(
        "{mount}; echo CHK-READ2:$(cat /m2/hello2); umount /m2; echo CHK-DONE2"
    ));
    chv.expect("CHK-DONE2", ABORT, STEP);
    chv.check(
        chv.stdout().contains("CHK-READ2:second-share"),
        "guest read the second, hot-added share",
    );
    // Both backends' relay threads and the vhost-user watchdog run, each
    // under its seccomp filter like every other chv thread.
    let threads = chv_tests::threads::seccomp_modes(chv.pid());
    let relays = threads.iter().filter(|t| t.1.starts_with("vu-")).count();
    chv.check(
        relays >= 2 && threads.iter().any(|t| t.1 == "vhost-user-wd"),
        &format!("want two vu-* relay threads and vhost-user-wd: {threads:?}"),
    );
    let unfiltered = chv_tests::threads::unfiltered(&threads);
    chv.check(unfiltered.is_empty(), &unfiltered.join("; "));
    remove_device(
        &chv,
        &api,
        "_fs0",
        "_fs0: ejected from PCI slot 2",
        "the guest ejected the second share",
    );
    let (_, info) = http(&api, "GET", "vm.info", None);
    chv.check(
        info.contains("kataShared") && !info.contains("\"second\""),
        &format!("vm.info after the removal: {info}"),
    );

    // The backend dies: chv logs it, keeps running and answers the API.
    fsd.kill();
    let (status, info) = http(&api, "GET", "vm.info", None);
    chv.check(
        status == 200 && info.contains("Running"),
        &format!("vm.info after virtiofsd died: {status} {info}"),
    );
    chv.check(
        wait_log(&chv, "the backend disconnected"),
        "chv logged the backend's disconnect",
    );
    let (status, _) = http(&api, "GET", "vmm.ping", None);
    chv.check(status == 200, "vmm.ping after virtiofsd died");
    chv.assert_no_panic();
}

#[test]
fn vhost_user_blk_writes_reach_the_qemu_storage_daemon_image() {
    let scratch = Scratch::new("vhost-blk");
    let image = scratch.path("disk.raw");
    std::fs::write(&image, vec![0u8; 4 << 20]).unwrap();
    let sock = scratch.path("blk.sock");
    let mut qsd = qemu_storage_daemon(&image, &sock);
    let api = scratch.path("api.sock");
    let Some(mut chv) = restore_shared(&scratch, &api) else {
        return;
    };
    let body = format!(
        r#"{{"vhost_user":true,"vhost_socket":"{}","id":"vblk"}}"#,
        sock.display()
    );
    let (status, reply) = put(&api, "vm.add-disk", &body);
    assert_eq!(status, 200, "vm.add-disk: {reply}\n{}", chv.dump());
    chv.check(
        reply.contains(r#""id":"vblk""#),
        &format!("PciDeviceInfo: {reply}"),
    );
    let wait = retry("[ -b /dev/vda ]", "VDA");
    chv.send_line(&format!(
        "{wait}; echo CHK-SIZE:$(cat /sys/block/vda/size); \
         echo VHOST-BLK-DATA | dd of=/dev/vda conv=fsync 2>/dev/null; echo CHK-BLK-DONE"
    ));
    chv.expect("CHK-BLK-DONE", ABORT, STEP);
    chv.check(
        chv.stdout().contains("CHK-SIZE:8192"),
        "the guest sees the backend's 4 MiB capacity",
    );
    let data = std::fs::read(&image).unwrap();
    chv.check(
        data.starts_with(b"VHOST-BLK-DATA\n"),
        "the guest's write is on the host image",
    );

    // qemu-storage-daemon cannot hand over its state: a snapshot is
    // refused with a 4xx naming the missing protocol feature.
    let (status, reply) = http(&api, "PUT", "vm.pause", None);
    assert_eq!(status, 204, "vm.pause: {reply}");
    let snap = scratch.path("snap");
    let url = format!(r#"{{"destination_url":"file://{}"}}"#, snap.display());
    let (status, reply) = put(&api, "vm.snapshot", &url);
    chv.check(
        status == 400 && reply.contains("VHOST_USER_PROTOCOL_F_DEVICE_STATE"),
        &format!("vm.snapshot with vhost-user-blk: {status} {reply}"),
    );
    let (status, reply) = http(&api, "PUT", "vm.resume", None);
    assert_eq!(status, 204, "vm.resume: {reply}\n{}", chv.dump());

    // The daemon dies and a new one listens on the same socket: chv
    // reconnects on its own and the guest's next write lands.
    qsd.kill();
    chv.check(
        wait_log(&chv, "the backend disconnected"),
        "chv logged the daemon's exit",
    );
    let _qsd2 = qemu_storage_daemon(&image, &sock);
    chv.check(
        wait_log(&chv, "vrings handed over"),
        "chv reconnected to the new daemon",
    );
    chv.send_line(
        "echo AFTER-RECONNECT | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null; \
         echo CHK-BLK-AGAIN",
    );
    chv.expect("CHK-BLK-AGAIN", ABORT, STEP);
    let data = std::fs::read(&image).unwrap();
    chv.check(
        data[4096..].starts_with(b"AFTER-RECONNECT\n"),
        "the write after the reconnect is on the host image",
    );
    remove_device(
        &chv,
        &api,
        "vblk",
        "vblk: ejected from PCI slot 1",
        "the guest ejected the vhost-user disk",
    );
    chv.assert_no_panic();
}

/// Builds a 64 MiB ext4 image holding `hello` (`mkfs.ext4 -d`).
fn ext4_image(path: &Path, content_dir: &Path) {
    std::fs::create_dir_all(content_dir).unwrap();
    std::fs::write(content_dir.join("hello"), "made-on-the-host").unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(content_dir)
        .arg(path)
        .arg("64M")
        .output()
        .expect("mkfs.ext4");
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn debugfs_cat(image: &Path, file: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(image)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pmem_hotplug_mounts_ext4_and_discard_writes_keeps_the_file() {
    let scratch = Scratch::new("vhost-pmem");
    let (shared, private) = (scratch.path("shared.img"), scratch.path("private.img"));
    ext4_image(&shared, &scratch.path("c1"));
    ext4_image(&private, &scratch.path("c2"));
    let private_before = std::fs::read(&private).unwrap();
    let api = scratch.path("api.sock");
    // pmem needs no shared guest RAM.
    let Some(base) = base_snapshot() else {
        return;
    };
    let mut chv = restore(&base, &api);
    let body = format!(r#"{{"file":"{}","id":"pm0"}}"#, shared.display());
    let (status, reply) = put(&api, "vm.add-pmem", &body);
    assert_eq!(status, 200, "vm.add-pmem: {reply}\n{}", chv.dump());
    let body = format!(
        r#"{{"file":"{}","discard_writes":true,"size":67108864}}"#,
        private.display()
    );
    let (status, reply) = put(&api, "vm.add-pmem", &body);
    chv.check(
        status == 200 && reply.contains(r#""id":"_pmem0""#),
        &format!("second vm.add-pmem: {status} {reply}"),
    );
    let (status, reply) = put(&api, "vm.add-pmem", r#"{"file":"/nonexistent/x"}"#);
    chv.check(status == 500, &format!("missing file: {status} {reply}"));
    let wait = retry("[ -b /dev/pmem1 ]", "PMEM");
    chv.send_line(&format!(
        "{wait}; for n in 0 1; do mkdir -p /p$n; mount -o dax /dev/pmem$n /p$n 2>/dev/null \
         && echo CHK-DAX$n || mount /dev/pmem$n /p$n; echo CHK-READ$n:$(cat /p$n/hello); \
         echo guest-wrote-$n > /p$n/fromguest; umount /p$n; done; echo CHK-PMEM-DONE"
    ));
    chv.expect("CHK-PMEM-DONE", ABORT, STEP);
    let out = chv.stdout();
    chv.check(
        out.contains("CHK-READ0:made-on-the-host"),
        "guest read the host's file on pmem0",
    );
    chv.check(
        out.contains("CHK-READ1:made-on-the-host"),
        "guest read the host's file on pmem1",
    );
    eprintln!(
        "DAX mounts: pmem0 {} pmem1 {}",
        out.contains("CHK-DAX0"),
        out.contains("CHK-DAX1")
    );
    chv.check(
        debugfs_cat(&shared, "/fromguest") == "guest-wrote-0\n",
        "the guest's write reached the shared pmem file",
    );
    chv.check(
        std::fs::read(&private).unwrap() == private_before,
        "discard_writes=on left the file unchanged",
    );
    // Hot-remove: the guest ejects pm0; its range is unmapped on the next
    // device request (here: removing the other one).
    remove_device(
        &chv,
        &api,
        "pm0",
        "pm0: ejected from PCI slot",
        "the guest ejected pm0",
    );
    remove_device(
        &chv,
        &api,
        "_pmem0",
        "pm0: pmem range at",
        "pm0's range was unmapped",
    );
    chv.assert_no_panic();
}

/// `vm.info`'s state.
fn vm_state(sock: &Path) -> String {
    let (status, body) = http(sock, "GET", "vm.info", None);
    assert_eq!(status, 200, "vm.info: {body}");
    let at = body.find("\"state\":\"").expect("state in vm.info") + 9;
    body[at..].split('"').next().unwrap_or_default().to_string()
}

#[test]
fn snapshot_and_restore_keep_the_virtiofs_mount_and_open_files_through_a_new_virtiofsd() {
    let scratch = Scratch::new("vhost-snap");
    let share = scratch.path("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("kept"), "line-before-snapshot\n").unwrap();
    let sock_a = scratch.path("a.sock");
    // virtiofsd's two ways to describe its inodes: paths for the snapshot
    // (A saves), file handles for the live migration (B sends to C; same
    // directory, root with CAP_DAC_READ_SEARCH).
    let mut fsd_a = virtiofsd_with(&share, &sock_a, &["--migration-mode", "find-paths"]);
    let api = scratch.path("api.sock");
    let Some(mut chv) = restore_shared(&scratch, &api) else {
        return;
    };
    let body = format!(r#"{{"tag":"kataShared","socket":"{}"}}"#, sock_a.display());
    let (status, reply) = put(&api, "vm.add-fs", &body);
    assert_eq!(status, 200, "vm.add-fs: {reply}\n{}", chv.dump());
    // fd 3 stays open in the guest's shell across the snapshot.
    let mount = retry("mount -t virtiofs kataShared /mnt 2>/dev/null", "MOUNT");
    chv.send_line(&format!(
        "mkdir -p /mnt; {mount}; exec 3</mnt/kept; echo CHK-MOUNTED"
    ));
    chv.expect("CHK-MOUNTED", ABORT, STEP);
    // Let the shell get back to its read() before the guest stops.
    std::thread::sleep(Duration::from_millis(500));
    let (status, reply) = http(&api, "PUT", "vm.pause", None);
    assert_eq!(status, 204, "vm.pause: {reply}");
    let snap: PathBuf = scratch.path("snap");
    let url = format!(r#"{{"destination_url":"file://{}"}}"#, snap.display());
    let (status, reply) = put(&api, "vm.snapshot", &url);
    assert_eq!(status, 204, "vm.snapshot: {reply}\n{}", chv.dump());
    chv.kill();
    fsd_a.kill();
    let _ = std::fs::remove_file(&api);

    // A new virtiofsd on a new socket, named in the snapshot's edited
    // config.json; the restored VM loads the first one's state into it.
    let sock_b = scratch.path("b.sock");
    let _fsd_b = virtiofsd_with(
        &share,
        &sock_b,
        &[
            "--migration-mode",
            "file-handles",
            "--modcaps=+dac_read_search",
        ],
    );
    let edited = scratch.path("snap-b");
    let (a, b) = (sock_a.display().to_string(), sock_b.display().to_string());
    edited_snapshot(&snap, &edited, |c| c.replace(&a, &b));
    let mut chv = Chv::spawn_with_input(&[
        "--api-socket".to_string(),
        api.display().to_string(),
        "--restore".into(),
        format!("source_url=file://{}", edited.display()),
    ]);
    assert_eq!(vm_state(&api), "Paused", "{}", chv.dump());
    let (status, reply) = http(&api, "PUT", "vm.resume", None);
    assert_eq!(status, 204, "vm.resume: {reply}\n{}", chv.dump());
    wait_ready(&mut chv);
    chv.send_line(
        "echo CHK-AFTER:$(cat /mnt/kept); read -r L <&3; echo CHK-FD:$L; \
         echo after > /mnt/written-after; echo CHK-END",
    );
    chv.expect("CHK-END", ABORT, STEP);
    let out = chv.stdout();
    chv.check(
        out.contains("CHK-AFTER:line-before-snapshot"),
        "read through the new virtiofsd",
    );
    chv.check(
        out.contains("CHK-FD:line-before-snapshot"),
        "fd opened before the snapshot still reads",
    );
    chv.check(
        std::fs::read_to_string(share.join("written-after"))
            .ok()
            .as_deref()
            == Some("after\n"),
        "write after the restore reached the host",
    );

    // Live migration to another chv with a third virtiofsd. The sent
    // config names b.sock, so virtiofsd C's socket takes that name (B keeps
    // its accepted connection); the receiver loads B's state into C.
    let sock_c = scratch.path("c.sock");
    let _fsd_c = virtiofsd_with(
        &share,
        &sock_c,
        &[
            "--migration-mode",
            "file-handles",
            "--modcaps=+dac_read_search",
        ],
    );
    std::fs::rename(&sock_c, &sock_b).unwrap();
    let api2 = scratch.path("api2.sock");
    let mut chv2 = Chv::spawn_with_input(&["--api-socket".to_string(), api2.display().to_string()]);
    let mig = scratch.path("mig.sock");
    let receiver = {
        let (api2, body) = (
            api2.clone(),
            format!(r#"{{"receiver_url":"unix:{}"}}"#, mig.display()),
        );
        std::thread::spawn(move || {
            let start = Instant::now();
            while !api2.exists() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            put(&api2, "vm.receive-migration", &body)
        })
    };
    let start = Instant::now();
    while !mig.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "receiver not listening\n{}",
            chv2.dump()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let body = format!(r#"{{"destination_url":"unix:{}"}}"#, mig.display());
    let (status, reply) = put(&api, "vm.send-migration", &body);
    assert_eq!(status, 204, "vm.send-migration: {reply}\n{}", chv.dump());
    let (status, reply) = receiver.join().expect("receiver thread");
    assert_eq!(
        status,
        204,
        "vm.receive-migration: {reply}\n{}",
        chv2.dump()
    );
    chv2.send_line(
        "echo CHK-MIG:$(cat /mnt/kept); echo moved > /mnt/written-migrated; echo CHK-MIG-END",
    );
    chv2.expect("CHK-MIG-END", ABORT, STEP);
    chv2.check(
        chv2.stdout().contains("CHK-MIG:line-before-snapshot"),
        "read through virtiofsd C after the migration",
    );
    chv2.check(
        std::fs::read_to_string(share.join("written-migrated"))
            .ok()
            .as_deref()
            == Some("moved\n"),
        "write after the migration reached the host",
    );
    chv.assert_no_panic();
    chv2.assert_no_panic();
}

/// Host side of the vhost-user-net test's link (in its namespace).
const NET_HOST_IP: &str = "10.0.9.1";

/// dpdk-testpmd in `ns` serving vhost-user-net on `socket` (DPDK listens)
/// and forwarding each frame between it and the DPDK tap `dtap0`
/// (`--no-huge`: no hugepages here; niced, as it polls a core).
fn testpmd(ns: &NetNs, dir: &Path, socket: &Path) -> Backend {
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nice", "-n", "19"])
        // EAL options: two lcores (main and forwarding), plain memory.
        .args("dpdk-testpmd -l 0-1 --no-huge -m 128 --no-pci --log-level 4".split(' '))
        .arg(format!("--file-prefix=chvt{}", std::process::id()))
        .arg("--vdev")
        .arg(format!("net_vhost0,iface={},queues=1", socket.display()))
        .args(["--vdev", "net_tap0,iface=dtap0", "--"])
        .args([
            "--total-num-mbufs=4096",
            "--forward-mode=io",
            "--auto-start",
        ])
        .arg("--stats-period=1000")
        .env("XDG_RUNTIME_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("dpdk-testpmd must be installed (Debian dpdk-dev; .ci/run does it)");
    let backend = wait_socket(child, socket, "dpdk-testpmd");
    let start = Instant::now();
    while !ns.has_link("dtap0") {
        assert!(start.elapsed() < Duration::from_secs(20), "no dtap0");
        std::thread::sleep(Duration::from_millis(50));
    }
    ns.ip(&["addr", "add", &format!("{NET_HOST_IP}/24"), "dev", "dtap0"]);
    ns.ip(&["link", "set", "dtap0", "up"]);
    backend
}

#[test]
fn vhost_user_net_pings_the_host_through_dpdk_testpmd() {
    let scratch = Scratch::new("vhost-net");
    let ns = NetNs::new("vunet");
    let sock = scratch.path("net.sock");
    let _pmd = testpmd(&ns, &scratch.path(""), &sock);
    let api = scratch.path("api.sock");
    let Some(mut chv) = restore_shared(&scratch, &api) else {
        return;
    };
    let body = format!(
        r#"{{"vhost_user":true,"vhost_socket":"{}","vhost_mode":"Client","mac":"02:00:00:00:09:02","id":"vnet"}}"#,
        sock.display()
    );
    let (status, reply) = put(&api, "vm.add-net", &body);
    assert_eq!(status, 200, "vm.add-net: {reply}\n{}", chv.dump());
    let up = retry("ip link set eth0 up 2>/dev/null", "ETH");
    let ping = retry(&format!("ping -c 1 -W 2 {NET_HOST_IP} >/dev/null"), "PING");
    chv.send_line(&format!(
        "{up}; echo CHK-MAC:$(cat /sys/class/net/eth0/address); \
         ip addr add 10.0.9.2/24 dev eth0; {ping}; echo CHK-PINGED"
    ));
    chv.expect("CHK-PINGED", ABORT, STEP);
    chv.check(
        chv.stdout().contains("CHK-MAC:02:00:00:00:09:02"),
        "the guest NIC has the MAC chv put in the config space",
    );
    let neigh = ns.ip(&["neigh", "show", "dev", "dtap0"]);
    chv.check(
        neigh.contains("02:00:00:00:09:02"),
        &format!("the host learned the guest's MAC over the link: {neigh}"),
    );
    remove_device(
        &chv,
        &api,
        "vnet",
        "vnet: ejected from PCI slot",
        "the guest ejected the vhost-user NIC",
    );
    chv.assert_no_panic();
}
