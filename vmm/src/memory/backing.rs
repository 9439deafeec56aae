//! How guest RAM is backed on the host: anonymous memory, a memfd mapped
//! shared (so a vhost-user backend can map the same pages), huge pages from
//! the hugetlb pool, or a file given by the user; plus the advice chv gives
//! the kernel about it (populate, transparent huge pages, KSM merging).
//!
//! Every zone of guest RAM has one backing; the zone's guest-physical
//! pieces (split around the 32-bit MMIO hole) become [`GuestRegionMmap`]s
//! at consecutive offsets of the zone's file, so `region.file_offset()`
//! names the memfd (or file) and where in it the region starts.

use std::fs::{File, OpenOptions};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap};

/// Page size of ordinary (non-huge) guest RAM.
pub const PAGE_SIZE: u64 = 4096;

/// How one zone of guest RAM is backed (Cloud Hypervisor's memory and
/// memory-zone options of the same names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RamBacking {
    /// Map the memory `MAP_SHARED` from a memfd (or `file`), so another
    /// process given the fd sees the guest's pages.
    pub shared: bool,
    /// Take the memory from the host's hugetlb pool.
    pub hugepages: bool,
    /// Huge page size in bytes; `None` is the host's default huge page size.
    pub hugepage_size: Option<u64>,
    /// Populate every page at creation (`MAP_POPULATE`).
    pub prefault: bool,
    /// Ask for transparent huge pages (`MADV_HUGEPAGE`); ignored with
    /// `hugepages`.
    pub thp: bool,
    /// Let KSM merge identical pages (`MADV_MERGEABLE`).
    pub mergeable: bool,
    /// Back the zone with this file (a directory: an unnamed file in it).
    pub file: Option<PathBuf>,
}

/// What can go wrong creating guest RAM; each message names the option.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    /// The size is not a multiple of the (huge) page size.
    #[error("{field}.size={size}: must be a multiple of the {page} KiB page size")]
    Unaligned {
        /// `memory` or `memory.zones[ID]`.
        field: String,
        /// The zone size.
        size: u64,
        /// Page size in KiB.
        page: u64,
    },
    /// The requested huge page size has no pool on this host.
    #[error(
        "{field}.hugepage_size={size}: this host has no pool of {} KiB huge pages \
         (it has: {available})",
        size >> 10
    )]
    NoSuchHugepageSize {
        /// `memory` or `memory.zones[ID]`.
        field: String,
        /// The requested size in bytes.
        size: u64,
        /// The pools the host has.
        available: String,
    },
    /// Not enough huge pages are reserved.
    #[error(
        "{field}.hugepages=on: the host has {free} free {} KiB huge pages but the guest needs \
         {needed}; reserve them first (echo {needed} > \
         /sys/kernel/mm/hugepages/hugepages-{}kB/nr_hugepages)",
        page >> 10, page >> 10
    )]
    NotEnoughHugepages {
        /// `memory` or `memory.zones[ID]`.
        field: String,
        /// Huge page size in bytes.
        page: u64,
        /// Pages free in the pool.
        free: u64,
        /// Pages the zone needs.
        needed: u64,
    },
    /// `hugepages` with a `file` is not supported.
    #[error("{field}: hugepages=on cannot be combined with file= (use a hugetlbfs file instead)")]
    HugepagesWithFile {
        /// `memory.zones[ID]`.
        field: String,
    },
    /// The zone file could not be opened or sized.
    #[error("{field}.file={}: {what}: {err}", path.display())]
    File {
        /// `memory.zones[ID]`.
        field: String,
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        err: std::io::Error,
    },
    /// A memfd could not be created or sized.
    #[error("{field}: cannot create the memfd backing guest RAM: {0}", .err)]
    Memfd {
        /// `memory` or `memory.zones[ID]`.
        field: String,
        /// The OS error.
        err: std::io::Error,
    },
    /// The mapping failed.
    #[error("{field}: cannot map {len} bytes of guest RAM at {gpa:#x}: {err}")]
    Map {
        /// `memory` or `memory.zones[ID]`.
        field: String,
        /// Guest-physical address of the region.
        gpa: u64,
        /// Its length.
        len: usize,
        /// What mmap said.
        err: String,
    },
    /// `madvise` refused advice the user asked for.
    #[error("{field}.{option}=on: the host kernel refused it: {err}")]
    Advice {
        /// `memory` or `memory.zones[ID]`.
        field: String,
        /// The option (`mergeable`).
        option: &'static str,
        /// The OS error.
        err: std::io::Error,
    },
}

