//! qcow2 images (versions 2 and 3): reads through L1/L2 tables with a
//! backing file, allocating writes with copy-on-write, and discard.
//!
//! Unsupported (clear errors): compressed clusters, encryption, external
//! data files, extended L2, zstd, and writing to images with internal
//! snapshots (they are readable).

mod header;
mod refcount;
mod tables;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use super::file::HostFile;
use super::{check_range, id_of, open_with_depth, DiskError, DiskImage, DiskOptions};
pub use header::{Header, MAGIC};
use refcount::Refcounts;
use tables::{decode_l1, decode_l2, read_u64s, write_u64, L2Cache, L2Entry, COPIED, ZERO};

/// Largest cluster size (cluster_bits 21): the most read from the file head.
const MAX_CLUSTER: u64 = 1 << 21;

/// A qcow2 disk image.
pub struct Qcow2Disk {
    file: HostFile,
    header: Header,
    l1: Vec<u64>,
    l2: L2Cache,
    rc: Refcounts,
    backing: Option<Box<dyn DiskImage>>,
    readonly: bool,
    id: String,
}

fn corrupt(msg: String) -> DiskError {
    DiskError::Corrupt(msg)
}

/// Where a backing file named `name` in the image at `image` lives.
fn backing_path(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match image.parent() {
        Some(dir) => dir.join(p),
        None => p.to_path_buf(),
    }
}

impl Qcow2Disk {
    /// Parses and validates an opened (and locked) qcow2 image; `depth` is
    /// its place in a backing chain.
    pub(crate) fn new(
        file: HostFile,
        path: &Path,
        opts: &DiskOptions,
        depth: u32,
    ) -> Result<Self, DiskError> {
        let file_len = file.len()?;
        let mut head = vec![0u8; file_len.min(MAX_CLUSTER) as usize];
        file.read_at(&mut head, 0)?;
        let header = Header::parse(&head, file_len)?;
        if !opts.readonly && header.nb_snapshots > 0 {
            return Err(DiskError::Unsupported(
                "writing to qcow2 images with internal snapshots",
            ));
        }
        let cs = header.cluster_size();
        let l1 = read_u64s(&file, header.l1_table_offset, header.l1_size as usize)?;
        for (i, &e) in l1.iter().enumerate() {
            if let Some((off, _)) = decode_l1(e, header.cluster_bits)? {
                if off.checked_add(cs).is_none_or(|end| end > file_len) {
                    return Err(corrupt(format!(
                        "L1 entry {i} points past the end of the file"
                    )));
                }
            }
        }
        let rc = Refcounts::load(&file, &header, file_len)?;
        let backing = match &header.backing_file {
            None => None,
            Some(name) => {
                let bpath = backing_path(path, name);
                let bopts = DiskOptions {
                    readonly: true,
                    direct: opts.direct,
                    lock_granularity: opts.lock_granularity,
                };
                let fmt = header.backing_format.as_deref();
                Some(open_with_depth(&bpath, fmt, &bopts, depth + 1)?)
            }
        };
        if !opts.readonly && header.autoclear_features != 0 {
            // A writer that does not know the autoclear features must clear
            // them so their stale data (e.g. bitmaps) is not trusted.
            write_u64(&file, header::AUTOCLEAR_FIELD_OFFSET, 0)?;
        }
        let id = id_of(file.file());
        Ok(Qcow2Disk {
            l2: L2Cache::new((cs / 8) as usize),
            file,
            header,
            l1,
            rc,
            backing,
            readonly: opts.readonly,
            id,
        })
    }

    fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    fn v3(&self) -> bool {
        self.header.version == 3
    }

    /// L1 and L2 indexes of a guest offset.
    fn indexes(&self, guest: u64) -> (usize, usize) {
        let cb = self.header.cluster_bits;
        let l2_bits = cb - 3;
        let l1 = (guest >> (cb + l2_bits)) as usize;
        let l2 = ((guest >> cb) & ((1u64 << l2_bits) - 1)) as usize;
        (l1, l2)
    }

    /// Checks that a metadata or data cluster lies inside the image.
    fn check_host(&self, host: u64) -> Result<(), DiskError> {
        match host.checked_add(self.cluster_size()) {
            Some(end) if end <= self.rc.end() => Ok(()),
            _ => Err(corrupt(format!(
                "cluster {host:#x} lies past the end of the file"
            ))),
        }
    }

    /// The L2 table for `l1_idx`, if allocated.
    fn l2_table(&self, l1_idx: usize) -> Result<Option<(u64, bool)>, DiskError> {
        let raw = *self
            .l1
            .get(l1_idx)
            .ok_or_else(|| corrupt(format!("L1 index {l1_idx} out of range")))?;
        let t = decode_l1(raw, self.header.cluster_bits)?;
        if let Some((off, _)) = t {
            self.check_host(off)?;
        }
        Ok(t)
    }

