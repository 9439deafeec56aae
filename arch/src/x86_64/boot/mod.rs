//! Loading a Linux kernel (and initramfs) into guest memory and writing the
//! boot structures its entry protocol expects.
//!
//! Two protocols are supported:
//! - PVH: an ELF vmlinux carrying a `XEN_ELFNOTE_PHYS32_ENTRY` note is entered
//!   in 32-bit protected mode with `hvm_start_info` in RBX;
//! - Linux 64-bit boot: an ELF without the note, or a bzImage, is entered in
//!   long mode with the `boot_params` zero page in RSI.

mod kernel;
mod pvh;
mod zero_page;

use linux_loader::loader::bootparam::setup_header;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::error::BootError;
use super::layout::{CMDLINE_MAX_SIZE, CMDLINE_START};

pub use kernel::{load_initramfs, load_initramfs_above, load_kernel};

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH: 32-bit protected mode, paging off, RBX = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode with identity-mapped page
    /// tables, RSI = `boot_params`.
    Linux64,
}

/// Where and how to enter a loaded kernel.
#[derive(Clone, Copy, Debug)]
pub struct KernelEntry {
    /// Guest-physical entry point for the chosen protocol.
    pub entry: GuestAddress,
    /// The entry protocol.
    pub protocol: BootProtocol,
    /// First guest-physical byte of the loaded kernel.
    pub kernel_load: GuestAddress,
    /// One past the last guest-physical byte the kernel occupies (incl. bss).
    pub kernel_end: GuestAddress,
    /// Setup header of a bzImage, copied into the zero page at boot.
    pub setup_header: Option<setup_header>,
}

/// Where the initramfs was placed in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitramfsInfo {
    /// Guest-physical address (page aligned).
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// Writes `cmdline` NUL-terminated at CMDLINE_START.
///
/// Returns its length without the NUL.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<usize, BootError> {
    let max = CMDLINE_MAX_SIZE - 1;
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineHasNul);
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|source| BootError::GuestWrite {
            what: "kernel command line",
            source,
        })?;
    Ok(cmdline.len())
}

/// Writes the command line and the boot-information structure of the
/// kernel's entry protocol (PVH `hvm_start_info` or the Linux zero page).
pub fn configure_system(
    mem: &GuestMemoryMmap,
    kernel: &KernelEntry,
    cmdline: &str,
    initramfs: Option<&InitramfsInfo>,
    rsdp: Option<GuestAddress>,
    ram_size: u64,
) -> Result<(), BootError> {
    let cmdline_len = write_cmdline(mem, cmdline)?;
    match kernel.protocol {
        BootProtocol::Pvh => pvh::write_start_info(mem, initramfs, rsdp, ram_size),
        BootProtocol::Linux64 => zero_page::write_zero_page(
            mem,
            kernel.setup_header.as_ref(),
            cmdline_len,
            initramfs,
            rsdp,
            ram_size,
        ),
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::fs::File;
    use std::io::Write;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use vm_memory::{GuestAddress, GuestMemoryMmap};

    /// Guest memory of `size` bytes starting at 0.
    pub fn guest_mem(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    /// A temporary file with `bytes`, removed when dropped.
    pub struct TempFile {
        pub path: PathBuf,
    }

    impl TempFile {
        pub fn new(bytes: &[u8]) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("chv-arch-test-{}-{}", std::process::id(), n));
            let mut f = File::create(&path).unwrap();
            f.write_all(bytes).unwrap();
            TempFile { path }
        }

        pub fn open(&self) -> File {
            File::open(&self.path).unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::guest_mem;
    use super::*;

    #[test]
    fn cmdline_written_with_nul() {
        let mem = guest_mem(1 << 20);
        assert_eq!(write_cmdline(&mem, "console=ttyS0 -- echo hi").unwrap(), 24);
        let mut buf = [0u8; 25];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0 -- echo hi\0");
    }

    #[test]
    fn cmdline_too_long_is_rejected() {
        let mem = guest_mem(1 << 20);
        let longest = "a".repeat(CMDLINE_MAX_SIZE - 1);
        assert!(write_cmdline(&mem, &longest).is_ok());
        let too_long = "a".repeat(CMDLINE_MAX_SIZE);
        match write_cmdline(&mem, &too_long) {
            Err(BootError::CmdlineTooLong { len, max }) => {
                assert_eq!(len, CMDLINE_MAX_SIZE);
                assert_eq!(max, CMDLINE_MAX_SIZE - 1);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            write_cmdline(&mem, "a\0b"),
            Err(BootError::CmdlineHasNul)
        ));
    }

    #[test]
    fn configure_system_rejects_long_cmdline_for_both_protocols() {
        let mem = guest_mem(64 << 20);
        let too_long = "x".repeat(CMDLINE_MAX_SIZE + 10);
        for protocol in [BootProtocol::Pvh, BootProtocol::Linux64] {
            let kernel = KernelEntry {
                entry: GuestAddress(0x100_0000),
                protocol,
                kernel_load: GuestAddress(0x100_0000),
                kernel_end: GuestAddress(0x200_0000),
                setup_header: None,
            };
            let err = configure_system(&mem, &kernel, &too_long, None, None, 64 << 20);
            assert!(matches!(err, Err(BootError::CmdlineTooLong { .. })));
        }
    }
}
