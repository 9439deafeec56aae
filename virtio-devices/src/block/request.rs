//! Parsing and executing one virtio-blk request (virtio 1.2 §5.2.6).
//!
//! A request is a 16-byte header (type, reserved, sector) at the start of
//! the device-readable bytes, data (readable for OUT/DISCARD/WRITE_ZEROES,
//! writable for IN/GET_ID), and the status byte as the last device-writable
//! byte. Any layout of descriptors is accepted. Everything is checked: a bad
//! request gets IOERR/UNSUPP when a status byte exists, else is dropped.

use log::warn;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vm_memory::GuestMemory as GuestMemoryT;

use super::disk::DiskImage;
use super::BlockCounters;
use crate::worker::chain::ChainBuffers;

/// Bytes in a virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request header.
const HEADER_LEN: u64 = 16;
/// Size of one discard/write-zeroes segment.
const SEGMENT_LEN: u64 = 16;
/// Most sectors one discard/write-zeroes segment may cover (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Most segments in one discard/write-zeroes request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Bounce buffer size for data transfers.
const CHUNK: usize = 128 * 1024;

const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// What a request may do, fixed at activation.
pub(crate) struct RequestContext<'a> {
    /// The disk image.
    pub disk: &'a mut dyn DiskImage,
    /// Writes are refused.
    pub readonly: bool,
    /// DISCARD and WRITE_ZEROES are offered.
    pub discard: bool,
    /// Disk size in sectors.
    pub capacity: u64,
    /// GET_ID answer.
    pub id: &'a [u8; VIRTIO_BLK_ID_BYTES as usize],
    /// Statistics.
    pub counters: &'a BlockCounters,
    /// Device id for logs.
    pub name: &'a str,
}

/// Outcome of executing a well-formed header: status and bytes written
/// into device-writable data buffers (status byte excluded).
struct Outcome {
    status: u8,
    written: u64,
}

impl Outcome {
    fn status(status: u8) -> Self {
        Outcome { status, written: 0 }
    }
}

/// Serves one request; returns the used length (data written + status),
/// 0 when the chain was unusable and dropped.
pub(crate) fn process<M: GuestMemoryT>(
    mem: &M,
    bufs: &ChainBuffers,
    ctx: &mut RequestContext<'_>,
) -> u32 {
    let Some(status_off) = bufs.writable_len().checked_sub(1) else {
        warn!("{}: request without a status byte dropped", ctx.name);
        return 0;
    };
    let outcome = match read_header(mem, bufs) {
        Some((kind, sector)) => execute(mem, bufs, ctx, kind, sector, status_off),
        None => {
            warn!("{}: request header missing or unreadable", ctx.name);
            Outcome::status(S_IOERR)
        }
    };
    if outcome.status != S_OK {
        ctx.counters.add(&ctx.counters.errors, 1);
    }
    if let Err(e) = bufs.write_at(mem, status_off, &[outcome.status]) {
        warn!("{}: cannot write status: {e}", ctx.name);
        return 0;
    }
    // A chain is at most 4 GiB, so this fits except for hostile lengths.
    u32::try_from(outcome.written + 1).unwrap_or(u32::MAX)
}

/// Payload bytes a request moves, for rate limiting: the data of IN and
/// OUT requests; other types (flush, GET_ID, discard) and unreadable
/// headers move none (they are still charged one operation).
pub(crate) fn rate_limit_bytes<M: GuestMemoryT>(mem: &M, bufs: &ChainBuffers) -> u64 {
    match read_header(mem, bufs) {
        Some((VIRTIO_BLK_T_IN, _)) => bufs.writable_len().saturating_sub(1),
        Some((VIRTIO_BLK_T_OUT, _)) => bufs.readable_len() - HEADER_LEN,
        _ => 0,
    }
}

fn read_header<M: GuestMemoryT>(mem: &M, bufs: &ChainBuffers) -> Option<(u32, u64)> {
    if bufs.readable_len() < HEADER_LEN {
        return None;
    }
    let mut h = [0u8; HEADER_LEN as usize];
    bufs.read_at(mem, 0, &mut h).ok()?;
    let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    Some((kind, sector))
}

/// Byte offset of `sector`, if `[sector, sector + len bytes)` is on disk.
fn byte_range(sector: u64, len: u64, capacity: u64) -> Option<u64> {
    let start = sector.checked_mul(SECTOR_SIZE)?;
    let end = start.checked_add(len)?;
    (end <= capacity.checked_mul(SECTOR_SIZE)?).then_some(start)
}

