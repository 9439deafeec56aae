//! Local live migration between two chv processes over a Unix socket
//! (`vm.send-migration` / `vm.receive-migration`).
//!
//! The sender streams guest RAM while the guest runs (pre-copy), then
//! re-sends what the guest wrote meanwhile, found through KVM's dirty-page
//! log, for a few rounds. It then pauses the VM and sends the last changed
//! pages and the VM state (the same state a snapshot holds); the receiver
//! builds the VM, resumes it and answers "OK", and the sender exits.
//!
//! KVM's log sees only vCPU writes; device workers write guest RAM from
//! the VMM process (used rings, read data). So the sender also keeps a
//! 64-bit hash of every page as sent, and the final round re-sends every
//! page whose hash changed, which catches both kinds of writes.
//!
//! Wire format: messages of `kind: u8`, `len: u64` (little endian) and
//! `len` payload bytes. `CONFIG` (VmConfig JSON), then `LAYOUT` (guest
//! address u64 + length u64 of each RAM region, hot-added ones included),
//! then `PAGES` (guest address u64 + whole pages), then `STATE` (VmSnapshot
//! JSON); the receiver answers one `RESULT` ("OK" or an error text).

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use crate::config::VmConfig;
use crate::control_loop::ThreadFilters;
use crate::snapshot::VmSnapshot;
use crate::vm::{RestoreMemory, Vm, VmSource};
use crate::VmmError;

const MSG_CONFIG: u8 = 1;
const MSG_PAGES: u8 = 2;
const MSG_STATE: u8 = 3;
const MSG_RESULT: u8 = 4;
const MSG_LAYOUT: u8 = 5;

/// Most RAM regions a layout may list (boot RAM around the 32-bit hole
/// plus every hot-added slot fits well within this).
const MAX_LAYOUT_REGIONS: usize = 512;

/// Bytes per page of the dirty log and of the page stream.
const PAGE: usize = 4096;
/// Largest message the receiver accepts (pages come in smaller runs).
const MAX_MESSAGE: u64 = 64 << 20;
/// Longest run of pages sent in one message.
const MAX_RUN_PAGES: usize = 256;
/// Stop iterating once a round finds at most this many dirty pages.
const CONVERGED_PAGES: usize = 256;

/// How long the receiver waits for the sender to connect (and, once
/// connected, for each read).
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Waits until `listener` has a connection to accept, up to `timeout`.
fn wait_readable(listener: &UnixListener, timeout: Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd that lives across the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    match rc {
        0 => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no sender connected within {} s", timeout.as_secs()),
        )),
        n if n < 0 => Err(std::io::Error::last_os_error()),
        _ => Ok(()),
    }
}

/// Why a migration failed. The sender's VM keeps running (or is resumed).
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The URL is not `unix:/path`.
    #[error("{0}")]
    Url(String),
    /// The socket failed.
    #[error("migration socket: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something unexpected.
    #[error("migration protocol: {0}")]
    Protocol(String),
    /// Reading or applying VM state failed.
    #[error("{0}")]
    Vm(String),
    /// The receiver refused the VM.
    #[error("the receiver failed: {0}")]
    Remote(String),
}

/// What the sender does when `SendOptions::timeout` passes before the
/// downtime target is in reach (Cloud Hypervisor's `TimeoutStrategy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub enum TimeoutStrategy {
    /// Give up; the guest keeps running here.
    #[default]
    Cancel,
    /// Stop the guest and copy the rest anyway (longer downtime).
    Ignore,
}

/// How a send converges (Cloud Hypervisor's `downtime_ms`, `timeout_s`,
/// `timeout_strategy`).
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Pre-copy rounds go on until the pages still dirty can be sent
    /// within this while the guest is stopped.
    pub downtime: Duration,
    /// Longest time for the pre-copy rounds.
    pub timeout: Duration,
    /// What happens when `timeout` passes first.
    pub strategy: TimeoutStrategy,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            downtime: Duration::from_millis(300),
            timeout: Duration::from_secs(3600),
            strategy: TimeoutStrategy::Cancel,
        }
    }
}

/// What a finished send measured.
#[derive(Debug, Clone)]
pub struct MigrationStats {
    /// Dirty-log rounds while the guest ran.
    pub rounds: u32,
    /// Pages sent in all.
    pub pages: u64,
    /// From pausing the guest to the receiver's "OK".
    pub downtime: Duration,
    /// The whole send.
    pub total: Duration,
}

