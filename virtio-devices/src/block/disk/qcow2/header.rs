//! The qcow2 header (versions 2 and 3) and its extensions, fully validated.
//!
//! All fields are big-endian. Every offset and size is checked against the
//! file length and the caps below before anything is allocated from it.

use super::super::DiskError;

/// "QFI\xfb".
pub const MAGIC: u32 = 0x5146_49fb;
/// Length of a version 2 header (and the fixed start of a version 3 one).
pub const V2_HEADER_LEN: usize = 72;
/// Minimum length of a version 3 header.
pub const V3_HEADER_LEN: usize = 104;
/// Largest L1 table accepted, in bytes (also QEMU's limit).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table accepted, in bytes (also QEMU's limit).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Longest backing file name the format allows.
pub const MAX_BACKING_NAME: u32 = 1023;

/// Byte offset of `refcount_table_offset` (followed by its cluster count).
pub const REFTABLE_FIELD_OFFSET: u64 = 48;
/// Byte offset of `autoclear_features`.
pub const AUTOCLEAR_FIELD_OFFSET: u64 = 88;

/// Incompatible feature bits.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// The image was marked corrupt by a writer.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Guest data lives in an external file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// A non-zlib compression type is in use.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// L2 entries carry subcluster bitmaps.
pub const INCOMPAT_EXTL2: u64 = 1 << 4;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

/// A parsed, validated qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Backing file name as stored in the image.
    pub backing_file: Option<String>,
    /// Backing format from the header extension, if any.
    pub backing_format: Option<String>,
    /// log2 of the cluster size (9..=21).
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Number of L1 entries.
    pub l1_size: u32,
    /// Host offset of the L1 table.
    pub l1_table_offset: u64,
    /// Host offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Refcount table length in clusters.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Host offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (v3).
    pub incompatible_features: u64,
    /// Compatible feature bits (v3).
    pub compatible_features: u64,
    /// Autoclear feature bits (v3).
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits (0..=6).
    pub refcount_order: u32,
    /// Header length in bytes.
    pub header_length: u32,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn corrupt(msg: impl Into<String>) -> DiskError {
    DiskError::Corrupt(msg.into())
}

