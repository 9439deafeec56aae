use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

use super::backing::{default_hugepage_size, BackingError};
use super::*;

const MIB: u64 = 1 << 20;

fn zone(size: u64, backing: RamBacking) -> RamZone {
    RamZone {
        field: "memory".into(),
        size,
        backing,
    }
}

fn shared() -> RamBacking {
    RamBacking {
        shared: true,
        ..RamBacking::default()
    }
}

/// The `VmFlags` line of /proc/self/smaps for the mapping at `addr`.
fn vm_flags(addr: *const u8) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let want = format!("{:x}-", addr as usize);
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&want));
    lines
        .find_map(|l| l.strip_prefix("VmFlags:"))
        .unwrap_or_else(|| panic!("no mapping at {addr:p}"))
        .to_owned()
}

#[test]
fn shared_ram_is_a_memfd_another_mapping_sees() {
    let ram = create_guest_ram(&[zone(8 * MIB, shared())], &[(GuestAddress(0), 8 << 20)]).unwrap();
    let region = ram.memory.iter().next().unwrap();
    let fo = region.file_offset().expect("shared RAM has a file offset");
    assert_eq!(fo.start(), 0);
    assert!(region.get_mmap().flags() & libc::MAP_SHARED != 0);
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fo.file().as_raw_fd())).unwrap();
    assert!(
        link.to_string_lossy().starts_with("/memfd:chv-guest-ram"),
        "{link:?}"
    );

    // The guest writes; the fd's other user reads, and the other way round.
    ram.memory
        .write_obj(0x5a5a_1234u32, GuestAddress(0x3000))
        .unwrap();
    let mut buf = [0u8; 4];
    fo.file().read_exact_at(&mut buf, 0x3000).unwrap();
    assert_eq!(u32::from_le_bytes(buf), 0x5a5a_1234);
    fo.file().write_all_at(&7u32.to_le_bytes(), 0x7000).unwrap();
    assert_eq!(ram.memory.read_obj::<u32>(GuestAddress(0x7000)).unwrap(), 7);
}

#[test]
fn a_zone_across_the_hole_uses_consecutive_offsets_of_one_memfd() {
    let layout = [
        (GuestAddress(0), 4 << 20),
        (GuestAddress(64 * MIB), 4 << 20),
    ];
    let ram = create_guest_ram(
        &[
            zone(2 * MIB, RamBacking::default()),
            zone(6 * MIB, shared()),
        ],
        &layout,
    )
    .unwrap();
    let regions: Vec<_> = ram.memory.iter().collect();
    assert_eq!(regions.len(), 3);
    assert!(regions[0].file_offset().is_none());
    assert_eq!(
        (regions[1].start_addr().0, regions[1].len()),
        (2 * MIB, 2 * MIB)
    );
    assert_eq!(
        (regions[2].start_addr().0, regions[2].len()),
        (64 * MIB, 4 * MIB)
    );
    let (a, b) = (
        regions[1].file_offset().unwrap(),
        regions[2].file_offset().unwrap(),
    );
    assert_eq!((a.start(), b.start()), (0, 2 * MIB));
    assert_eq!(a.file().as_raw_fd(), b.file().as_raw_fd());
    assert_eq!(
        ram.zones[1].file().unwrap().metadata().unwrap().len(),
        6 * MIB
    );
    ram.memory
        .write_obj(9u64, GuestAddress(64 * MIB + 8))
        .unwrap();
    let mut buf = [0u8; 8];
    a.file().read_exact_at(&mut buf, 2 * MIB + 8).unwrap();
    assert_eq!(u64::from_le_bytes(buf), 9);
}

#[test]
fn zones_larger_than_the_layout_are_refused() {
    let err = create_guest_ram(
        &[zone(8 * MIB, RamBacking::default())],
        &[(GuestAddress(0), 4 << 20)],
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("no room"), "{err}");
}

#[test]
fn prefault_populates_every_page() {
    let backing = RamBacking {
        prefault: true,
        ..RamBacking::default()
    };
    let ram = create_guest_ram(&[zone(4 * MIB, backing)], &[(GuestAddress(0), 4 << 20)]).unwrap();
    let region = ram.memory.iter().next().unwrap();
    let pages = (4 * MIB / 4096) as usize;
    let mut resident = vec![0u8; pages];
    // SAFETY: the region maps 4 MiB from as_ptr(); `resident` has one byte
    // per page.
    let rc = unsafe { libc::mincore(region.as_ptr().cast(), 4 << 20, resident.as_mut_ptr()) };
    assert_eq!(rc, 0);
    assert!(
        resident.iter().all(|&r| r & 1 == 1),
        "not every page is resident"
    );
}

#[test]
fn thp_and_mergeable_advise_the_mapping() {
    let backing = RamBacking {
        thp: true,
        mergeable: true,
        ..RamBacking::default()
    };
    let ram = create_guest_ram(&[zone(4 * MIB, backing)], &[(GuestAddress(0), 4 << 20)]).unwrap();
    let flags = vm_flags(ram.memory.iter().next().unwrap().as_ptr());
    assert!(flags.contains(" mg"), "MADV_MERGEABLE missing: {flags}");
    assert!(flags.contains(" hg"), "MADV_HUGEPAGE missing: {flags}");
    let plain = create_guest_ram(
        &[zone(4 * MIB, RamBacking::default())],
        &[(GuestAddress(0), 4 << 20)],
    )
    .unwrap();
    let flags = vm_flags(plain.memory.iter().next().unwrap().as_ptr());
    assert!(!flags.contains(" mg") && !flags.contains(" hg"), "{flags}");
}

