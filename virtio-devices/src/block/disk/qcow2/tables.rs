//! L1/L2 mapping tables: entry decoding and a small write-through L2 cache.
//!
//! An L1 entry points at an L2 table (one cluster of 64-bit entries); an L2
//! entry points at a data cluster. Entries are image-controlled, so every
//! decoded offset is checked for alignment and reserved bits.

use std::collections::HashMap;

use super::super::file::HostFile;
use super::super::DiskError;

/// Bits 9..=55 of an entry hold a host offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Refcount of the pointed-to cluster is exactly one.
pub const COPIED: u64 = 1 << 63;
/// The L2 entry describes a compressed cluster.
pub const COMPRESSED: u64 = 1 << 62;
/// (v3) The cluster reads as zeros.
pub const ZERO: u64 = 1;

/// L2 tables kept in memory at once.
const L2_CACHE_TABLES: usize = 32;

/// What an L2 entry says about one guest cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Entry {
    /// Not allocated: read from the backing file, or zeros.
    Unallocated,
    /// Reads as zeros; may keep a preallocated host cluster.
    Zero {
        /// Preallocated host cluster, if any.
        host: Option<u64>,
        /// Whether the host cluster's refcount is one.
        copied: bool,
    },
    /// Data at a host cluster.
    Normal {
        /// Host cluster offset.
        host: u64,
        /// Whether the host cluster's refcount is one.
        copied: bool,
    },
    /// A compressed cluster (not supported).
    Compressed,
}

fn corrupt(msg: String) -> DiskError {
    DiskError::Corrupt(msg)
}

/// Decodes an L1 entry into the L2 table offset and its COPIED flag.
pub fn decode_l1(raw: u64, cluster_bits: u32) -> Result<Option<(u64, bool)>, DiskError> {
    let off = raw & OFFSET_MASK;
    if raw & !(OFFSET_MASK | COPIED) != 0 {
        return Err(corrupt(format!("L1 entry {raw:#x} has reserved bits set")));
    }
    if off == 0 {
        return Ok(None);
    }
    if off & ((1u64 << cluster_bits) - 1) != 0 {
        return Err(corrupt(format!(
            "L2 table offset {off:#x} is not cluster aligned"
        )));
    }
    Ok(Some((off, raw & COPIED != 0)))
}

/// Decodes an L2 entry; `v3` enables the zero flag.
pub fn decode_l2(raw: u64, cluster_bits: u32, v3: bool) -> Result<L2Entry, DiskError> {
    if raw & COMPRESSED != 0 {
        return Ok(L2Entry::Compressed);
    }
    let copied = raw & COPIED != 0;
    let off = raw & OFFSET_MASK;
    // Version 2 has no zero flag: bit 0 is reserved and ignored.
    let zero = v3 && raw & ZERO != 0;
    let reserved = raw & !(OFFSET_MASK | COPIED | ZERO);
    if reserved != 0 {
        return Err(corrupt(format!("L2 entry {raw:#x} has reserved bits set")));
    }
    if off & ((1u64 << cluster_bits) - 1) != 0 {
        return Err(corrupt(format!(
            "data cluster offset {off:#x} is not cluster aligned"
        )));
    }
    let host = (off != 0).then_some(off);
    Ok(match (zero, host) {
        (true, host) => L2Entry::Zero { host, copied },
        (false, Some(host)) => L2Entry::Normal { host, copied },
        (false, None) => L2Entry::Unallocated,
    })
}

/// Reads `count` big-endian u64s at `offset`.
pub fn read_u64s(file: &HostFile, offset: u64, count: usize) -> Result<Vec<u64>, DiskError> {
    let mut bytes = vec![0u8; count * 8];
    file.read_at(&mut bytes, offset)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_be_bytes(a)
        })
        .collect())
}

/// Writes one big-endian u64 at `offset`.
pub fn write_u64(file: &HostFile, offset: u64, value: u64) -> Result<(), DiskError> {
    Ok(file.write_at(&value.to_be_bytes(), offset)?)
}

/// A write-through cache of L2 tables keyed by host offset.
pub struct L2Cache {
    tables: HashMap<u64, Vec<u64>>,
    entries: usize,
}

impl L2Cache {
    /// An empty cache for tables of `entries` entries.
    pub fn new(entries: usize) -> Self {
        L2Cache {
            tables: HashMap::new(),
            entries,
        }
    }

    fn load(&mut self, file: &HostFile, table: u64) -> Result<&mut Vec<u64>, DiskError> {
        if !self.tables.contains_key(&table) {
            if self.tables.len() >= L2_CACHE_TABLES {
                // Write-through, so any table may go; drop an arbitrary one.
                if let Some(&victim) = self.tables.keys().next() {
                    self.tables.remove(&victim);
                }
            }
            let t = read_u64s(file, table, self.entries)?;
            self.tables.insert(table, t);
        }
        self.tables
            .get_mut(&table)
            .ok_or_else(|| corrupt("L2 cache miss".to_string()))
    }

    /// The raw entry `index` of the L2 table at `table`.
    pub fn get(&mut self, file: &HostFile, table: u64, index: usize) -> Result<u64, DiskError> {
        let t = self.load(file, table)?;
        t.get(index)
            .copied()
            .ok_or_else(|| corrupt(format!("L2 index {index} out of range")))
    }

    /// Sets entry `index` of the table at `table`, on disk and in the cache.
    pub fn set(
        &mut self,
        file: &HostFile,
        table: u64,
        index: usize,
        value: u64,
    ) -> Result<(), DiskError> {
        let at = table
            .checked_add(index as u64 * 8)
            .ok_or_else(|| corrupt("L2 entry offset overflows".to_string()))?;
        write_u64(file, at, value)?;
        let t = self.load(file, table)?;
        if let Some(slot) = t.get_mut(index) {
            *slot = value;
        }
        Ok(())
    }

    /// Records a freshly zeroed table without reading it back.
    pub fn insert_zeroed(&mut self, table: u64) {
        if self.tables.len() >= L2_CACHE_TABLES {
            if let Some(&victim) = self.tables.keys().next() {
                self.tables.remove(&victim);
            }
        }
        self.tables.insert(table, vec![0; self.entries]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_entries_decode() {
        assert_eq!(decode_l2(0, 16, true).unwrap(), L2Entry::Unallocated);
        assert_eq!(
            decode_l2(COPIED | 0x30000, 16, true).unwrap(),
            L2Entry::Normal {
                host: 0x30000,
                copied: true
            }
        );
        assert_eq!(
            decode_l2(1, 16, true).unwrap(),
            L2Entry::Zero {
                host: None,
                copied: false
            }
        );
        assert_eq!(decode_l2(1, 16, false).unwrap(), L2Entry::Unallocated);
        assert_eq!(
            decode_l2(COMPRESSED | 5, 16, true).unwrap(),
            L2Entry::Compressed
        );
        // Unaligned or reserved bits.
        assert!(decode_l2(0x30200, 16, true).is_err());
        assert!(decode_l2(0x30000 | 2, 16, true).is_err());
        assert!(decode_l2(1 << 60, 16, true).is_err());
    }

    #[test]
    fn l1_entries_decode() {
        assert_eq!(decode_l1(0, 16).unwrap(), None);
        assert_eq!(
            decode_l1(COPIED | 0x50000, 16).unwrap(),
            Some((0x50000, true))
        );
        assert!(decode_l1(0x50200, 16).is_err());
        assert!(decode_l1(1, 16).is_err());
    }
}
