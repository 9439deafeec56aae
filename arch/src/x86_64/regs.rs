//! Initial vCPU state: CPUID, MSRs, FPU, local APIC, and for the boot vCPU
//! the registers, segments and page tables of the kernel's entry protocol.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::{BootProtocol, KernelEntry};
use super::error::RegsError;
use super::layout::{
    BOOT_GDT_MAX, BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START,
    PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_MISC_ENABLE bit 0: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// x87 control word after FNINIT.
const FPU_FCW: u16 = 0x37f;
/// MXCSR after reset: all exceptions masked.
const FPU_MXCSR: u32 = 0x1f80;

/// LAPIC LVT LINT0 and LINT1 register offsets.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
/// LVT delivery modes (bits 10:8).
const APIC_MODE_NMI: u32 = 0b100;
const APIC_MODE_EXTINT: u32 = 0b111;

/// Descriptor flags (access byte in bits 7:0, G/DB/L/AVL in bits 15:12).
const GDT_CODE64: u16 = 0xa09b;
const GDT_CODE32: u16 = 0xc09b;
const GDT_DATA: u16 = 0xc093;
const GDT_TSS: u16 = 0x008b;

/// Page table entry bits: present, writable, 2 MiB page.
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_LARGE: u64 = 0x80;
/// Number of page directories (each maps 1 GiB) for the 4 GiB identity map.
const IDENTITY_MAP_GIB: u64 = 4;

/// MSR values every vCPU starts with.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Sets the boot MSRs; ones KVM refuses are logged, skipped and returned.
fn setup_msrs(vcpu: &VcpuFd) -> Result<Vec<u32>, RegsError> {
    let mut refused_list = Vec::new();
    let mut remaining = boot_msr_entries();
    while !remaining.is_empty() {
        let msrs = Msrs::from_entries(&remaining).map_err(|e| RegsError::MsrList(e.to_string()))?;
        let set = vcpu.set_msrs(&msrs).map_err(|source| RegsError::Kvm {
            what: "KVM_SET_MSRS",
            source,
        })?;
        let Some(refused) = remaining.get(set) else {
            break;
        };
        log::debug!(
            "KVM refused MSR {:#x}; continuing without it",
            refused.index
        );
        refused_list.push(refused.index);
        remaining.drain(..=set);
    }
    Ok(refused_list)
}

/// Sets the FPU to its post-FNINIT state.
fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: FPU_MXCSR,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|source| RegsError::Kvm {
        what: "KVM_SET_FPU",
        source,
    })
}

/// Reads a 32-bit LAPIC register from the KVM register page.
fn lapic_get(regs: &[std::os::raw::c_char; 1024], off: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = regs[off + i] as u8;
    }
    u32::from_le_bytes(b)
}

/// Writes a 32-bit LAPIC register into the KVM register page.
fn lapic_set(regs: &mut [std::os::raw::c_char; 1024], off: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        regs[off + i] = *byte as std::os::raw::c_char;
    }
}

/// Replaces the delivery mode (bits 10:8) of an LVT entry.
fn lvt_with_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | (mode << 8)
}

/// Routes LINT0 as ExtINT (the PIC) and LINT1 as NMI, like a PC BIOS does.
fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(|source| RegsError::Kvm {
        what: "KVM_GET_LAPIC",
        source,
    })?;
    let lint0 = lapic_get(&lapic.regs, APIC_LVT0);
    lapic_set(
        &mut lapic.regs,
        APIC_LVT0,
        lvt_with_mode(lint0, APIC_MODE_EXTINT),
    );
    let lint1 = lapic_get(&lapic.regs, APIC_LVT1);
    lapic_set(
        &mut lapic.regs,
        APIC_LVT1,
        lvt_with_mode(lint1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&lapic).map_err(|source| RegsError::Kvm {
        what: "KVM_SET_LAPIC",
        source,
    })
}

/// Encodes a segment descriptor from `flags` (access byte in bits 7:0,
/// G/DB/L/AVL in bits 15:12), a 32-bit base and a 20-bit limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | ((flags & 0xff) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((flags >> 12) & 0xf) << 52)
        | (((base >> 24) & 0xff) << 56)
}

