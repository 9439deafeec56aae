//! qcow2 reference counts and cluster allocation.
//!
//! The refcount table (kept in memory) points at refcount blocks, each one
//! cluster of `refcount_bits`-wide entries, one per host cluster. New
//! clusters are taken from the end of the file; a refcount block that is
//! needed is allocated on demand (it may have to count itself), and the
//! table moves to a larger place at the end of the file when it is full.
//! Every change is written through at once, refcounts before anything that
//! references the cluster.

use std::collections::HashMap;

use super::super::file::HostFile;
use super::super::DiskError;
use super::header::{Header, MAX_REFTABLE_BYTES, REFTABLE_FIELD_OFFSET};
use super::tables::{read_u64s, write_u64, OFFSET_MASK};

/// Refcount blocks kept in memory at once.
const BLOCK_CACHE: usize = 32;
/// Clusters with stray non-zero refcounts skipped before allocation gives up.
const MAX_SKIP: u32 = 64;

fn corrupt(msg: String) -> DiskError {
    DiskError::Corrupt(msg)
}

/// Reads entry `idx` of a refcount block of `1 << order`-bit entries.
fn get_entry(block: &[u8], idx: u64, order: u32) -> u64 {
    let bits = 1u64 << order;
    if bits < 8 {
        let bit = idx * bits;
        let mask = (1u64 << bits) - 1;
        (u64::from(block[(bit / 8) as usize]) >> (bit % 8)) & mask
    } else {
        let w = (bits / 8) as usize;
        let start = idx as usize * w;
        block[start..start + w]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    }
}

/// Sets entry `idx`; returns the byte range touched.
fn set_entry(block: &mut [u8], idx: u64, order: u32, value: u64) -> (usize, usize) {
    let bits = 1u64 << order;
    if bits < 8 {
        let bit = idx * bits;
        let mask = ((1u64 << bits) - 1) as u8;
        let byte = (bit / 8) as usize;
        let shift = bit % 8;
        block[byte] = (block[byte] & !(mask << shift)) | (((value as u8) & mask) << shift);
        (byte, 1)
    } else {
        let w = (bits / 8) as usize;
        let start = idx as usize * w;
        for (i, b) in block[start..start + w].iter_mut().enumerate() {
            *b = (value >> (8 * (w - 1 - i))) as u8;
        }
        (start, w)
    }
}

/// The refcount structures of an open image plus the allocation cursor.
pub struct Refcounts {
    cluster_bits: u32,
    order: u32,
    table_offset: u64,
    table: Vec<u64>,
    blocks: HashMap<u64, Vec<u8>>,
    next_free: u64,
}

impl Refcounts {
    /// Loads and validates the refcount table of an image `file_len` long.
    pub fn load(file: &HostFile, header: &Header, file_len: u64) -> Result<Self, DiskError> {
        let cs = header.cluster_size();
        let entries = (u64::from(header.refcount_table_clusters) * cs / 8) as usize;
        let table = read_u64s(file, header.refcount_table_offset, entries)?;
        for (i, &e) in table.iter().enumerate() {
            if e & !OFFSET_MASK != 0 || !e.is_multiple_of(cs) {
                return Err(corrupt(format!(
                    "refcount table entry {i} ({e:#x}) is invalid"
                )));
            }
            if e != 0 && e.checked_add(cs).is_none_or(|end| end > file_len) {
                return Err(corrupt(format!(
                    "refcount block {i} at {e:#x} lies past the end of the file"
                )));
            }
        }
        let next_free = file_len
            .checked_add(cs - 1)
            .map(|v| v & !(cs - 1))
            .ok_or_else(|| corrupt("file too large".to_string()))?;
        Ok(Refcounts {
            cluster_bits: header.cluster_bits,
            order: header.refcount_order,
            table_offset: header.refcount_table_offset,
            table,
            blocks: HashMap::new(),
            next_free,
        })
    }

    fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// Refcount entries in one block.
    fn per_block(&self) -> u64 {
        (self.cluster_size() * 8) >> self.order
    }

    fn max_value(&self) -> u64 {
        match 1u64 << self.order {
            64 => u64::MAX,
            bits => (1u64 << bits) - 1,
        }
    }

    /// First offset past every cluster this image uses or has allocated.
    pub fn end(&self) -> u64 {
        self.next_free
    }

    fn locate(&self, host: u64) -> (usize, u64) {
        let cluster = host >> self.cluster_bits;
        let per = self.per_block();
        ((cluster / per) as usize, cluster % per)
    }

    fn block_data(&mut self, file: &HostFile, block: u64) -> Result<&mut Vec<u8>, DiskError> {
        if !self.blocks.contains_key(&block) {
            if self.blocks.len() >= BLOCK_CACHE {
                if let Some(&victim) = self.blocks.keys().next() {
                    self.blocks.remove(&victim);
                }
            }
            let mut data = vec![0u8; self.cluster_size() as usize];
            file.read_at(&mut data, block)?;
            self.blocks.insert(block, data);
        }
        self.blocks
            .get_mut(&block)
            .ok_or_else(|| corrupt("refcount cache miss".to_string()))
    }

    /// The refcount of the host cluster at `host`.
    pub fn get(&mut self, file: &HostFile, host: u64) -> Result<u64, DiskError> {
        let (bidx, within) = self.locate(host);
        let block = match self.table.get(bidx) {
            Some(&b) if b != 0 => b,
            _ => return Ok(0),
        };
        let order = self.order;
        let data = self.block_data(file, block)?;
        Ok(get_entry(data, within, order))
    }

    /// Sets the refcount of the host cluster at `host`.
    pub fn set(&mut self, file: &HostFile, host: u64, value: u64) -> Result<(), DiskError> {
        if value > self.max_value() {
            return Err(DiskError::Unsupported("refcount overflow"));
        }
        let (bidx, within) = self.locate(host);
        let missing = self.table.get(bidx).is_none_or(|&b| b == 0);
        if missing && value == 0 {
            return Ok(());
        }
        let block = self.ensure_block(file, bidx)?;
        let order = self.order;
        let data = self.block_data(file, block)?;
        let (start, len) = set_entry(data, within, order, value);
        let bytes = data[start..start + len].to_vec();
        file.write_at(&bytes, block + start as u64)?;
        Ok(())
    }

    /// Drops one reference to the cluster at `host`.
    pub fn decrement(&mut self, file: &HostFile, host: u64) -> Result<(), DiskError> {
        let rc = self.get(file, host)?;
        if rc == 0 {
            return Err(corrupt(format!("cluster {host:#x} freed twice")));
        }
        self.set(file, host, rc - 1)
    }

    /// Takes the next cluster at the end of the file without counting it.
    fn bump(&mut self) -> Result<u64, DiskError> {
        let off = self.next_free;
        self.next_free = off
            .checked_add(self.cluster_size())
            .filter(|&e| e <= OFFSET_MASK)
            .ok_or(DiskError::Unsupported("image file too large"))?;
        Ok(off)
    }

    /// Allocates one cluster with refcount one. The caller writes it.
    pub fn alloc(&mut self, file: &HostFile) -> Result<u64, DiskError> {
        for _ in 0..MAX_SKIP {
            let off = self.bump()?;
            if self.get(file, off)? == 0 {
                self.set(file, off, 1)?;
                return Ok(off);
            }
        }
        Err(corrupt(
            "refcounts claim clusters past the end of the file".to_string(),
        ))
    }

