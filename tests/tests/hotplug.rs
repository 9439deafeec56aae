//! PCI hotplug and the ACPI power button through the REST API, end to end.
//!
//! - `hotplug_api_with_test_guest` (fast, no Linux): `vm.add-disk` on a
//!   running VM answers 200 with Cloud Hypervisor's `PciDeviceInfo`, records
//!   the disk in the config, refuses a duplicate id; `vm.remove-device` and
//!   `vm.power-button` are accepted (the tiny guest has no ACPI, so nothing
//!   is ejected), unknown ids answer 404. The same VM, run inside a
//!   network namespace the test creates and deletes, gets a network device
//!   (`vm.add-net`: its tap appears in the namespace; `fds` are refused)
//!   and a vsock device (`vm.add-vsock`: its socket file appears; a second
//!   one is refused), both recorded in `vm.info`; the network device can
//!   be removed, the vsock device cannot.
//! - `cold_plug_net_and_vsock_before_boot` (fast, no Linux): on a created
//!   but not booted VM both endpoints answer 204 and only record the
//!   device; `vm.boot` then plugs them (tap and socket appear).
//! - `add_net_takes_scm_rights_fds_over_body_fds` (fast, no Linux): tap
//!   fds sent as SCM_RIGHTS win over the numbers in the body's `fds`
//!   (cold plug and hotplug; chv's fd is checked to be the tap through
//!   `/proc/<pid>/fdinfo`); body `fds` alone and a count that does not
//!   match `num_queues` are refused by field.
//! - `linux_disk_hotplug_and_power_button` (the guest kit restored from the
//!   shared base snapshot, `chv_tests::base_snapshot`, the script sent over
//!   the serial console): with a first hot-added disk (`/dev/vda`), the guest polls for
//!   `/dev/vdb`; the host hot-adds a raw image holding a known pattern, the guest reads the pattern from `/dev/vdb`; the host
//!   asks to remove the disk, the guest's ACPI hotplug driver ejects it and
//!   `/dev/vdb` disappears; the host hot-adds a network device (tap in a
//!   namespace) and the guest sees `eth0` appear and pings the tap over it; the host
//!   presses the power button and the
//!   guest sees the GED interrupt (`ACPI:Ged` in `/proc/interrupts`) with
//!   `PWRB` bound to the ACPI button driver; the guest powers off and chv
//!   exits 0.
//!
//! Requests are raw HTTP/1.1 over the `--api-socket` Unix socket.

use std::os::unix::fs::FileTypeExt;

use std::path::Path;
use std::time::Duration;

use chv_tests::netns::NetNs;
use chv_tests::{testguest, Scratch};

/// Time to the guest's first marker: Linux boots take 40-60 s here.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Time for one guest step (each fork in the guest costs 1-2 s).
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// Console text that ends a wait early as a failure.
const ABORT: &[&str] = &["Kernel panic", "HP-FAIL"];
/// Pattern at offset 0 of the hot-added disk.
const PATTERN: &str = "CHV-HOTPLUG-PATTERN-7d3f";

/// Whether `path` is a Unix socket.
fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

use chv_tests::api_client::http;

/// Writes a 1 MiB raw image starting with [`PATTERN`].
fn pattern_image(path: &Path) {
    let mut data = vec![0u8; 1 << 20];
    data[..PATTERN.len()].copy_from_slice(PATTERN.as_bytes());
    std::fs::write(path, data).expect("write image");
}

/// The string value of `"key": "..."` in a flat JSON object (the tests
/// crate has no JSON parser; the bodies checked here are flat).
fn json_str(body: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":");
    let at = body.find(&pat)? + pat.len();
    let rest = body[at..].trim_start().strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

