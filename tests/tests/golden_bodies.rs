//! The golden request bodies of `tests/golden/` (exactly what ch-remote and
//! Kata's `clh` driver send) over the real API socket to a real chv running
//! the tiny test guest. Each body is either accepted (2xx) or refused with a
//! 4xx whose JSON error array names the field chv cannot honour; which
//! fields may be refused is listed per body below, so a new refusal fails.
//!
//! Covers: the three Kata `vm.create` bodies; Kata's `vm.add-net` with a
//! real tap fd in the same `sendmsg` (SCM_RIGHTS), then a boot; every
//! ch-remote body cold-plugged on a created VM (current and v4x shapes);
//! Kata's disk hotplug on the running guest (200 + PciDeviceInfo with a
//! segment-0 bdf) and its unplug; snapshot and restore (ch-remote's and
//! Kata's shapes); receive-migration and send-migration between two chv
//! processes; Cloud Hypervisor api_client framing (fds on the first
//! write, then Content-Length, then the body) for several taps and a hundred
//! requests on one keep-alive connection.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use chv_tests::{open_tap, testguest, workspace_dir, Chv, Scratch};

/// One answer: status and body (an error body is a JSON array of strings).
struct Answer {
    status: u16,
    body: String,
}

/// Reads one response (Content-Length framed) from `s`.
fn read_answer(s: &mut UnixStream) -> Answer {
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).expect("read response");
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status_line = head.lines().next().unwrap_or("");
    // Cloud Hypervisor's client takes everything up to '\r' as the code.
    let code = status_line
        .strip_prefix("HTTP/1.1 ")
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let status: u16 = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("status line {status_line:?} is not `HTTP/1.1 <code> `"));
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).expect("read body");
        assert!(n > 0, "connection closed inside the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    Answer {
        status,
        body: String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned(),
    }
}

/// Writes `bytes` in one `sendmsg` carrying `fds` as SCM_RIGHTS.
fn send_with_fds(s: &UnixStream, bytes: &[u8], fds: &[RawFd]) {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space;
        // SAFETY: the control buffer is CMSG_SPACE(fd_bytes) long, so the
        // first header and its data fit in it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let sent = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) };
    assert_eq!(
        sent as usize,
        bytes.len(),
        "sendmsg: {}",
        std::io::Error::last_os_error()
    );
}

/// A PUT framed as Go's net/http does (one write; here with `fds`).
fn put_with_fds(sock: &Path, endpoint: &str, body: &str, fds: &[RawFd]) -> Answer {
    let mut s = UnixStream::connect(sock).expect("connect");
    let req = format!(
        "PUT /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: OpenAPI-Generator/1.0.0/go\r\n\
         Content-Length: {}\r\nAccept: application/json\r\nContent-Type: application/json\r\n\r\n{body}",
        body.len()
    );
    send_with_fds(&s, req.as_bytes(), fds);
    read_answer(&mut s)
}

/// A request framed as ch-remote's api_client does (head, Content-Length
/// and body in separate writes; no Content-Type).
fn request(sock: &Path, method: &str, endpoint: &str, body: Option<&str>) -> Answer {
    let mut s = UnixStream::connect(sock).expect("connect");
    let head =
        format!("{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n");
    s.write_all(head.as_bytes()).expect("write");
    match body {
        Some(b) => {
            s.write_all(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes())
                .expect("write");
            s.write_all(b.as_bytes()).expect("write");
        }
        None => s.write_all(b"\r\n").expect("write"),
    }
    read_answer(&mut s)
}

fn put(sock: &Path, endpoint: &str, body: Option<&str>) -> Answer {
    request(sock, "PUT", endpoint, body)
}

/// Paths the placeholders of the golden bodies stand for.
struct Places {
    dir: PathBuf,
}

impl Places {
    fn golden(&self, name: &str) -> String {
        let file = workspace_dir().join("tests/golden").join(name);
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let p = |n: &str| self.dir.join(n).display().to_string();
        let kernel = testguest().display().to_string();
        // Longest placeholders first (/INITRD before /I..., etc.).
        text.replace("/KERNEL", &kernel)
            .replace("/INITRD", &p("initrd"))
            .replace("/IMAGE", &p("image.img"))
            .replace("CMDLINE", "test=ticker")
            .replace("/FSSOCK", &p("fs.sock"))
            .replace("/VSOCK", &p("vsock.sock"))
            .replace("/DISK", &p("disk.img"))
            .replace("/PMEM", &p("pmem.img"))
            .replace("/USOCK", &p("user.sock"))
            .replace("/SNAP", &p("snap"))
            .replace("/MIG", &p("mig.sock"))
            .replace("/CORE", &p("core"))
    }
}

