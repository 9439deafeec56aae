use std::sync::atomic::Ordering;

use super::request::{BlockState, Request, Response, REQUEST_SIZE, RESPONSE_SIZE};
use super::*;
use crate::device::{VirtioDevice, VirtioInterruptType};
use crate::discard::resident_bytes;
use crate::worker::testutil::{TestQueue, TestVm, DATA, MEM_SIZE};

const MIB: u64 = 1 << 20;
/// The test region: the upper half of the 16 MiB test memory, 1 MiB blocks.
const REGION: u64 = 8 * MIB;
const BLOCK: u64 = MIB;

fn options(requested: u64) -> MemOptions {
    MemOptions {
        addr: REGION,
        region_size: 8 * MIB,
        block_size: BLOCK,
        requested_size: requested,
        huge_page_size: 0,
    }
}

fn started(vm: &TestVm, requested: u64) -> (VirtioMem, TestQueue) {
    let mut dev = VirtioMem::new(options(requested)).unwrap();
    dev.ack_features(dev.features());
    let (mut tq, aq) = vm.queues(1, 16);
    dev.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap();
    (dev, tq.remove(0))
}

fn raw_request(kind: u16, addr: u64, nb_blocks: u16) -> Vec<u8> {
    let mut r = vec![0u8; REQUEST_SIZE];
    r[0..2].copy_from_slice(&kind.to_le_bytes());
    r[8..16].copy_from_slice(&addr.to_le_bytes());
    r[16..18].copy_from_slice(&nb_blocks.to_le_bytes());
    r
}

/// Sends one request and returns the response's (type, state).
fn send(vm: &TestVm, q: &mut TestQueue, kind: u16, addr: u64, nb_blocks: u16) -> (u16, u16) {
    vm.write(DATA, &raw_request(kind, addr, nb_blocks));
    vm.write(DATA + 0x100, &[0xff; RESPONSE_SIZE]);
    let before = q.used_idx();
    q.add_chain(&[
        (DATA, REQUEST_SIZE as u32, false),
        (DATA + 0x100, RESPONSE_SIZE as u32, true),
    ]);
    q.notify();
    assert!(q.wait_used(before + 1));
    assert_eq!(q.used(before).1, RESPONSE_SIZE as u32);
    let r = vm.read(DATA + 0x100, RESPONSE_SIZE);
    (
        u16::from_le_bytes([r[0], r[1]]),
        u16::from_le_bytes([r[8], r[9]]),
    )
}

const ACK: (u16, u16) = (0, 0);
const NACK: (u16, u16) = (1, 0);
const ERROR: (u16, u16) = (3, 0);

fn config_u64(dev: &VirtioMem, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    dev.read_config(offset, &mut b);
    u64::from_le_bytes(b)
}

#[test]
fn requests_parse_and_short_buffers_are_refused() {
    assert_eq!(
        Request::parse(&raw_request(0, 0x1234_0000, 3)),
        Some(Request::Plug {
            addr: 0x1234_0000,
            nb_blocks: 3
        })
    );
    assert_eq!(
        Request::parse(&raw_request(2, 7, 7)),
        Some(Request::UnplugAll)
    );
    assert_eq!(
        Request::parse(&raw_request(9, 0, 0)),
        Some(Request::Unknown(9))
    );
    assert_eq!(
        Request::parse(&raw_request(0, 0, 1)[..REQUEST_SIZE - 1]),
        None
    );
    assert_eq!(Request::parse(&[]), None);
    let state = Response::State(BlockState::Mixed).encode();
    assert_eq!(&state[0..2], &[0, 0]);
    assert_eq!(&state[8..10], &[2, 0]);
    assert_eq!(&Response::Busy.encode()[0..2], &[2, 0]);
}