#[test]
fn hotplug_api_with_test_guest() {
    let dir = Scratch::new("hotplug-api");
    let sock = dir.path("api.sock");
    let img = dir.path("disk.raw");
    pattern_image(&img);
    let ns = NetNs::new("api");
    let mut chv = ns.spawn_chv(&[
        "--kernel".to_string(),
        testguest().display().to_string(),
        "--cmdline".into(),
        "test=ticker".into(),
        "--cpus".into(),
        "boot=1".into(),
        "--memory".into(),
        "size=64M".into(),
        "--serial".into(),
        "tty".into(),
        "--console".into(),
        "off".into(),
        "--api-socket".into(),
        sock.display().to_string(),
    ]);
    chv.expect("TICK 3", &[], Duration::from_secs(30));

    let add = format!(r#"{{"path":"{}"}}"#, img.display());
    let (status, body) = http(&sock, "PUT", "vm.add-disk", Some(&add));
    chv.check(status == 200, &format!("vm.add-disk: {status} {body}"));
    assert_eq!(json_str(&body, "id").as_deref(), Some("_disk0"), "{body}");
    assert_eq!(
        json_str(&body, "bdf").as_deref(),
        Some("0000:00:01.0"),
        "{body}"
    );

    // A named disk goes to the next slot; the same id again is refused.
    let img2 = dir.path("data.raw");
    pattern_image(&img2);
    let named = format!(
        r#"{{"path":"{}","id":"data","readonly":true}}"#,
        img2.display()
    );
    let (status, body) = http(&sock, "PUT", "vm.add-disk", Some(&named));
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_str(&body, "bdf").as_deref(), Some("0000:00:02.0"));
    let (status, body) = http(&sock, "PUT", "vm.add-disk", Some(&named));
    assert_eq!(status, 400, "duplicate id: {body}");
    let missing = format!(r#"{{"path":"{}"}}"#, dir.path("nope.raw").display());
    let (status, body) = http(&sock, "PUT", "vm.add-disk", Some(&missing));
    assert!(status >= 400, "missing image: {status} {body}");

    // A network device: its tap is created inside chv's namespace. Fds
    // cannot be passed over the API; a bad body is refused.
    let (status, body) = http(&sock, "PUT", "vm.add-net", Some(r#"{"tap":"chvhp0"}"#));
    chv.check(status == 200, &format!("vm.add-net: {status} {body}"));
    assert_eq!(json_str(&body, "id").as_deref(), Some("_net0"), "{body}");
    assert_eq!(json_str(&body, "bdf").as_deref(), Some("0000:00:03.0"));
    assert!(ns.has_link("chvhp0"), "tap chvhp0 not in the namespace");
    let (status, body) = http(&sock, "PUT", "vm.add-net", Some(r#"{"fds":[0]}"#));
    assert_eq!(status, 400, "fds: {body}");
    let (status, body) = http(&sock, "PUT", "vm.add-net", Some(r#"{"tap":7}"#));
    assert_eq!(status, 400, "bad body: {body}");

    // The vsock device: its socket appears; a second one is refused.
    let vsock = dir.path("vsock.sock");
    let add = format!(r#"{{"cid":3,"socket":"{}"}}"#, vsock.display());
    let (status, body) = http(&sock, "PUT", "vm.add-vsock", Some(&add));
    chv.check(status == 200, &format!("vm.add-vsock: {status} {body}"));
    assert_eq!(json_str(&body, "id").as_deref(), Some("_vsock"), "{body}");
    assert_eq!(json_str(&body, "bdf").as_deref(), Some("0000:00:04.0"));
    assert!(is_socket(&vsock), "{} is not a socket", vsock.display());
    let other = format!(
        r#"{{"cid":4,"socket":"{}","id":"v2"}}"#,
        dir.path("v2.sock").display()
    );
    let (status, body) = http(&sock, "PUT", "vm.add-vsock", Some(&other));
    assert_eq!(status, 400, "second vsock: {body}");
    assert!(
        !dir.path("v2.sock").exists(),
        "refused vsock bound its socket"
    );

    // Every device is in the config, with its id.
    let (status, body) = http(&sock, "GET", "vm.info", None);
    assert_eq!(status, 200);
    assert!(body.contains(r#""id":"_disk0""#), "{body}");
    assert!(body.contains(r#""id":"data""#), "{body}");
    assert!(body.contains(r#""tap":"chvhp0""#), "{body}");
    assert!(body.contains(r#""id":"_net0""#), "{body}");
    assert!(body.contains(r#""id":"_vsock""#), "{body}");
    assert!(body.contains(r#""cid":3"#), "{body}");

    // Only the 8 spare slots are hotpluggable (no cold-plugged devices):
    // four more disks fit, the next one is refused.
    for n in 0..5 {
        let path = dir.path(&format!("more{n}.raw"));
        std::fs::write(&path, vec![0u8; 4096]).expect("write image");
        let (status, body) = http(
            &sock,
            "PUT",
            "vm.add-disk",
            Some(&format!(r#"{{"path":"{}"}}"#, path.display())),
        );
        if n < 4 {
            assert_eq!(status, 200, "disk {n}: {body}");
            let bdf = format!("0000:00:{:02x}.0", n + 5);
            assert_eq!(json_str(&body, "bdf"), Some(bdf), "{body}");
        } else {
            assert_eq!(status, 500, "{body}");
            assert!(body.contains("hotpluggable"), "{body}");
        }
    }
    let (_, body) = http(&sock, "GET", "vm.info", None);
    assert!(body.contains(r#""id":"_disk4""#), "{body}");
    assert!(
        !body.contains(r#""id":"_disk5""#),
        "refused disk not recorded: {body}"
    );

    let (status, body) = http(&sock, "PUT", "vm.remove-device", Some(r#"{"id":"nope"}"#));
    assert_eq!(status, 404, "{body}");
    let (status, body) = http(&sock, "PUT", "vm.remove-device", Some(r#"{"id":"data"}"#));
    assert_eq!(status, 204, "{body}");
    let (_, body) = http(&sock, "GET", "vm.info", None);
    assert!(!body.contains(r#""id":"data""#), "{body}");
    assert!(body.contains(r#""id":"_disk0""#), "{body}");
    // Network devices can be unplugged too; the vsock device cannot.
    let (status, body) = http(&sock, "PUT", "vm.remove-device", Some(r#"{"id":"_net0"}"#));
    assert_eq!(status, 204, "{body}");
    let (status, body) = http(&sock, "PUT", "vm.remove-device", Some(r#"{"id":"_vsock"}"#));
    assert_eq!(status, 400, "{body}");
    let (_, body) = http(&sock, "GET", "vm.info", None);
    assert!(!body.contains(r#""id":"_net0""#), "{body}");
    assert!(body.contains(r#""id":"_vsock""#), "{body}");

    let (status, body) = http(&sock, "PUT", "vm.power-button", None);
    assert_eq!(status, 204, "{body}");
    // The guest keeps running through all of it.
    let ticks = chv.stdout().matches("TICK").count();
    chv.expect_count("TICK", ticks + 5, &[], Duration::from_secs(30));

    let (status, _) = http(&sock, "PUT", "vmm.shutdown", None);
    assert_eq!(status, 204);
    let st = chv.expect_exit(Duration::from_secs(30));
    chv.assert_no_panic();
    chv.check(st.success(), &format!("chv exited with {st}"));
}

#[test]
fn cold_plug_net_and_vsock_before_boot() {
    let dir = Scratch::new("hotplug-cold");
    let sock = dir.path("api.sock");
    let ns = NetNs::new("cold");
    let mut chv = ns.spawn_chv(&["--api-socket".to_string(), sock.display().to_string()]);
    let create = format!(
        r#"{{"cpus":{{"boot_vcpus":1,"max_vcpus":1}},"memory":{{"size":67108864}},"payload":{{"kernel":"{}","cmdline":"test=ticker"}},"serial":{{"mode":"Tty"}},"console":{{"mode":"Off"}}}}"#,
        testguest().display()
    );
    let (status, body) = http(&sock, "PUT", "vm.create", Some(&create));
    assert_eq!(status, 204, "vm.create: {body}");

    let (status, body) = http(
        &sock,
        "PUT",
        "vm.add-net",
        Some(r#"{"tap":"chvcold0","id":"n0"}"#),
    );
    assert_eq!(status, 204, "vm.add-net before boot: {body}");
    let (status, body) = http(&sock, "PUT", "vm.add-net", Some(r#"{"num_queues":3}"#));
    assert_eq!(status, 400, "odd num_queues: {body}");
    let vsock = dir.path("vsock.sock");
    let add = format!(r#"{{"cid":5,"socket":"{}"}}"#, vsock.display());
    let (status, body) = http(&sock, "PUT", "vm.add-vsock", Some(&add));
    assert_eq!(status, 204, "vm.add-vsock before boot: {body}");
    let (status, body) = http(&sock, "PUT", "vm.add-vsock", Some(&add));
    assert_eq!(status, 400, "second vsock: {body}");
    // Only recorded so far.
    assert!(!ns.has_link("chvcold0"), "tap created before boot");
    assert!(!vsock.exists(), "socket bound before boot");
    let (_, info) = http(&sock, "GET", "vm.info", None);
    assert!(info.contains(r#""tap":"chvcold0""#), "{info}");
    assert!(info.contains(r#""cid":5"#), "{info}");

    let (status, body) = http(&sock, "PUT", "vm.boot", None);
    chv.check(status == 204, &format!("vm.boot: {status} {body}"));
    chv.expect("TICK 3", &[], Duration::from_secs(30));
    assert!(ns.has_link("chvcold0"), "tap not created at boot");
    assert!(is_socket(&vsock), "socket not bound at boot");

    let (status, _) = http(&sock, "PUT", "vmm.shutdown", None);
    assert_eq!(status, 204);
    let st = chv.expect_exit(Duration::from_secs(30));
    chv.assert_no_panic();
    chv.check(st.success(), &format!("chv exited with {st}"));
}

/// The guest side: wait for the disk, read it, wait for it to go, then
/// count GED interrupts around the power button. Single quotes only: the
/// whole script is one `guest_cmd="..."` kernel parameter.
const GUEST_SCRIPT: &str = "\
i=0; while [ ! -b /dev/vda ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done; \
echo HP-SLOTS=$(ls /sys/bus/pci/slots | wc -l); \
echo HP-BUTTON=$(ls /sys/bus/acpi/drivers/button | grep -c PNP0C0C); \
echo HP-WAIT-ADD; \
i=0; while [ ! -b /dev/vdb ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done; \
[ -b /dev/vdb ] || echo HP-FAIL-no-vdb; \
echo HP-DATA=$(head -c 24 /dev/vdb); \
echo HP-WAIT-REMOVE; \
i=0; while [ -b /dev/vdb ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done; \
[ -b /dev/vdb ] && echo HP-FAIL-vdb-stays; \
echo HP-REMOVED; \
echo HP-VDA=$(ls /dev | grep -c vda); \
echo HP-WAIT-NET; \
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done; \
echo HP-NET=$(ls /sys/class/net | grep -c eth0); \
ip addr add 192.168.249.2/24 dev eth0; ip link set eth0 up; \
ping -c 2 -W 10 192.168.249.1 > /dev/null && echo HP-PING=ok || echo HP-PING=fail; \
g0=$(awk '/Ged/{print $2}' /proc/interrupts); \
echo HP-WAIT-POWER ged=$g0; \
i=0; while [ $(awk '/Ged/{print $2}' /proc/interrupts) = $g0 ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done; \
echo HP-POWER ged=$(awk '/Ged/{print $2}' /proc/interrupts)";

#[test]
fn linux_disk_hotplug_and_power_button() {
    let dir = Scratch::new("hotplug-linux");
    let sock = dir.path("api.sock");
    let img = dir.path("hot.raw");
    pattern_image(&img);
    // The first disk (slot 1, /dev/vda) stays, so the second is /dev/vdb.
    let first = dir.path("first.raw");
    std::fs::write(&first, vec![0u8; 1 << 20]).expect("write image");
    // From the shared base snapshot (the kit booted to a command loop, no
    // PCI devices) instead of a boot; made outside the namespace.
    let Some(args) = chv_tests::base_snapshot::restore_args(&sock, &["-v".to_string()]) else {
        return;
    };
    // In a namespace: the hot-added network device's tap lands there.
    let ns = NetNs::new("linux");
    let mut chv = ns.spawn_chv(&args);
    chv_tests::base_snapshot::wait_ready(&mut chv);
    let add = format!(r#"{{"path":"{}","id":"cold0"}}"#, first.display());
    let (status, body) = http(&sock, "PUT", "vm.add-disk", Some(&add));
    assert_eq!(status, 200, "vm.add-disk: {body}\n{}", chv.dump());
    chv.send_line(&format!("{GUEST_SCRIPT}; echo HP-SCRIPT-DONE; poweroff -f"));
    chv.expect("HP-WAIT-ADD", ABORT, BOOT_TIMEOUT);
    let booted = chv.elapsed();
    // acpiphp registered chv's 8 spare hotplug slots (HOTPLUG_SPARE_SLOTS;
    // the base VM has no cold-plugged device); PWRB is bound to the
    // button driver.
    chv.check(chv.stdout().contains("HP-SLOTS=8"), "8 hotplug slots");
    chv.check(chv.stdout().contains("HP-BUTTON=1"), "PWRB bound");

    let add = format!(r#"{{"path":"{}","id":"hot0"}}"#, img.display());
    let (status, body) = http(&sock, "PUT", "vm.add-disk", Some(&add));
    chv.check(status == 200, &format!("vm.add-disk: {status} {body}"));
    assert_eq!(json_str(&body, "bdf").as_deref(), Some("0000:00:02.0"));
    chv.expect("HP-WAIT-REMOVE", ABORT, STEP_TIMEOUT);
    let added = chv.elapsed();
    chv.check(
        chv.stdout().contains(&format!("HP-DATA={PATTERN}")),
        "the guest read the pattern from the hot-added disk",
    );

    let (status, body) = http(&sock, "PUT", "vm.remove-device", Some(r#"{"id":"hot0"}"#));
    chv.check(status == 204, &format!("vm.remove-device: {status} {body}"));
    chv.expect("HP-REMOVED", ABORT, STEP_TIMEOUT);
    let removed = chv.elapsed();
    let (_, info) = http(&sock, "GET", "vm.info", None);
    chv.check(
        !info.contains("hot0"),
        &format!("disk still in config: {info}"),
    );
    chv.check(info.contains("cold0"), &format!("cold disk gone: {info}"));

    chv.expect("HP-WAIT-NET", ABORT, STEP_TIMEOUT);
    chv.check(chv.stdout().contains("HP-VDA=1"), "the first disk stayed");
    let (status, body) = http(
        &sock,
        "PUT",
        "vm.add-net",
        Some(r#"{"tap":"chvhp0","ip":"192.168.249.1","mask":"255.255.255.0"}"#),
    );
    chv.check(status == 200, &format!("vm.add-net: {status} {body}"));
    chv.check(json_str(&body, "bdf").is_some(), &format!("no bdf: {body}"));
    chv.expect("HP-WAIT-POWER", ABORT, STEP_TIMEOUT);
    chv.check(
        chv.stdout().contains("HP-NET=1"),
        "the guest saw the hot-added eth0",
    );
    chv.check(
        chv.stdout().contains("HP-PING=ok"),
        "the guest pinged the host over the hot-added NIC",
    );
    let (status, body) = http(&sock, "PUT", "vm.power-button", None);
    chv.check(status == 204, &format!("vm.power-button: {status} {body}"));
    chv.expect("HP-SCRIPT-DONE", ABORT, STEP_TIMEOUT);
    let lines = chv.lines();
    let count = |prefix: &str| -> u64 {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| chv.fail(&format!("no number after {prefix:?}")))
    };
    let (before, after) = (count("HP-WAIT-POWER ged="), count("HP-POWER ged="));
    chv.check(
        after > before,
        "the power button raised the GED interrupt in the guest",
    );
    // The two hot-adds and the eject request each raised it once before.
    chv.check(before >= 3, "GED interrupts for adds and remove");

    let st = chv.expect_exit(Duration::from_secs(60));
    chv.assert_no_panic();
    chv.check(st.success(), &format!("chv exited with {st}"));
    eprintln!(
        "restore to script {booted:.1?}, hot-add seen {:.1?} later, removal {:.1?} later",
        added - booted,
        removed - added
    );
}

/// The interface name of the tun/tap file `fd` of process `pid` (the
/// `iff:` line of `/proc/<pid>/fdinfo/<fd>`), if it is one.
fn tap_of_fd(pid: u32, fd: i64) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("iff:"))
        .map(|s| s.trim().to_string())
}

/// The `fds` chv recorded for net device `id` in `vm.info`.
fn recorded_fds(info: &str, id: &str) -> Vec<i64> {
    let v: serde_json::Value = serde_json::from_str(info).expect("vm.info is JSON");
    let net = v["config"]["net"]
        .as_array()
        .and_then(|nets| nets.iter().find(|n| n["id"] == id))
        .unwrap_or_else(|| panic!("no net {id} in vm.info: {info}"));
    assert!(net["tap"].is_null(), "net {id} names a tap: {info}");
    net["fds"]
        .as_array()
        .unwrap_or_else(|| panic!("net {id} has no fds: {info}"))
        .iter()
        .map(|f| f.as_i64().expect("fd number"))
        .collect()
}

/// `vm.add-net` with tap fds as SCM_RIGHTS and numbers in the body's `fds`
/// (Kata sends both; Cloud Hypervisor's `attach_fds_to_cfg` drops the body's
/// numbers and takes the received fds): chv must use the received fds, on a
/// created VM (204, used at boot) and on a running one (200 + bdf). The
/// body's number is one no fd of chv has (999) the first time and chv's own
/// stdin (0) the second, so using it would fail or take the wrong file.
/// Our copy of each tap is closed right after sending, so the tap (not
/// persistent) lives on only through chv's fd. Body `fds` without any
/// SCM_RIGHTS fd are refused naming the field (Cloud Hypervisor drops them
/// with a warning and adds the NIC on a fresh auto-named tap; chv's refusal
/// keeps a body number from ever naming one of its own fds); a count that
/// does not match `num_queues` is refused naming both.
#[test]
fn add_net_takes_scm_rights_fds_over_body_fds() {
    use chv_tests::go_client::GoClient;
    use chv_tests::open_tap;
    use std::os::fd::AsRawFd;

    let dir = Scratch::new("hotplug-fds");
    let sock = dir.path("api.sock");
    let ns = NetNs::new("fds");
    // chv first: it must not inherit the taps (open_tap clears CLOEXEC).
    let mut chv = ns.spawn_chv(&["--api-socket".to_string(), sock.display().to_string()]);
    let create = format!(
        r#"{{"cpus":{{"boot_vcpus":1,"max_vcpus":1}},"memory":{{"size":67108864}},"payload":{{"kernel":"{}","cmdline":"test=ticker"}},"serial":{{"mode":"Tty"}},"console":{{"mode":"Off"}}}}"#,
        testguest().display()
    );
    let (status, body) = http(&sock, "PUT", "vm.create", Some(&create));
    assert_eq!(status, 204, "vm.create: {body}");
    let mut api = GoClient::connect(&sock).unwrap_or_else(|e| chv.fail(&format!("connect: {e}")));
    let pid = chv.pid();

    // Numbers in the body, no descriptors: refused, naming `fds`.
    let r = api
        .request(
            "PUT",
            "vm.add-net",
            Some(r#"{"id":"nbad","fds":[999]}"#),
            &[],
        )
        .unwrap();
    chv.check(
        r.status == 400 && r.body.contains("fds") && r.body.contains("SCM_RIGHTS"),
        &format!("body fds without SCM_RIGHTS: {} {}", r.status, r.body),
    );

    // Two taps for num_queues=2 (one queue pair): refused, naming both.
    let (t1, t2) = ns.run(|| (open_tap("chvfdx0"), open_tap("chvfdx1")));
    let r = api
        .request(
            "PUT",
            "vm.add-net",
            Some(r#"{"id":"nbad"}"#),
            &[t1.as_raw_fd(), t2.as_raw_fd()],
        )
        .unwrap();
    chv.check(
        r.status == 400 && r.body.contains("num_queues") && r.body.contains("2 tap fds"),
        &format!("two fds for one queue pair: {} {}", r.status, r.body),
    );
    drop((t1, t2));

    // Cold plug: one tap as SCM_RIGHTS, 999 in the body.
    let tap = ns.run(|| open_tap("chvfd0"));
    let r = api
        .request(
            "PUT",
            "vm.add-net",
            Some(r#"{"id":"nfd0","fds":[999],"mac":"52:54:00:12:34:01"}"#),
            &[tap.as_raw_fd()],
        )
        .unwrap();
    chv.check(
        r.status == 204,
        &format!("cold add-net with fds: {} {}", r.status, r.body),
    );
    drop(tap);
    chv.check(ns.has_link("chvfd0"), "chv does not hold the passed tap");
    let (_, info) = http(&sock, "GET", "vm.info", None);
    chv.check(
        !info.contains("nbad"),
        &format!("refused nets recorded: {info}"),
    );
    let fds = recorded_fds(&info, "nfd0");
    chv.check(
        fds.len() == 1 && fds[0] != 999,
        &format!("recorded fds {fds:?}: {info}"),
    );
    chv.check(
        tap_of_fd(pid, fds[0]).as_deref() == Some("chvfd0"),
        &format!("chv's fd {} is not tap chvfd0", fds[0]),
    );

    let (status, body) = http(&sock, "PUT", "vm.boot", None);
    chv.check(status == 204, &format!("vm.boot: {status} {body}"));
    chv.expect("TICK 3", &[], Duration::from_secs(30));
    chv.check(ns.has_link("chvfd0"), "the passed tap is gone after boot");
    chv.check(
        tap_of_fd(pid, fds[0]).as_deref() == Some("chvfd0"),
        "the booted NIC's fd is not tap chvfd0",
    );

    // Hot plug: the body names chv's own stdin (a pipe).
    let tap = ns.run(|| open_tap("chvfd1"));
    let r = api
        .request(
            "PUT",
            "vm.add-net",
            Some(r#"{"id":"nfd1","fds":[0]}"#),
            &[tap.as_raw_fd()],
        )
        .unwrap();
    chv.check(
        r.status == 200 && json_str(&r.body, "id").as_deref() == Some("nfd1"),
        &format!("hot add-net with fds: {} {}", r.status, r.body),
    );
    chv.check(
        json_str(&r.body, "bdf").is_some_and(|b| b.starts_with("0000:00:")),
        &format!("no bdf: {}", r.body),
    );
    drop(tap);
    chv.check(ns.has_link("chvfd1"), "chv does not hold the hot-added tap");
    let (_, info) = http(&sock, "GET", "vm.info", None);
    let fds = recorded_fds(&info, "nfd1");
    chv.check(
        fds.len() == 1 && fds[0] != 0,
        &format!("recorded fds {fds:?}: {info}"),
    );
    chv.check(
        tap_of_fd(pid, fds[0]).as_deref() == Some("chvfd1"),
        &format!("chv's fd {} is not tap chvfd1", fds[0]),
    );
    // Body fds without descriptors on the running VM: refused as well.
    let r = api
        .request("PUT", "vm.add-net", Some(r#"{"fds":[0]}"#), &[])
        .unwrap();
    chv.check(
        r.status == 400 && r.body.contains("fds"),
        &format!("hot body fds without SCM_RIGHTS: {} {}", r.status, r.body),
    );
    let ticks = chv.stdout().matches("TICK").count();
    chv.expect_count("TICK", ticks + 5, &[], Duration::from_secs(30));

    let (status, _) = http(&sock, "PUT", "vmm.shutdown", None);
    assert_eq!(status, 204);
    let st = chv.expect_exit(Duration::from_secs(30));
    chv.assert_no_panic();
    chv.check(st.success(), &format!("chv exited with {st}"));
}