/// Checks that a table of `bytes` at `offset` is cluster aligned and lies
/// inside a file of `file_len` bytes.
fn check_table(
    what: &str,
    offset: u64,
    bytes: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<(), DiskError> {
    if !offset.is_multiple_of(cluster_size) {
        return Err(corrupt(format!(
            "{what} offset {offset:#x} is not cluster aligned"
        )));
    }
    match offset.checked_add(bytes) {
        Some(end) if offset != 0 && end <= file_len => Ok(()),
        _ => Err(corrupt(format!(
            "{what} at {offset:#x} ({bytes} bytes) lies outside the {file_len}-byte file"
        ))),
    }
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// Parses the header from `head`, the first bytes of the file (the
    /// whole first cluster when the file is that long), and validates it
    /// against the file length.
    pub fn parse(head: &[u8], file_len: u64) -> Result<Header, DiskError> {
        if head.len() < V2_HEADER_LEN || file_len < V2_HEADER_LEN as u64 {
            return Err(corrupt("file too short for a qcow2 header"));
        }
        if be32(head, 0) != MAGIC {
            return Err(corrupt("bad qcow2 magic"));
        }
        let version = be32(head, 4);
        if version != 2 && version != 3 {
            return Err(DiskError::UnsupportedVersion(version));
        }
        let cluster_bits = be32(head, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(format!(
                "cluster_bits {cluster_bits} outside 9..=21"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file: None,
            backing_format: None,
            cluster_bits,
            size: be64(head, 24),
            l1_size: be32(head, 36),
            l1_table_offset: be64(head, 40),
            refcount_table_offset: be64(head, 48),
            refcount_table_clusters: be32(head, 56),
            nb_snapshots: be32(head, 60),
            snapshots_offset: be64(head, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN as u32,
        };
        if be32(head, 32) != 0 {
            return Err(DiskError::Unsupported("encrypted qcow2 images"));
        }
        let mut compression_type = 0u8;
        if version == 3 {
            if head.len() < V3_HEADER_LEN {
                return Err(corrupt("file too short for a qcow2 v3 header"));
            }
            h.incompatible_features = be64(head, 72);
            h.compatible_features = be64(head, 80);
            h.autoclear_features = be64(head, 88);
            h.refcount_order = be32(head, 96);
            h.header_length = be32(head, 100);
            let hl = u64::from(h.header_length);
            if hl < V3_HEADER_LEN as u64
                || !hl.is_multiple_of(8)
                || hl > cluster_size
                || hl > file_len
            {
                return Err(corrupt(format!("bad header_length {hl}")));
            }
            if hl > V3_HEADER_LEN as u64 {
                compression_type = *head.get(V3_HEADER_LEN).unwrap_or(&0);
            }
        }
        h.check_features(compression_type)?;
        if h.refcount_order > 6 {
            return Err(corrupt(format!(
                "refcount_order {} above 6",
                h.refcount_order
            )));
        }
        h.check_tables(file_len)?;
        h.parse_backing(head, file_len)?;
        h.parse_extensions(head)?;
        Ok(h)
    }

    fn check_features(&self, compression_type: u8) -> Result<(), DiskError> {
        let f = self.incompatible_features;
        if f & INCOMPAT_DIRTY != 0 {
            return Err(corrupt(
                "image is marked dirty (refcounts may be stale); repair it with `qemu-img check -r all`",
            ));
        }
        if f & INCOMPAT_CORRUPT != 0 {
            return Err(corrupt(
                "image is marked corrupt; repair it with `qemu-img check -r all`",
            ));
        }
        if f & INCOMPAT_DATA_FILE != 0 {
            return Err(DiskError::Unsupported("qcow2 external data files"));
        }
        if f & INCOMPAT_EXTL2 != 0 {
            return Err(DiskError::Unsupported(
                "qcow2 extended L2 entries (subclusters)",
            ));
        }
        let known = INCOMPAT_DIRTY
            | INCOMPAT_CORRUPT
            | INCOMPAT_DATA_FILE
            | INCOMPAT_COMPRESSION
            | INCOMPAT_EXTL2;
        if f & !known != 0 {
            return Err(DiskError::UnknownFeatures(f & !known));
        }
        if compression_type != 0 || f & INCOMPAT_COMPRESSION != 0 {
            return Err(DiskError::Unsupported(
                "qcow2 compression types other than zlib",
            ));
        }
        Ok(())
    }

    fn check_tables(&self, file_len: u64) -> Result<(), DiskError> {
        let cs = self.cluster_size();
        // One L1 entry maps an L2 table of cs/8 entries of cs bytes each.
        let per_l1 = 1u64 << (2 * self.cluster_bits - 3);
        let needed = self.size.div_ceil(per_l1);
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(corrupt(format!("l1_size {} is too large", self.l1_size)));
        }
        if u64::from(self.l1_size) < needed {
            return Err(corrupt(format!(
                "l1_size {} too small for a {}-byte disk",
                self.l1_size, self.size
            )));
        }
        if self.size > i64::MAX as u64 {
            return Err(corrupt("virtual size too large"));
        }
        if self.l1_size > 0 {
            check_table("L1 table", self.l1_table_offset, l1_bytes, cs, file_len)?;
        }
        let rt_bytes = u64::from(self.refcount_table_clusters) * cs;
        if self.refcount_table_clusters == 0 || rt_bytes > MAX_REFTABLE_BYTES {
            return Err(corrupt(format!(
                "refcount_table_clusters {} out of range",
                self.refcount_table_clusters
            )));
        }
        check_table(
            "refcount table",
            self.refcount_table_offset,
            rt_bytes,
            cs,
            file_len,
        )?;
        if self.nb_snapshots > 0 {
            check_table("snapshot table", self.snapshots_offset, 1, cs, file_len)?;
        }
        Ok(())
    }

    fn parse_backing(&mut self, head: &[u8], file_len: u64) -> Result<(), DiskError> {
        let off = be64(head, 8);
        let len = be32(head, 16);
        if off == 0 {
            return Ok(());
        }
        if len == 0 || len > MAX_BACKING_NAME {
            return Err(corrupt(format!("backing file name length {len} invalid")));
        }
        let end = off.checked_add(u64::from(len));
        match end {
            Some(end)
                if end <= self.cluster_size() && end <= file_len && end as usize <= head.len() =>
            {
                let name = std::str::from_utf8(&head[off as usize..end as usize])
                    .map_err(|_| corrupt("backing file name is not UTF-8"))?;
                if name.contains('\0') {
                    return Err(corrupt("backing file name contains NUL"));
                }
                self.backing_file = Some(name.to_string());
                Ok(())
            }
            _ => Err(corrupt("backing file name lies outside the first cluster")),
        }
    }

    fn parse_extensions(&mut self, head: &[u8]) -> Result<(), DiskError> {
        let mut end = head.len().min(self.cluster_size() as usize);
        if self.backing_file.is_some() {
            // The backing name follows the extensions.
            let off = be64(head, 8) as usize;
            end = end.min(off);
        }
        let mut pos = self.header_length as usize;
        while pos + 8 <= end {
            let kind = be32(head, pos);
            let len = be32(head, pos + 4) as usize;
            if kind == EXT_END {
                break;
            }
            let data_start = pos + 8;
            let data_end = data_start
                .checked_add(len)
                .filter(|&e| e <= end)
                .ok_or_else(|| {
                    corrupt(format!("header extension {kind:#x} overruns the header"))
                })?;
            if kind == EXT_BACKING_FORMAT {
                let name = std::str::from_utf8(&head[data_start..data_end])
                    .map_err(|_| corrupt("backing format name is not UTF-8"))?;
                self.backing_format = Some(name.trim_end_matches('\0').to_string());
            }
            // Data is padded to a multiple of 8 bytes.
            pos = data_end.div_ceil(8) * 8;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid v3 header in a 4-cluster (64 KiB clusters) image.
    fn v3() -> Vec<u8> {
        let mut b = vec![0u8; 4 << 16];
        b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        b[36..40].copy_from_slice(&2u32.to_be_bytes());
        b[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
        b[48..56].copy_from_slice(&(1u64 << 16).to_be_bytes());
        b[56..60].copy_from_slice(&1u32.to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&104u32.to_be_bytes());
        b
    }

    fn parse(b: &[u8]) -> Result<Header, DiskError> {
        Header::parse(&b[..b.len().min(1 << 16)], b.len() as u64)
    }

    #[test]
    fn valid_header_parses() {
        let h = parse(&v3()).unwrap();
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.size, 1 << 30);
        assert_eq!(h.refcount_order, 4);
    }

    #[test]
    fn bad_fields_are_rejected() {
        let cases: Vec<(usize, Vec<u8>)> = vec![
            (0, b"QFI\0".to_vec()),
            (4, 4u32.to_be_bytes().to_vec()),
            (20, 40u32.to_be_bytes().to_vec()),
            (20, 8u32.to_be_bytes().to_vec()),
            (32, 1u32.to_be_bytes().to_vec()),
            (36, 1u32.to_be_bytes().to_vec()),
            (36, u32::MAX.to_be_bytes().to_vec()),
            (40, (100u64 << 16).to_be_bytes().to_vec()),
            (40, 12345u64.to_be_bytes().to_vec()),
            (48, 0u64.to_be_bytes().to_vec()),
            (56, 1000u32.to_be_bytes().to_vec()),
            (72, (1u64 << 40).to_be_bytes().to_vec()),
            (72, 1u64.to_be_bytes().to_vec()),
            (72, 2u64.to_be_bytes().to_vec()),
            (96, 7u32.to_be_bytes().to_vec()),
            (100, 50u32.to_be_bytes().to_vec()),
            (8, 200u64.to_be_bytes().to_vec()),
            (24, u64::MAX.to_be_bytes().to_vec()),
        ];
        for (at, bytes) in cases {
            let mut b = v3();
            b[at..at + bytes.len()].copy_from_slice(&bytes);
            assert!(parse(&b).is_err(), "field at {at} = {bytes:?} accepted");
        }
        assert!(parse(&v3()[..50]).is_err());
    }

    #[test]
    fn extensions_are_parsed_and_bounded() {
        let mut b = v3();
        b[104..108].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        b[108..112].copy_from_slice(&3u32.to_be_bytes());
        b[112..115].copy_from_slice(b"raw");
        // Unknown extension skipped.
        b[120..124].copy_from_slice(&0x1234u32.to_be_bytes());
        b[124..128].copy_from_slice(&4u32.to_be_bytes());
        let h = parse(&b).unwrap();
        assert_eq!(h.backing_format.as_deref(), Some("raw"));
        // An extension claiming more bytes than the cluster holds.
        b[124..128].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse(&b).is_err());
    }
}