/// `unix:/path` (or `unix:///path`) to a path.
pub fn socket_path(url: &str, field: &str) -> Result<PathBuf, MigrationError> {
    let rest = url.strip_prefix("unix:").ok_or_else(|| {
        MigrationError::Url(format!(
            "{field}: {url:?} is not a unix: URL (chv migrates over local Unix sockets)"
        ))
    })?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    if rest.is_empty() {
        return Err(MigrationError::Url(format!("{field}: empty socket path")));
    }
    Ok(PathBuf::from(rest))
}

fn send_msg(out: &mut impl Write, kind: u8, parts: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.write_all(&[kind])?;
    out.write_all(&(len as u64).to_le_bytes())?;
    for p in parts {
        out.write_all(p)?;
    }
    Ok(())
}

fn recv_msg(input: &mut impl Read) -> Result<(u8, Vec<u8>), MigrationError> {
    let mut head = [0u8; 9];
    input.read_exact(&mut head)?;
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[1..]);
    let len = u64::from_le_bytes(len);
    if len > MAX_MESSAGE {
        return Err(MigrationError::Protocol(format!(
            "message of {len} bytes is larger than {MAX_MESSAGE}"
        )));
    }
    let mut body = vec![0u8; len as usize];
    input.read_exact(&mut body)?;
    Ok((head[0], body))
}

/// The `LAYOUT` message: each RAM region's guest address and length, so
/// the receiver maps hot-added memory where the guest knows it.
fn encode_layout(memory: &GuestMemoryMmap) -> Vec<u8> {
    let mut body = Vec::with_capacity(memory.num_regions() * 16);
    for region in memory.iter() {
        body.extend_from_slice(&region.start_addr().0.to_le_bytes());
        body.extend_from_slice(&region.len().to_le_bytes());
    }
    body
}

/// Parses and checks a `LAYOUT` message: whole pages, in ascending order,
/// not overlapping.
fn decode_layout(body: &[u8]) -> Result<Vec<(GuestAddress, usize)>, MigrationError> {
    let bad = |what: String| MigrationError::Protocol(format!("memory layout: {what}"));
    if body.is_empty() || !body.len().is_multiple_of(16) || body.len() / 16 > MAX_LAYOUT_REGIONS {
        return Err(bad(format!("{} bytes", body.len())));
    }
    let mut layout = Vec::with_capacity(body.len() / 16);
    let mut end = 0u64;
    for entry in body.chunks_exact(16) {
        let mut word = [0u8; 8];
        word.copy_from_slice(&entry[..8]);
        let gpa = u64::from_le_bytes(word);
        word.copy_from_slice(&entry[8..]);
        let len = u64::from_le_bytes(word);
        let region_end = gpa.checked_add(len);
        let page = PAGE as u64;
        match (region_end, usize::try_from(len)) {
            (Some(region_end), Ok(size))
                if len > 0
                    && gpa.is_multiple_of(page)
                    && len.is_multiple_of(page)
                    && gpa >= end =>
            {
                end = region_end;
                layout.push((GuestAddress(gpa), size));
            }
            _ => return Err(bad(format!("region of {len:#x} bytes at {gpa:#x}"))),
        }
    }
    Ok(layout)
}

/// A fast 64-bit hash of one page (multiply-xor over its words).
fn page_hash(page: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for w in page.chunks_exact(8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    h
}

/// The bytes of a guest RAM region, read while the guest may be running
/// (a torn read is fine: the page is then dirty and sent again).
fn region_bytes(region: &GuestRegionMmap) -> &[u8] {
    // SAFETY: the mapping covers `len` bytes from `as_ptr()` and lives as
    // long as `region`; concurrent guest writes can only make the copy
    // stale, which the dirty log and the final hash pass correct.
    unsafe { std::slice::from_raw_parts(region.as_ptr(), region.len() as usize) }
}

/// Sends guest RAM pages of the sender's VM and remembers their hashes.
struct PageSender<'a, W: Write> {
    out: &'a mut W,
    memory: &'a GuestMemoryMmap,
    hashes: Vec<Vec<u64>>,
    sent: u64,
}

