//! virtio-pmem: mapping, config space, flush requests, hostile requests.

use std::path::PathBuf;

use super::*;
use crate::worker::testutil::{TestVm, DATA};

fn file_of(name: &str, len: u64, fill: u8) -> PathBuf {
    let p = std::env::temp_dir().join(format!("chv-pmem-{name}-{}", std::process::id()));
    std::fs::write(&p, vec![fill; len as usize]).unwrap();
    p
}

/// Stores `data` at `offset` of the mapping, as a guest store would.
fn store(m: &PmemMapping, offset: usize, data: &[u8]) {
    assert!(offset + data.len() <= m.size() as usize);
    // SAFETY: inside the mapping, which lives for the whole test.
    unsafe {
        std::ptr::copy_nonoverlapping(
            data.as_ptr(),
            (m.host_addr() as *mut u8).add(offset),
            data.len(),
        )
    };
}

/// Posts one request of `req` bytes with `resp_len` writable bytes; returns
/// (used length, status word).
fn request(
    vm: &TestVm,
    tq: &mut crate::worker::testutil::TestQueue,
    req: &[u8],
    resp_len: u32,
) -> (u32, u32) {
    vm.write(DATA, req);
    vm.write(DATA + 0x100, &[0xff; 4]);
    let n = tq.used_idx();
    let mut chain = vec![];
    if !req.is_empty() {
        chain.push((DATA, req.len() as u32, false));
    }
    if resp_len > 0 {
        chain.push((DATA + 0x100, resp_len, true));
    }
    tq.add_chain(&chain);
    tq.notify();
    assert!(tq.wait_used(n.wrapping_add(1)));
    let (_, len) = tq.used(n);
    let status = u32::from_le_bytes(vm.read(DATA + 0x100, 4).try_into().unwrap());
    (len, status)
}

#[test]
fn config_space_says_where_the_file_is() {
    let p = file_of("cfg", 4 << 20, 0);
    let m = PmemMapping::open(&p, None, false).unwrap();
    let dev = VirtioPmem::new(&m, 0x20_0000_0000).unwrap();
    assert_eq!(dev.device_type(), VIRTIO_ID_PMEM);
    let mut c = [0u8; 16];
    dev.read_config(0, &mut c);
    assert_eq!(
        u64::from_le_bytes(c[..8].try_into().unwrap()),
        0x20_0000_0000
    );
    assert_eq!(u64::from_le_bytes(c[8..].try_into().unwrap()), 4 << 20);
    let mut tail = [0xaau8; 8];
    dev.read_config(10, &mut tail);
    assert_eq!(tail, [0x40, 0, 0, 0, 0, 0, 0, 0]);
    dev.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);
    let _ = std::fs::remove_file(p);
}

#[test]
fn flush_reaches_the_file_and_discard_writes_leaves_it_alone() {
    for discard in [false, true] {
        let p = file_of(&format!("flush{discard}"), 2 << 20, b'.');
        let m = PmemMapping::open(&p, None, discard).unwrap();
        let mut dev = VirtioPmem::new(&m, 0x20_0000_0000).unwrap();
        dev.ack_features(dev.features());
        let vm = TestVm::new();
        let (mut tq, aq) = vm.queues(1, 16);
        dev.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
            .unwrap();
        store(&m, 4096, b"written by the guest");
        let (len, status) = request(&vm, &mut tq[0], &0u32.to_le_bytes(), 4);
        assert_eq!((len, status), (4, VIRTIO_PMEM_RESP_OK));
        let on_disk = std::fs::read(&p).unwrap();
        if discard {
            assert!(on_disk.iter().all(|&b| b == b'.'), "file changed");
        } else {
            assert_eq!(&on_disk[4096..4116], b"written by the guest");
        }
        assert!(dev.reset());
        drop(m);
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn hostile_requests_are_answered_or_dropped_without_breaking() {
    let p = file_of("hostile", 2 << 20, 0);
    let m = PmemMapping::open(&p, None, false).unwrap();
    let mut dev = VirtioPmem::new(&m, 0x20_0000_0000).unwrap();
    let vm = TestVm::new();
    let (mut tq, aq) = vm.queues(1, 16);
    dev.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap();
    // An unknown request type gets EIO.
    assert_eq!(
        request(&vm, &mut tq[0], &7u32.to_le_bytes(), 4),
        (4, VIRTIO_PMEM_RESP_EIO)
    );
    // Too short a request, no status buffer, no request: dropped (len 0).
    assert_eq!(request(&vm, &mut tq[0], &[0u8; 2], 4).0, 0);
    assert_eq!(request(&vm, &mut tq[0], &0u32.to_le_bytes(), 0).0, 0);
    assert_eq!(request(&vm, &mut tq[0], &[], 4).0, 0);
    // A buffer outside guest memory.
    let n = tq[0].used_idx();
    tq[0].add_chain(&[(0xffff_0000_0000, 4, false), (DATA + 0x100, 4, true)]);
    tq[0].notify();
    assert!(tq[0].wait_used(n + 1));
    assert_eq!(tq[0].used(n).1, 0);
    // A writable buffer before the readable one.
    let n = tq[0].used_idx();
    tq[0].add_chain(&[(DATA + 0x100, 4, true), (DATA, 4, false)]);
    tq[0].notify();
    assert!(tq[0].wait_used(n + 1));
    assert_eq!(tq[0].used(n).1, 0);
    // Still serving.
    assert_eq!(request(&vm, &mut tq[0], &0u32.to_le_bytes(), 4), (4, 0));
    assert!(!dev.needs_reset());
    // Pause and resume keep the ring position.
    let paused = dev.pause().unwrap();
    assert_eq!(paused.len(), 1);
    assert!(dev.reset());
    let _ = std::fs::remove_file(p);
}

#[test]
fn bad_files_and_sizes_name_the_problem() {
    let p = file_of("size", 3 << 20, 0);
    let e = PmemMapping::open(&p, None, false).err().unwrap();
    assert!(e.to_string().starts_with("size=3145728"), "{e}");
    let e = PmemMapping::open(&p, Some(0), false).err().unwrap();
    assert!(e.to_string().starts_with("size=0"), "{e}");
    let e = PmemMapping::open(&p, Some(4 << 20), true).err().unwrap();
    assert!(e.to_string().contains("discard_writes"), "{e}");
    // A shared mapping extends the file to the configured size.
    let m = PmemMapping::open(&p, Some(4 << 20), false).unwrap();
    assert_eq!(m.size(), 4 << 20);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 4 << 20);
    let e = PmemMapping::open(std::path::Path::new("/nonexistent/pmem"), None, false)
        .err()
        .unwrap();
    assert!(e.to_string().contains("file=/nonexistent/pmem"), "{e}");
    let _ = std::fs::remove_file(p);
}
