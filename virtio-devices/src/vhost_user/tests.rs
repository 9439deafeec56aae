//! The frontend against a real virtiofsd (FUSE requests through real
//! vrings in memfd-backed guest memory, pause/resume, state transfer to a
//! second virtiofsd, the backend killed) and against hostile fake
//! backends that close, stall, or answer garbage.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vm_memory::GuestAddressSpace;

use super::*;
use crate::device::{VirtioDevice, VirtioInterruptType};
use crate::fs::{new_virtio_fs, FsOptions};
use crate::worker::testutil::{TestQueue, TestVm, DATA, MEM_SIZE};

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_INIT: u32 = 26;
const VERSION_1: u64 = 1 << 32;

/// A virtiofsd serving `dir` on a fresh socket; killed on drop.
pub(crate) struct Virtiofsd {
    child: Child,
}

impl Virtiofsd {
    pub(crate) fn start(dir: &Path, socket: &Path) -> Virtiofsd {
        let _ = std::fs::remove_file(socket);
        let child = Command::new("virtiofsd")
            .arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(dir)
            .args(["--sandbox", "none", "--log-level", "error"])
            .stdin(Stdio::null())
            .spawn()
            .expect("virtiofsd must be installed (cargo install virtiofsd; .ci/run does it)");
        wait_until("virtiofsd did not start", 10, || socket.exists());
        Virtiofsd { child }
    }

    /// How many mappings of the test VM's memfds the backend has.
    fn ram_mappings(&self) -> usize {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.child.id())).unwrap();
        maps.lines()
            .filter(|l| l.contains("memfd:chv-test-ram"))
            .count()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `cond` every few ms; fails the test after `secs` seconds.
fn wait_until(what: &str, secs: u64, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub(crate) fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("chv-vu-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("share")).unwrap();
    d
}

/// Drives FUSE over the device's request queue (queue 1).
struct FuseDriver {
    vm: TestVm,
    queues: Vec<TestQueue>,
    unique: u64,
    used: u16,
    /// Where replies go (the request stays at `DATA`).
    reply_at: u64,
}

impl FuseDriver {
    /// Sends one request; returns (error, reply payload).
    fn call(&mut self, opcode: u32, nodeid: u64, args: &[u8], out_len: u32) -> (i32, Vec<u8>) {
        self.unique += 1;
        let mut req = Vec::new();
        req.extend_from_slice(&(40 + args.len() as u32).to_le_bytes());
        req.extend_from_slice(&opcode.to_le_bytes());
        req.extend_from_slice(&self.unique.to_le_bytes());
        req.extend_from_slice(&nodeid.to_le_bytes());
        req.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen, padding
        req.extend_from_slice(args);
        let (inp, out) = (DATA, self.reply_at);
        self.vm.write(inp, &req);
        self.vm.write(out, &vec![0u8; 16 + out_len as usize]);
        let q = &mut self.queues[1];
        q.add_chain(&[(inp, req.len() as u32, false), (out, 16 + out_len, true)]);
        q.notify();
        self.used += 1;
        assert!(
            q.wait_used(self.used),
            "virtiofsd did not complete request {opcode}"
        );
        let (_, len) = q.used(self.used - 1);
        let hdr = self.vm.read(out, 16);
        assert_eq!(
            u64::from_le_bytes(hdr[8..16].try_into().unwrap()),
            self.unique
        );
        let error = i32::from_le_bytes(hdr[4..8].try_into().unwrap());
        let body = self.vm.read(out + 16, (len as usize).saturating_sub(16));
        (error, body)
    }

    /// The queues a paused device gave back, ready to activate again.
    fn resume_queues(&self, paused: Vec<crate::PausedQueue>) -> Vec<crate::ActivatedQueue> {
        paused
            .into_iter()
            .map(|p| crate::ActivatedQueue {
                index: p.index,
                notify: self.queues[usize::from(p.index)].kick.try_clone().unwrap(),
                queue: p.queue,
            })
            .collect()
    }

    fn init(&mut self) {
        let mut a = Vec::new();
        for v in [7u32, 31, 0x20000, 0] {
            a.extend_from_slice(&v.to_le_bytes());
        }
        let (err, out) = self.call(FUSE_INIT, 0, &a, 64);
        assert_eq!(err, 0, "FUSE_INIT");
        assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()), 7);
    }

    /// LOOKUP `name` in the root: (nodeid, size).
    fn lookup(&mut self, name: &str) -> Result<(u64, u64), i32> {
        let mut a = name.as_bytes().to_vec();
        a.push(0);
        let (err, out) = self.call(FUSE_LOOKUP, 1, &a, 128);
        if err != 0 {
            return Err(err);
        }
        let nodeid = u64::from_le_bytes(out[..8].try_into().unwrap());
        let size = u64::from_le_bytes(out[48..56].try_into().unwrap());
        Ok((nodeid, size))
    }

    fn getattr_size(&mut self, nodeid: u64) -> Result<u64, i32> {
        let (err, out) = self.call(FUSE_GETATTR, nodeid, &[0u8; 16], 104);
        if err != 0 {
            return Err(err);
        }
        Ok(u64::from_le_bytes(out[24..32].try_into().unwrap()))
    }

    fn read_file(&mut self, nodeid: u64, len: u32) -> Vec<u8> {
        let (err, out) = self.call(FUSE_OPEN, nodeid, &[0u8; 8], 16);
        assert_eq!(err, 0, "FUSE_OPEN");
        let fh = &out[..8];
        let mut a = fh.to_vec();
        a.extend_from_slice(&0u64.to_le_bytes());
        a.extend_from_slice(&len.to_le_bytes());
        a.extend_from_slice(&[0u8; 20]);
        let (err, data) = self.call(FUSE_READ, nodeid, &a, len);
        assert_eq!(err, 0, "FUSE_READ");
        data
    }
}

