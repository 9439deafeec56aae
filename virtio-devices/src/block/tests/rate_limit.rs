//! virtio-blk under rate limits: requests wait in the ring for budget, and
//! disks of one group share it. Only lower bounds on time are asserted.

use std::time::{Duration, Instant};

use super::*;
use crate::rate_limiter::{BucketConfig, RateLimitGroup, RateLimits};

const CHUNK: u32 = 256 << 10;

fn limited(group: &Arc<RateLimitGroup>) -> BlockOptions {
    BlockOptions {
        rate_limit: Some(group.clone()),
        ..Default::default()
    }
}

fn bucket(size: u64, refill_time_ms: u64) -> Option<BucketConfig> {
    Some(BucketConfig {
        size,
        one_time_burst: 0,
        refill_time_ms,
    })
}

/// 1 MiB per second.
fn one_mib_per_s(id: &str) -> Arc<RateLimitGroup> {
    let limits = RateLimits {
        bandwidth: bucket(1 << 20, 1000),
        ops: None,
    };
    RateLimitGroup::new(id, limits).unwrap()
}

/// Queues a CHUNK-byte write of `fill` at chunk `i` without waiting.
fn post_write(rig: &mut Rig, i: u64, fill: u8) {
    rig.vm.write(BUF, &vec![fill; CHUNK as usize]);
    rig.header(VIRTIO_BLK_T_OUT, i * u64::from(CHUNK) / 512);
    rig.tq[0].add_chain(&[(HDR, 16, false), (BUF, CHUNK, false), (STATUS, 1, true)]);
    rig.tq[0].notify();
    rig.done += 1;
}

#[test]
fn bandwidth_limit_slows_writes_down() {
    let disk = MemDisk::new(8192, false);
    let mut rig = Rig::new(Box::new(disk.clone()), limited(&one_mib_per_s("d")));
    let start = Instant::now();
    // 4 MiB: the first MiB is the full bucket, the other 3 take 3 s.
    for i in 0..16u64 {
        post_write(&mut rig, i, i as u8 + 1);
        assert!(rig.tq[0].wait_used(rig.done), "write {i} never completed");
        assert_eq!(rig.vm.read(STATUS, 1)[0], OK);
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(2900), "4 MiB took {took:?}");
    let data = disk.data.lock().unwrap();
    for i in 0..16usize {
        assert_eq!(data[i * CHUNK as usize], i as u8 + 1);
    }
    drop(data);
    assert_eq!(rig.blk.counters().snapshot().write_bytes, 4 << 20);
    assert!(!rig.blk.needs_reset());
    assert!(rig.blk.reset());
}

#[test]
fn throttled_requests_stay_in_the_ring_until_the_timer() {
    let limits = RateLimits {
        bandwidth: None,
        ops: bucket(1, 300),
    };
    let group = RateLimitGroup::new("ops", limits).unwrap();
    let disk = MemDisk::new(8, false);
    let mut rig = Rig::new(Box::new(disk.clone()), limited(&group));
    let start = Instant::now();
    rig.header(VIRTIO_BLK_T_FLUSH, 0);
    for _ in 0..3 {
        rig.tq[0].add_chain(&[(HDR, 16, false), (STATUS, 1, true)]);
    }
    rig.tq[0].notify();
    assert!(rig.tq[0].wait_used(1));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rig.tq[0].used_idx(), 1, "second flush not throttled");
    // Kicks while throttled change nothing.
    rig.tq[0].notify();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rig.tq[0].used_idx(), 1);
    assert!(rig.tq[0].wait_used(3), "timer never resumed the queue");
    assert!(start.elapsed() >= Duration::from_millis(550));
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 3);
    // The device keeps working after a reset and re-activation.
    assert!(rig.blk.reset());
}

#[test]
fn a_group_shares_its_budget_between_disks() {
    let group = one_mib_per_s("shared");
    let mut a = Rig::new(Box::new(MemDisk::new(4096, false)), limited(&group));
    let mut b = Rig::new(Box::new(MemDisk::new(4096, false)), limited(&group));
    let start = Instant::now();
    // 2 MiB each, concurrently: 4 MiB through one 1 MiB/s budget.
    for i in 0..8u64 {
        post_write(&mut a, i, 1);
        post_write(&mut b, i, 2);
        assert!(a.tq[0].wait_used(a.done));
        assert!(b.tq[0].wait_used(b.done));
    }
    let took = start.elapsed();
    // Alone, each disk would need about 1 s for its 2 MiB.
    assert!(took >= Duration::from_millis(2900), "took {took:?}");
    for rig in [&a, &b] {
        assert_eq!(rig.blk.counters().snapshot().write_bytes, 2 << 20);
    }
}
