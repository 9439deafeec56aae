use std::time::Duration;

use vm_memory::GuestAddress;

use super::request::{parse_stats, pfn_runs, reported_runs, PageRun};
use super::*;
use crate::device::{VirtioDevice, VirtioInterruptType};
use crate::discard::resident_bytes;
use crate::worker::testutil::{TestQueue, TestVm, DATA, MEM_SIZE};

const PAGE: u64 = 4096;
/// Guest pages the tests fill and give back.
const POOL: u64 = 0x40_0000;

fn options(reporting: bool) -> BalloonOptions {
    BalloonOptions {
        size: 0,
        deflate_on_oom: true,
        free_page_reporting: reporting,
        huge_page_size: 2 << 20,
    }
}

/// A started balloon with every feature accepted.
fn started(vm: &TestVm, reporting: bool) -> (VirtioBalloon, Vec<TestQueue>) {
    let mut dev = VirtioBalloon::new(options(reporting)).unwrap();
    dev.ack_features(dev.features());
    let n = dev.queue_max_sizes().len() as u16;
    let (tq, aq) = vm.queues(n, 16);
    dev.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap();
    (dev, tq)
}

fn fill(vm: &TestVm, gpa: u64, len: u64) {
    vm.write(gpa, &vec![0xa5u8; len as usize]);
}

fn pfns(list: &[u64]) -> Vec<u8> {
    list.iter()
        .flat_map(|&p| (p as u32).to_le_bytes())
        .collect()
}

#[test]
fn pfn_arrays_become_runs_and_odd_bytes_are_ignored() {
    let mut bytes = pfns(&[16, 17, 18, 40, 19, 0xffff_ffff]);
    bytes.extend_from_slice(&[1, 2, 3]); // a partial PFN
    assert_eq!(
        pfn_runs(&bytes),
        vec![
            PageRun {
                gpa: 16 * PAGE,
                len: 3 * PAGE
            },
            PageRun {
                gpa: 40 * PAGE,
                len: PAGE
            },
            PageRun {
                gpa: 19 * PAGE,
                len: PAGE
            },
            PageRun {
                gpa: 0xffff_ffff * PAGE,
                len: PAGE
            },
        ]
    );
    assert!(pfn_runs(&[]).is_empty());
    // Consecutive PFNs merge; past the cap the rest is ignored.
    let many: Vec<u64> = (0..request::MAX_PFNS_PER_REQUEST as u64 + 10).collect();
    let runs = pfn_runs(&pfns(&many));
    assert_eq!(
        runs,
        vec![PageRun {
            gpa: 0,
            len: request::MAX_PFNS_PER_REQUEST as u64 * PAGE
        }]
    );
}

#[test]
fn stats_entries_parse_and_unknown_tags_are_skipped() {
    let mut raw = Vec::new();
    for (tag, val) in [(4u16, 100u64), (5, 200), (99, 7), (6, 150)] {
        raw.extend_from_slice(&tag.to_le_bytes());
        raw.extend_from_slice(&val.to_le_bytes());
    }
    raw.extend_from_slice(&[1, 2, 3]);
    let mut stats = BalloonStats::default();
    assert_eq!(parse_stats(&raw, &mut stats), 3);
    assert_eq!(stats.free_memory, Some(100));
    assert_eq!(stats.total_memory, Some(200));
    assert_eq!(stats.available_memory, Some(150));
    assert_eq!(stats.swap_in, None);
    assert_eq!(stats.entries().len(), 3);
}

#[test]
fn reports_shrink_to_whole_pages() {
    let runs = reported_runs(&[
        (GuestAddress(0x1000), 0x2000),
        (GuestAddress(0x1800), 0x1000),  // less than a whole page
        (GuestAddress(0x10800), 0x2000), // one whole page inside
        (GuestAddress(u64::MAX - 0x800), 0x1000),
    ]);
    assert_eq!(
        runs,
        vec![
            PageRun {
                gpa: 0x1000,
                len: 0x2000
            },
            PageRun {
                gpa: 0x11000,
                len: 0x1000
            },
        ]
    );
}