fn fs_device(socket: &Path) -> VhostUserDevice {
    let opts = FsOptions {
        tag: "share".into(),
        socket: socket.to_path_buf(),
        num_queues: 1,
        queue_size: 64,
    };
    let mut dev = new_virtio_fs(&opts, None).expect("connect to virtiofsd");
    assert_ne!(dev.features() & VERSION_1, 0, "virtiofsd offers VERSION_1");
    dev.ack_features(dev.features());
    dev
}

fn activate(dev: &mut VhostUserDevice) -> FuseDriver {
    let vm = TestVm::shared();
    let (queues, aq) = vm.queues(2, 64);
    dev.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .expect("activate");
    FuseDriver {
        vm,
        queues,
        unique: 0,
        used: 0,
        reply_at: DATA + 0x10000,
    }
}

#[test]
fn virtiofsd_serves_fuse_requests_through_the_vrings() {
    let d = scratch("serve");
    std::fs::write(d.join("share/hello"), b"hello from the host").unwrap();
    let _fsd = Virtiofsd::start(&d.join("share"), &d.join("fs.sock"));
    let mut dev = fs_device(&d.join("fs.sock"));
    let mut tag = [0u8; 5];
    dev.read_config(0, &mut tag);
    assert_eq!(&tag, b"share");
    let mut drv = activate(&mut dev);
    drv.init();
    let (node, size) = drv.lookup("hello").unwrap();
    assert_eq!(size, 19);
    assert_eq!(drv.read_file(node, 64), b"hello from the host");
    assert_eq!(drv.lookup("missing"), Err(-libc::ENOENT));
    // The backend's used-buffer signals reach the transport's interrupt
    // (the relay thread forwards them, maybe after the used ring moved).
    assert!(drv
        .vm
        .interrupt
        .wait_for(|t| *t == VirtioInterruptType::Queue(1)));

    // Pause: the backend gives the ring positions back; resuming with
    // those queues continues where it stopped.
    let paused = dev.pause().unwrap();
    assert_eq!(paused.len(), 2);
    let q1 = paused.iter().find(|p| p.index == 1).unwrap();
    assert_eq!(virtio_queue::QueueT::next_avail(&q1.queue), drv.used);
    let aq = drv.resume_queues(paused);
    dev.activate(drv.vm.atomic.clone(), drv.vm.interrupt.clone(), aq)
        .unwrap();
    assert_eq!(drv.getattr_size(node), Ok(19));
    assert!(!dev.needs_reset());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn hot_added_memory_reaches_a_running_virtiofsd() {
    let d = scratch("hotadd");
    std::fs::write(d.join("share/hello"), b"hello from the host").unwrap();
    let fsd = Virtiofsd::start(&d.join("share"), &d.join("fs.sock"));
    let mut dev = fs_device(&d.join("fs.sock"));
    let mut drv = activate(&mut dev);
    drv.init();
    let (node, _) = drv.lookup("hello").unwrap();
    let before = fsd.ram_mappings();
    let grown = drv.vm.hot_add(MEM_SIZE, 0x20_0000);
    assert_eq!(dev.add_memory(&grown).unwrap(), 1);
    assert_eq!(dev.add_memory(&grown).unwrap(), 0, "each region goes once");
    assert_eq!(
        fsd.ram_mappings(),
        before + 1,
        "virtiofsd maps the new memfd"
    );
    // Replies land in the hot-added RAM: virtiofsd must translate them.
    drv.reply_at = MEM_SIZE + 0x1000;
    assert_eq!(drv.read_file(node, 64), b"hello from the host");
    assert!(!dev.needs_reset());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn killed_virtiofsd_breaks_the_device_without_hanging() {
    let d = scratch("kill");
    let mut fsd = Virtiofsd::start(&d.join("share"), &d.join("fs.sock"));
    let mut dev = fs_device(&d.join("fs.sock"));
    let mut drv = activate(&mut dev);
    drv.init();
    fsd.kill();
    wait_until("hang-up not noticed", 5, || dev.needs_reset());
    // The driver was told to look at the status (config interrupt).
    assert!(drv
        .vm
        .interrupt
        .seen
        .lock()
        .unwrap()
        .contains(&VirtioInterruptType::Config));
    // Pausing a device whose backend is gone fails fast, it does not hang.
    let t = Instant::now();
    assert!(dev.pause().is_err());
    assert!(t.elapsed() < Duration::from_secs(6));
    // A reset with the backend still gone keeps the device usable later:
    // once a new virtiofsd listens, the next activation reconnects.
    assert!(dev.reset());
    let _fsd2 = Virtiofsd::start(&d.join("share"), &d.join("fs.sock"));
    std::fs::write(d.join("share/after"), b"back").unwrap();
    dev.ack_features(dev.features());
    let mut drv = activate(&mut dev);
    drv.init();
    assert_eq!(drv.lookup("after").map(|x| x.1), Ok(4));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn backend_state_moves_open_inodes_to_a_new_virtiofsd() {
    let d = scratch("state");
    std::fs::write(d.join("share/kept"), b"0123456789").unwrap();
    let fsd = Virtiofsd::start(&d.join("share"), &d.join("a.sock"));
    let mut dev = fs_device(&d.join("a.sock"));
    assert!(dev.connection().supports_device_state());
    let mut drv = activate(&mut dev);
    drv.init();
    let (node, _) = drv.lookup("kept").unwrap();
    let paused = dev.pause().unwrap();
    let state = dev.save_backend_state().expect("save virtiofsd state");
    assert!(!state.is_empty());
    drop(dev);
    drop(fsd);

    // A new virtiofsd, a new device restored from the saved state: the
    // guest's node id from before is valid there too.
    let _fsd2 = Virtiofsd::start(&d.join("share"), &d.join("b.sock"));
    let mut dev2 = fs_device(&d.join("b.sock"));
    let saved = VhostUserDeviceState {
        version: device::VHOST_USER_STATE_VERSION,
        acked_features: dev2.features(),
        backend_state: Some(state::to_hex(&state)),
    };
    dev2.restore_state(&serde_json::to_value(&saved).unwrap())
        .unwrap();
    let aq = drv.resume_queues(paused);
    dev2.activate(drv.vm.atomic.clone(), drv.vm.interrupt.clone(), aq)
        .expect("activate with the loaded state");
    assert_eq!(drv.getattr_size(node), Ok(10));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn activation_needs_shared_memory() {
    let d = scratch("noshare");
    let _fsd = Virtiofsd::start(&d.join("share"), &d.join("fs.sock"));
    let mut dev = fs_device(&d.join("fs.sock"));
    let vm = TestVm::new();
    let (_q, aq) = vm.queues(2, 64);
    let err = dev
        .activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap_err();
    assert!(err.to_string().contains("memory.shared=on"), "{err}");
    let _ = vm.atomic.memory();
    let _ = std::fs::remove_dir_all(&d);
}

// ---- hostile backends -------------------------------------------------

/// A vhost-user message as the fake backend reads it.
struct Msg {
    code: u32,
    flags: u32,
    body: Vec<u8>,
}

fn read_msg(s: &mut UnixStream) -> Option<Msg> {
    let mut hdr = [0u8; 12];
    s.read_exact(&mut hdr).ok()?;
    let code = u32::from_le_bytes(hdr[..4].try_into().unwrap());
    let flags = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
    let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
    let mut body = vec![0u8; size.min(1 << 16)];
    s.read_exact(&mut body).ok()?;
    Some(Msg { code, flags, body })
}

fn reply_u64(s: &mut UnixStream, code: u32, v: u64) {
    let mut m = Vec::new();
    m.extend_from_slice(&code.to_le_bytes());
    m.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes());
    m.extend_from_slice(&8u32.to_le_bytes());
    m.extend_from_slice(&v.to_le_bytes());
    s.write_all(&m).unwrap();
}

const GET_FEATURES: u32 = 1;
const GET_VRING_BASE: u32 = 11;

/// Runs `backend` on the far end of a socket pair; returns the result of
/// connecting to it with a short timeout, and how long that took.
fn against(
    backend: impl FnOnce(UnixStream) + Send + 'static,
) -> (Result<VhostUserConnection, VhostUserError>, Duration) {
    against_with(backend, 1)
}

fn against_with(
    backend: impl FnOnce(UnixStream) + Send + 'static,
    num_queues: usize,
) -> (Result<VhostUserConnection, VhostUserError>, Duration) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || backend(theirs));
    let start = Instant::now();
    let r = VhostUserConnection::from_stream(
        ours,
        Path::new("fake.sock"),
        num_queues,
        Duration::from_millis(300),
        None,
    );
    let took = start.elapsed();
    drop(t);
    (r, took)
}

#[test]
fn backend_that_closes_is_an_error() {
    let (r, took) = against(drop);
    assert!(r.is_err());
    assert!(took < Duration::from_secs(2));
}

#[test]
fn backend_that_stalls_times_out() {
    let (r, took) = against(|mut s| {
        // Reads the requests, never answers.
        while read_msg(&mut s).is_some() {}
    });
    let err = r.err().unwrap();
    assert!(
        matches!(
            err,
            VhostUserError::Timeout {
                op: "GET_FEATURES",
                ..
            }
        ),
        "{err}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn garbage_replies_are_refused() {
    // Random bytes where a reply header belongs.
    let (r, _) = against(|mut s| {
        let _ = read_msg(&mut s);
        let _ = read_msg(&mut s);
        let _ = s.write_all(&[0xa5; 20]);
        std::thread::sleep(Duration::from_millis(500));
    });
    assert!(matches!(r.err().unwrap(), VhostUserError::Request { .. }));
    // A well-formed reply to another request.
    let (r, _) = against(|mut s| {
        let _ = read_msg(&mut s);
        let _ = read_msg(&mut s);
        reply_u64(&mut s, 5, VERSION_1);
        std::thread::sleep(Duration::from_millis(500));
    });
    assert!(matches!(r.err().unwrap(), VhostUserError::Request { .. }));
    // A header announcing a 4 GiB body.
    let (r, took) = against(|mut s| {
        let _ = read_msg(&mut s);
        let _ = read_msg(&mut s);
        let mut m = GET_FEATURES.to_le_bytes().to_vec();
        m.extend_from_slice(&5u32.to_le_bytes());
        m.extend_from_slice(&u32::MAX.to_le_bytes());
        let _ = s.write_all(&m);
        std::thread::sleep(Duration::from_millis(500));
    });
    assert!(r.is_err());
    assert!(took < Duration::from_secs(3));
}

/// A minimal backend: VERSION_1 only, no protocol features (so no set_*
/// request wants an answer); then `after_setup` takes over.
fn minimal_backend(
    after_setup: impl FnOnce(UnixStream) + Send + 'static,
) -> impl FnOnce(UnixStream) + Send + 'static {
    move |mut s| {
        loop {
            let Some(m) = read_msg(&mut s) else { return };
            if m.code == GET_FEATURES {
                reply_u64(&mut s, GET_FEATURES, VERSION_1);
                break;
            }
        }
        after_setup(s);
    }
}

/// A virtio-fs model of `queues` rings of 64 offering VERSION_1 only.
fn fake_fs_spec(queues: usize) -> VhostUserSpec {
    VhostUserSpec {
        name: "fake-fs".into(),
        device_type: crate::fs::VIRTIO_ID_FS,
        queue_sizes: vec![64; queues],
        features: VERSION_1,
        frontend_features: 0,
        config: vec![],
        reconnect: false,
    }
}

fn fake_fs_device(
    backend: impl FnOnce(UnixStream) + Send + 'static,
) -> (VhostUserDevice, FuseDriver) {
    // Two queues without the MQ protocol feature (virtio-fs's fixed pair).
    let (r, _) = against_with(backend, 2);
    let spec = fake_fs_spec(2);
    let mut dev = VhostUserDevice::new(spec, r.expect("minimal backend negotiates"));
    dev.ack_features(VERSION_1);
    let drv = activate(&mut dev);
    (dev, drv)
}

#[test]
fn running_device_breaks_on_hangup_or_unsolicited_data() {
    for send_garbage in [false, true] {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (dev, drv) = fake_fs_device(minimal_backend(move |mut s| {
            // Swallow the setup messages, then misbehave when told.
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            while rx.try_recv().is_err() {
                let _ = read_msg(&mut s);
            }
            if send_garbage {
                let _ = s.write_all(b"surprise");
                std::thread::sleep(Duration::from_millis(500));
            }
        }));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!dev.needs_reset());
        tx.send(()).unwrap();
        wait_until("not noticed", 3, || dev.needs_reset());
        drop(drv);
    }
}

