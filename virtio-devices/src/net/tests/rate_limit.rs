//! virtio-net under rate limits with a real tap: transmit and receive are
//! throttled separately. Only lower bounds on time are asserted.

use std::time::Instant;

use super::*;
use crate::rate_limiter::{BucketConfig, RateLimits};

fn limited(limits: RateLimits) -> NetOptions {
    NetOptions {
        rate_limit: Some(limits),
        ..NetOptions::default()
    }
}

fn bucket(size: u64, refill_time_ms: u64) -> Option<BucketConfig> {
    Some(BucketConfig {
        size,
        one_time_burst: 0,
        refill_time_ms,
    })
}

#[test]
fn tx_bandwidth_is_limited() {
    // 28 000 bytes per second; 40 frames of 1400 bytes: the first 20 fit
    // the full bucket, the other 20 take a second.
    let limits = RateLimits {
        bandwidth: bucket(28_000, 1000),
        ops: None,
    };
    let mut r = rig("rlt", limited(limits), ALL, 256, 1500);
    let f = frame(3, 1400);
    r.vm.write(DATA, &[0u8; VNET_HDR_LEN]);
    r.vm.write(DATA + 0x1000, &f);
    let start = Instant::now();
    let tx = &mut r.tq[1];
    for _ in 0..40 {
        tx.add_chain(&[(DATA, 12, false), (DATA + 0x1000, 1400, false)]);
    }
    tx.notify();
    assert!(tx.wait_used(20));
    std::thread::sleep(Duration::from_millis(100));
    assert!(tx.used_idx() < 40, "tx not throttled");
    assert!(tx.wait_used(40), "tx never resumed");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "took {took:?}");
    let c = r.net.counters().snapshot();
    assert_eq!((c.tx_frames, c.tx_bytes), (40, 40 * 1400));
    assert_eq!(r.sock.recv().unwrap(), f);
    assert!(!r.net.needs_reset());
    assert!(r.net.reset());
}

#[test]
fn rx_frames_are_limited() {
    // Two frames per 500 ms: after the first two, one every 250 ms.
    let limits = RateLimits {
        bandwidth: None,
        ops: bucket(2, 500),
    };
    let mut r = rig("rlr", limited(limits), ALL, 16, 1500);
    for i in 0..6u64 {
        r.tq[0].add_chain(&[(DATA + i * 0x1000, 2048, true)]);
    }
    r.tq[0].notify();
    let start = Instant::now();
    let sent: Vec<Vec<u8>> = (0..6).map(|i| frame(i, 100)).collect();
    for f in &sent {
        r.sock.send(f);
    }
    assert!(r.tq[0].wait_used(6), "rx never resumed");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "took {took:?}");
    // Nothing lost or reordered by the throttling.
    assert_eq!(rx_frames(&r, 0, 6), sent);
    assert!(r.net.reset());
}
