//! vsock pause/resume and snapshot restore: the restored device tells the
//! driver its connections are gone with a transport reset event.

use std::path::PathBuf;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;

use super::test_queue::DriverQueue;
use super::*;
use crate::device::{VirtioDevice, VirtioInterruptType};
use crate::worker::testutil::{TestVm, DATA};

const CID: u64 = 7;

fn socket(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("chv-vsock-state-{}-{tag}.sock", std::process::id()))
}

/// Activates `dev` with fresh rx/tx/event queues; the event queue has one
/// 8-byte buffer at DATA filled with 0xff.
fn activate(dev: &mut VirtioVsock, vm: &TestVm) -> DriverQueue {
    let (_rx, a0) = DriverQueue::new(vm.mem, 0, 16);
    let (_tx, a1) = DriverQueue::new(vm.mem, 1, 16);
    let (ev, a2) = DriverQueue::new(vm.mem, 2, 16);
    vm.write(DATA, &[0xff; 8]);
    ev.store_raw(0, DATA, 8, VRING_DESC_F_WRITE as u16, 0);
    ev.publish(0);
    dev.activate(vm.atomic.clone(), vm.interrupt.clone(), vec![a0, a1, a2])
        .unwrap();
    ev
}

#[test]
fn restore_sends_transport_reset() {
    let vm = TestVm::new();
    let mut dev = VirtioVsock::new(CID, &socket("reset"), "reset").unwrap();
    dev.ack_features(dev.features());
    let saved = dev.snapshot_state();
    let s: VsockState = serde_json::from_value(saved.clone()).unwrap();
    assert_eq!((s.cid, s.acked_features), (CID, dev.features()));

    let mut fresh = VirtioVsock::new(CID, &socket("reset2"), "reset2").unwrap();
    fresh.restore_state(&saved).unwrap();
    let ev = activate(&mut fresh, &vm);
    assert!(ev.wait_used(1), "no transport reset event");
    assert_eq!(ev.used(0), (0, 4));
    assert_eq!(vm.read(DATA, 8), [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    assert!(vm
        .interrupt
        .wait_for(|i| *i == VirtioInterruptType::Queue(2)));

    // Pause and resume: no second reset event; all three queues come back.
    let queues = fresh.pause().unwrap();
    let idx: Vec<u16> = queues.iter().map(|q| q.index).collect();
    assert_eq!(idx, vec![0, 1, 2]);
    assert_eq!(virtio_queue::QueueT::next_avail(&queues[2].queue), 1);
    assert!(fresh.pause().unwrap().is_empty(), "already paused");
    assert!(fresh.reset());
}

#[test]
fn plain_activation_sends_no_event() {
    let vm = TestVm::new();
    let mut dev = VirtioVsock::new(CID, &socket("plain"), "plain").unwrap();
    let ev = activate(&mut dev, &vm);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(ev.used_idx(), 0);
    assert!(dev.reset());
}

#[test]
fn a_clone_may_take_a_new_cid_but_bad_state_is_refused() {
    let mut dev = VirtioVsock::new(CID, &socket("bad"), "bad").unwrap();
    // A clone restored with its own CID: the state of the template's
    // CID is accepted (the driver re-reads the CID on the reset event).
    let other = VirtioVsock::new(CID + 1, &socket("bad2"), "bad2").unwrap();
    dev.restore_state(&other.snapshot_state()).unwrap();
    assert_eq!(dev.cid(), CID);
    let mut v = dev.snapshot_state();
    v["version"] = 9.into();
    assert!(dev.restore_state(&v).is_err());
    assert!(dev
        .restore_state(&serde_json::json!({"capacity": 1}))
        .is_err());
    assert!(dev.restore_state(&serde_json::Value::Null).is_err());
}
