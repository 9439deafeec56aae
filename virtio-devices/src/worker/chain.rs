//! A descriptor chain flattened into its device-readable and device-writable
//! byte streams, validated against guest memory, so device models can read
//! and write at logical offsets without caring how the driver split them.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as GuestMemoryT, Permissions};

/// Why a chain cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A descriptor points (partly) outside guest memory.
    #[error("descriptor {addr:#x}+{len:#x} outside guest memory")]
    OutOfMemory {
        /// Guest address of the descriptor buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A device-readable descriptor follows a device-writable one.
    #[error("readable descriptor after a writable one")]
    Order,
    /// The chain has more descriptors than any valid chain could.
    #[error("chain too long")]
    TooLong,
    /// A guest memory access failed.
    #[error("guest memory access failed at {0:#x}")]
    Access(u64),
    /// An access beyond the end of the buffers.
    #[error("access beyond the chain buffers")]
    Bounds,
}

/// The buffers of one chain: readable then writable segments.
#[derive(Debug, Default)]
pub struct ChainBuffers {
    /// Head descriptor index (for `add_used`).
    pub head: u16,
    readable: Vec<(GuestAddress, u32)>,
    writable: Vec<(GuestAddress, u32)>,
    readable_len: u64,
    writable_len: u64,
}

/// Upper bound on descriptors per chain (indirect tables can hold 65535).
const MAX_DESCRIPTORS: usize = 4096;

impl ChainBuffers {
    /// Walks `chain` (virtio-queue bounds loops by the table size) and checks
    /// every buffer lies in guest memory.
    pub fn parse<M>(mut chain: DescriptorChain<M>) -> Result<Self, ChainError>
    where
        M: Deref,
        M::Target: GuestMemoryT,
    {
        let mut bufs = ChainBuffers {
            head: chain.head_index(),
            ..Default::default()
        };
        let mut count = 0usize;
        while let Some(desc) = chain.next() {
            count += 1;
            if count > MAX_DESCRIPTORS {
                return Err(ChainError::TooLong);
            }
            let (addr, len) = (desc.addr(), desc.len());
            let perm = if desc.is_write_only() {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if len > 0 && !chain.memory().check_range(addr, len as usize, perm) {
                return Err(ChainError::OutOfMemory { addr: addr.0, len });
            }
            if desc.is_write_only() {
                bufs.writable.push((addr, len));
                bufs.writable_len += u64::from(len);
            } else {
                if !bufs.writable.is_empty() {
                    return Err(ChainError::Order);
                }
                bufs.readable.push((addr, len));
                bufs.readable_len += u64::from(len);
            }
        }
        Ok(bufs)
    }

    /// The device-readable buffers (guest address, length), in order.
    pub fn readable_segments(&self) -> &[(GuestAddress, u32)] {
        &self.readable
    }

    /// The device-writable buffers (guest address, length), in order.
    pub fn writable_segments(&self) -> &[(GuestAddress, u32)] {
        &self.writable
    }

    /// Total device-readable bytes.
    pub fn readable_len(&self) -> u64 {
        self.readable_len
    }

    /// Total device-writable bytes.
    pub fn writable_len(&self) -> u64 {
        self.writable_len
    }

    /// Reads `buf.len()` bytes of the readable stream starting at `offset`.
    pub fn read_at<M: GuestMemoryT>(
        &self,
        mem: &M,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ChainError> {
        let len = buf.len();
        Self::walk(&self.readable, offset, len, |addr, start, n| {
            mem.read_slice(&mut buf[start..start + n], addr)
                .map_err(|_| ChainError::Access(addr.0))
        })
    }

    /// Writes `buf` into the writable stream starting at `offset`.
    pub fn write_at<M: GuestMemoryT>(
        &self,
        mem: &M,
        offset: u64,
        buf: &[u8],
    ) -> Result<(), ChainError> {
        Self::walk(&self.writable, offset, buf.len(), |addr, start, n| {
            mem.write_slice(&buf[start..start + n], addr)
                .map_err(|_| ChainError::Access(addr.0))
        })
    }

    /// Calls `f(guest_addr, buf_offset, len)` for each piece of the logical
    /// range `[offset, offset+len)` over `segs`.
    fn walk<F>(
        segs: &[(GuestAddress, u32)],
        offset: u64,
        len: usize,
        mut f: F,
    ) -> Result<(), ChainError>
    where
        F: FnMut(GuestAddress, usize, usize) -> Result<(), ChainError>,
    {
        let mut skip = offset;
        let mut done = 0usize;
        for &(addr, seg_len) in segs {
            if done == len {
                break;
            }
            let seg_len = u64::from(seg_len);
            if skip >= seg_len {
                skip -= seg_len;
                continue;
            }
            let avail = seg_len - skip;
            let n = avail.min((len - done) as u64) as usize;
            let ga = addr.checked_add(skip).ok_or(ChainError::Bounds)?;
            f(ga, done, n)?;
            done += n;
            skip = 0;
        }
        if done == len {
            Ok(())
        } else {
            Err(ChainError::Bounds)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestMemoryMmap;

    fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    #[test]
    fn split_streams_read_and_write_across_segments() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        m.write_slice(b"hello", GuestAddress(0x10_0000)).unwrap();
        m.write_slice(b"world", GuestAddress(0x11_0000)).unwrap();
        let chain = q
            .build_desc_chain(&[
                desc(0x10_0000, 5, false),
                desc(0x11_0000, 5, false),
                desc(0x12_0000, 3, true),
                desc(0x13_0000, 4, true),
            ])
            .unwrap();
        let b = ChainBuffers::parse(chain).unwrap();
        assert_eq!((b.readable_len(), b.writable_len()), (10, 7));
        let mut buf = [0u8; 6];
        b.read_at(&m, 2, &mut buf).unwrap();
        assert_eq!(&buf, b"llowor");
        assert_eq!(b.read_at(&m, 8, &mut buf), Err(ChainError::Bounds));
        b.write_at(&m, 1, b"abcde").unwrap();
        let mut out = [0u8; 4];
        m.read_slice(&mut out[..2], GuestAddress(0x12_0001))
            .unwrap();
        m.read_slice(&mut out[2..], GuestAddress(0x13_0000))
            .unwrap();
        assert_eq!(&out, b"abcd");
        assert_eq!(b.write_at(&m, 5, b"xyz"), Err(ChainError::Bounds));
    }

    #[test]
    fn rejects_bad_chains() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let chain = q
            .build_desc_chain(&[desc(0x10_0000, 16, false), desc(0x1f_ffff, 2, true)])
            .unwrap();
        assert!(matches!(
            ChainBuffers::parse(chain),
            Err(ChainError::OutOfMemory { .. })
        ));
        let chain = q
            .build_desc_chain(&[desc(0x10_0000, 16, true), desc(0x11_0000, 2, false)])
            .unwrap();
        assert_eq!(ChainBuffers::parse(chain).unwrap_err(), ChainError::Order);
    }
}
