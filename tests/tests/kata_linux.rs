//! A Linux guest driven the way Kata's `clh` driver drives Cloud
//! Hypervisor, over one keep-alive connection framed as Go's client frames
//! it (see `chv_tests::go_client`):
//!
//! 1. `vmm.ping`, then `vm.create` with the body Kata's generated client
//!    sends (`tests/golden/kata-vm-create.json` shape: every field Kata
//!    sets, `memory.shared`, `platform.num_pci_segments: 2`, virtio-fs on
//!    segment 1, a vsock, and a CPU topology), then `vm.info` (Created);
//! 2. a cold `vm.add-net` with the tap fd as SCM_RIGHTS in the same
//!    `sendmsg` (204), `vm.boot`, `vm.info` (Running);
//! 3. in the guest: the topology (`thread_siblings_list`, `core_id`), the
//!    virtio-fs device on PCI segment 1 mounted and read, the NIC's MAC;
//! 4. `vm.add-disk` hot-plug answered 200 with `bdf` `0000:00:DD.0`, seen by
//!    the guest; `vm.resize` of the vCPUs (and to the current count) within
//!    a second, followed by `vm.info`; `vm.resize` `desired_ram` (ACPI
//!    hotplug): virtiofsd maps the new RAM region, and the guest onlines
//!    it and still reads the share;
//! 5. `vm.pause`, `vm.snapshot`; the snapshot holds `config.json` and
//!    `state.json`; `config.json` is edited as Kata edits it (a new
//!    virtio-fs socket and vsock socket), `vmm.shutdown` is answered before
//!    chv exits;
//! 6. a new chv restores the edited snapshot with the tap fd passed to
//!    `vm.restore` (`net_fds`), resumes, and the guest reads the share
//!    again through the new virtiofsd, which maps boot and hot-added RAM;
//!    the new vsock socket exists.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chv_tests::base_snapshot::LOOP;
use chv_tests::go_client::{GoClient, GoResponse};
use chv_tests::netns::{open_tap, NetNs};
use chv_tests::{require_guest_kit, Chv, Scratch};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
const ABORT: &[&str] = &["Kernel panic", "CHK-FAIL"];
const MAC: &str = "12:34:56:78:9a:bc";
const TAP: &str = "katatap0";

/// A virtiofsd, killed and reaped on drop.
struct Virtiofsd(Child);

impl Virtiofsd {
    fn start(dir: &Path, socket: &Path) -> Self {
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
        Self(child)
    }
}