fn execute<M: GuestMemoryT>(
    mem: &M,
    bufs: &ChainBuffers,
    ctx: &mut RequestContext<'_>,
    kind: u32,
    sector: u64,
    data_w: u64,
) -> Outcome {
    let data_r = bufs.readable_len() - HEADER_LEN;
    match kind {
        VIRTIO_BLK_T_IN => {
            // Data must be device-writable only, in whole sectors.
            if data_r != 0 || !data_w.is_multiple_of(SECTOR_SIZE) {
                return bad(ctx, "IN with misdirected or partial-sector data");
            }
            let Some(offset) = byte_range(sector, data_w, ctx.capacity) else {
                return bad(ctx, "IN beyond the end of the disk");
            };
            read_disk(mem, bufs, ctx, offset, data_w)
        }
        VIRTIO_BLK_T_OUT => {
            if ctx.readonly {
                return bad(ctx, "write to a read-only disk");
            }
            if data_w != 0 || !data_r.is_multiple_of(SECTOR_SIZE) {
                return bad(ctx, "OUT with misdirected or partial-sector data");
            }
            let Some(offset) = byte_range(sector, data_r, ctx.capacity) else {
                return bad(ctx, "OUT beyond the end of the disk");
            };
            write_disk(mem, bufs, ctx, offset, data_r)
        }
        VIRTIO_BLK_T_FLUSH => {
            ctx.counters.add(&ctx.counters.flush_ops, 1);
            if ctx.readonly {
                return Outcome::status(S_OK);
            }
            match ctx.disk.flush() {
                Ok(()) => Outcome::status(S_OK),
                Err(e) => io_error(ctx, &e),
            }
        }
        VIRTIO_BLK_T_GET_ID => {
            let n = data_w.min(u64::from(VIRTIO_BLK_ID_BYTES)) as usize;
            match bufs.write_at(mem, 0, &ctx.id[..n]) {
                Ok(()) => Outcome {
                    status: S_OK,
                    written: n as u64,
                },
                Err(_) => bad(ctx, "GET_ID buffer unwritable"),
            }
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if !ctx.discard {
                return Outcome::status(S_UNSUPP);
            }
            if ctx.readonly {
                return bad(ctx, "discard on a read-only disk");
            }
            discard(mem, bufs, ctx, kind == VIRTIO_BLK_T_WRITE_ZEROES, data_r)
        }
        _ => Outcome::status(S_UNSUPP),
    }
}

fn bad(ctx: &RequestContext<'_>, what: &str) -> Outcome {
    warn!("{}: {what}", ctx.name);
    Outcome::status(S_IOERR)
}

fn io_error(ctx: &RequestContext<'_>, e: &super::disk::DiskError) -> Outcome {
    warn!("{}: disk I/O failed: {e}", ctx.name);
    Outcome::status(S_IOERR)
}

fn read_disk<M: GuestMemoryT>(
    mem: &M,
    bufs: &ChainBuffers,
    ctx: &mut RequestContext<'_>,
    offset: u64,
    len: u64,
) -> Outcome {
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        if let Err(e) = ctx.disk.read_at(&mut buf[..n], offset + done) {
            let mut o = io_error(ctx, &e);
            o.written = done;
            return o;
        }
        if bufs.write_at(mem, done, &buf[..n]).is_err() {
            let mut o = bad(ctx, "IN data buffer unwritable");
            o.written = done;
            return o;
        }
        done += n as u64;
    }
    ctx.counters.add(&ctx.counters.read_ops, 1);
    ctx.counters.add(&ctx.counters.read_bytes, len);
    Outcome {
        status: S_OK,
        written: len,
    }
}

fn write_disk<M: GuestMemoryT>(
    mem: &M,
    bufs: &ChainBuffers,
    ctx: &mut RequestContext<'_>,
    offset: u64,
    len: u64,
) -> Outcome {
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        if bufs.read_at(mem, HEADER_LEN + done, &mut buf[..n]).is_err() {
            return bad(ctx, "OUT data buffer unreadable");
        }
        if let Err(e) = ctx.disk.write_at(&buf[..n], offset + done) {
            return io_error(ctx, &e);
        }
        done += n as u64;
    }
    ctx.counters.add(&ctx.counters.write_ops, 1);
    ctx.counters.add(&ctx.counters.write_bytes, len);
    Outcome::status(S_OK)
}

/// One discard/write-zeroes range, validated.
struct Segment {
    offset: u64,
    len: u64,
    unmap: bool,
}

fn discard<M: GuestMemoryT>(
    mem: &M,
    bufs: &ChainBuffers,
    ctx: &mut RequestContext<'_>,
    zeroes: bool,
    data_r: u64,
) -> Outcome {
    if data_r == 0 || !data_r.is_multiple_of(SEGMENT_LEN) {
        return bad(ctx, "discard segments malformed");
    }
    let count = data_r / SEGMENT_LEN;
    if count > u64::from(MAX_DISCARD_SEG) {
        return bad(ctx, "too many discard segments");
    }
    let mut segs = Vec::with_capacity(count as usize);
    for i in 0..count {
        let mut raw = [0u8; SEGMENT_LEN as usize];
        if bufs
            .read_at(mem, HEADER_LEN + i * SEGMENT_LEN, &mut raw)
            .is_err()
        {
            return bad(ctx, "discard segment unreadable");
        }
        let sector = u64::from_le_bytes([
            raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
        ]);
        let sectors = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
        let flags = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
        let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        // Reserved bits, or unmap on a discard, are not supported (§5.2.6.2).
        if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 || (unmap && !zeroes) {
            return Outcome::status(S_UNSUPP);
        }
        if sectors > MAX_DISCARD_SECTORS {
            return bad(ctx, "discard segment too large");
        }
        let len = u64::from(sectors) * SECTOR_SIZE;
        let Some(offset) = byte_range(sector, len, ctx.capacity) else {
            return bad(ctx, "discard beyond the end of the disk");
        };
        segs.push(Segment { offset, len, unmap });
    }
    for s in segs {
        let r = if zeroes {
            ctx.disk.write_zeroes(s.offset, s.len, s.unmap)
        } else {
            ctx.disk.discard(s.offset, s.len)
        };
        if let Err(e) = r {
            return io_error(ctx, &e);
        }
    }
    ctx.counters.add(&ctx.counters.discard_ops, 1);
    Outcome::status(S_OK)
}