#[test]
fn plug_map_checks_every_range_and_state() {
    let mut map = PlugMap::new(REGION, BLOCK, 8);
    let req = 4 * BLOCK;
    // Hostile ranges: unaligned, empty, below, past the end, wrapping.
    for (addr, nb) in [
        (REGION + 4096, 1),
        (REGION, 0),
        (REGION - BLOCK, 1),
        (REGION + 7 * BLOCK, 2),
        (u64::MAX - BLOCK + 1, 1),
        (REGION, u16::MAX),
    ] {
        assert_eq!(
            map.plug(addr, nb, req).response,
            Response::Error,
            "{addr:#x}+{nb}"
        );
        assert_eq!(map.state(addr, nb), Response::Error);
        assert_eq!(map.unplug(addr, nb).response, Response::Error);
    }
    assert_eq!(map.plug(REGION, 2, req).response, Response::Ack);
    // Plugged twice, unplugged while unplugged: errors, nothing changes.
    assert_eq!(map.plug(REGION + BLOCK, 1, req).response, Response::Error);
    assert_eq!(map.unplug(REGION + BLOCK, 2).response, Response::Error);
    // Above requested_size: NACK.
    assert_eq!(
        map.plug(REGION + 2 * BLOCK, 3, req).response,
        Response::Nack
    );
    assert_eq!(map.plugged_bytes(), 2 * BLOCK);
    assert_eq!(map.state(REGION, 2), Response::State(BlockState::Plugged));
    assert_eq!(map.state(REGION, 3), Response::State(BlockState::Mixed));
    assert_eq!(
        map.state(REGION + 2 * BLOCK, 6),
        Response::State(BlockState::Unplugged)
    );
    assert_eq!(map.plug(REGION + 5 * BLOCK, 2, req).response, Response::Ack);
    let freed = map.unplug(REGION + BLOCK, 1);
    assert_eq!(freed.freed, vec![(REGION + BLOCK, BLOCK)]);
    assert_eq!(map.plugged_runs(), vec![0..1, 5..7]);
    let all = map.unplug_all();
    assert_eq!(
        all.freed,
        vec![(REGION, BLOCK), (REGION + 5 * BLOCK, 2 * BLOCK)]
    );
    assert_eq!(map.plugged_bytes(), 0);
    // Hostile snapshot runs leave the map alone.
    map.plug(REGION, 1, req);
    for runs in [
        vec![(7, 2)],
        vec![(0, 0)],
        vec![(0, 2), (1, 1)],
        vec![(u64::MAX, 1)],
        vec![(1, u64::MAX)],
    ] {
        assert_eq!(map.restore(&runs), None, "{runs:?}");
        assert_eq!(map.plugged_runs(), vec![0..1]);
    }
    assert_eq!(map.restore(&[(2, 3)]), Some(()));
    assert_eq!(map.plugged_bytes(), 3 * BLOCK);
}

#[test]
fn layout_and_sizes_are_checked() {
    let bad = |o: MemOptions| VirtioMem::new(o).is_err();
    assert!(bad(MemOptions {
        block_size: 3 * MIB,
        ..options(0)
    }));
    assert!(bad(MemOptions {
        addr: REGION + 4096,
        ..options(0)
    }));
    assert!(bad(MemOptions {
        region_size: 0,
        ..options(0)
    }));
    assert!(bad(MemOptions {
        addr: u64::MAX - MIB + 1,
        ..options(0)
    }));
    assert!(bad(options(BLOCK / 2)));
    assert!(bad(options(9 * MIB)));
    let dev = VirtioMem::new(options(2 * MIB)).unwrap();
    let control = dev.control();
    assert!(matches!(
        control.set_requested(MIB + 4096),
        Err(MemError::Unaligned(BLOCK))
    ));
    assert!(matches!(
        control.set_requested(16 * MIB),
        Err(MemError::TooLarge(_))
    ));
    assert_eq!(control.requested_bytes(), 2 * MIB);
}