fn hugepages(size: Option<u64>) -> RamBacking {
    RamBacking {
        hugepages: true,
        hugepage_size: size,
        shared: true,
        ..RamBacking::default()
    }
}

fn free_hugepages(page: u64) -> u64 {
    let dir = format!("/sys/kernel/mm/hugepages/hugepages-{}kB", page >> 10);
    let read = |f: &str| -> u64 {
        std::fs::read_to_string(format!("{dir}/{f}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    read("free_hugepages") - read("resv_hugepages")
}

#[test]
fn hugepages_beyond_the_reserved_pool_are_refused_by_name() {
    let page = default_hugepage_size();
    let needed = free_hugepages(page) + 1;
    let err = ZoneBacking::new("memory", needed * page, &hugepages(None))
        .err()
        .unwrap();
    assert!(
        matches!(err, BackingError::NotEnoughHugepages { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with("memory.hugepages=on: the host has"),
        "{msg}"
    );
    assert!(msg.contains("nr_hugepages"), "{msg}");
}

#[test]
fn unknown_hugepage_sizes_and_unaligned_sizes_are_refused() {
    let err = ZoneBacking::new("memory.zones[z0]", 4 * MIB, &hugepages(Some(4 * MIB)))
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.starts_with("memory.zones[z0].hugepage_size=4194304"),
        "{msg}"
    );
    assert!(msg.contains("2048kB"), "{msg}");
    let err = ZoneBacking::new("memory", 3 * MIB, &hugepages(Some(2 * MIB)))
        .err()
        .unwrap();
    assert!(err
        .to_string()
        .starts_with("memory.size=3145728: must be a multiple of the 2048 KiB"));
    let err = ZoneBacking::new("memory", 4095, &RamBacking::default())
        .err()
        .unwrap();
    assert!(matches!(err, BackingError::Unaligned { .. }));
}

/// Reserves `n` more 2 MiB huge pages for the test's lifetime.
struct HugepageReservation(u64);

impl HugepageReservation {
    const NR: &'static str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";

    fn new(n: u64) -> Self {
        let now: u64 = std::fs::read_to_string(Self::NR)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::fs::write(Self::NR, format!("{}", now + n)).expect("tests run as root");
        Self(n)
    }
}

impl Drop for HugepageReservation {
    fn drop(&mut self) {
        let now: u64 = std::fs::read_to_string(Self::NR)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let _ = std::fs::write(Self::NR, format!("{}", now.saturating_sub(self.0)));
    }
}

#[test]
fn hugepage_ram_comes_from_the_pool_shared_or_private() {
    let _pool = HugepageReservation::new(8);
    assert!(
        free_hugepages(2 * MIB) >= 8,
        "could not reserve 8 huge pages"
    );
    for shared in [true, false] {
        let backing = RamBacking {
            shared,
            ..hugepages(Some(2 * MIB))
        };
        let ram =
            create_guest_ram(&[zone(8 * MIB, backing)], &[(GuestAddress(0), 8 << 20)]).unwrap();
        let region = ram.memory.iter().next().unwrap();
        assert_eq!(region.file_offset().is_some(), shared);
        ram.memory
            .write_obj(0xabcdu16, GuestAddress(6 * MIB))
            .unwrap();
        let flags = vm_flags(region.as_ptr());
        assert!(flags.contains(" ht"), "not a hugetlb mapping: {flags}");
        assert_eq!(
            ram.memory.read_obj::<u16>(GuestAddress(6 * MIB)).unwrap(),
            0xabcd
        );
    }
}

#[test]
fn zone_files_regular_or_in_a_directory() {
    let dir = std::env::temp_dir().join(format!("chv-zone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ram");
    std::fs::write(&path, b"").unwrap();
    let file_backing = |file: &std::path::Path, shared| RamBacking {
        shared,
        file: Some(file.to_owned()),
        ..RamBacking::default()
    };
    let ram = create_guest_ram(
        &[zone(4 * MIB, file_backing(&path, true))],
        &[(GuestAddress(0), 4 << 20)],
    )
    .unwrap();
    ram.memory.write_obj(0x77u8, GuestAddress(0x1001)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, 4 * MIB);
    assert_eq!(bytes[0x1001], 0x77);
    drop(ram);

    // Private: the guest's writes stay out of the file.
    let ram = create_guest_ram(
        &[zone(4 * MIB, file_backing(&path, false))],
        &[(GuestAddress(0), 4 << 20)],
    )
    .unwrap();
    assert_eq!(
        ram.memory.read_obj::<u8>(GuestAddress(0x1001)).unwrap(),
        0x77
    );
    ram.memory.write_obj(0x11u8, GuestAddress(0x1001)).unwrap();
    assert_eq!(std::fs::read(&path).unwrap()[0x1001], 0x77);

    // A directory: an unnamed file in it.
    let ram = create_guest_ram(
        &[zone(4 * MIB, file_backing(&dir, true))],
        &[(GuestAddress(0), 4 << 20)],
    )
    .unwrap();
    assert!(ram.memory.iter().next().unwrap().file_offset().is_some());

    let missing = dir.join("missing/ram");
    let err = create_guest_ram(
        &[RamZone {
            field: "memory.zones[tmpl]".into(),
            size: 4 * MIB,
            backing: file_backing(&missing, true),
        }],
        &[(GuestAddress(0), 4 << 20)],
    )
    .err()
    .unwrap();
    let msg = err.to_string();
    assert!(msg.starts_with("memory.zones[tmpl].file="), "{msg}");
    assert!(msg.contains("cannot open"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}
