//! Parsing what the balloon driver puts in its queues: page frame numbers
//! (inflate, deflate), statistics, and free page reports. Everything here
//! is guest data: sizes are capped, odd lengths ignored, nothing panics.

use vm_memory::GuestAddress;

/// Balloon pages are 4 KiB whatever the guest's page size
/// (`VIRTIO_BALLOON_PFN_SHIFT`).
pub const BALLOON_PAGE_SHIFT: u32 = 12;
/// Bytes of one balloon page.
pub const BALLOON_PAGE_SIZE: u64 = 1 << BALLOON_PAGE_SHIFT;

/// Most PFNs read from one inflate or deflate buffer (Linux sends at most
/// 256); the rest of a larger buffer is ignored.
pub const MAX_PFNS_PER_REQUEST: usize = 16 * 1024;

/// Most statistics entries read from one buffer (the spec defines 10 tags).
pub const MAX_STATS: usize = 64;

/// Bytes of one `struct virtio_balloon_stat` (le16 tag, le64 value, packed).
pub const STAT_SIZE: usize = 10;

/// A run of consecutive balloon pages: guest address and length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRun {
    /// First byte.
    pub gpa: u64,
    /// Length in bytes (a multiple of [`BALLOON_PAGE_SIZE`]).
    pub len: u64,
}

/// Turns an inflate/deflate buffer (an array of le32 PFNs) into runs of
/// consecutive pages, in the order given. Trailing bytes that do not make
/// a whole PFN are ignored; at most [`MAX_PFNS_PER_REQUEST`] are read.
pub fn pfn_runs(bytes: &[u8]) -> Vec<PageRun> {
    let mut runs: Vec<PageRun> = Vec::new();
    for raw in bytes.chunks_exact(4).take(MAX_PFNS_PER_REQUEST) {
        let pfn = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let gpa = u64::from(pfn) << BALLOON_PAGE_SHIFT;
        match runs.last_mut() {
            Some(last) if last.gpa + last.len == gpa => last.len += BALLOON_PAGE_SIZE,
            _ => runs.push(PageRun {
                gpa,
                len: BALLOON_PAGE_SIZE,
            }),
        }
    }
    runs
}

/// The statistics the driver reports (virtio 1.2 §5.5.6.3), in bytes or
/// counts as the spec defines; `None` for those not reported yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonStats {
    /// Memory swapped in (bytes).
    pub swap_in: Option<u64>,
    /// Memory swapped out (bytes).
    pub swap_out: Option<u64>,
    /// Major page faults.
    pub major_faults: Option<u64>,
    /// Minor page faults.
    pub minor_faults: Option<u64>,
    /// Free memory (bytes).
    pub free_memory: Option<u64>,
    /// Total memory (bytes).
    pub total_memory: Option<u64>,
    /// Available memory (bytes), as /proc/meminfo's MemAvailable.
    pub available_memory: Option<u64>,
    /// Disk caches (bytes).
    pub disk_caches: Option<u64>,
    /// Successful hugetlb page allocations.
    pub hugetlb_allocations: Option<u64>,
    /// Failed hugetlb page allocations.
    pub hugetlb_failures: Option<u64>,
}

impl BalloonStats {
    /// Each reported statistic with its `vm.counters` name.
    pub fn entries(&self) -> Vec<(&'static str, u64)> {
        [
            ("swap_in", self.swap_in),
            ("swap_out", self.swap_out),
            ("major_faults", self.major_faults),
            ("minor_faults", self.minor_faults),
            ("free_memory", self.free_memory),
            ("total_memory", self.total_memory),
            ("available_memory", self.available_memory),
            ("disk_caches", self.disk_caches),
            ("hugetlb_allocations", self.hugetlb_allocations),
            ("hugetlb_failures", self.hugetlb_failures),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.map(|v| (name, v)))
        .collect()
    }
}

/// Parses a statistics buffer into `stats` (updating the tags it holds;
/// unknown tags are skipped). Returns the number of entries read.
pub fn parse_stats(bytes: &[u8], stats: &mut BalloonStats) -> usize {
    let mut n = 0;
    for raw in bytes.chunks_exact(STAT_SIZE).take(MAX_STATS) {
        let tag = u16::from_le_bytes([raw[0], raw[1]]);
        let mut v = [0u8; 8];
        v.copy_from_slice(&raw[2..10]);
        let value = Some(u64::from_le_bytes(v));
        let slot = match tag {
            0 => &mut stats.swap_in,
            1 => &mut stats.swap_out,
            2 => &mut stats.major_faults,
            3 => &mut stats.minor_faults,
            4 => &mut stats.free_memory,
            5 => &mut stats.total_memory,
            6 => &mut stats.available_memory,
            7 => &mut stats.disk_caches,
            8 => &mut stats.hugetlb_allocations,
            9 => &mut stats.hugetlb_failures,
            _ => continue,
        };
        *slot = value;
        n += 1;
    }
    n
}

/// The ranges of one free page report: each buffer of the chain is a
/// range of free guest memory (virtio 1.2 §5.5.6.7). Returns them as page
/// runs, shrunk to whole balloon pages (a report of less than a page frees
/// nothing).
pub fn reported_runs(buffers: &[(GuestAddress, u32)]) -> Vec<PageRun> {
    buffers
        .iter()
        .filter_map(|&(addr, len)| {
            let start = addr.0.checked_next_multiple_of(BALLOON_PAGE_SIZE)?;
            let end = addr.0.checked_add(u64::from(len))? & !(BALLOON_PAGE_SIZE - 1);
            (end > start).then_some(PageRun {
                gpa: start,
                len: end - start,
            })
        })
        .collect()
}