impl Virtiofsd {
    /// How many of chv's guest RAM memfds (`memfd:chv-guest-ram`) this
    /// virtiofsd has mapped: one per region of the memory table it got.
    fn ram_regions(&self) -> usize {
        std::fs::read_to_string(format!("/proc/{}/maps", self.0.id()))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("memfd:chv-guest-ram"))
            .count()
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kata's `vm.create` body (keys sorted, trailing newline, as Go's encoder
/// writes it), with this test's paths and sizes.
fn kata_create_body(kernel: &Path, initramfs: &Path, fs_sock: &Path, vsock: &Path) -> String {
    let cmdline = format!("console=ttyS0 quiet panic=-1 guest_cmd=\"{LOOP}\"");
    let body = serde_json::json!({
        "console": {"iommu": false, "mode": "Off"},
        "cpus": {
            "boot_vcpus": 2,
            "kvm_hyperv": false,
            "max_vcpus": 4,
            "topology": {
                "cores_per_die": 2,
                "dies_per_package": 1,
                "packages": 1,
                "threads_per_core": 2
            }
        },
        "fs": [{
            "num_queues": 1,
            "pci_segment": 1,
            "queue_size": 1024,
            "socket": fs_sock,
            "tag": "kataShared"
        }],
        "iommu": false,
        "landlock_enable": false,
        "memory": {
            "hotplug_method": "Acpi",
            "hotplug_size": 268435456u64,
            "hugepages": false,
            "mergeable": false,
            "prefault": false,
            "shared": true,
            "size": 268435456u64,
            "thp": true
        },
        "payload": {"cmdline": cmdline, "initramfs": initramfs, "kernel": kernel},
        "platform": {"num_pci_segments": 2, "tdx": false},
        "pvpanic": false,
        "rng": {"iommu": false, "src": "/dev/urandom"},
        "serial": {"iommu": false, "mode": "Tty"},
        "vsock": {"cid": 3, "iommu": false, "socket": vsock},
        "watchdog": false
    });
    format!("{body}\n")
}

fn call(
    chv: &Chv,
    api: &mut GoClient,
    method: &str,
    endpoint: &str,
    body: Option<&str>,
    fds: &[i32],
) -> GoResponse {
    api.request(method, endpoint, body, fds)
        .unwrap_or_else(|e| chv.fail(&format!("{endpoint}: {e}")))
}

fn expect_status(chv: &Chv, r: &GoResponse, want: &[u16], what: &str) {
    chv.check(
        want.contains(&r.status),
        &format!("{what}: {} {}", r.status, r.body),
    );
}

fn vm_state(chv: &Chv, api: &mut GoClient) -> String {
    let r = call(chv, api, "GET", "vm.info", None, &[]);
    expect_status(chv, &r, &[200], "vm.info");
    chv.check(
        r.header("content-type") == Some("application/json"),
        "vm.info without Content-Type: application/json (Go's client needs it)",
    );
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    v["state"].as_str().unwrap_or_default().to_string()
}

/// Runs `cmd` in the guest and waits until it has finished (a numbered end
/// marker printed after it, so `marker`'s whole line is in).
fn guest(chv: &mut Chv, cmd: &str, marker: &str) {
    static STEP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STEP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    chv.send_line(&format!("{cmd}; echo CHK-STEP-$(({n}+1000))"));
    chv.expect(&format!("CHK-STEP-{}", n + 1000), ABORT, STEP_TIMEOUT);
    chv.check(
        chv.stdout().contains(marker),
        &format!("no {marker} from the guest"),
    );
}

/// The value printed after `key:` on the console.
fn value(chv: &Chv, key: &str) -> String {
    let prefix = format!("{key}:");
    chv.lines()
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_else(|| chv.fail(&format!("no {prefix} line")))
}

#[test]
fn kata_driven_lifecycle() {
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let scratch = Scratch::new("kata");
    let ns = NetNs::new("kata");
    let share = scratch.path("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("hello"), "from-the-host\n").unwrap();
    let fs_a = scratch.path("fs-a.sock");
    let _fsd_a = Virtiofsd::start(&share, &fs_a);
    let vsock_a = scratch.path("vsock-a.sock");
    let disk = scratch.path("disk.img");
    std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
    let api_path = scratch.path("api.sock");

    // 1. Create, as Kata does: ping, create, info.
    let mut chv = ns.spawn_chv(&["--api-socket".to_string(), api_path.display().to_string()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !api_path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut api =
        GoClient::connect(&api_path).unwrap_or_else(|e| chv.fail(&format!("connect: {e}")));
    let r = call(&chv, &mut api, "GET", "vmm.ping", None, &[]);
    expect_status(&chv, &r, &[200], "vmm.ping");
    let body = kata_create_body(&kit.kernel, &kit.initramfs, &fs_a, &vsock_a);
    let r = call(&chv, &mut api, "PUT", "vm.create", Some(&body), &[]);
    expect_status(&chv, &r, &[204], "vm.create (Kata body)");
    chv.check(
        vm_state(&chv, &mut api) == "Created",
        "state after vm.create",
    );

    // 2. Cold add-net with the tap fd in the same sendmsg, then boot.
    let tap = ns.run(|| open_tap(TAP));
    let net = format!(
        r#"{{"iommu":false,"ip":"192.168.249.1","mac":"{MAC}","mask":"255.255.255.0","num_queues":2,"queue_size":256,"vhost_mode":"Client","vhost_user":false}}"#
    );
    let r = call(
        &chv,
        &mut api,
        "PUT",
        "vm.add-net",
        Some(&net),
        &[tap.as_raw_fd()],
    );
    expect_status(&chv, &r, &[204], "cold vm.add-net");
    chv.check(r.body.is_empty(), "204 with a body");
    let r = call(&chv, &mut api, "PUT", "vm.boot", None, &[]);
    expect_status(&chv, &r, &[204], "vm.boot");
    chv.check(vm_state(&chv, &mut api) == "Running", "state after vm.boot");
    chv.expect(chv_tests::base_snapshot::READY, ABORT, BOOT_TIMEOUT);

    // 3. Topology, segment 1, virtio-fs, NIC.
    guest(
        &mut chv,
        "echo CHK-TOPO:$(cat /sys/devices/system/cpu/cpu1/topology/thread_siblings_list):\
         $(cat /sys/devices/system/cpu/cpu1/topology/core_id):\
         $(cat /sys/devices/system/cpu/possible)",
        "CHK-TOPO:",
    );
    chv.check(
        value(&chv, "CHK-TOPO") == "0-1:0:0-3",
        "topology 2 threads x 2 cores: cpu1 is cpu0's sibling on core 0, 4 possible",
    );
    guest(
        &mut chv,
        "echo CHK-SEG1:$(ls -d /sys/bus/pci/devices/0001:00:* 2>/dev/null | wc -l)",
        "CHK-SEG1:",
    );
    chv.check(
        value(&chv, "CHK-SEG1") != "0",
        "no PCI device on segment 1 in the guest",
    );
    guest(
        &mut chv,
        "mkdir -p /mnt; mount -t virtiofs kataShared /mnt; echo CHK-FS:$(cat /mnt/hello)",
        "CHK-FS:",
    );
    chv.check(
        value(&chv, "CHK-FS") == "from-the-host",
        "virtio-fs on segment 1 not readable",
    );
    guest(
        &mut chv,
        "echo CHK-MAC:$(cat /sys/class/net/eth0/address)",
        "CHK-MAC:",
    );
    chv.check(value(&chv, "CHK-MAC") == MAC, "guest NIC MAC");

    // 4. Hot-plug a disk; resize the vCPUs.
    let add_disk = format!(
        r#"{{"id":"katadisk","iommu":false,"num_queues":1,"path":"{}","queue_size":1024,"readonly":false,"vhost_user":false}}"#,
        disk.display()
    );
    let r = call(&chv, &mut api, "PUT", "vm.add-disk", Some(&add_disk), &[]);
    expect_status(&chv, &r, &[200], "hot vm.add-disk");
    let info: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    let bdf = info["bdf"].as_str().unwrap_or_default().to_string();
    let ok = bdf.len() == 12 && bdf.starts_with("0000:00:") && bdf.ends_with(".0");
    chv.check(ok, &format!("bdf {bdf:?} is not 0000:00:DD.0"));
    guest(
        &mut chv,
        "i=0; while [ ! -e /sys/block/vda ] && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done; \
         echo CHK-DISK:$(cat /sys/block/vda/size)",
        "CHK-DISK:",
    );
    chv.check(value(&chv, "CHK-DISK") == "8192", "hot-plugged disk size");
    for want in [3, 3] {
        let started = Instant::now();
        let body = format!(r#"{{"desired_vcpus":{want}}}"#);
        let r = call(&chv, &mut api, "PUT", "vm.resize", Some(&body), &[]);
        expect_status(&chv, &r, &[204], "vm.resize");
        chv.check(
            started.elapsed() < Duration::from_secs(1),
            "vm.resize took a second or more",
        );
        let r = call(&chv, &mut api, "GET", "vm.info", None, &[]);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        chv.check(
            v["config"]["cpus"]["boot_vcpus"] == want,
            &format!("vm.info after resize: {}", r.body),
        );
    }
    guest(
        &mut chv,
        "c=/sys/devices/system/cpu; i=0; while [ ! -e $c/cpu2/online ] && [ $i -lt 60 ]; do \
         sleep 1; i=$((i+1)); done; [ \"$(cat $c/cpu2/online)\" = 1 ] || echo 1 > $c/cpu2/online; \
         echo CHK-ONLINE:$(cat $c/online)",
        "CHK-ONLINE:",
    );
    chv.check(value(&chv, "CHK-ONLINE") == "0-2", "hot-added vCPU online");

    // Kata grows memory for a container's limit with desired_ram; the
    // hot-added RAM goes to the running virtiofsd (ADD_MEM_REG).
    let regions_before = _fsd_a.ram_regions();
    let r = call(
        &chv,
        &mut api,
        "PUT",
        "vm.resize",
        Some(r#"{"desired_ram":536870912}"#),
        &[],
    );
    expect_status(&chv, &r, &[204], "vm.resize desired_ram");
    let r = call(&chv, &mut api, "GET", "vm.info", None, &[]);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    chv.check(
        v["config"]["memory"]["size"] == 536870912u64 && v["memory_actual_size"] == 536870912u64,
        &format!("vm.info after desired_ram: {}", r.body),
    );
    let regions_after = _fsd_a.ram_regions();
    chv.check(
        regions_before >= 1 && regions_after == regions_before + 1,
        &format!("virtiofsd maps the hot-added RAM: {regions_before} -> {regions_after} regions"),
    );
    // The guest onlines the new memory and keeps using the share.
    guest(
        &mut chv,
        "i=0; while [ $(awk '/MemTotal/{print $2}' /proc/meminfo) -lt 400000 ] && [ $i -lt 60 ]; \
         do sleep 1; i=$((i+1)); done; \
         echo CHK-GROWN:$(awk '/MemTotal/{print $2}' /proc/meminfo):$(cat /mnt/hello)",
        "CHK-GROWN:",
    );
    let grown = value(&chv, "CHK-GROWN");
    let (kib, text) = grown.split_once(':').unwrap_or(("0", ""));
    chv.check(
        kib.parse::<u64>().unwrap_or(0) >= 400_000 && text == "from-the-host",
        &format!("after desired_ram the guest has the memory and the share: {grown}"),
    );

    // 5. Snapshot; edit config.json as Kata does; vmm.shutdown.
    let r = call(&chv, &mut api, "PUT", "vm.pause", None, &[]);
    expect_status(&chv, &r, &[204], "vm.pause");
    let snap = scratch.path("snap");
    let url = format!(r#"{{"destination_url":"file://{}"}}"#, snap.display());
    let r = call(&chv, &mut api, "PUT", "vm.snapshot", Some(&url), &[]);
    expect_status(&chv, &r, &[204], "vm.snapshot");
    for file in ["config.json", "state.json"] {
        chv.check(
            snap.join(file).is_file(),
            &format!("snapshot has no {file}"),
        );
    }
    let fs_b = scratch.path("fs-b.sock");
    let vsock_b = scratch.path("vsock-b.sock");
    let config_path = snap.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["fs"][0]["socket"] = fs_b.display().to_string().into();
    config["vsock"]["socket"] = vsock_b.display().to_string().into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let net_id = config["net"][0]["id"]
        .as_str()
        .unwrap_or("_net0")
        .to_string();
    let r = call(&chv, &mut api, "PUT", "vmm.shutdown", None, &[]);
    expect_status(&chv, &r, &[200, 204], "vmm.shutdown");
    let st = chv.expect_exit(Duration::from_secs(10));
    chv.check(st.success(), &format!("chv exit after vmm.shutdown: {st}"));
    drop(_fsd_a);

    // 6. Restore the edited snapshot in a new chv with a new virtiofsd.
    let _fsd_b = Virtiofsd::start(&share, &fs_b);
    let api_b = scratch.path("api-b.sock");
    let mut chv = ns.spawn_chv(&["--api-socket".to_string(), api_b.display().to_string()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !api_b.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut api = GoClient::connect(&api_b).unwrap_or_else(|e| chv.fail(&format!("connect: {e}")));
    let restore = format!(
        r#"{{"source_url":"file://{}","net_fds":[{{"id":"{net_id}","num_fds":1}}]}}"#,
        snap.display()
    );
    let r = call(
        &chv,
        &mut api,
        "PUT",
        "vm.restore",
        Some(&restore),
        &[tap.as_raw_fd()],
    );
    expect_status(&chv, &r, &[204], "vm.restore");
    let r = call(&chv, &mut api, "PUT", "vm.resume", None, &[]);
    expect_status(&chv, &r, &[204], "vm.resume");
    chv.check(
        vsock_b.exists(),
        "the edited vsock socket path is not served",
    );
    guest(
        &mut chv,
        "echo CHK-AFTER:$(cat /mnt/hello):$(cat /sys/devices/system/cpu/online)",
        "CHK-AFTER:",
    );
    chv.check(
        value(&chv, "CHK-AFTER") == "from-the-host:0-2",
        "after restore: the share through the new virtiofsd, 3 vCPUs",
    );
    chv.check(
        _fsd_b.ram_regions() == regions_after,
        &format!(
            "the new virtiofsd maps the boot and the hot-added RAM: {} regions, want {regions_after}",
            _fsd_b.ram_regions()
        ),
    );
    let r = call(&chv, &mut api, "PUT", "vmm.shutdown", None, &[]);
    expect_status(&chv, &r, &[200, 204], "vmm.shutdown after restore");
    let st = chv.expect_exit(Duration::from_secs(10));
    chv.check(st.success(), &format!("chv exit: {st}"));
    chv.assert_no_panic();
}