impl<W: Write> PageSender<'_, W> {
    /// Sends `pages` (sorted page indices) of region `slot`, coalescing
    /// consecutive pages into one message.
    fn send(&mut self, slot: usize, pages: &[usize]) -> std::io::Result<()> {
        let Some(region) = self.memory.iter().nth(slot) else {
            return Ok(());
        };
        let bytes = region_bytes(region);
        let base = region.start_addr().0;
        let mut i = 0;
        while i < pages.len() {
            let start = pages[i];
            let mut end = start + 1;
            while i + 1 < pages.len() && pages[i + 1] == end && end - start < MAX_RUN_PAGES {
                end += 1;
                i += 1;
            }
            i += 1;
            let data = &bytes[start * PAGE..end * PAGE];
            for (k, page) in data.chunks_exact(PAGE).enumerate() {
                self.hashes[slot][start + k] = page_hash(page);
            }
            let gpa = base + (start * PAGE) as u64;
            send_msg(self.out, MSG_PAGES, &[&gpa.to_le_bytes(), data])?;
            self.sent += (end - start) as u64;
        }
        Ok(())
    }
}

/// Sends `vm` (configuration `config`) to the chv listening at `url`.
/// On success the receiver runs the guest and the caller must stop this
/// VM; on failure the VM is left running.
pub fn send(
    vm: &Vm,
    config: &VmConfig,
    url: &str,
    options: &SendOptions,
) -> Result<MigrationStats, MigrationError> {
    let started = Instant::now();
    let path = socket_path(url, "destination_url")?;
    let stream = UnixStream::connect(&path).map_err(|e| {
        MigrationError::Url(format!(
            "destination_url: cannot connect to {}: {e}",
            path.display()
        ))
    })?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = BufWriter::with_capacity(1 << 20, stream);
    let config_json =
        serde_json::to_vec(config).map_err(|e| MigrationError::Vm(format!("config: {e}")))?;
    send_msg(&mut out, MSG_CONFIG, &[&config_json])?;

    let memory = vm.memory();
    send_msg(&mut out, MSG_LAYOUT, &[&encode_layout(memory)])?;
    let sizes: Vec<usize> = memory.iter().map(|r| r.len() as usize).collect();
    vm.set_dirty_logging(true)
        .map_err(|e| MigrationError::Vm(format!("dirty logging: {e}")))?;
    // Clear what the log holds from before.
    for (slot, len) in sizes.iter().enumerate() {
        let _ = vm.dirty_log(slot as u32, *len);
    }
    let mut sender = PageSender {
        out: &mut out,
        memory,
        hashes: sizes.iter().map(|l| vec![0u64; l / PAGE]).collect(),
        sent: 0,
    };
    // Round 0: every page that is not all zero (the receiver's RAM starts
    // zeroed); zero pages get their hash so a later write shows up.
    let zero_hash = page_hash(&[0u8; PAGE]);
    for (slot, region) in memory.iter().enumerate() {
        let bytes = region_bytes(region);
        let touched = crate::snapshot::memory::touched_pages(region);
        let mut pages = Vec::new();
        for (i, page) in bytes.chunks_exact(PAGE).enumerate() {
            let untouched = touched
                .as_ref()
                .is_some_and(|t| !t.get(i).copied().unwrap_or(true));
            if !untouched && page.iter().any(|&b| b != 0) {
                pages.push(i);
            } else {
                sender.hashes[slot][i] = zero_hash;
            }
        }
        sender.send(slot, &pages)?;
    }
    let result = (|| {
        let mut rounds = 0;
        loop {
            rounds += 1;
            let round_start = Instant::now();
            let dirty = dirty_pages(vm, &sizes)?;
            let count: usize = dirty.iter().map(Vec::len).sum();
            for (slot, pages) in dirty.iter().enumerate() {
                sender.send(slot, pages)?;
            }
            // What sending this many pages with the guest stopped would
            // cost, at this round's rate.
            let per_page = round_start.elapsed() / u32::try_from(count.max(1)).unwrap_or(u32::MAX);
            let estimate = per_page.saturating_mul(u32::try_from(count).unwrap_or(u32::MAX));
            log::debug!(
                "migration round {rounds}: {count} dirty pages, ~{:.1} ms to send stopped",
                estimate.as_secs_f64() * 1000.0
            );
            if count <= CONVERGED_PAGES || estimate <= options.downtime {
                break;
            }
            if started.elapsed() >= options.timeout {
                match options.strategy {
                    TimeoutStrategy::Cancel => {
                        return Err(MigrationError::Vm(format!(
                            "timeout_s: {} s passed before the downtime target ({} ms) was \
                             in reach (timeout_strategy=Cancel)",
                            options.timeout.as_secs(),
                            options.downtime.as_millis()
                        )))
                    }
                    TimeoutStrategy::Ignore => {
                        log::warn!(
                            "migration: timeout_s passed, stopping the guest with ~{:.1} ms \
                             of pages left (timeout_strategy=Ignore)",
                            estimate.as_secs_f64() * 1000.0
                        );
                        break;
                    }
                }
            }
        }
        // Stop the guest and its devices, then send what changed since.
        vm.pause().map_err(|e| MigrationError::Vm(e.to_string()))?;
        let paused = Instant::now();
        let outcome = (|| {
            // The receiver opens the same disk images.
            vm.devices
                .set_host_locks(false)
                .map_err(MigrationError::Vm)?;
            // The state first: saving it may write guest RAM (on aarch64
            // the GICv3 ITS and LPI pending tables), which the final memory
            // pass then carries.
            let state = vm
                .state(config)
                .map_err(|e| MigrationError::Vm(format!("VM state: {e}")))?;
            let _ = dirty_pages(vm, &sizes)?;
            for (slot, region) in memory.iter().enumerate() {
                let bytes = region_bytes(region);
                // Pages never touched are still zero, as sent.
                let touched = crate::snapshot::memory::touched_pages(region);
                let changed: Vec<usize> = bytes
                    .chunks_exact(PAGE)
                    .enumerate()
                    .filter(|(i, _)| touched.as_ref().is_none_or(|t| t.get(*i) != Some(&false)))
                    .filter(|(i, page)| sender.hashes[slot][*i] != page_hash(page))
                    .map(|(i, _)| i)
                    .collect();
                sender.send(slot, &changed)?;
            }
            let json = serde_json::to_vec(&state)
                .map_err(|e| MigrationError::Vm(format!("encoding the state: {e}")))?;
            send_msg(sender.out, MSG_STATE, &[&json])?;
            sender.out.flush()?;
            match recv_msg(&mut reader)? {
                (MSG_RESULT, body) if body == b"OK" => Ok(()),
                (MSG_RESULT, body) => Err(MigrationError::Remote(
                    String::from_utf8_lossy(&body).into_owned(),
                )),
                (kind, _) => Err(MigrationError::Protocol(format!(
                    "expected a result, got message {kind}"
                ))),
            }
        })();
        if outcome.is_err() {
            // The receiver does not run the guest: keep running it here.
            if let Err(e) = vm.devices.set_host_locks(true) {
                log::error!("migration failed and the disk locks cannot be taken back: {e}");
            }
            vm.resume();
        }
        outcome.map(|()| (rounds, paused.elapsed()))
    })();
    if let Err(e) = vm.set_dirty_logging(false) {
        log::warn!("cannot turn dirty logging off: {e}");
    }
    let (rounds, downtime) = result?;
    Ok(MigrationStats {
        rounds,
        pages: sender.sent,
        downtime,
        total: started.elapsed(),
    })
}

