//! SMBIOS 3.0 tables (DMTF DSP0134): the 64-bit entry point and the
//! structures a guest reads its machine identity from — type 0 (BIOS),
//! type 1 (system: serial number, UUID), type 3 (chassis: asset tag),
//! type 11 (OEM strings) and type 127 (end of table).
//!
//! A legacy-booted Linux finds the entry point by scanning
//! `0xF0000..0x100000` on 16-byte boundaries for the `_SM3_` anchor; the
//! structure table follows the entry point in the same region.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;
use crate::MachineIdentity;

/// Name reported as BIOS vendor and as the default manufacturer/product.
const VMM_NAME: &str = "chv";

/// Length of the SMBIOS 3.0 (64-bit) entry point structure.
const ENTRY_POINT_LEN: usize = 0x18;

/// Structure types used here.
const TYPE_BIOS: u8 = 0;
const TYPE_SYSTEM: u8 = 1;
const TYPE_CHASSIS: u8 = 3;
const TYPE_OEM_STRINGS: u8 = 11;
const TYPE_END: u8 = 127;

/// Why the SMBIOS tables could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SmbiosError {
    /// A string holds a NUL byte, which would end it early.
    #[error("SMBIOS {field}: the string contains a NUL byte")]
    NulInString {
        /// Which identity field.
        field: &'static str,
    },
    /// A structure has more than 255 strings.
    #[error("SMBIOS {field}: more than 255 strings")]
    TooManyStrings {
        /// Which identity field.
        field: &'static str,
    },
    /// The tables do not fit below 1 MiB.
    #[error("SMBIOS tables need {needed} bytes, {available} are reserved for them")]
    TooLarge {
        /// Bytes the tables take.
        needed: usize,
        /// Bytes of the SMBIOS region.
        available: u64,
    },
    /// Guest memory could not be written.
    #[error("cannot write the SMBIOS tables: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// One structure: its formatted area and its string set.
struct Structure {
    formatted: Vec<u8>,
    strings: Vec<String>,
    field: &'static str,
}