#[test]
fn pause_against_a_stalled_backend_fails_in_bounded_time() {
    let (mut dev, _drv) = fake_fs_device(minimal_backend(|mut s| {
        // Answers nothing, GET_VRING_BASE included.
        while let Some(m) = read_msg(&mut s) {
            let _ = m.code == GET_VRING_BASE;
        }
    }));
    let t = Instant::now();
    let err = dev.pause().err().expect("pause must fail");
    assert!(err.to_string().contains("GET_VRING_BASE"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

/// A snapshot that carries backend state cannot go to a backend without
/// the device-state protocol feature: the restore is refused naming it.
#[test]
fn restore_with_backend_state_needs_the_device_state_feature() {
    let (r, _) = against(minimal_backend(|mut s| while read_msg(&mut s).is_some() {}));
    let mut dev = VhostUserDevice::new(fake_fs_spec(1), r.unwrap());
    let saved = serde_json::json!({
        "version": device::VHOST_USER_STATE_VERSION,
        "acked_features": VERSION_1,
        "backend_state": "00ff",
    });
    let err = dev.restore_state(&saved).unwrap_err().to_string();
    assert!(err.contains("VHOST_USER_PROTOCOL_F_DEVICE_STATE"), "{err}");
    // Without backend state (a device never activated) the restore is fine.
    let mut fresh = saved.clone();
    fresh["backend_state"] = serde_json::Value::Null;
    dev.restore_state(&fresh).unwrap();
}

#[test]
fn vring_outside_guest_memory_is_refused() {
    let (r, _) = against(minimal_backend(|mut s| while read_msg(&mut s).is_some() {}));
    let spec = fake_fs_spec(1);
    let mut dev = VhostUserDevice::new(spec, r.unwrap());
    let vm = TestVm::shared();
    let (_q, mut aq) = vm.queues(1, 64);
    virtio_queue::QueueT::set_desc_table_address(&mut aq[0].queue, Some(0xffff_0000), Some(0xf));
    let err = dev
        .activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap_err();
    assert!(err.to_string().contains("not inside guest memory"), "{err}");
}

const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_STATUS: u32 = 39;
const NEED_REPLY: u32 = 0x8;

const SET_VRING_KICK: u32 = 12;
const GET_INFLIGHT_FD: u32 = 31;
const SET_INFLIGHT_FD: u32 = 32;
const SET_MEM_TABLE: u32 = 5;
const GET_MAX_MEM_SLOTS: u32 = 36;
const ADD_MEM_REG: u32 = 37;

/// Sends `bytes` with `fd` attached (SCM_RIGHTS).
fn send_with_fd(s: &UnixStream, bytes: &[u8], fd: std::os::fd::RawFd) {
    use std::os::fd::AsRawFd;
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer holds one cmsg with room for one fd.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        assert_eq!(libc::sendmsg(s.as_raw_fd(), &msg, 0), bytes.len() as isize);
    }
}

/// A backend that offers `protocol` (`REPLY_ACK` among them), answers
/// every request (GET_INFLIGHT_FD with a 4 KiB memfd, GET_MAX_MEM_SLOTS
/// with `max_slots`), acks `SET_STATUS` with `status_ack` and reports
/// (request, first 8 body bytes) of every request after negotiation.
fn recording_backend(
    protocol: vhost::vhost_user::message::VhostUserProtocolFeatures,
    status_ack: u64,
    max_slots: u64,
    seen: std::sync::mpsc::Sender<(u32, u64)>,
) -> impl FnOnce(UnixStream) + Send + 'static {
    use vhost::vhost_user::message::VhostUserInflight;
    use vm_memory::ByteValued;
    move |mut s| {
        while let Some(m) = read_msg(&mut s) {
            let first = m
                .body
                .get(..8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
            let _ = seen.send((m.code, first));
            match m.code {
                GET_FEATURES => reply_u64(&mut s, m.code, VERSION_1 | (1 << 30)),
                GET_PROTOCOL_FEATURES => reply_u64(&mut s, m.code, protocol.bits()),
                // VhostUserVringState: the index asked for, ring position 0.
                GET_VRING_BASE => reply_u64(&mut s, m.code, u64::from(m.body[0])),
                SET_STATUS => reply_u64(&mut s, m.code, status_ack),
                GET_MAX_MEM_SLOTS => reply_u64(&mut s, m.code, max_slots),
                GET_INFLIGHT_FD => {
                    let area = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
                    area.set_len(4096).unwrap();
                    let body = VhostUserInflight::new(4096, 0, 2, 64);
                    let mut msg = m.code.to_le_bytes().to_vec();
                    msg.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes());
                    msg.extend_from_slice(&(body.as_slice().len() as u32).to_le_bytes());
                    msg.extend_from_slice(body.as_slice());
                    send_with_fd(&s, &msg, std::os::fd::AsRawFd::as_raw_fd(&area));
                }
                _ if m.flags & NEED_REPLY != 0 => reply_u64(&mut s, m.code, 0),
                _ => {}
            }
        }
    }
}

/// [`recording_backend`] offering `STATUS | REPLY_ACK | INFLIGHT_SHMFD`,
/// reporting SET_STATUS, GET/SET_INFLIGHT_FD and SET_VRING_KICK only.
fn status_backend(
    status_ack: u64,
    seen: std::sync::mpsc::Sender<(u32, u64)>,
) -> impl FnOnce(UnixStream) + Send + 'static {
    use vhost::vhost_user::message::VhostUserProtocolFeatures as P;
    let (tx, rx) = std::sync::mpsc::channel::<(u32, u64)>();
    std::thread::spawn(move || {
        for m in rx {
            if [SET_STATUS, GET_INFLIGHT_FD, SET_INFLIGHT_FD, SET_VRING_KICK].contains(&m.0) {
                let _ = seen.send(m);
            }
        }
    });
    recording_backend(
        P::STATUS | P::REPLY_ACK | P::INFLIGHT_SHMFD,
        status_ack,
        0,
        tx,
    )
}

