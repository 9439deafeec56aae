//! The FADT of a hardware-reduced platform: reset, sleep control and the
//! PM timer.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};

use super::layout;
use super::{ACPI_RESET_VALUE, CMOS_CENTURY_REGISTER, OEM_ID, OEM_REVISION};

/// FADT IA-PC boot architecture flag: no VGA hardware (ACPI 6.5, 5.2.9.3).
/// The "8042" and "legacy devices" bits stay clear so Linux skips probing
/// PS/2; the i8042 reset port still works for `reboot=k`.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;

/// A one-byte system-I/O register description.
pub(super) fn io_byte_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

/// Revision 6 FADT for a hardware-reduced platform.
pub(super) fn create_fadt(dsdt_addr: u64) -> acpi_tables::fadt::FADT {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"CHVFACP ", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT.into();
    fadt.century = CMOS_CENTURY_REGISTER;
    fadt.reset_reg = io_byte_register(layout::ACPI_PM_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_byte_register(layout::ACPI_PM_PORT);
    fadt.sleep_status_reg = io_byte_register(layout::ACPI_PM_PORT);
    // 24-bit PM timer (TMR_VAL_EXT clear): a cheap, exit-only clock source
    // Linux can calibrate against and use as its TSC watchdog.
    fadt.pm_tmr_len = 4;
    fadt.x_pm_tmr_blk = GAS::new(
        AddressSpace::SystemIo,
        32,
        0,
        AccessSize::DwordAccess,
        layout::ACPI_PM_TIMER_PORT.into(),
    );
    fadt.finalize()
}