/// Checks that `a` (the answer to golden body `name`) is a 2xx, or a 4xx
/// whose error chain names one of `refusable`.
fn expect_accepted_or_refused(chv: &Chv, name: &str, a: &Answer, refusable: &[&str]) -> bool {
    if (200..300).contains(&a.status) {
        eprintln!("golden {name}: accepted ({})", a.status);
        return true;
    }
    let chain: Vec<String> = serde_json::from_str(&a.body).unwrap_or_else(|e| {
        chv.fail(&format!(
            "golden {name}: {} with a body that is not a JSON array of strings ({e}): {}",
            a.status, a.body
        ))
    });
    let text = chain.join(": ");
    let named = refusable.iter().find(|f| text.contains(*f));
    chv.check(
        (400..500).contains(&a.status) && named.is_some(),
        &format!(
            "golden {name}: got {} {text:?}; want 2xx or a 4xx naming one of {refusable:?}",
            a.status
        ),
    );
    eprintln!("golden {name}: refused ({}) {text}", a.status);
    false
}

/// Starts an API-only chv and waits for its socket.
fn start_vmm(dir: &Scratch, name: &str) -> (Chv, PathBuf) {
    let sock = dir.path(name);
    let chv = Chv::spawn(&["--api-socket", &format!("path={}", sock.display()), "-v"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&sock).is_err() {
        if Instant::now() > deadline {
            chv.fail("the API socket never accepted");
        }
        thread::sleep(Duration::from_millis(20));
    }
    (chv, sock)
}

/// The test guest's ticker (2 vCPUs possible, 64 MiB), serial to `serial`.
fn ticker_config(serial: &Path) -> String {
    serde_json::json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 2},
        "memory": {"size": 64u64 << 20},
        "payload": {"kernel": testguest(), "cmdline": "test=ticker"},
        "serial": {"mode": "File", "file": serial},
        "console": {"mode": "Off"},
    })
    .to_string()
}