    /// Returns the refcount block for table index `bidx`, creating it.
    fn ensure_block(&mut self, file: &HostFile, bidx: usize) -> Result<u64, DiskError> {
        if bidx >= self.table.len() {
            self.grow_table(file, bidx + 1)?;
        }
        match self.table.get(bidx) {
            Some(&b) if b != 0 => return Ok(b),
            Some(_) => {}
            None => return Err(corrupt("refcount table too small".to_string())),
        }
        let new = self.bump()?;
        let mut data = vec![0u8; self.cluster_size() as usize];
        let (nbidx, within) = self.locate(new);
        if nbidx == bidx {
            // The new block covers itself.
            set_entry(&mut data, within, self.order, 1);
        } else {
            // Counted by a later block, which must exist before this one
            // is referenced.
            self.set(file, new, 1)?;
        }
        file.write_at(&data, new)?;
        self.blocks.insert(new, data);
        self.table[bidx] = new;
        write_u64(file, self.table_offset + bidx as u64 * 8, new)?;
        Ok(new)
    }

    /// Moves the refcount table to a larger place at the end of the file,
    /// with at least `min_entries` entries.
    fn grow_table(&mut self, file: &HostFile, min_entries: usize) -> Result<(), DiskError> {
        let cs = self.cluster_size();
        let old_offset = self.table_offset;
        let old_clusters = (self.table.len() as u64 * 8).div_ceil(cs);
        let mut clusters = (old_clusters * 2).max((min_entries as u64 * 8).div_ceil(cs));
        loop {
            if clusters * cs > MAX_REFTABLE_BYTES {
                return Err(DiskError::Unsupported(
                    "image too large for a refcount table",
                ));
            }
            let covered = (clusters * cs / 8)
                .saturating_mul(self.per_block())
                .saturating_mul(cs);
            // Room for the new table and the blocks that count it.
            let need = self
                .next_free
                .saturating_add(clusters * cs)
                .saturating_add((clusters / self.per_block() + 3) * cs);
            if covered >= need {
                break;
            }
            clusters *= 2;
        }
        let new_offset = self.next_free;
        for _ in 0..clusters {
            self.bump()?;
        }
        self.table.resize((clusters * cs / 8) as usize, 0);
        self.table_offset = new_offset;
        for i in 0..clusters {
            self.set(file, new_offset + i * cs, 1)?;
        }
        let mut bytes = Vec::with_capacity(self.table.len() * 8);
        for e in &self.table {
            bytes.extend_from_slice(&e.to_be_bytes());
        }
        file.write_at(&bytes, new_offset)?;
        // The new table must be durable before the header points at it.
        file.sync()?;
        let mut field = [0u8; 12];
        field[..8].copy_from_slice(&new_offset.to_be_bytes());
        field[8..].copy_from_slice(&(clusters as u32).to_be_bytes());
        file.write_at(&field, REFTABLE_FIELD_OFFSET)?;
        file.sync()?;
        for i in 0..old_clusters {
            self.decrement(file, old_offset + i * cs)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_every_width_roundtrip() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 512];
            let per = (512 * 8) >> order;
            let max = if order == 6 {
                u64::MAX
            } else {
                (1u64 << (1 << order)) - 1
            };
            for idx in 0..per {
                set_entry(&mut block, idx, order, (idx * 7) & max);
            }
            for idx in 0..per {
                assert_eq!(
                    get_entry(&block, idx, order),
                    (idx * 7) & max,
                    "order {order}"
                );
            }
            set_entry(&mut block, 3, order, max);
            assert_eq!(get_entry(&block, 3, order), max);
            assert_eq!(get_entry(&block, 2, order), (2 * 7) & max);
        }
    }

    #[test]
    fn sub_byte_entries_are_lsb_first() {
        let mut block = vec![0u8; 4];
        set_entry(&mut block, 0, 0, 1);
        set_entry(&mut block, 9, 0, 1);
        assert_eq!(block, [0x01, 0x02, 0, 0]);
        let mut block = vec![0u8; 4];
        set_entry(&mut block, 1, 4, 0x1234);
        assert_eq!(block, [0, 0, 0x12, 0x34]);
    }
}