/// Decodes GDT entry number `index` into the segment KVM expects.
pub fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let raw_limit = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
    let g = bit(55);
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        s: bit(44),
        dpl: ((entry >> 45) & 0x3) as u8,
        present: bit(47),
        avl: bit(52),
        l: bit(53),
        db: bit(54),
        g,
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// The boot GDT: null, code (64-bit for Linux64, 32-bit for PVH), flat
/// data, TSS. Selectors are 0x08 code, 0x10 data, 0x18 TSS.
pub fn boot_gdt(protocol: BootProtocol) -> [u64; BOOT_GDT_MAX] {
    let code = match protocol {
        BootProtocol::Pvh => GDT_CODE32,
        BootProtocol::Linux64 => GDT_CODE64,
    };
    [
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(GDT_DATA, 0, 0xfffff),
        gdt_entry(GDT_TSS, 0, 0x67),
    ]
}

/// Writes the identity page tables mapping the first 4 GiB with 2 MiB
/// pages: PML4[0] -> PDPT, PDPT[0..4] -> four page directories.
pub fn setup_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let err = |source| RegsError::GuestWrite {
        what: "identity page tables",
        source,
    };
    mem.write_obj(PDPTE_START | PTE_PRESENT_RW, GuestAddress(PML4_START))
        .map_err(err)?;
    let mut pdpt = [0u64; 512];
    let mut pds = vec![0u64; 512 * IDENTITY_MAP_GIB as usize];
    for (i, slot) in pdpt.iter_mut().take(IDENTITY_MAP_GIB as usize).enumerate() {
        *slot = (PDE_START + 0x1000 * i as u64) | PTE_PRESENT_RW;
    }
    for (i, pde) in pds.iter_mut().enumerate() {
        *pde = ((i as u64) << 21) | PDE_LARGE | PTE_PRESENT_RW;
    }
    let to_bytes =
        |entries: &[u64]| -> Vec<u8> { entries.iter().flat_map(|e| e.to_le_bytes()).collect() };
    mem.write_slice(&to_bytes(&pdpt), GuestAddress(PDPTE_START))
        .map_err(err)?;
    mem.write_slice(&to_bytes(&pds), GuestAddress(PDE_START))
        .map_err(err)
}