#[test]
fn set_status_follows_the_device_where_the_backend_supports_it() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (mut dev, _drv) = fake_fs_device(status_backend(0, tx));
    assert!(!dev.needs_reset());
    // Activation: a fresh in-flight record, FEATURES_OK, the record
    // handed back before the vrings, then DRIVER_OK once they run.
    let got: Vec<(u32, u64)> = rx.try_iter().collect();
    let kick = |q| (SET_VRING_KICK, q);
    assert_eq!(
        got,
        [
            (GET_INFLIGHT_FD, 0),
            (SET_STATUS, 0x0b),
            (SET_INFLIGHT_FD, 4096),
            kick(0),
            kick(1),
            (SET_STATUS, 0x0f)
        ]
    );
    assert!(dev.reset());
    assert_eq!(rx.recv_timeout(Duration::from_secs(2)), Ok((SET_STATUS, 0)));

    // A backend that refuses SET_STATUS fails the activation, naming it.
    let (tx, _rx) = std::sync::mpsc::channel();
    let (r, _) = against_with(status_backend(1, tx), 2);
    let spec = fake_fs_spec(2);
    let mut dev = VhostUserDevice::new(spec, r.unwrap());
    dev.ack_features(VERSION_1);
    let vm = TestVm::shared();
    let (_q, aq) = vm.queues(2, 64);
    let err = dev
        .activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap_err();
    assert!(err.to_string().contains("SET_STATUS"), "{err}");
}

