//! The VM generation ID: 16 random bytes in reserved guest memory that the
//! firmware tables point the guest at (`arch::PLATFORM.generation_id`).
//!
//! A fresh ID is written at boot. A restore from a snapshot writes another
//! one and raises the GED event that makes the guest re-read it; Linux
//! then reseeds its RNG, so clones of one snapshot do not produce the same
//! random numbers. A live migration keeps the ID: the VM it moves is the
//! same one, not a copy.

use arch::{GenerationIdLayout, GENERATION_ID_SIZE};
use devices::acpi::GedEvents;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::VmmError;

/// A new random generation ID from the host kernel's RNG.
pub fn fresh() -> Result<[u8; GENERATION_ID_SIZE], VmmError> {
    let mut id = [0u8; GENERATION_ID_SIZE];
    let mut filled = 0;
    while filled < id.len() {
        let rest = &mut id[filled..];
        // SAFETY: the pointer and length describe `rest`, a live buffer
        // the call writes at most `rest.len()` bytes into.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => filled += n,
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(VmmError::Boot(format!("VM generation ID: getrandom: {e}")));
                }
            }
        }
    }
    Ok(id)
}

/// Writes a fresh ID at `addr` in `memory`; returns it.
pub fn write_fresh(
    memory: &GuestMemoryMmap,
    addr: u64,
) -> Result<[u8; GENERATION_ID_SIZE], VmmError> {
    let id = fresh()?;
    memory
        .write_slice(&id, GuestAddress(addr))
        .map_err(|e| VmmError::Memory(format!("VM generation ID at {addr:#x}: {e}")))?;
    Ok(id)
}

/// Gives a VM restored from a snapshot a new generation ID and tells the
/// guest (call once its interrupt controller state is restored, so the
/// GED interrupt is not overwritten). `saved` is the address the snapshot
/// recorded (`None`: the snapshot's firmware tables have no such device).
pub fn renew_after_restore(
    memory: &GuestMemoryMmap,
    saved: Option<u64>,
    ged: Option<&GedEvents>,
) -> Result<(), VmmError> {
    let layout: Option<GenerationIdLayout> = arch::PLATFORM.generation_id;
    let (Some(layout), Some(addr), Some(ged)) = (layout, saved, ged) else {
        if layout.is_none() {
            log::info!(
                "{}: the restored guest is not told it is a copy (its RNG is not reseeded)",
                arch::PLATFORM.unsupported("the VM generation ID")
            );
        } else {
            log::warn!(
                "the snapshot predates chv's VM generation ID device: the restored guest is \
                 not told it is a copy (its RNG is not reseeded)"
            );
        }
        return Ok(());
    };
    write_fresh(memory, addr)?;
    ged.raise(layout.ged_event)
        .map_err(|e| VmmError::Device(format!("VM generation ID: GED interrupt: {e}")))?;
    log::info!("new VM generation ID written at {addr:#x}, guest notified");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_land_in_guest_memory() {
        let a = fresh().unwrap();
        let b = fresh().unwrap();
        assert_ne!(a, b);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let id = write_fresh(&mem, 0xef000).unwrap();
        let mut back = [0u8; GENERATION_ID_SIZE];
        mem.read_slice(&mut back, GuestAddress(0xef000)).unwrap();
        assert_eq!(back, id);
        assert!(
            write_fresh(&mem, 0x10_0000).is_err(),
            "outside guest memory"
        );
    }

    #[test]
    fn a_restore_renews_the_id_and_raises_the_ged_event() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let ged = devices::acpi::GedDevice::new(
            vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        );
        let events = ged.events();
        let Some(layout) = arch::PLATFORM.generation_id else {
            // No such device on this platform: a logged no-op.
            renew_after_restore(&mem, Some(0xef000), Some(&events)).unwrap();
            assert_eq!(events.pending(), 0);
            return;
        };
        let addr = layout.addr;
        let before = write_fresh(&mem, addr).unwrap();
        renew_after_restore(&mem, Some(addr), Some(&events)).unwrap();
        let mut after = [0u8; GENERATION_ID_SIZE];
        mem.read_slice(&mut after, GuestAddress(addr)).unwrap();
        assert_ne!(before, after);
        assert_eq!(events.pending(), layout.ged_event);
        // An old snapshot without the device: nothing written, no event.
        let events = devices::acpi::GedDevice::new(
            vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        )
        .events();
        renew_after_restore(&mem, None, Some(&events)).unwrap();
        let mut again = [0u8; GENERATION_ID_SIZE];
        mem.read_slice(&mut again, GuestAddress(addr)).unwrap();
        assert_eq!(again, after);
        assert_eq!(events.pending(), 0);
    }
}