/// Writes the GDT and an empty IDT and returns the special registers for
/// entering the kernel through `protocol`, starting from `sregs`.
fn boot_sregs(
    mem: &GuestMemoryMmap,
    protocol: BootProtocol,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let gdt = boot_gdt(protocol);
    let gdt_bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&gdt_bytes, GuestAddress(BOOT_GDT_START))
        .map_err(|source| RegsError::GuestWrite {
            what: "boot GDT",
            source,
        })?;
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|source| RegsError::GuestWrite {
            what: "boot IDT",
            source,
        })?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (gdt_bytes.len() - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = segment_from_gdt(gdt[1], 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);

    match protocol {
        BootProtocol::Pvh => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootProtocol::Linux64 => {
            setup_identity_page_tables(mem)?;
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    Ok(sregs)
}

/// General-purpose registers at the kernel entry.
fn boot_regs(kernel: &KernelEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: kernel.entry.0,
        ..Default::default()
    };
    match kernel.protocol {
        BootProtocol::Pvh => regs.rbx = PVH_INFO_START,
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
    }
    regs
}

/// Sets everything a vCPU needs before KVM_RUN: CPUID (given), MSRs, FPU,
/// LAPIC LINT0=ExtINT/LINT1=NMI, and for the boot vCPU (`boot = Some`) the
/// registers and segments for the entry protocol. Needs the in-kernel
/// irqchip to exist (for the LAPIC).
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    cpuid: &CpuId,
    boot: Option<(&GuestMemoryMmap, &KernelEntry)>,
) -> Result<(), RegsError> {
    vcpu.set_cpuid2(cpuid).map_err(|source| RegsError::Kvm {
        what: "KVM_SET_CPUID2",
        source,
    })?;
    setup_msrs(vcpu)?;
    setup_fpu(vcpu)?;
    setup_lapic(vcpu)?;
    if let Some((mem, kernel)) = boot {
        let sregs = vcpu.get_sregs().map_err(|source| RegsError::Kvm {
            what: "KVM_GET_SREGS",
            source,
        })?;
        let sregs = boot_sregs(mem, kernel.protocol, sregs)?;
        vcpu.set_sregs(&sregs).map_err(|source| RegsError::Kvm {
            what: "KVM_SET_SREGS",
            source,
        })?;
        vcpu.set_regs(&boot_regs(kernel))
            .map_err(|source| RegsError::Kvm {
                what: "KVM_SET_REGS",
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::boot::test_util::guest_mem;

    #[test]
    fn gdt_entries_encode_known_values() {
        assert_eq!(gdt_entry(GDT_CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(GDT_CODE32, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(GDT_DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(GDT_TSS, 0, 0x67), 0x0000_8b00_0000_0067);
        assert_eq!(
            gdt_entry(0x0093, 0x1234_5678, 0xabcde),
            0x120a_9334_5678_bcde
        );
    }

    #[test]
    fn segments_decode_from_gdt() {
        let gdt = boot_gdt(BootProtocol::Linux64);
        assert_eq!(gdt[0], 0);
        let cs = segment_from_gdt(gdt[1], 1);
        assert_eq!((cs.selector, cs.type_, cs.l, cs.db), (0x08, 0xb, 1, 0));
        assert_eq!(
            (cs.base, cs.limit, cs.g, cs.present, cs.s),
            (0, 0xffff_ffff, 1, 1, 1)
        );
        let ds = segment_from_gdt(gdt[2], 2);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (0x10, 0x3, 1, 0));
        let tr = segment_from_gdt(gdt[3], 3);
        assert_eq!(
            (tr.selector, tr.type_, tr.s, tr.limit),
            (0x18, 0xb, 0, 0x67)
        );
        let cs32 = segment_from_gdt(boot_gdt(BootProtocol::Pvh)[1], 1);
        assert_eq!((cs32.l, cs32.db, cs32.limit), (0, 1, 0xffff_ffff));
        let odd = segment_from_gdt(gdt_entry(0x0093, 0x1234_5678, 0xabcde), 5);
        assert_eq!((odd.base, odd.limit, odd.g), (0x1234_5678, 0xabcde, 0));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn identity_page_tables_map_4gib() {
        let mem = guest_mem(1 << 20);
        setup_identity_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        for i in 0..4u64 {
            let pdpte: u64 = mem.read_obj(GuestAddress(PDPTE_START + 8 * i)).unwrap();
            assert_eq!(pdpte, (PDE_START + 0x1000 * i) | 3);
        }
        let unused: u64 = mem.read_obj(GuestAddress(PDPTE_START + 32)).unwrap();
        assert_eq!(unused, 0);
        for n in [0u64, 1, 511, 512, 1000, 2047] {
            let pde: u64 = mem.read_obj(GuestAddress(PDE_START + 8 * n)).unwrap();
            assert_eq!(pde, (n << 21) | 0x83, "PDE {n}");
        }
        // The last entry maps the 2 MiB page just below 4 GiB.
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 8 * 2047)).unwrap();
        assert_eq!(last & !0xfff, 0xffe0_0000);
    }

    #[test]
    fn sregs_for_each_protocol() {
        let mem = guest_mem(1 << 20);
        let s = boot_sregs(&mem, BootProtocol::Pvh, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0 & CR0_PE, CR0_PE);
        assert_eq!(s.cr0 & CR0_PG, 0);
        assert_eq!(s.efer, 0);
        assert_eq!((s.gdt.base, s.gdt.limit), (BOOT_GDT_START, 31));
        let written: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(written, gdt_entry(GDT_CODE32, 0, 0xfffff));

        let s = boot_sregs(&mem, BootProtocol::Linux64, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs.l, 1);
        let written: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(written, gdt_entry(GDT_CODE64, 0, 0xfffff));
    }

    #[test]
    fn lapic_lvt_modes() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        lapic_set(&mut regs, APIC_LVT0, 0x0001_0000);
        let v = lvt_with_mode(lapic_get(&regs, APIC_LVT0), APIC_MODE_EXTINT);
        assert_eq!(v, 0x0001_0700);
        assert_eq!(lvt_with_mode(0x0000_0700, APIC_MODE_NMI), 0x0000_0400);
    }

    #[test]
    fn msr_list_has_boot_msrs() {
        let msrs = boot_msr_entries();
        let get = |i| msrs.iter().find(|m| m.index == i).map(|m| m.data);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_LSTAR), Some(0));
        assert_eq!(get(MSR_IA32_SYSENTER_CS), Some(0));
        assert_eq!(get(MSR_IA32_TSC), Some(0));
    }

    #[test]
    fn real_kvm_smoke_configure_vcpu() {
        use crate::x86_64::cpuid::{vcpu_cpuid, CpuidPolicy};
        use crate::x86_64::layout::KVM_TSS_ADDRESS;
        if !std::path::Path::new("/dev/kvm").exists() {
            println!("note: /dev/kvm absent, skipping");
            return;
        }
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        vm.set_tss_address(KVM_TSS_ADDRESS as usize).unwrap();
        vm.create_irq_chip().unwrap();
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let policy = CpuidPolicy {
            hide_pvm_unsupported: true,
            keep: Vec::new(),
            ..Default::default()
        };
        let mem = guest_mem(64 << 20);
        let protocols = [BootProtocol::Pvh, BootProtocol::Linux64];
        for (id, protocol) in protocols.into_iter().enumerate() {
            let vcpu = vm.create_vcpu(id as u64).unwrap();
            let cpuid =
                vcpu_cpuid(&supported, id as u8, &crate::CpuTopology::flat(3), &policy).unwrap();
            let kernel = KernelEntry {
                entry: GuestAddress(0x100_0680),
                protocol,
                kernel_load: GuestAddress(0x100_0000),
                kernel_end: GuestAddress(0x200_0000),
                setup_header: None,
            };
            configure_vcpu(&vcpu, &cpuid, Some((&mem, &kernel))).unwrap();
            println!("refused MSRs: {:x?}", setup_msrs(&vcpu).unwrap());
            let sregs = vcpu.get_sregs().unwrap();
            let regs = vcpu.get_regs().unwrap();
            assert_eq!(regs.rip, 0x100_0680);
            assert_eq!(sregs.cr0 & CR0_PE, CR0_PE);
            match protocol {
                BootProtocol::Pvh => {
                    assert_eq!(regs.rbx, PVH_INFO_START);
                    assert_eq!(sregs.efer & EFER_LMA, 0);
                    assert_eq!(sregs.cs.db, 1);
                }
                BootProtocol::Linux64 => {
                    assert_eq!(regs.rsi, ZERO_PAGE_START);
                    assert_eq!(sregs.efer & EFER_LMA, EFER_LMA);
                    assert_eq!(sregs.cs.l, 1);
                }
            }
            let lapic = vcpu.get_lapic().unwrap();
            assert_eq!(
                (lapic_get(&lapic.regs, APIC_LVT0) >> 8) & 7,
                APIC_MODE_EXTINT
            );
            assert_eq!((lapic_get(&lapic.regs, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
            // This host's KVM_GET_FPU reports MXCSR as 0; the XSAVE image
            // (legacy area dword 6) shows the value actually loaded.
            assert_eq!(vcpu.get_fpu().unwrap().fcw, FPU_FCW);
            assert_eq!(vcpu.get_xsave().unwrap().region[6], FPU_MXCSR);
        }
        // An application processor gets everything but the entry state.
        let ap = vm.create_vcpu(2).unwrap();
        let cpuid = vcpu_cpuid(&supported, 2, &crate::CpuTopology::flat(3), &policy).unwrap();
        configure_vcpu(&ap, &cpuid, None).unwrap();
    }
}