fn wait_ticks(chv: &Chv, serial: &Path, what: &str) {
    let start = std::fs::read_to_string(serial)
        .map(|t| t.matches("TICK").count())
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = std::fs::read_to_string(serial)
            .map(|t| t.matches("TICK").count())
            .unwrap_or(0);
        if n >= start + 3 {
            return;
        }
        if Instant::now() > deadline {
            chv.fail(&format!("{what}: the guest does not tick"));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn vm_state(sock: &Path) -> String {
    let a = request(sock, "GET", "vm.info", None);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap_or_default();
    v["state"].as_str().unwrap_or("").to_string()
}

#[test]
fn golden_bodies_are_accepted_or_refused_by_field() {
    let dir = Scratch::new("golden");
    let places = Places { dir: dir.0.clone() };
    for f in ["disk.img", "pmem.img", "image.img"] {
        std::fs::write(dir.path(f), vec![0u8; 1 << 20]).expect("image");
    }
    let (chv, sock) = start_vmm(&dir, "api.sock");

    // Kata's vm.create bodies, and ch-remote's `create` file.
    for name in [
        "kata-vm-create.json",
        "kata-vm-create-image.json",
        "kata-vm-create-debug.json",
    ] {
        let a = put(&sock, "vm.create", Some(&places.golden(name)));
        if expect_accepted_or_refused(&chv, name, &a, &[]) {
            chv.check(vm_state(&sock) == "Created", "state after Kata's create");
            chv.check(put(&sock, "vm.delete", None).status == 204, "vm.delete");
        }
    }

    // Every ch-remote body on a created VM (cold-plug before boot), in the
    // current and the v4x shapes.
    let a = put(
        &sock,
        "vm.create",
        Some(&places.golden("chremote-create.json")),
    );
    expect_accepted_or_refused(&chv, "chremote-create.json", &a, &[]);
    let cold: &[(&str, &str, &[&str])] = &[
        ("vm.add-disk", "chremote-add-disk.json", &[]),
        ("vm.add-disk", "legacy-v4x/chremote-add-disk.json", &[]),
        ("vm.add-disk", "kata-add-disk.json", &[]),
        ("vm.add-net", "chremote-add-net.json", &[]),
        ("vm.add-net", "legacy-v4x/chremote-add-net.json", &[]),
        ("vm.add-vsock", "chremote-add-vsock.json", &[]),
        (
            "vm.add-fs",
            "chremote-add-fs.json",
            &["memory.shared=false"],
        ),
        (
            "vm.add-fs",
            "legacy-v4x/chremote-add-fs.json",
            &["memory.shared=false"],
        ),
        ("vm.add-pmem", "chremote-add-pmem.json", &[]),
        ("vm.add-pmem", "legacy-v4x/chremote-add-pmem.json", &[]),
        ("vm.add-device", "chremote-add-device.json", &["devices"]),
        (
            "vm.add-device",
            "legacy-v4x/chremote-add-device.json",
            &["devices"],
        ),
        ("vm.add-device", "kata-add-device.json", &["devices"]),
        (
            "vm.add-user-device",
            "chremote-add-user-device.json",
            &["user_devices"],
        ),
        (
            "vm.add-user-device",
            "legacy-v4x/chremote-add-user-device.json",
            &["user_devices"],
        ),
        ("vm.add-vdpa", "chremote-add-vdpa.json", &["vdpa"]),
        (
            "vm.add-vdpa",
            "legacy-v4x/chremote-add-vdpa.json",
            &["vdpa"],
        ),
        ("vm.remove-device", "chremote-remove-device.json", &[]),
        ("vm.resize", "chremote-resize-cpus.json", &[]),
        ("vm.resize", "kata-resize.json", &[]),
        ("vm.resize", "kata-resize-cpus.json", &[]),
        ("vm.resize", "chremote-resize-balloon.json", &[]),
        ("vm.resize", "chremote-resize-memory.json", &["desired_ram"]),
        ("vm.resize", "chremote-resize.json", &["desired_ram"]),
        ("vm.resize", "kata-resize-ram.json", &["desired_ram"]),
        ("vm.resize-zone", "chremote-resize-zone.json", &["id=mem0"]),
        (
            "vm.resize-disk",
            "chremote-resize-disk.json",
            &["desired_size"],
        ),
        (
            "vm.coredump",
            "chremote-coredump.json",
            &["destination_url"],
        ),
    ];
    // ch-remote's create body has max_vcpus=1: resize to 2 needs 2.
    chv.check(put(&sock, "vm.delete", None).status == 204, "vm.delete");
    let created = places
        .golden("chremote-create.json")
        .replace(r#""max_vcpus":1"#, r#""max_vcpus":2"#);
    chv.check(
        put(&sock, "vm.create", Some(&created)).status == 204,
        "create with max_vcpus=2",
    );
    for (endpoint, name, refusable) in cold {
        let a = put(&sock, endpoint, Some(&places.golden(name)));
        expect_accepted_or_refused(&chv, name, &a, refusable);
    }
    // What was accepted shows in vm.info; `_disk0` was removed again.
    let info: serde_json::Value =
        serde_json::from_str(&request(&sock, "GET", "vm.info", None).body).unwrap_or_default();
    chv.check(
        info["config"]["disks"].as_array().map(Vec::len) == Some(2),
        &format!("vm.info disks after 3 adds and 1 remove: {info}"),
    );
    chv.check(
        info["config"]["net"].as_array().map(Vec::len) == Some(2)
            && info["config"]["vsock"]["cid"] == 3
            && info["config"]["cpus"]["boot_vcpus"] == 2,
        &format!("vm.info after the cold adds: {info}"),
    );
    chv.check(put(&sock, "vm.delete", None).status == 204, "vm.delete");

    // Kata's add-net with a real tap fd in the same sendmsg, then boot.
    let serial = dir.path("serial.log");
    chv.check(
        put(&sock, "vm.create", Some(&ticker_config(&serial))).status == 204,
        "create the ticker",
    );
    let tap = open_tap(&format!("chvg{}", std::process::id() % 100_000));
    let a = put_with_fds(
        &sock,
        "vm.add-net",
        &places.golden("kata-add-net.json"),
        &[tap.as_raw_fd()],
    );
    expect_accepted_or_refused(&chv, "kata-add-net.json (fd)", &a, &[]);
    chv.check(a.status == 204, "cold add-net answers 204");
    chv.check(put(&sock, "vm.boot", None).status == 204, "vm.boot");
    wait_ticks(&chv, &serial, "boot with Kata's NIC");
    chv.check(vm_state(&sock) == "Running", "running after boot");

    // Kata's disk hotplug: 200 + PciDeviceInfo with bdf 0000:00:XX.0.
    let a = put(
        &sock,
        "vm.add-disk",
        Some(&places.golden("kata-add-disk.json")),
    );
    expect_accepted_or_refused(&chv, "kata-add-disk.json (hotplug)", &a, &[]);
    let info: serde_json::Value = serde_json::from_str(&a.body).unwrap_or_default();
    let bdf = info["bdf"].as_str().unwrap_or("");
    let id = info["id"].as_str().unwrap_or("").to_string();
    chv.check(
        a.status == 200
            && !id.is_empty()
            && bdf.len() == 12
            && bdf.starts_with("0000:00:")
            && bdf.ends_with(".0"),
        &format!("hot-added disk answer: {} {}", a.status, a.body),
    );
    let remove = places
        .golden("kata-remove-device.json")
        .replace("_disk2", &id);
    let a = put(&sock, "vm.remove-device", Some(&remove));
    expect_accepted_or_refused(&chv, "kata-remove-device.json", &a, &[]);
    chv.check(put(&sock, "vm.delete", None).status == 204, "vm.delete");
    drop(tap);

    // Snapshot (ch-remote's and Kata's bodies) and restore from each.
    chv.check(
        put(&sock, "vm.create", Some(&ticker_config(&serial))).status == 204,
        "create the ticker again",
    );
    chv.check(put(&sock, "vm.boot", None).status == 204, "vm.boot");
    wait_ticks(&chv, &serial, "second boot");
    chv.check(put(&sock, "vm.pause", None).status == 204, "vm.pause");
    std::fs::create_dir_all(dir.path("snap")).expect("snap dir");
    let a = put(
        &sock,
        "vm.snapshot",
        Some(&places.golden("chremote-snapshot.json")),
    );
    expect_accepted_or_refused(&chv, "chremote-snapshot.json", &a, &[]);
    chv.check(a.status == 204, "snapshot written");
    chv.check(put(&sock, "vm.delete", None).status == 204, "vm.delete");
    for name in [
        "chremote-restore.json",
        "legacy-v4x/chremote-restore.json",
        "kata-restore.json",
    ] {
        let a = put(&sock, "vm.restore", Some(&places.golden(name)));
        expect_accepted_or_refused(&chv, name, &a, &[]);
        chv.check(a.status == 204, &format!("{name}: restored"));
        chv.check(vm_state(&sock) == "Paused", "restored paused");
        chv.check(put(&sock, "vm.resume", None).status == 204, "vm.resume");
        wait_ticks(&chv, &serial, name);
        if name != "kata-restore.json" {
            chv.check(put(&sock, "vm.delete", None).status == 204, "vm.delete");
        }
    }
    // Kata's snapshot body on the running restored VM (paused first).
    chv.check(put(&sock, "vm.pause", None).status == 204, "vm.pause");
    std::fs::remove_dir_all(dir.path("snap")).expect("clear snap");
    std::fs::create_dir_all(dir.path("snap")).expect("snap dir");
    let a = put(
        &sock,
        "vm.snapshot",
        Some(&places.golden("kata-snapshot.json")),
    );
    expect_accepted_or_refused(&chv, "kata-snapshot.json", &a, &[]);
    chv.check(put(&sock, "vm.resume", None).status == 204, "vm.resume");

    // Migration: a second chv receives (its VMM thread waits for the
    // sender), this one sends; then the guest ticks over there.
    let dir2 = Scratch::new("golden-recv");
    let (chv2, sock2) = start_vmm(&dir2, "api.sock");
    let receive = places.golden("chremote-receive-migration.json");
    let receiver = {
        let sock2 = sock2.clone();
        thread::spawn(move || put(&sock2, "vm.receive-migration", Some(&receive)))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.path("mig.sock").exists() {
        if Instant::now() > deadline {
            chv2.fail("the receiver never listened on mig.sock");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let a = put(
        &sock,
        "vm.send-migration",
        Some(&places.golden("chremote-send-migration.json")),
    );
    expect_accepted_or_refused(&chv, "chremote-send-migration.json", &a, &[]);
    let r = receiver.join().expect("receiver thread");
    expect_accepted_or_refused(&chv2, "chremote-receive-migration.json", &r, &[]);
    chv2.check(vm_state(&sock2) == "Running", "running on the receiver");
    wait_ticks(&chv2, &serial, "after migration");
    chv2.check(
        put(&sock2, "vmm.shutdown", None).status == 204,
        "vmm.shutdown",
    );
    chv.assert_no_panic();
    chv2.assert_no_panic();
}

/// The legacy shapes of the migration bodies and CH's refused values: each
/// refusal names its field.
#[test]
fn golden_migration_and_restore_refusals_name_the_field() {
    let dir = Scratch::new("golden-refuse");
    let places = Places { dir: dir.0.clone() };
    let (chv, sock) = start_vmm(&dir, "api.sock");
    let cases: &[(&str, String, &str)] = &[
        (
            "vm.send-migration",
            places
                .golden("chremote-send-migration.json")
                .replace(r#""connections":1"#, r#""connections":4"#),
            "connections",
        ),
        (
            "vm.send-migration",
            places
                .golden("chremote-send-migration.json")
                .replace(r#""memory_mode":"Precopy""#, r#""memory_mode":"Postcopy""#),
            "memory_mode=Postcopy",
        ),
        (
            "vm.send-migration",
            places
                .golden("chremote-send-migration.json")
                .replace(r#""tls_dir":null"#, r#""tls_dir":"/tls""#),
            "tls_dir",
        ),
        (
            "vm.receive-migration",
            places
                .golden("chremote-receive-migration.json")
                .replace(r#""tls_dir":null"#, r#""tls_dir":"/tls""#),
            "tls_dir",
        ),
        (
            "vm.restore",
            places.golden("chremote-restore.json").replace(
                r#""zone_updates":[]"#,
                r#""zone_updates":[{"id":"z","host_numa_node":0}]"#,
            ),
            "zone_updates",
        ),
        (
            "vm.restore",
            places.golden("chremote-restore.json").replace(
                r#""memory_restore_mode":"Copy""#,
                r#""memory_restore_mode":"Sometimes""#,
            ),
            "Sometimes",
        ),
    ];
    for (endpoint, body, field) in cases {
        let a = put(&sock, endpoint, Some(body));
        let chain: Vec<String> = serde_json::from_str(&a.body).unwrap_or_default();
        chv.check(
            (400..500).contains(&a.status) && chain.join(": ").contains(field),
            &format!(
                "{endpoint} {body}: got {} {}; want 4xx naming {field}",
                a.status, a.body
            ),
        );
    }
    // The legacy send-migration shape parses (and fails only because no
    // VM runs).
    let a = put(
        &sock,
        "vm.send-migration",
        Some(&places.golden("legacy-v4x/chremote-send-migration.json")),
    );
    chv.check(
        a.status == 404 && a.body.contains("not booted"),
        &format!("legacy send-migration: {} {}", a.status, a.body),
    );
    chv.check(
        put(&sock, "vmm.shutdown", None).status == 204,
        "vmm.shutdown",
    );
}

/// Cloud Hypervisor's api_client framing on one keep-alive connection:
/// the request line and headers in a `sendmsg` carrying the tap fd, then
/// `Content-Length`, then the body, each a separate write (paced, so chv
/// reads them apart), for several cold-added taps; then a hundred more
/// requests on the same connection, and `vm.info` lists every device.
#[test]
fn api_client_framing_with_fds_on_one_connection() {
    let dir = Scratch::new("framing");
    let (chv, sock) = start_vmm(&dir, "api.sock");
    let serial = dir.path("serial.log");
    let a = put(&sock, "vm.create", Some(&ticker_config(&serial)));
    chv.check(
        a.status == 204,
        &format!("vm.create: {} {}", a.status, a.body),
    );
    let mut s = UnixStream::connect(&sock).expect("connect");
    let mut taps = Vec::new();
    for i in 0..3 {
        let tap = open_tap(&format!("chvfr{}n{i}", std::process::id() % 10000));
        let body = format!(r#"{{"id":"framed{i}","num_queues":2,"queue_size":256}}"#);
        let head = "PUT /api/v1/vm.add-net HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n";
        send_with_fds(&s, head.as_bytes(), &[tap.as_raw_fd()]);
        thread::sleep(Duration::from_millis(20));
        s.write_all(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes())
            .expect("write length");
        thread::sleep(Duration::from_millis(20));
        s.write_all(body.as_bytes()).expect("write body");
        let a = read_answer(&mut s);
        chv.check(
            a.status == 204 && a.body.is_empty(),
            &format!("add-net {i} framed as api_client: {} {}", a.status, a.body),
        );
        taps.push(tap);
    }
    for i in 0..100 {
        s.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n")
            .expect("write head");
        s.write_all(b"\r\n").expect("write end");
        let a = read_answer(&mut s);
        chv.check(
            a.status == 200,
            &format!("ping {i} on the kept connection: {}", a.status),
        );
    }
    s.write_all(b"GET /api/v1/vm.info HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write info");
    let a = read_answer(&mut s);
    let info: serde_json::Value = serde_json::from_str(&a.body).unwrap_or_default();
    let ids: Vec<&str> = info["config"]["net"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["id"].as_str())
        .collect();
    chv.check(
        ids == ["framed0", "framed1", "framed2"],
        &format!(
            "vm.info net ids after the framed adds: {ids:?} ({})",
            a.body
        ),
    );
}