#[test]
fn config_space_describes_the_region() {
    let vm = TestVm::new();
    let (dev, _q) = started(&vm, 2 * MIB);
    assert_eq!(dev.device_type(), 24);
    assert_eq!(config_u64(&dev, 0), BLOCK);
    assert_eq!(config_u64(&dev, 16), REGION);
    assert_eq!(config_u64(&dev, 24), 8 * MIB);
    assert_eq!(config_u64(&dev, 32), 8 * MIB);
    assert_eq!(config_u64(&dev, 40), 0);
    assert_eq!(config_u64(&dev, 48), 2 * MIB);
    // Out of range and odd offsets read zero; writes change nothing.
    assert_eq!(config_u64(&dev, 56), 0);
    assert_eq!(config_u64(&dev, u64::MAX), 0);
    let mut tail = [0xffu8; 16];
    dev.read_config(50, &mut tail);
    assert_eq!(&tail[6..], &[0; 10]);
    let mut dev = dev;
    dev.write_config(48, &[0xff; 8]);
    assert_eq!(config_u64(&dev, 48), 2 * MIB);
    // A new target raises a config interrupt once active.
    dev.control().set_requested(4 * MIB).unwrap();
    assert_eq!(config_u64(&dev, 48), 4 * MIB);
    assert!(vm.interrupt.wait_for(|k| *k == VirtioInterruptType::Config));
}

#[test]
fn plug_unplug_frees_blocks_and_hostile_chains_are_answered() {
    let vm = TestVm::new();
    let (dev, mut q) = started(&vm, 3 * BLOCK);
    let control = dev.control();
    assert_eq!(send(&vm, &mut q, 0, REGION, 2), ACK);
    assert_eq!(send(&vm, &mut q, 0, REGION + 2 * BLOCK, 2), NACK);
    assert_eq!(send(&vm, &mut q, 0, REGION + BLOCK, 1), ERROR);
    assert_eq!(send(&vm, &mut q, 0, REGION + 4096, 1), ERROR);
    assert_eq!(send(&vm, &mut q, 0, MEM_SIZE, 1), ERROR);
    assert_eq!(send(&vm, &mut q, 7, REGION, 1), ERROR);
    assert_eq!(
        send(&vm, &mut q, 3, REGION, 3),
        (0, BlockState::Mixed as u16)
    );
    assert_eq!(control.plugged_bytes(), 2 * BLOCK);
    assert_eq!(config_u64(&dev, 40), 2 * BLOCK);

    // The guest uses the plugged blocks; unplugging gives them back.
    vm.write(REGION, &vec![0x5a; (2 * BLOCK) as usize]);
    assert_eq!(resident_bytes(vm.mem, REGION, 2 * BLOCK), 2 * BLOCK);
    assert_eq!(send(&vm, &mut q, 1, REGION + BLOCK, 1), ACK);
    assert_eq!(resident_bytes(vm.mem, REGION + BLOCK, BLOCK), 0);
    assert_eq!(resident_bytes(vm.mem, REGION, BLOCK), BLOCK);
    assert_eq!(vm.read(REGION + BLOCK + 17, 2), vec![0, 0]);
    assert_eq!(send(&vm, &mut q, 1, REGION + BLOCK, 1), ERROR);
    assert_eq!(send(&vm, &mut q, 2, 0, 0), ACK);
    assert_eq!(resident_bytes(vm.mem, REGION, BLOCK), 0);
    assert_eq!(control.plugged_bytes(), 0);

    // Malformed chains: a request too short, a response buffer too small,
    // buffers outside guest memory. Completed, never a panic.
    let before = q.used_idx();
    vm.write(DATA, &raw_request(0, REGION, 1));
    q.add_chain(&[(DATA, 8, false), (DATA + 0x100, RESPONSE_SIZE as u32, true)]);
    q.add_chain(&[(DATA, REQUEST_SIZE as u32, false), (DATA + 0x100, 4, true)]);
    q.add_chain(&[(DATA, REQUEST_SIZE as u32, false)]);
    q.add_chain(&[
        (MEM_SIZE - 8, REQUEST_SIZE as u32, false),
        (DATA + 0x100, RESPONSE_SIZE as u32, true),
    ]);
    q.add_chain(&[
        (DATA, REQUEST_SIZE as u32, false),
        (MEM_SIZE - 4, RESPONSE_SIZE as u32, true),
    ]);
    q.notify();
    assert!(q.wait_used(before + 5));
    assert_eq!(
        control.plugged_bytes(),
        0,
        "a malformed chain plugged memory"
    );
    let c = &control.counters;
    assert_eq!(c.plugs.load(Ordering::Relaxed), 1);
    assert_eq!(c.unplugs.load(Ordering::Relaxed), 2);
    assert_eq!(c.nacks.load(Ordering::Relaxed), 1);
    assert!(c.errors.load(Ordering::Relaxed) >= 6);
    assert!(!dev.needs_reset());
}