#[test]
fn inflate_gives_pages_back_and_hostile_pfns_are_counted() {
    let vm = TestVm::new();
    let (dev, mut tq) = started(&vm, false);
    let control = dev.control();
    fill(&vm, POOL, 64 * PAGE);
    assert_eq!(resident_bytes(vm.mem, POOL, 64 * PAGE), 64 * PAGE);
    let first = POOL / PAGE;
    let mut list: Vec<u64> = (first..first + 32).collect();
    list.push(MEM_SIZE / PAGE + 5); // beyond RAM
    list.push(0xffff_ffff);
    vm.write(DATA, &pfns(&list));
    tq[0].add_chain(&[(DATA, (list.len() * 4) as u32 + 3, false)]);
    tq[0].notify();
    assert!(tq[0].wait_used(1));
    assert_eq!(
        resident_bytes(vm.mem, POOL, 32 * PAGE),
        0,
        "inflated pages still resident"
    );
    assert_eq!(
        resident_bytes(vm.mem, POOL + 32 * PAGE, 32 * PAGE),
        32 * PAGE
    );
    assert_eq!(
        vm.read(POOL + 5, 4),
        vec![0; 4],
        "inflated pages read back as zero"
    );
    let c = &control.counters;
    assert_eq!(c.inflated_bytes.load(Ordering::Relaxed), 32 * PAGE);
    assert_eq!(c.invalid_requests.load(Ordering::Relaxed), 2);

    // A chain outside guest memory and a device-writable one: completed,
    // nothing freed.
    tq[0].add_chain(&[(MEM_SIZE - 8, 64, false)]);
    tq[0].add_chain(&[(DATA, 8, true)]);
    tq[0].notify();
    assert!(tq[0].wait_used(3));
    assert_eq!(
        resident_bytes(vm.mem, POOL + 32 * PAGE, 32 * PAGE),
        32 * PAGE
    );

    // Deflate: counted, the pages come back when touched.
    tq[1].add_chain(&[(DATA, (32 * 4) as u32, false)]);
    tq[1].notify();
    assert!(tq[1].wait_used(1));
    assert_eq!(c.deflated_bytes.load(Ordering::Relaxed), 32 * PAGE);
    assert!(!dev.needs_reset());
}

#[test]
fn free_page_reports_are_freed_whatever_their_alignment() {
    let vm = TestVm::new();
    let (dev, mut tq) = started(&vm, true);
    let control = dev.control();
    fill(&vm, POOL, 16 * PAGE);
    // The reporting queue is the fourth (stats accepted).
    tq[3].add_chain(&[
        (POOL, (8 * PAGE) as u32, true),
        (POOL + 8 * PAGE + 0x800, 0x1800, true),
    ]);
    tq[3].notify();
    assert!(tq[3].wait_used(1));
    assert_eq!(resident_bytes(vm.mem, POOL, 8 * PAGE), 0);
    assert_eq!(
        resident_bytes(vm.mem, POOL + 8 * PAGE, PAGE),
        PAGE,
        "partial page kept"
    );
    assert_eq!(resident_bytes(vm.mem, POOL + 9 * PAGE, PAGE), 0);
    assert_eq!(
        control.counters.reported_bytes.load(Ordering::Relaxed),
        9 * PAGE
    );
    // A report reaching past RAM is refused as a whole.
    tq[3].add_chain(&[(MEM_SIZE - PAGE, (4 * PAGE) as u32, true)]);
    tq[3].notify();
    assert!(tq[3].wait_used(2));
    assert_eq!(
        control.counters.reported_bytes.load(Ordering::Relaxed),
        9 * PAGE
    );
    assert_eq!(control.counters.invalid_requests.load(Ordering::Relaxed), 1);
}

#[test]
fn without_stats_the_reporting_queue_moves_down() {
    let vm = TestVm::new();
    let mut dev = VirtioBalloon::new(options(true)).unwrap();
    dev.ack_features(dev.features() & !(1 << VIRTIO_BALLOON_F_STATS_VQ));
    let (mut tq, aq) = vm.queues(3, 16);
    dev.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap();
    fill(&vm, POOL, PAGE);
    tq[2].add_chain(&[(POOL, PAGE as u32, true)]);
    tq[2].notify();
    assert!(tq[2].wait_used(1));
    assert_eq!(
        dev.control()
            .counters
            .reported_bytes
            .load(Ordering::Relaxed),
        PAGE
    );
}

fn post_stats(vm: &TestVm, q: &mut TestQueue, free: u64) {
    let mut raw = Vec::new();
    for (tag, val) in [(4u16, free), (5u16, 1 << 30)] {
        raw.extend_from_slice(&tag.to_le_bytes());
        raw.extend_from_slice(&val.to_le_bytes());
    }
    vm.write(DATA + 0x8000, &raw);
    q.add_chain(&[(DATA + 0x8000, raw.len() as u32, false)]);
    q.notify();
}