/// The host's huge page pools, from sysfs.
const HUGEPAGES_DIR: &str = "/sys/kernel/mm/hugepages";

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The host's default huge page size (`Hugepagesize` in /proc/meminfo),
/// 2 MiB when it cannot be read.
pub fn default_hugepage_size() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Hugepagesize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib << 10)
        .unwrap_or(2 << 20)
}

/// Huge pages of `page` bytes the host can still hand out (free minus
/// reserved), or an error naming the sizes it has when there is no pool.
fn available_hugepages(field: &str, page: u64) -> Result<u64, BackingError> {
    let dir = Path::new(HUGEPAGES_DIR).join(format!("hugepages-{}kB", page >> 10));
    let Some(free) = read_u64(&dir.join("free_hugepages")) else {
        let mut sizes: Vec<String> = std::fs::read_dir(HUGEPAGES_DIR)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter_map(|n| Some(n.strip_prefix("hugepages-")?.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        sizes.sort();
        return Err(BackingError::NoSuchHugepageSize {
            field: field.into(),
            size: page,
            available: if sizes.is_empty() {
                "none".into()
            } else {
                sizes.join(", ")
            },
        });
    };
    let reserved = read_u64(&dir.join("resv_hugepages")).unwrap_or(0);
    Ok(free.saturating_sub(reserved))
}

/// `log2(page)` for the `MFD_HUGE_*`/`MAP_HUGE_*` size encodings.
fn huge_shift_bits(page: u64) -> i32 {
    (page.trailing_zeros() as i32) << libc::MAP_HUGE_SHIFT
}

/// The backing of one zone, created once and cut into regions.
pub struct ZoneBacking {
    field: String,
    backing: RamBacking,
    /// The memfd or file the zone's regions map, at consecutive offsets.
    file: Option<Arc<File>>,
    /// Huge page size when `hugepages`.
    hugepage: Option<u64>,
    /// Next unused offset of `file`.
    next_offset: u64,
}

impl ZoneBacking {
    /// Prepares backing for a zone of `size` bytes named `field` in error
    /// messages (`memory` or `memory.zones[ID]`): checks the size and the
    /// huge page pool, creates the memfd or opens the file.
    pub fn new(field: &str, size: u64, backing: &RamBacking) -> Result<Self, BackingError> {
        let hugepage = backing
            .hugepages
            .then(|| backing.hugepage_size.unwrap_or_else(default_hugepage_size));
        let page = hugepage.unwrap_or(PAGE_SIZE);
        if !page.is_power_of_two() || !size.is_multiple_of(page) {
            return Err(BackingError::Unaligned {
                field: field.into(),
                size,
                page: page >> 10,
            });
        }
        if let Some(page) = hugepage {
            if backing.file.is_some() {
                return Err(BackingError::HugepagesWithFile {
                    field: field.into(),
                });
            }
            let needed = size / page;
            let free = available_hugepages(field, page)?;
            if free < needed {
                return Err(BackingError::NotEnoughHugepages {
                    field: field.into(),
                    page,
                    free,
                    needed,
                });
            }
        }
        let file = match (&backing.file, backing.shared) {
            (Some(path), _) => Some(Arc::new(open_zone_file(field, path, size)?)),
            (None, true) => Some(Arc::new(create_memfd(field, size, hugepage)?)),
            (None, false) => None,
        };
        Ok(Self {
            field: field.into(),
            backing: backing.clone(),
            file,
            hugepage,
            next_offset: 0,
        })
    }

    /// The memfd or file behind the zone, if any.
    pub fn file(&self) -> Option<&Arc<File>> {
        self.file.as_ref()
    }

    /// Maps the next `len` bytes of the zone at guest address `gpa`.
    pub fn map_region(
        &mut self,
        gpa: GuestAddress,
        len: usize,
    ) -> Result<GuestRegionMmap, BackingError> {
        let map_err = |err: String| BackingError::Map {
            field: self.field.clone(),
            gpa: gpa.0,
            len,
            err,
        };
        let mut flags = if self.backing.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        if self.backing.prefault {
            flags |= libc::MAP_POPULATE;
        }
        if self.hugepage.is_none() {
            // Like anonymous guest RAM always was: no swap reservation for
            // memory the guest may never touch. (Huge pages must keep
            // their reservation, or a fault finds the pool empty: SIGBUS.)
            flags |= libc::MAP_NORESERVE;
        }
        let mut builder =
            MmapRegionBuilder::new(len).with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE);
        match &self.file {
            Some(file) => {
                builder =
                    builder.with_file_offset(FileOffset::from_arc(file.clone(), self.next_offset));
            }
            None => {
                flags |= libc::MAP_ANONYMOUS;
                if let Some(page) = self.hugepage {
                    flags |= libc::MAP_HUGETLB | huge_shift_bits(page);
                }
            }
        }
        let mapping = builder
            .with_mmap_flags(flags)
            .with_hugetlbfs(self.hugepage.is_some())
            .build()
            .map_err(|e| map_err(e.to_string()))?;
        self.advise(mapping.as_ptr(), len)?;
        self.next_offset += len as u64;
        GuestRegionMmap::new(mapping, gpa)
            .ok_or_else(|| map_err("the region overflows the address space".into()))
    }

    /// Applies `thp` and `mergeable` to a fresh mapping.
    fn advise(&self, addr: *mut u8, len: usize) -> Result<(), BackingError> {
        let madvise = |advice| {
            // SAFETY: `addr..addr+len` is a mapping this zone just created;
            // the advice only changes how the kernel backs it.
            if unsafe { libc::madvise(addr.cast(), len, advice) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        if self.backing.thp && self.hugepage.is_none() {
            // Transparent huge pages are an optimisation (and CH's default):
            // a host without them still runs the guest.
            if let Err(e) = madvise(libc::MADV_HUGEPAGE) {
                log::warn!("{}: transparent huge pages unavailable: {e}", self.field);
            }
        }
        if self.backing.mergeable {
            madvise(libc::MADV_MERGEABLE).map_err(|err| BackingError::Advice {
                field: self.field.clone(),
                option: "mergeable",
                err,
            })?;
        }
        Ok(())
    }
}

/// Creates a memfd of `size` bytes (from the hugetlb pool when `hugepage`).
fn create_memfd(field: &str, size: u64, hugepage: Option<u64>) -> Result<File, BackingError> {
    let err = |err| BackingError::Memfd {
        field: field.into(),
        err,
    };
    let mut flags = libc::MFD_CLOEXEC;
    if let Some(page) = hugepage {
        flags |= libc::MFD_HUGETLB | huge_shift_bits(page) as libc::c_uint;
    }
    // SAFETY: the name is a NUL-terminated literal; memfd_create returns a
    // new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"chv-guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(err)?;
    Ok(file)
}

/// Opens a zone's `file=`: a regular file (grown to `size` if shorter) or,
/// for a directory, an unnamed temporary file in it.
fn open_zone_file(field: &str, path: &Path, size: u64) -> Result<File, BackingError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |what, err| BackingError::File {
        field: field.into(),
        path: path.to_owned(),
        what,
        err,
    };
    let file = if path.is_dir() {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(path)
            .map_err(|e| err("cannot create a file in the directory", e))?
    } else {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| err("cannot open", e))?
    };
    let len = file.metadata().map_err(|e| err("cannot stat", e))?.len();
    if len < size {
        file.set_len(size)
            .map_err(|e| err("cannot grow it to the zone size", e))?;
    }
    Ok(file)
}