#[test]
fn a_region_beyond_ram_is_counted_not_fatal() {
    let vm = TestVm::new();
    let mut dev = VirtioMem::new(MemOptions {
        addr: MEM_SIZE - 2 * BLOCK,
        region_size: 4 * BLOCK,
        ..options(4 * BLOCK)
    })
    .unwrap();
    dev.ack_features(dev.features());
    let (mut tq, aq) = vm.queues(1, 16);
    dev.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
        .unwrap();
    let q = &mut tq[0];
    assert_eq!(send(&vm, q, 0, MEM_SIZE - 2 * BLOCK, 4), ACK);
    assert_eq!(send(&vm, q, 1, MEM_SIZE - 2 * BLOCK, 4), ACK);
    let c = &dev.control().counters;
    assert_eq!(c.discard_errors.load(Ordering::Relaxed), 1);
}

#[test]
fn snapshot_keeps_plug_state_and_restore_checks_it() {
    let vm = TestVm::new();
    let (mut dev, mut q) = started(&vm, 4 * BLOCK);
    assert_eq!(send(&vm, &mut q, 0, REGION + BLOCK, 2), ACK);
    assert_eq!(send(&vm, &mut q, 0, REGION + 6 * BLOCK, 1), ACK);
    let paused = dev.pause().unwrap();
    assert_eq!(paused.len(), 1);
    let state = dev.snapshot_state();
    let parsed: MemState = serde_json::from_value(state.clone()).unwrap();
    assert_eq!(parsed.plugged, vec![(1, 2), (6, 1)]);
    assert_eq!(parsed.requested_size, 4 * BLOCK);

    let mut back = VirtioMem::new(options(0)).unwrap();
    back.restore_state(&state).unwrap();
    assert_eq!(back.control().plugged_bytes(), 3 * BLOCK);
    assert_eq!(back.control().requested_bytes(), 4 * BLOCK);
    assert_eq!(config_u64(&back, 40), 3 * BLOCK);
    // The restored device serves the same queue on.
    let vm_queues = paused
        .into_iter()
        .map(|p| crate::device::ActivatedQueue {
            index: p.index,
            queue: p.queue,
            notify: q.kick.try_clone().unwrap(),
        })
        .collect();
    back.activate(vm.atomic.clone(), vm.interrupt.clone(), vm_queues)
        .unwrap();
    assert_eq!(send(&vm, &mut q, 3, REGION + BLOCK, 2), (0, 0));
    assert_eq!(send(&vm, &mut q, 0, REGION + 6 * BLOCK, 1), ERROR);

    // States that do not fit this device are refused, the device unchanged.
    let mut other = VirtioMem::new(MemOptions {
        region_size: 4 * MIB,
        ..options(0)
    })
    .unwrap();
    for bad in [
        serde_json::json!({"version": 1, "acked_features": 0, "requested_size": 0,
                           "plugged": [[6, 1]]}),
        serde_json::json!({"version": 1, "acked_features": 0, "requested_size": 12345,
                           "plugged": []}),
        serde_json::json!({"version": 1, "acked_features": 1u64 << 40, "requested_size": 0,
                           "plugged": []}),
        serde_json::json!({"version": 2, "acked_features": 0, "requested_size": 0,
                           "plugged": []}),
        serde_json::json!({"plugged": "x"}),
    ] {
        assert!(other.restore_state(&bad).is_err(), "{bad}");
        assert_eq!(other.control().plugged_bytes(), 0);
    }
}