/// The page indices KVM logged as dirty in each RAM region.
fn dirty_pages(vm: &Vm, sizes: &[usize]) -> Result<Vec<Vec<usize>>, MigrationError> {
    let mut all = Vec::with_capacity(sizes.len());
    for (slot, len) in sizes.iter().enumerate() {
        let bitmap = vm
            .dirty_log(slot as u32, *len)
            .map_err(|e| MigrationError::Vm(format!("dirty log of slot {slot}: {e}")))?;
        let mut pages = Vec::new();
        for (w, word) in bitmap.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                let page = w * 64 + b;
                if page < len / PAGE {
                    pages.push(page);
                }
                bits &= bits - 1;
            }
        }
        all.push(pages);
    }
    Ok(all)
}

/// Waits at `url` for one sender, receives its VM and starts it (running).
/// Returns the VM's configuration and the VM.
pub fn receive(url: &str, filters: &ThreadFilters) -> Result<(VmConfig, Vm), MigrationError> {
    let path = socket_path(url, "receiver_url")?;
    let listener = UnixListener::bind(&path).map_err(|e| {
        MigrationError::Url(format!(
            "receiver_url: cannot listen on {}: {e}",
            path.display()
        ))
    })?;
    let accepted = wait_readable(&listener, ACCEPT_TIMEOUT).and_then(|()| listener.accept());
    let _ = std::fs::remove_file(&path);
    let (stream, _) = accepted?;
    stream.set_read_timeout(Some(ACCEPT_TIMEOUT))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::with_capacity(1 << 20, stream);
    match receive_vm(&mut input, filters) {
        Ok((config, vm)) => {
            send_msg(&mut out, MSG_RESULT, &[b"OK"])?;
            Ok((config, vm))
        }
        Err(e) => {
            let _ = send_msg(&mut out, MSG_RESULT, &[e.to_string().as_bytes()]);
            Err(e)
        }
    }
}