impl Structure {
    /// A structure of `kind` with handle `handle`; the formatted area's
    /// length byte is filled in by [`Structure::bytes`].
    fn new(kind: u8, handle: u16, field: &'static str) -> Self {
        let mut formatted = vec![kind, 0];
        formatted.extend_from_slice(&handle.to_le_bytes());
        Self {
            formatted,
            strings: Vec::new(),
            field,
        }
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.formatted.push(v);
        self
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.formatted.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.formatted.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.formatted.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Adds a string field: its number in the string set, or 0 for "not
    /// specified" when absent or empty.
    fn string(&mut self, s: Option<&str>) -> Result<&mut Self, SmbiosError> {
        let index = match s {
            Some(s) if !s.is_empty() => self.push_string(s)?,
            _ => 0,
        };
        Ok(self.u8(index))
    }

    fn push_string(&mut self, s: &str) -> Result<u8, SmbiosError> {
        if s.contains('\0') {
            return Err(SmbiosError::NulInString { field: self.field });
        }
        self.strings.push(s.to_owned());
        u8::try_from(self.strings.len())
            .map_err(|_| SmbiosError::TooManyStrings { field: self.field })
    }

    /// Formatted area, then each string NUL-terminated, then the set's
    /// closing NUL (two NULs for an empty set).
    fn bytes(mut self) -> Vec<u8> {
        // Formatted areas here are far below 256 bytes.
        self.formatted[1] = self.formatted.len() as u8;
        let mut out = self.formatted;
        for s in &self.strings {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        if self.strings.is_empty() {
            out.push(0);
        }
        out.push(0);
        out
    }
}

/// SMBIOS 2.6+ stores the first three UUID fields little-endian; `uuid`
/// is in text order.
fn uuid_wire(uuid: &[u8; 16]) -> [u8; 16] {
    let mut w = *uuid;
    w[0..4].reverse();
    w[4..6].reverse();
    w[6..8].reverse();
    w
}

/// The structure table for `id`.
fn structure_table(id: &MachineIdentity) -> Result<Vec<u8>, SmbiosError> {
    let mut table = Vec::new();

    // Type 0, BIOS Information (3.0 layout, 0x18 bytes).
    let mut bios = Structure::new(TYPE_BIOS, 0, "BIOS information");
    bios.string(Some(VMM_NAME))? // vendor
        .string(Some(env!("CARGO_PKG_VERSION")))? // BIOS version
        .u16(0xE800) // starting address segment (nominal)
        .string(None)? // release date
        .u8(0) // ROM size: 64 KiB
        .u64(1 << 3) // characteristics: "not supported"
        .u8(0) // extension byte 1
        .u8(1 << 4) // extension byte 2: the system is a virtual machine
        .u8(0xFF) // system BIOS major release: not specified
        .u8(0xFF) // minor
        .u8(0xFF) // embedded controller firmware major: none
        .u8(0xFF); // minor
    table.extend(bios.bytes());

    // Type 1, System Information (0x1B bytes).
    let mut system = Structure::new(TYPE_SYSTEM, 1, "platform system fields");
    system
        .string(Some(id.manufacturer.as_deref().unwrap_or(VMM_NAME)))?
        .string(Some(id.product_name.as_deref().unwrap_or(VMM_NAME)))?
        .string(id.version.as_deref())?
        .string(id.serial_number.as_deref())?;
    system
        .formatted
        .extend_from_slice(&uuid_wire(&id.uuid.unwrap_or_default()));
    system
        .u8(6) // wake-up type: power switch
        .string(id.sku_number.as_deref())?
        .string(id.family.as_deref())?;
    table.extend(system.bytes());

    // Type 3, System Enclosure (2.3 layout without contained elements).
    let mut chassis = Structure::new(TYPE_CHASSIS, 2, "platform.chassis_asset_tag");
    chassis
        .string(None)? // manufacturer
        .u8(0x01) // type: other
        .string(None)? // version
        .string(None)? // serial number
        .string(id.chassis_asset_tag.as_deref())?
        .u8(0x03) // boot-up state: safe
        .u8(0x03) // power supply state: safe
        .u8(0x03) // thermal state: safe
        .u8(0x03) // security status: none
        .u32(0) // OEM-defined
        .u8(0) // height: unspecified
        .u8(0) // power cords: unspecified
        .u8(0) // contained element count
        .u8(0); // contained element record length
    table.extend(chassis.bytes());

    let mut handle = 3;
    if !id.oem_strings.is_empty() {
        // Type 11, OEM Strings.
        let mut oem = Structure::new(TYPE_OEM_STRINGS, handle, "platform.oem_strings");
        let mut count = 0;
        for s in &id.oem_strings {
            // An empty string would end the string set: write one space.
            count = oem.push_string(if s.is_empty() { " " } else { s })?;
        }
        oem.u8(count);
        table.extend(oem.bytes());
        handle += 1;
    }

    table.extend(Structure::new(TYPE_END, handle, "end of table").bytes());
    Ok(table)
}

/// The 64-bit entry point for a structure table of `len` bytes at `addr`.
fn entry_point(table_addr: u64, table_len: u32) -> [u8; ENTRY_POINT_LEN] {
    let mut ep = [0u8; ENTRY_POINT_LEN];
    ep[0..5].copy_from_slice(b"_SM3_");
    ep[6] = ENTRY_POINT_LEN as u8;
    ep[7] = 3; // SMBIOS major version
    ep[8] = 0; // minor
    ep[9] = 0; // docrev
    ep[10] = 1; // entry point revision: 3.0
    ep[12..16].copy_from_slice(&table_len.to_le_bytes());
    ep[16..24].copy_from_slice(&table_addr.to_le_bytes());
    let sum = ep.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    ep[5] = sum.wrapping_neg();
    ep
}

/// Writes the entry point at `layout::SMBIOS_START` and the structure
/// table right after it; returns the entry point's address.
pub fn setup_smbios(mem: &GuestMemoryMmap, id: &MachineIdentity) -> Result<u64, SmbiosError> {
    let table = structure_table(id)?;
    let available = layout::SMBIOS_END - layout::SMBIOS_START;
    let needed = ENTRY_POINT_LEN + table.len();
    if needed as u64 > available {
        return Err(SmbiosError::TooLarge { needed, available });
    }
    let table_addr = layout::SMBIOS_START + ENTRY_POINT_LEN as u64;
    // `needed` fits in the region, so in a u32.
    let ep = entry_point(table_addr, table.len() as u32);
    mem.write_slice(&ep, GuestAddress(layout::SMBIOS_START))?;
    mem.write_slice(&table, GuestAddress(table_addr))?;
    Ok(layout::SMBIOS_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest_mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// A parsed structure: type, formatted area, strings.
    struct Parsed {
        kind: u8,
        formatted: Vec<u8>,
        strings: Vec<String>,
    }

    impl Parsed {
        fn string(&self, offset: usize) -> Option<&str> {
            let n = self.formatted[offset] as usize;
            (n != 0).then(|| self.strings[n - 1].as_str())
        }
    }

    /// Scans the F-segment as Linux's `dmi_scan_machine` does and parses
    /// the table the entry point names.
    fn scan(mem: &GuestMemoryMmap) -> Vec<Parsed> {
        let mut seg = vec![0u8; 0x10000];
        mem.read_slice(&mut seg, GuestAddress(0xF0000)).unwrap();
        let off = (0..seg.len())
            .step_by(16)
            .find(|&o| &seg[o..o + 5] == b"_SM3_")
            .expect("anchor in the F segment");
        let ep = &seg[off..off + ENTRY_POINT_LEN];
        assert_eq!(ep[6] as usize, ENTRY_POINT_LEN);
        assert_eq!(ep.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!((ep[7], ep[10]), (3, 1));
        let len = u32::from_le_bytes(ep[12..16].try_into().unwrap()) as usize;
        let addr = u64::from_le_bytes(ep[16..24].try_into().unwrap());
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(addr)).unwrap();

        let mut out = Vec::new();
        let mut i = 0;
        while i < table.len() {
            let kind = table[i];
            let flen = table[i + 1] as usize;
            let formatted = table[i..i + flen].to_vec();
            let mut j = i + flen;
            let mut strings = Vec::new();
            while table[j] != 0 {
                let end = j + table[j..].iter().position(|&b| b == 0).unwrap();
                strings.push(String::from_utf8(table[j..end].to_vec()).unwrap());
                j = end + 1;
            }
            if strings.is_empty() {
                j += 1; // the empty set's first NUL
            }
            j += 1; // closing NUL
            out.push(Parsed {
                kind,
                formatted,
                strings,
            });
            i = j;
            if kind == TYPE_END {
                assert_eq!(i, table.len(), "table length ends at type 127");
            }
        }
        out
    }

    #[test]
    fn identity_reaches_types_1_3_and_11() {
        let mem = guest_mem();
        let id = MachineIdentity {
            serial_number: Some("SER-42".into()),
            uuid: Some([
                0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff,
            ]),
            chassis_asset_tag: Some("tag".into()),
            oem_strings: vec!["io.katacontainers=1".into(), String::new(), "x".into()],
            ..Default::default()
        };
        assert_eq!(setup_smbios(&mem, &id).unwrap(), 0xF0000);
        let s = scan(&mem);
        let kinds: Vec<u8> = s.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [0, 1, 3, 11, 127]);
        // Handles are unique.
        let handles: Vec<&[u8]> = s.iter().map(|p| &p.formatted[2..4]).collect();
        assert!((1..handles.len()).all(|i| !handles[..i].contains(&handles[i])));

        let bios = &s[0];
        assert_eq!(bios.formatted.len(), 0x18);
        assert_eq!(bios.string(4), Some("chv"));
        assert_eq!(bios.formatted[0x13] & (1 << 4), 1 << 4, "virtual machine");

        let sys = &s[1];
        assert_eq!(sys.formatted.len(), 0x1B);
        assert_eq!(sys.string(4), Some("chv"));
        assert_eq!(sys.string(6), None);
        assert_eq!(sys.string(7), Some("SER-42"));
        // Linux prints product_uuid from these bytes with %pUl.
        assert_eq!(
            &sys.formatted[8..24],
            &[
                0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff
            ]
        );

        assert_eq!(s[2].string(8), Some("tag"));

        let oem = &s[3];
        assert_eq!(oem.formatted[4], 3);
        assert_eq!(oem.strings, ["io.katacontainers=1", " ", "x"]);
    }

    #[test]
    fn defaults_have_no_oem_structure_and_empty_sets_are_double_nul() {
        let mem = guest_mem();
        setup_smbios(&mem, &MachineIdentity::default()).unwrap();
        let s = scan(&mem);
        let kinds: Vec<u8> = s.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [0, 1, 3, 127]);
        assert_eq!(s[1].string(7), None);
        assert_eq!(&s[1].formatted[8..24], &[0; 16]);
    }

    #[test]
    fn bad_strings_are_refused_by_field() {
        let mem = guest_mem();
        let id = MachineIdentity {
            oem_strings: vec!["a\0b".into()],
            ..Default::default()
        };
        let e = setup_smbios(&mem, &id).unwrap_err().to_string();
        assert!(e.contains("platform.oem_strings"), "{e}");
        let id = MachineIdentity {
            oem_strings: vec!["a".into(); 300],
            ..Default::default()
        };
        assert!(matches!(
            setup_smbios(&mem, &id),
            Err(SmbiosError::TooManyStrings { .. })
        ));
        let id = MachineIdentity {
            oem_strings: vec!["a".repeat(1000); 200],
            ..Default::default()
        };
        assert!(matches!(
            setup_smbios(&mem, &id),
            Err(SmbiosError::TooLarge { .. })
        ));
    }
}
