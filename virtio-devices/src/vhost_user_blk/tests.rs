//! vhost-user-blk against a real qemu-storage-daemon export.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;
use crate::device::VirtioDevice;
use crate::worker::testutil::{TestVm, DATA};

struct Qsd(Child);

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qsd(image: &Path, socket: &Path) -> Qsd {
    let child = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=disk,filename={}",
            image.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp,node-name=disk,writable=on,num-queues=1,addr.type=unix,addr.path={}",
            socket.display()
        ))
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-storage-daemon must be installed (Debian qemu-utils; .ci/run does it)");
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "qemu-storage-daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Qsd(child)
}

#[test]
fn qemu_storage_daemon_serves_writes_and_flushes() {
    let dir = std::env::temp_dir().join(format!("chv-vublk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("disk.raw");
    std::fs::write(&image, vec![0u8; 8 << 20]).unwrap();
    let qsd_a = qsd(&image, &dir.join("blk.sock"));
    let opts = VhostUserBlkOptions {
        socket: dir.join("blk.sock"),
        num_queues: 1,
        queue_size: 64,
    };
    let mut dev = new_vhost_user_blk(&opts, None).expect("connect to qemu-storage-daemon");
    // Capacity (512-byte sectors) comes from the backend's config space.
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), (8 << 20) / 512);
    dev.ack_features(dev.features());
    let vm = TestVm::shared();
    let (mut tq, aq) = vm.queues(1, 64);
    dev.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap();

    let used = std::cell::Cell::new(0u16);
    // Posts one request; the status byte is read after it completes.
    let post =
        |tq: &mut Vec<crate::worker::testutil::TestQueue>, kind: u32, sector: u64, data: &[u8]| {
            let mut hdr = kind.to_le_bytes().to_vec();
            hdr.extend_from_slice(&0u32.to_le_bytes());
            hdr.extend_from_slice(&sector.to_le_bytes());
            vm.write(DATA, &hdr);
            vm.write(DATA + 0x1000, data);
            vm.write(DATA + 0x3000, &[0xff]);
            let mut chain = vec![(DATA, 16, false)];
            if !data.is_empty() {
                chain.push((DATA + 0x1000, data.len() as u32, false));
            }
            chain.push((DATA + 0x3000, 1, true));
            tq[0].add_chain(&chain);
            tq[0].notify();
        };
    let wait = |tq: &mut Vec<crate::worker::testutil::TestQueue>| -> u8 {
        used.set(used.get() + 1);
        assert!(tq[0].wait_used(used.get()), "request not completed");
        vm.read(DATA + 0x3000, 1)[0]
    };
    let request = |tq: &mut Vec<_>, kind: u32, sector: u64, data: &[u8]| -> u8 {
        post(tq, kind, sector, data);
        wait(tq)
    };
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(request(&mut tq, 1, 8, &pattern), 0, "write");
    assert_eq!(request(&mut tq, 4, 0, &[]), 0, "flush");
    let on_disk = std::fs::read(&image).unwrap();
    assert_eq!(&on_disk[4096..8192], &pattern[..]);
    // Out of range: the backend answers IOERR, the frontend keeps going.
    assert_ne!(request(&mut tq, 1, 1 << 40, &pattern), 0);
    assert!(!dev.needs_reset());

    // The daemon dies: the device is broken, a write posted meanwhile
    // waits; a new daemon on the same socket gets the vrings back (live
    // reconnect) and serves it.
    drop(qsd_a);
    let t = Instant::now();
    while !dev.needs_reset() {
        assert!(t.elapsed() < Duration::from_secs(5), "hang-up not noticed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second: Vec<u8> = pattern.iter().rev().copied().collect();
    post(&mut tq, 1, 16, &second);
    std::thread::sleep(Duration::from_millis(100));
    let _qsd_b = qsd(&image, &dir.join("blk.sock"));
    assert_eq!(wait(&mut tq), 0, "write across a backend restart");
    // The new backend serves the rings as soon as it has them, a moment
    // before the relay marks the device healthy again.
    let t = Instant::now();
    while dev.needs_reset() {
        assert!(t.elapsed() < Duration::from_secs(30), "not reconnected");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(request(&mut tq, 4, 0, &[]), 0, "flush after the restart");
    let on_disk = std::fs::read(&image).unwrap();
    assert_eq!(&on_disk[8192..12288], &second[..]);
    // Pausing hands the adopted connection's ring positions back.
    assert_eq!(dev.pause().unwrap().len(), 1);
    assert!(dev.reset());
    let _ = std::fs::remove_dir_all(&dir);
}