#[test]
fn hot_added_memory_goes_as_add_mem_reg_or_a_whole_new_table() {
    use vhost::vhost_user::message::VhostUserProtocolFeatures as P;
    let slots = P::REPLY_ACK | P::CONFIGURE_MEM_SLOTS;
    // (protocol features, GET_MAX_MEM_SLOTS, requests expected, accepted)
    let cases = [
        (slots, 8, vec![GET_MAX_MEM_SLOTS, ADD_MEM_REG], true),
        (P::REPLY_ACK, 0, vec![SET_MEM_TABLE], true),
        // One slot, taken by the boot RAM: refused before sending it.
        (slots, 1, vec![GET_MAX_MEM_SLOTS], false),
    ];
    for (protocol, max, want, accepted) in cases {
        let (tx, rx) = std::sync::mpsc::channel();
        let (mut dev, drv) = fake_fs_device(recording_backend(protocol, 0, max, tx));
        let setup: Vec<u32> = rx.try_iter().map(|m| m.0).collect();
        assert_eq!(setup.iter().filter(|c| **c == SET_MEM_TABLE).count(), 1);
        let grown = drv.vm.hot_add(MEM_SIZE, 0x10_0000);
        let r = dev.add_memory(&grown);
        // The reply is the frontend's; the relay, polling the same
        // socket, must not take it for unsolicited data.
        std::thread::sleep(Duration::from_millis(100));
        let got: Vec<u32> = rx.try_iter().map(|m| m.0).collect();
        assert_eq!(got, want, "{protocol:?}");
        assert_eq!(r.is_ok(), accepted, "{r:?}");
        assert_eq!(dev.needs_reset(), !accepted);
        if let Err(e) = r {
            assert!(
                matches!(e, VhostUserError::MemSlots { regions: 2, max: 1 }),
                "{e}"
            );
        } else {
            // Nothing new: nothing sent.
            assert_eq!(dev.add_memory(&grown).unwrap(), 0);
            assert_eq!(rx.try_iter().count(), 0);
        }
    }
}
