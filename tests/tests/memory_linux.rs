//! Guest RAM backings end to end: the Linux guest kit booted with RAM in
//! two zones, `mem0` a shared memfd and `mem1` a shared, prefaulted,
//! mergeable user file (`--memory size=0 --memory-zone ...`).
//!
//! One boot checks:
//! - a second host process (this test) opens chv's memfd through /proc,
//!   maps it and finds a pattern the guest wrote into a tmpfs file, in
//!   the memfd or the zone file;
//! - it overwrites the pattern in the mapping and the guest reads the new
//!   bytes from its file (the same pages, both ways);
//! - `mem1`'s mapping is populated (prefault) and marked mergeable (KSM),
//!   `mem0`'s is not populated.
//!
//! A missing guest kit fails these tests unless `CHV_SKIP_LINUX=1`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chv_tests::{require_guest_kit, Chv, Scratch};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const ABORT: &[&str] = &["Kernel panic"];
const MIB: usize = 1 << 20;

/// The pattern the guest writes: the shell computes it, so the command
/// line (also in guest RAM) does not contain it.
const PATTERN: &[u8] = b"CHVPAT777777777";
/// What the host writes over it (same length).
const HOST_PATTERN: &[u8] = b"CHVHOST88888888";

/// A shared read-write mapping of a whole file, unmapped on drop.
struct SharedMap {
    ptr: *mut u8,
    len: usize,
}

impl SharedMap {
    fn new(file: &File) -> SharedMap {
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: maps `len` bytes of an open file; the mapping is only
        // used through `bytes()` while `self` lives.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        SharedMap {
            ptr: ptr.cast(),
            len,
        }
    }

    #[allow(clippy::mut_from_ref)]
    fn bytes(&self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes and lives as long as `self`;
        // the guest writes it concurrently, which only changes the bytes
        // read.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Overwrites every occurrence of `from` with `to`; returns how many.
    fn replace(&self, from: &[u8], to: &[u8]) -> usize {
        let bytes = self.bytes();
        let mut count = 0;
        let mut i = 0;
        while i + from.len() <= bytes.len() {
            if &bytes[i..i + from.len()] == from {
                bytes[i..i + to.len()].copy_from_slice(to);
                count += 1;
                i += from.len();
            } else {
                i += 1;
            }
        }
        count
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping `new` created.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// chv's guest-RAM memfd, opened through /proc/PID/fd.
fn open_memfd(pid: u32) -> File {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Ok(link) = std::fs::read_link(&path) else {
            continue;
        };
        if link.to_string_lossy().starts_with("/memfd:chv-guest-ram") {
            return std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
        }
    }
    panic!("chv (pid {pid}) has no chv-guest-ram memfd");
}

/// (Rss in KiB, VmFlags) of chv's mappings of `file`, summed over them.
fn mapping_of(pid: u32, file: &Path) -> (u64, String) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let name = file.display().to_string();
    let mut rss = 0;
    let mut flags = String::new();
    let mut inside = false;
    for line in smaps.lines() {
        let is_header = line
            .split_whitespace()
            .next()
            .is_some_and(|range| range.contains('-') && !range.ends_with(':'));
        if is_header {
            inside = line.ends_with(&name);
        } else if inside {
            if let Some(kib) = line.strip_prefix("Rss:") {
                rss += kib
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            } else if let Some(f) = line.strip_prefix("VmFlags:") {
                flags = f.trim().to_owned();
            }
        }
    }
    (rss, flags)
}

#[test]
fn shared_zones_are_seen_by_another_process_both_ways() {
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let scratch = Scratch::new("memory-linux");
    let zone_file = scratch.path("zone1");
    let guest_cmd = "P=CHVPAT$((7*111111111)); echo $P > /tmp/p; echo CHK-WROTE; \
                     while read -r L </tmp/p; [ ${L#CHVHOST} = $L ]; do sleep 1; done; \
                     echo CHK-SEEN:$L";
    let cmdline = format!("console=ttyS0 quiet panic=-1 guest_cmd=\"{guest_cmd}\"");
    let args: Vec<String> = vec![
        "--kernel".into(),
        kit.kernel.display().to_string(),
        "--initramfs".into(),
        kit.initramfs.display().to_string(),
        "--cmdline".into(),
        cmdline,
        "--memory".into(),
        "size=0".into(),
        "--memory-zone".into(),
        "id=mem0,size=96M,shared=on".into(),
        format!(
            "id=mem1,size=32M,file={},shared=on,prefault=on,mergeable=on",
            zone_file.display()
        ),
        "--serial".into(),
        "tty".into(),
    ];
    File::create(&zone_file).unwrap();
    let mut chv = Chv::spawn(&args);
    chv.expect("CHK-WROTE", ABORT, BOOT_TIMEOUT);
    let pid = chv.pid();

    let (rss1, flags1) = mapping_of(pid, &zone_file);
    chv.check(
        rss1 >= 32 << 10,
        &format!("mem1 (prefault=on) is populated: Rss {rss1} KiB, want 32768"),
    );
    chv.check(
        flags1.split(' ').any(|f| f == "mg") && flags1.split(' ').any(|f| f == "sh"),
        &format!("mem1 is shared and mergeable: VmFlags {flags1}"),
    );

    let memfd = open_memfd(pid);
    chv.check(
        memfd.metadata().unwrap().len() == (96 * MIB) as u64,
        "the memfd holds mem0's 96 MiB",
    );
    let mem0 = SharedMap::new(&memfd);
    let mem1 = SharedMap::new(
        &File::options()
            .read(true)
            .write(true)
            .open(&zone_file)
            .unwrap(),
    );
    let in0 = mem0.replace(PATTERN, HOST_PATTERN);
    let in1 = mem1.replace(PATTERN, HOST_PATTERN);
    eprintln!("pattern found {in0}x in the memfd, {in1}x in the zone file");
    chv.check(
        in0 + in1 > 0,
        "the guest's pattern is in the memfd or the zone file",
    );
    chv.expect("CHK-SEEN:", ABORT, Duration::from_secs(60));
    chv.check(
        chv.stdout().contains("CHK-SEEN:CHVHOST88888888"),
        "the guest reads what the host wrote into its pages",
    );
    chv.expect("GUEST-POWEROFF", ABORT, Duration::from_secs(60));
    let st = chv.expect_exit(Duration::from_secs(60));
    chv.assert_no_panic();
    chv.check(st.code() == Some(0), &format!("chv exit status {st}"));
}