    /// The decoded L2 entry for a guest offset, with the table holding it.
    fn lookup(&mut self, guest: u64) -> Result<(Option<u64>, L2Entry), DiskError> {
        let (l1_idx, l2_idx) = self.indexes(guest);
        let Some((table, _)) = self.l2_table(l1_idx)? else {
            return Ok((None, L2Entry::Unallocated));
        };
        let raw = self.l2.get(&self.file, table, l2_idx)?;
        let entry = decode_l2(raw, self.header.cluster_bits, self.v3())?;
        if let L2Entry::Normal { host, .. }
        | L2Entry::Zero {
            host: Some(host), ..
        } = entry
        {
            self.check_host(host)?;
        }
        Ok((Some(table), entry))
    }

    /// Reads from the backing file (zeros past its end or without one).
    fn read_backing(&mut self, buf: &mut [u8], guest: u64) -> Result<(), DiskError> {
        buf.fill(0);
        if let Some(b) = self.backing.as_mut() {
            let bsize = b.size();
            if guest < bsize {
                let n = (bsize - guest).min(buf.len() as u64) as usize;
                b.read_at(&mut buf[..n], guest)?;
            }
        }
        Ok(())
    }

    /// Reads a range that lies within one guest cluster.
    fn read_chunk(&mut self, buf: &mut [u8], guest: u64) -> Result<(), DiskError> {
        let in_cluster = guest & (self.cluster_size() - 1);
        match self.lookup(guest)?.1 {
            L2Entry::Unallocated => self.read_backing(buf, guest),
            L2Entry::Zero { .. } => {
                buf.fill(0);
                Ok(())
            }
            L2Entry::Normal { host, .. } => Ok(self.file.read_at(buf, host + in_cluster)?),
            L2Entry::Compressed => Err(DiskError::Unsupported("compressed qcow2 clusters")),
        }
    }

    /// Makes sure a cluster referenced without COPIED is really unshared,
    /// so it may be written in place.
    fn claim(&mut self, host: u64) -> Result<(), DiskError> {
        if self.rc.get(&self.file, host)? == 1 {
            Ok(())
        } else {
            Err(DiskError::Unsupported(
                "writing to shared qcow2 clusters (internal snapshots)",
            ))
        }
    }

    /// The L2 table for `l1_idx`, allocating an empty one if needed.
    fn l2_table_for_write(&mut self, l1_idx: usize) -> Result<u64, DiskError> {
        let l1_entry_at = self.header.l1_table_offset + l1_idx as u64 * 8;
        match self.l2_table(l1_idx)? {
            Some((table, true)) => Ok(table),
            Some((table, false)) => {
                self.claim(table)?;
                write_u64(&self.file, l1_entry_at, table | COPIED)?;
                self.l1[l1_idx] = table | COPIED;
                Ok(table)
            }
            None => {
                let table = self.rc.alloc(&self.file)?;
                let zeros = vec![0u8; self.cluster_size() as usize];
                // The table is on disk before L1 points at it.
                self.file.write_at(&zeros, table)?;
                self.l2.insert_zeroed(table);
                write_u64(&self.file, l1_entry_at, table | COPIED)?;
                self.l1[l1_idx] = table | COPIED;
                Ok(table)
            }
        }
    }

    /// Writes a range that lies within one guest cluster.
    fn write_chunk(&mut self, data: &[u8], guest: u64) -> Result<(), DiskError> {
        let cs = self.cluster_size();
        let in_cluster = guest & (cs - 1);
        let cluster_start = guest - in_cluster;
        let (l1_idx, l2_idx) = self.indexes(guest);
        let table = self.l2_table_for_write(l1_idx)?;
        let raw = self.l2.get(&self.file, table, l2_idx)?;
        let entry = decode_l2(raw, self.header.cluster_bits, self.v3())?;
        let (reuse, drop_old, from_backing) = match entry {
            L2Entry::Compressed => return Err(DiskError::Unsupported("compressed qcow2 clusters")),
            L2Entry::Normal { host, copied } => {
                self.check_host(host)?;
                if !copied {
                    self.claim(host)?;
                    self.l2.set(&self.file, table, l2_idx, host | COPIED)?;
                }
                return Ok(self.file.write_at(data, host + in_cluster)?);
            }
            L2Entry::Zero {
                host: Some(host),
                copied,
            } => {
                self.check_host(host)?;
                if copied || self.rc.get(&self.file, host)? == 1 {
                    (Some(host), None, false)
                } else {
                    (None, Some(host), false)
                }
            }
            L2Entry::Zero { host: None, .. } => (None, None, false),
            L2Entry::Unallocated => (None, None, true),
        };
        // Build the whole new cluster: old contents (backing or zeros)
        // around the new data.
        let mut cluster = vec![0u8; cs as usize];
        if from_backing && (data.len() as u64) < cs {
            self.read_backing(&mut cluster, cluster_start)?;
        }
        cluster[in_cluster as usize..in_cluster as usize + data.len()].copy_from_slice(data);
        let host = match reuse {
            Some(h) => h,
            None => self.rc.alloc(&self.file)?,
        };
        // Data, then the L2 entry, then dropping the old reference.
        self.file.write_at(&cluster, host)?;
        self.l2.set(&self.file, table, l2_idx, host | COPIED)?;
        if let Some(old) = drop_old {
            self.rc.decrement(&self.file, old)?;
        }
        Ok(())
    }

