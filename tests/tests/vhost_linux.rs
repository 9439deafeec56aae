//! virtio-fs end to end: the Linux guest kit booted with shared guest RAM
//! (`--memory shared=on`) and a virtio-fs device (`CHV_FS`, until the
//! config schema has `fs`) served by a real virtiofsd. The guest mounts the
//! share, reads a host file, writes a file the host then sees, renames and
//! deletes files; then the host kills virtiofsd and chv keeps running and
//! answering its API.
//!
//! Needs /dev/kvm, the guest kit and `virtiofsd` on PATH (`.ci/run`
//! installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chv_tests::api_client::http;
use chv_tests::{require_guest_kit, Chv, Scratch};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const ABORT: &[&str] = &["Kernel panic"];

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

fn virtiofsd(dir: &Path, socket: &Path) -> Backend {
    let child = Command::new("virtiofsd")
        .arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(dir)
        .args(["--sandbox", "none", "--log-level", "warn"])
        .stdin(Stdio::null())
        .spawn()
        .expect("virtiofsd must be on PATH (cargo install virtiofsd; .ci/run does it)");
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "virtiofsd did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Backend(child)
}

#[test]
fn guest_mounts_virtiofs_reads_writes_renames_and_survives_backend_loss() {
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let scratch = Scratch::new("vhost-fs");
    let share: PathBuf = scratch.path("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("hello"), "host-file-content").unwrap();
    std::fs::write(share.join("old"), "rename-me").unwrap();
    std::fs::write(share.join("gone"), "delete-me").unwrap();
    let sock = scratch.path("fs.sock");
    let mut fsd = virtiofsd(&share, &sock);
    let api = scratch.path("api.sock");

    let guest_cmd = "mount -t virtiofs kataShared /mnt && echo CHK-READ:$(cat /mnt/hello); \
                     echo guest-wrote > /mnt/fromguest; mv /mnt/old /mnt/new; rm /mnt/gone; \
                     sync; echo CHK-DONE; sleep 600";
    let cmdline = format!("console=ttyS0 quiet panic=-1 guest_cmd=\"{guest_cmd}\"");
    let args: Vec<String> = vec![
        "--kernel".into(),
        kit.kernel.display().to_string(),
        "--initramfs".into(),
        kit.initramfs.display().to_string(),
        "--cmdline".into(),
        cmdline,
        "--memory".into(),
        "size=128M,shared=on".into(),
        "--serial".into(),
        "tty".into(),
        "--api-socket".into(),
        api.display().to_string(),
    ];
    let fs_env = format!(
        "tag=kataShared,socket={},num_queues=1,queue_size=1024",
        sock.display()
    );
    let chv = Chv::spawn_with_env(&args, &[("CHV_FS", fs_env.as_str())]);
    chv.expect("CHK-DONE", ABORT, BOOT_TIMEOUT);
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

    // The backend dies: chv logs it, keeps running and answers the API.
    fsd.kill();
    std::thread::sleep(Duration::from_millis(500));
    let (status, body) = http(&api, "GET", "vm.info", None);
    chv.check(
        status == 200,
        &format!("vm.info after virtiofsd died: {status} {body}"),
    );
    chv.check(body.contains("Running"), "VM still running");
    let logged = chv.wait_until(Duration::from_secs(10), "the disconnect log line", |c| {
        c.stderr_text()
            .contains("the backend disconnected")
            .then_some(())
    });
    chv.check(logged.is_ok(), "chv logged the backend's disconnect");
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
fn guest_mounts_ext4_from_pmem_and_discard_writes_keeps_the_file() {
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let scratch = Scratch::new("vhost-pmem");
    let (shared, private) = (scratch.path("shared.img"), scratch.path("private.img"));
    ext4_image(&shared, &scratch.path("c1"));
    ext4_image(&private, &scratch.path("c2"));
    let private_before = std::fs::read(&private).unwrap();
    let guest_cmd = "for n in 0 1; do mkdir /m$n; mount -o dax /dev/pmem$n /m$n 2>/dev/null \
                     && echo CHK-DAX$n || mount /dev/pmem$n /m$n; echo CHK-READ$n:$(cat /m$n/hello); \
                     echo guest-wrote-$n > /m$n/fromguest; umount /m$n; done; echo CHK-DONE";
    let cmdline = format!("console=ttyS0 quiet panic=-1 guest_cmd=\"{guest_cmd}\"");
    let args: Vec<String> = vec![
        "--kernel".into(),
        kit.kernel.display().to_string(),
        "--initramfs".into(),
        kit.initramfs.display().to_string(),
        "--cmdline".into(),
        cmdline,
        "--memory".into(),
        "size=128M".into(),
        "--serial".into(),
        "tty".into(),
    ];
    let pmem = format!(
        "file={};file={},discard_writes=on",
        shared.display(),
        private.display()
    );
    let chv = Chv::spawn_with_env(&args, &[("CHV_PMEM", pmem.as_str())]);
    chv.expect("CHK-DONE", ABORT, BOOT_TIMEOUT);
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
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let scratch = Scratch::new("vhost-snap");
    let share = scratch.path("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("kept"), "line-before-snapshot\n").unwrap();
    let sock_a = scratch.path("a.sock");
    let mut fsd_a = virtiofsd(&share, &sock_a);
    let api = scratch.path("api.sock");
    // fd 3 stays open across the snapshot; after the restore the guest
    // waits for the host's go file, then reads, reads its fd, writes.
    let guest_cmd = "mount -t virtiofs kataShared /mnt && exec 3</mnt/kept && echo CHK-MOUNTED; \
                     while [ ! -e /mnt/go ]; do sleep 1; done; echo CHK-AFTER:$(cat /mnt/kept); \
                     read -r L <&3; echo CHK-FD:$L; echo after > /mnt/written-after; echo CHK-END";
    let cmdline = format!("console=ttyS0 quiet panic=-1 guest_cmd=\"{guest_cmd}\"");
    let args: Vec<String> = vec![
        "--kernel".into(),
        kit.kernel.display().to_string(),
        "--initramfs".into(),
        kit.initramfs.display().to_string(),
        "--cmdline".into(),
        cmdline,
        "--memory".into(),
        "size=128M,shared=on".into(),
        "--serial".into(),
        "tty".into(),
        "--api-socket".into(),
        api.display().to_string(),
    ];
    let env_a = format!("tag=kataShared,socket={}", sock_a.display());
    let mut chv = Chv::spawn_with_env(&args, &[("CHV_FS", &env_a)]);
    chv.expect("CHK-MOUNTED", ABORT, BOOT_TIMEOUT);
    let (status, body) = http(&api, "PUT", "vm.pause", None);
    assert_eq!(status, 204, "vm.pause: {body}");
    let snap = scratch.path("snap");
    let url = format!("{{\"destination_url\":\"file://{}\"}}", snap.display());
    let (status, body) = http(&api, "PUT", "vm.snapshot", Some(&url));
    assert_eq!(status, 204, "vm.snapshot: {body}\n{}", chv.dump());
    chv.kill();
    fsd_a.kill();

    // A new virtiofsd on a new socket; the restored VM loads the first
    // one's state into it.
    let sock_b = scratch.path("b.sock");
    let _fsd_b = virtiofsd(&share, &sock_b);
    let api_b = scratch.path("api-b.sock");
    let env_b = format!("tag=kataShared,socket={}", sock_b.display());
    let chv = Chv::spawn_with_env(
        &[
            "--api-socket".to_string(),
            api_b.display().to_string(),
            "--restore".into(),
            format!("source_url=file://{}", snap.display()),
        ],
        &[("CHV_FS", &env_b)],
    );
    assert_eq!(vm_state(&api_b), "Paused", "{}", chv.dump());
    let (status, body) = http(&api_b, "PUT", "vm.resume", None);
    assert_eq!(status, 204, "vm.resume: {body}\n{}", chv.dump());
    std::fs::write(share.join("go"), "").unwrap();
    chv.expect("CHK-END", ABORT, Duration::from_secs(120));
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
    chv.assert_no_panic();
}