#[test]
fn stats_are_held_and_refreshed_on_request() {
    let vm = TestVm::new();
    let (dev, mut tq) = started(&vm, false);
    let control = dev.control();
    post_stats(&vm, &mut tq[2], 1000);
    // The sample arrives and the buffer is held, not returned.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while control.latest_stats().free_memory.is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(control.latest_stats().free_memory, Some(1000));
    assert_eq!(tq[2].used_idx(), 0);
    // Asking for fresh statistics returns the buffer to the driver; a
    // driver that does not refill it leaves the old sample.
    let stats = control.stats(Duration::from_millis(50));
    assert!(tq[2].wait_used(1));
    assert_eq!(stats.free_memory, Some(1000));
    post_stats(&vm, &mut tq[2], 2000);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while control.latest_stats().free_memory != Some(2000) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let names: Vec<_> = control
        .counter_values(Duration::ZERO)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        names.contains(&"free_memory") && names.contains(&"reported_bytes"),
        "{names:?}"
    );

    // Paused with the buffer held: it survives the snapshot state and is
    // returned after the restore.
    let mut dev = dev;
    let queues = dev.pause().unwrap();
    let state = dev.snapshot_state();
    let mut back = VirtioBalloon::new(options(false)).unwrap();
    back.restore_state(&state).unwrap();
    assert_eq!(back.snapshot_state(), state);
    let aq = queues
        .into_iter()
        .map(|p| crate::device::ActivatedQueue {
            index: p.index,
            queue: p.queue,
            notify: tq[usize::from(p.index)].kick.try_clone().unwrap(),
        })
        .collect();
    back.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap();
    back.control().stats(Duration::from_millis(10));
    assert!(tq[2].wait_used(2), "held buffer not returned after restore");
}

#[test]
fn target_and_actual_go_through_config_space() {
    let vm = TestVm::new();
    let mut dev = VirtioBalloon::new(BalloonOptions {
        size: 8 << 20,
        ..options(false)
    })
    .unwrap();
    let control = dev.control();
    let read = |dev: &VirtioBalloon, off: u64| {
        let mut b = [0u8; 4];
        dev.read_config(off, &mut b);
        u32::from_le_bytes(b)
    };
    assert_eq!(read(&dev, 0), 2048);
    // Before activation: no interrupt to send, the value is read at probe.
    control.set_target(16 << 20, 1 << 30).unwrap();
    assert_eq!(read(&dev, 0), 4096);
    dev.ack_features(dev.features());
    let (_tq, aq) = vm.queues(3, 16);
    dev.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap();
    control.set_target(32 << 20, 1 << 30).unwrap();
    assert_eq!(read(&dev, 0), 8192);
    assert!(vm
        .interrupt
        .seen
        .lock()
        .unwrap()
        .contains(&VirtioInterruptType::Config));
    dev.write_config(4, &1000u32.to_le_bytes());
    assert_eq!(control.actual_bytes(), 1000 * PAGE);
    // Writes to num_pages or partial writes are ignored.
    dev.write_config(0, &5u32.to_le_bytes());
    dev.write_config(4, &[1]);
    assert_eq!((read(&dev, 0), read(&dev, 4)), (8192, 1000));
    let mut tail = [0xffu8; 8];
    dev.read_config(12, &mut tail);
    assert_eq!(tail, [0; 8]);
    dev.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);

    let e = control.set_target(4097, 1 << 30).unwrap_err();
    assert!(e.to_string().starts_with("desired_balloon=4097"), "{e}");
    let e = control.set_target(2 << 30, 1 << 30).unwrap_err();
    assert!(e.to_string().contains("must not exceed"), "{e}");
    assert!(dev.reset());
    assert_eq!(control.actual_bytes(), 0);
}

#[test]
fn features_follow_the_options_and_restore_checks_them() {
    let plain = VirtioBalloon::new(BalloonOptions::default()).unwrap();
    assert_eq!(plain.device_type(), 5);
    assert_eq!(plain.queue_max_sizes().len(), 3);
    assert_eq!(plain.features() & (1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM), 0);
    assert_eq!(plain.features() & (1 << VIRTIO_BALLOON_F_PAGE_REPORTING), 0);
    let mut full = VirtioBalloon::new(options(true)).unwrap();
    assert_ne!(full.features() & (1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM), 0);
    assert_ne!(full.features() & (1 << VIRTIO_BALLOON_F_PAGE_REPORTING), 0);
    assert_eq!(full.queue_max_sizes().len(), 4);
    full.ack_features(u64::MAX);
    assert_eq!(full.snapshot_state()["acked_features"], full.features());
    let mut plain = plain;
    let e = plain.restore_state(&full.snapshot_state()).unwrap_err();
    assert!(e.to_string().contains("free_page_reporting"), "{e}");
    let mut bad = full.snapshot_state();
    bad["held_stats"] = serde_json::json!(4000);
    assert!(full.restore_state(&bad).is_err());
    assert!(full
        .restore_state(&serde_json::json!({"version": 9}))
        .is_err());
}