    /// Makes one whole guest cluster read as zeros, deallocating its host
    /// cluster unless `keep` asks to keep it (v3 preallocated zero).
    fn zero_cluster(&mut self, guest: u64, keep: bool) -> Result<(), DiskError> {
        let (table, entry) = self.lookup(guest)?;
        let has_backing = self.backing.is_some();
        let (host, copied) = match entry {
            L2Entry::Compressed => return Err(DiskError::Unsupported("compressed qcow2 clusters")),
            L2Entry::Unallocated if !has_backing => return Ok(()),
            L2Entry::Zero { host: None, .. } => return Ok(()),
            L2Entry::Zero {
                host: Some(_),
                copied: true,
            } if keep => return Ok(()),
            L2Entry::Unallocated => (None, false),
            L2Entry::Zero { host, copied } => (host, copied),
            L2Entry::Normal { host, copied } => (Some(host), copied),
        };
        if !self.v3() && has_backing {
            // v2 cannot say "zero" over a backing file: write real zeros.
            let zeros = vec![0u8; self.cluster_size() as usize];
            return self.write_chunk(&zeros, guest);
        }
        let (l1_idx, l2_idx) = self.indexes(guest);
        let table = match table {
            Some(t) => t,
            None => self.l2_table_for_write(l1_idx)?,
        };
        let keep_host = match host {
            // Only v3 can keep a host cluster behind a zero entry.
            Some(h) if keep && self.v3() && (copied || self.rc.get(&self.file, h)? == 1) => Some(h),
            _ => None,
        };
        let new_entry = match (self.v3(), keep_host) {
            (true, Some(h)) => h | COPIED | ZERO,
            (true, None) => ZERO,
            (false, _) => 0,
        };
        self.l2.set(&self.file, table, l2_idx, new_entry)?;
        if let (Some(h), None) = (host, keep_host) {
            self.rc.decrement(&self.file, h)?;
            if self.rc.get(&self.file, h)? == 0 {
                // Give the space back to the host; the cluster stays a hole.
                let _ = self.file.punch_hole(h, self.cluster_size());
            }
        }
        Ok(())
    }

    /// Whether the guest cluster at `guest` already reads as zeros without
    /// any data (so a partial zeroing need not allocate it).
    fn reads_zero(&mut self, guest: u64) -> Result<bool, DiskError> {
        Ok(match self.lookup(guest)?.1 {
            L2Entry::Zero { .. } => true,
            L2Entry::Unallocated => self.backing.is_none(),
            _ => false,
        })
    }

    /// Zeroes `[offset, offset + len)`: whole clusters through metadata,
    /// partial ones by writing zeros.
    fn zero_range(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError> {
        if self.readonly {
            return Err(DiskError::ReadOnly);
        }
        check_range(offset, len, self.header.size)?;
        let cs = self.cluster_size();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let in_cluster = pos & (cs - 1);
            let n = (cs - in_cluster).min(end - pos);
            if n == cs {
                self.zero_cluster(pos, !unmap)?;
            } else if !self.reads_zero(pos)? {
                let zeros = vec![0u8; n as usize];
                self.write_chunk(&zeros, pos)?;
            }
            pos += n;
        }
        Ok(())
    }
}

impl DiskImage for Qcow2Disk {
    fn size(&self) -> u64 {
        self.header.size
    }

    /// Only the top image: backing files are locked shared, which a
    /// second VMM's shared lock does not conflict with.
    fn set_locked(&mut self, locked: bool) -> Result<(), DiskError> {
        super::relock_file(&self.file, locked)
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        check_range(offset, buf.len() as u64, self.header.size)?;
        let cs = self.cluster_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = ((cs - (pos & (cs - 1))) as usize).min(buf.len() - done);
            self.read_chunk(&mut buf[done..done + n], pos)?;
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        if self.readonly {
            return Err(DiskError::ReadOnly);
        }
        check_range(offset, buf.len() as u64, self.header.size)?;
        let cs = self.cluster_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = ((cs - (pos & (cs - 1))) as usize).min(buf.len() - done);
            self.write_chunk(&buf[done..done + n], pos)?;
            done += n;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        if self.readonly {
            return Ok(());
        }
        Ok(self.file.sync()?)
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.zero_range(offset, len, true)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError> {
        self.zero_range(offset, len, unmap)
    }

    fn supports_discard(&self) -> bool {
        !self.readonly
    }

    fn id_basis(&self) -> String {
        self.id.clone()
    }
}