fn receive_vm(
    input: &mut impl Read,
    filters: &ThreadFilters,
) -> Result<(VmConfig, Vm), MigrationError> {
    let (kind, body) = recv_msg(input)?;
    if kind != MSG_CONFIG {
        return Err(MigrationError::Protocol(format!(
            "expected the VM config first, got message {kind}"
        )));
    }
    let config: VmConfig = serde_json::from_slice(&body)
        .map_err(|e| MigrationError::Protocol(format!("VM config: {e}")))?;
    config
        .validate()
        .map_err(|e| MigrationError::Vm(format!("the sent VM config is invalid: {e}")))?;
    let (kind, body) = recv_msg(input)?;
    if kind != MSG_LAYOUT {
        return Err(MigrationError::Protocol(format!(
            "expected the memory layout after the config, got message {kind}"
        )));
    }
    let layout = decode_layout(&body)?;
    let zones = crate::memory::zones_for(&config);
    let zone_total: u64 = zones.iter().map(|z| z.size).sum();
    let layout_total: u64 = layout.iter().map(|&(_, len)| len as u64).sum();
    if zone_total != layout_total {
        return Err(MigrationError::Protocol(format!(
            "the memory layout holds {layout_total} bytes, the config's memory {zone_total}"
        )));
    }
    let memory = crate::memory::create_guest_ram(&zones, &layout)
        .map_err(|e| MigrationError::Vm(format!("guest memory: {e}")))?
        .memory;
    loop {
        let (kind, body) = recv_msg(input)?;
        match kind {
            MSG_PAGES => {
                if body.len() < 8 || (body.len() - 8) % PAGE != 0 {
                    return Err(MigrationError::Protocol(format!(
                        "page message of {} bytes",
                        body.len()
                    )));
                }
                let mut gpa = [0u8; 8];
                gpa.copy_from_slice(&body[..8]);
                let gpa = GuestAddress(u64::from_le_bytes(gpa));
                memory
                    .write_slice(&body[8..], gpa)
                    .map_err(|e| MigrationError::Protocol(format!("pages at {:#x}: {e}", gpa.0)))?;
            }
            MSG_STATE => {
                let state =
                    VmSnapshot::parse(&body).map_err(|e| MigrationError::Vm(e.to_string()))?;
                if state.config.memory.boot_size() != config.memory.boot_size() {
                    return Err(MigrationError::Protocol(
                        "the state's memory size differs from the config's".into(),
                    ));
                }
                let vm = Vm::build(
                    &state.config,
                    filters,
                    VmSource::Restore {
                        snapshot: &state,
                        memory: RestoreMemory::Filled(memory),
                    },
                )
                .map_err(|e: VmmError| MigrationError::Vm(e.to_string()))?;
                vm.resume();
                return Ok((state.config, vm));
            }
            other => {
                return Err(MigrationError::Protocol(format!(
                    "unexpected message {other}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_unix_paths() {
        assert_eq!(
            socket_path("unix:/tmp/m.sock", "x").unwrap(),
            PathBuf::from("/tmp/m.sock")
        );
        assert_eq!(
            socket_path("unix:///tmp/m.sock", "x").unwrap(),
            PathBuf::from("/tmp/m.sock")
        );
        assert!(socket_path("tcp:1.2.3.4:5", "destination_url")
            .unwrap_err()
            .to_string()
            .contains("destination_url"));
        assert!(socket_path("unix:", "x").is_err());
    }

    #[test]
    fn messages_round_trip_and_oversized_ones_are_refused() {
        let mut buf = Vec::new();
        send_msg(&mut buf, MSG_PAGES, &[&7u64.to_le_bytes(), &[1u8; 16]]).unwrap();
        let (kind, body) = recv_msg(&mut buf.as_slice()).unwrap();
        assert_eq!(kind, MSG_PAGES);
        assert_eq!(body.len(), 24);
        let mut huge = vec![MSG_STATE];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(recv_msg(&mut huge.as_slice()).is_err());
        // A truncated body is an I/O error, not a panic.
        let mut short = vec![MSG_STATE];
        short.extend_from_slice(&100u64.to_le_bytes());
        short.extend_from_slice(&[0u8; 10]);
        assert!(recv_msg(&mut short.as_slice()).is_err());
    }

    #[test]
    fn page_hash_sees_single_bit_changes() {
        let mut page = vec![0u8; PAGE];
        let zero = page_hash(&page);
        page[4095] = 1;
        assert_ne!(page_hash(&page), zero);
        page[4095] = 0;
        page[0] = 0x80;
        assert_ne!(page_hash(&page), zero);
    }

    #[test]
    fn hostile_page_messages_are_refused() {
        let filters = ThreadFilters {
            vcpu: None,
            worker: None,
        };
        let mut stream = Vec::new();
        let mut config = VmConfig::default();
        config.payload.kernel = Some("/nonexistent/vmlinux".into());
        config.memory.size = 32 << 20;
        send_msg(
            &mut stream,
            MSG_CONFIG,
            &[&serde_json::to_vec(&config).unwrap()],
        )
        .unwrap();
        let config_only = stream.clone();
        let layout = layout_msg(&[(0, 32 << 20)]);
        send_msg(&mut stream, MSG_LAYOUT, &[&layout]).unwrap();
        // Pages far outside guest RAM.
        send_msg(
            &mut stream,
            MSG_PAGES,
            &[&(1u64 << 50).to_le_bytes(), &[0u8; PAGE]],
        )
        .unwrap();
        let e = receive_vm(&mut stream.as_slice(), &filters).err().unwrap();
        assert!(e.to_string().contains("pages at"), "{e}");

        // Pages before the layout.
        let mut early = config_only.clone();
        send_msg(&mut early, MSG_PAGES, &[&0u64.to_le_bytes(), &[0u8; PAGE]]).unwrap();
        let e = receive_vm(&mut early.as_slice(), &filters).err().unwrap();
        assert!(e.to_string().contains("expected the memory layout"), "{e}");

        // A layout that does not hold the config's RAM.
        let mut short = config_only;
        send_msg(&mut short, MSG_LAYOUT, &[&layout_msg(&[(0, 16 << 20)])]).unwrap();
        let e = receive_vm(&mut short.as_slice(), &filters).err().unwrap();
        assert!(e.to_string().contains("the config's memory"), "{e}");
    }

    fn layout_msg(regions: &[(u64, u64)]) -> Vec<u8> {
        regions
            .iter()
            .flat_map(|(gpa, len)| gpa.to_le_bytes().into_iter().chain(len.to_le_bytes()))
            .collect()
    }

    #[test]
    fn hostile_layouts_are_refused() {
        let page = PAGE as u64;
        for (what, body) in [
            ("empty", Vec::new()),
            ("torn entry", vec![0u8; 15]),
            ("zero length", layout_msg(&[(0, 0)])),
            ("unaligned address", layout_msg(&[(1, page)])),
            ("unaligned length", layout_msg(&[(0, page + 1)])),
            ("wraps", layout_msg(&[(u64::MAX - page + 1, 2 * page)])),
            ("overlap", layout_msg(&[(0, 2 * page), (page, page)])),
            ("descending", layout_msg(&[(4 * page, page), (0, page)])),
            (
                "too many",
                layout_msg(&vec![(0, page); MAX_LAYOUT_REGIONS + 1])
                    .into_iter()
                    .collect(),
            ),
        ] {
            assert!(decode_layout(&body).is_err(), "{what} accepted");
        }
        let ok = decode_layout(&layout_msg(&[(0, 2 * page), (1 << 32, page)])).unwrap();
        assert_eq!(
            ok,
            vec![(GuestAddress(0), 2 * PAGE), (GuestAddress(1 << 32), PAGE)]
        );
    }
}
