//! In-process tests of the console against mock driver queues.

use std::io::Write;
use std::sync::{Arc, Mutex};

use super::*;
use crate::worker::testutil::{TestVm, DATA};

/// A writer the test can inspect.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn wait_sink(sink: &Sink, want: &[u8]) -> bool {
    for _ in 0..2500 {
        if sink.0.lock().unwrap().as_slice() == want {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    false
}

#[test]
fn config_and_features_without_tty() {
    let con = VirtioConsole::new(None, None).unwrap();
    assert_eq!(con.device_type(), 3);
    assert_eq!(con.features() & (1 << VIRTIO_CONSOLE_F_SIZE), 0);
    assert_ne!(con.features() & (1 << VIRTIO_F_VERSION_1), 0);
    let mut cfg = [0xffu8; 16];
    con.read_config(0, &mut cfg);
    assert_eq!(cfg, [0u8; 16]);
    con.read_config(u64::MAX, &mut cfg[..4]);
}

#[test]
fn transmit_reaches_sink_and_survives_reset() {
    let vm = TestVm::new();
    let sink = Sink::default();
    let mut con = VirtioConsole::new(Some(Box::new(sink.clone())), None).unwrap();
    con.ack_features(con.features());
    let (mut tq, aq) = vm.queues(2, 16);
    con.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap();
    vm.write(DATA, b"hello ");
    vm.write(DATA + 0x100, b"guest\n");
    tq[1].add_chain(&[(DATA, 6, false), (DATA + 0x100, 6, false)]);
    tq[1].notify();
    assert!(tq[1].wait_used(1));
    assert_eq!(tq[1].used(0).1, 0);
    assert!(wait_sink(&sink, b"hello guest\n"));
    // Bad chain (outside memory) is completed without output.
    tq[1].add_chain(&[(u64::MAX - 8, 4, false)]);
    tq[1].notify();
    assert!(tq[1].wait_used(2));

    // Reset hands the writer back; re-activation keeps writing to it.
    assert!(con.reset());
    let (mut tq, aq) = vm.queues(2, 16);
    con.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap();
    vm.write(DATA, b"again");
    tq[1].add_chain(&[(DATA, 5, false)]);
    tq[1].notify();
    assert!(tq[1].wait_used(1));
    assert!(wait_sink(&sink, b"hello guest\nagain"));
    assert!(con.reset());
}

#[test]
fn receive_buffers_input_until_guest_posts() {
    let vm = TestVm::new();
    let mut con = VirtioConsole::new(None, None).unwrap();
    let input = con.input();
    let (mut tq, aq) = vm.queues(2, 16);
    con.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap();
    // No buffer posted yet: bytes wait in the buffer.
    assert_eq!(input.enqueue(b"typed text"), 10);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(tq[0].used_idx(), 0);
    let head = tq[0].add_chain(&[(DATA, 4, true)]);
    tq[0].add_chain(&[(DATA + 0x100, 64, true)]);
    tq[0].notify();
    assert!(tq[0].wait_used(2));
    assert_eq!(tq[0].used(0), (u32::from(head), 4));
    assert_eq!(tq[0].used(1).1, 6);
    assert_eq!(vm.read(DATA, 4), b"type");
    assert_eq!(vm.read(DATA + 0x100, 6), b"d text");
    // Input arriving while a buffer is posted is delivered at once.
    tq[0].add_chain(&[(DATA + 0x200, 64, true)]);
    tq[0].notify();
    std::thread::sleep(std::time::Duration::from_millis(20));
    input.enqueue(b"!");
    assert!(tq[0].wait_used(3));
    assert_eq!(vm.read(DATA + 0x200, 1), b"!");
    assert!(con.reset());
}

#[test]
fn receive_from_polled_pipe() {
    let vm = TestVm::new();
    let (reader, mut writer) = std::io::pipe().unwrap();
    let reader = File::from(std::os::fd::OwnedFd::from(reader));
    let mut con = VirtioConsole::new(None, Some(reader)).unwrap();
    let (mut tq, aq) = vm.queues(2, 16);
    con.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap();
    tq[0].add_chain(&[(DATA, 64, true)]);
    tq[0].notify();
    writer.write_all(b"ls\n").unwrap();
    assert!(tq[0].wait_used(1));
    assert_eq!(vm.read(DATA, 3), b"ls\n");
    // EOF on the pipe must not spin or break the device.
    drop(writer);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(con.reset());
}

#[test]
fn pause_keeps_output_input_and_ring_positions() {
    let vm = TestVm::new();
    let sink = Sink::default();
    let mut con = VirtioConsole::new(Some(Box::new(sink.clone())), None).unwrap();
    con.ack_features(con.features());
    let (mut tq, aq) = vm.queues(2, 16);
    let kicks: Vec<_> = aq.iter().map(|a| a.notify.try_clone().unwrap()).collect();
    con.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap();
    vm.write(DATA, b"one\n");
    tq[1].add_chain(&[(DATA, 4, false)]);
    tq[1].notify();
    assert!(wait_sink(&sink, b"one\n"));
    assert!(tq[1].wait_used(1));

    let queues = con.pause().unwrap();
    assert_eq!(queues.len(), 2);
    assert_eq!(virtio_queue::QueueT::next_avail(&queues[1].queue), 1);
    // Input arriving while paused waits in the device and is saved.
    assert_eq!(con.input().enqueue(b"abc"), 3);
    let saved: ConsoleState = serde_json::from_value(con.snapshot_state()).unwrap();
    assert_eq!(saved.pending_input, b"abc");

    let aq = queues
        .into_iter()
        .zip(kicks)
        .map(|(p, notify)| ActivatedQueue {
            index: p.index,
            queue: p.queue,
            notify,
        })
        .collect();
    con.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap();
    tq[0].add_chain(&[(DATA + 0x1000, 16, true)]);
    tq[0].notify();
    assert!(tq[0].wait_used(1));
    assert_eq!(vm.read(DATA + 0x1000, 3), b"abc");
    // The output writer came back: transmit still reaches it.
    vm.write(DATA, b"two\n");
    tq[1].add_chain(&[(DATA, 4, false)]);
    tq[1].notify();
    assert!(tq[1].wait_used(2));
    assert!(wait_sink(&sink, b"one\ntwo\n"));
    assert!(con.reset());

    let mut fresh = VirtioConsole::new(None, None).unwrap();
    fresh
        .restore_state(&serde_json::to_value(&saved).unwrap())
        .unwrap();
    assert_eq!(fresh.input().take(8), b"abc");
    let mut bad = saved;
    bad.acked_features = u64::MAX;
    assert!(fresh
        .restore_state(&serde_json::to_value(&bad).unwrap())
        .is_err());
}
