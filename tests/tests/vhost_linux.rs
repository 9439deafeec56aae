//! virtio-fs end to end: the Linux guest kit booted with shared guest RAM
//! (`CHV_MEMORY_SHARED=1`) and a virtio-fs device (`CHV_FS`, until the
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

fn virtiofsd(dir: &Path, socket: &Path) -> Child {
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
    child
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
        "size=128M".into(),
        "--serial".into(),
        "tty".into(),
        "--api-socket".into(),
        api.display().to_string(),
    ];
    let fs_env = format!(
        "tag=kataShared,socket={},num_queues=1,queue_size=1024",
        sock.display()
    );
    let chv = Chv::spawn_with_env(
        &args,
        &[("CHV_MEMORY_SHARED", "1"), ("CHV_FS", fs_env.as_str())],
    );
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
    let _ = fsd.kill();
    let _ = fsd.wait();
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
