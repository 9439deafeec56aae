//! Snapshot and restore of one x86 vCPU's KVM state: everything a vCPU
//! needs to resume in a fresh process (CPUID, registers, FPU/XSAVE, MSRs,
//! local APIC, pending events, ...). State this host's KVM cannot provide
//! is named in `omitted` instead of failing the snapshot.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, CpuId, Msrs, Xsave, KVM_MAX_CPUID_ENTRIES,
    KVM_MAX_MSR_ENTRIES, KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SIPI_VECTOR,
};
use kvm_ioctls::{Cap, Kvm, KvmNestedStateBuffer, VcpuFd};
use serde::{Deserialize, Serialize};

/// IA32_TSC: the guest time-stamp counter.
const MSR_IA32_TSC: u32 = 0x10;
/// IA32_TSC_DEADLINE: only accepted once the LAPIC timer is in TSC-deadline
/// mode, so it is restored after the LAPIC.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// MSRs worth saving that KVM_GET_MSR_INDEX_LIST may not list: the MTRRs
/// (8 variable base/mask pairs 0x200-0x20f, the fixed ranges, the default
/// type) and PAT. Duplicates of KVM's list are dropped.
const EXTRA_MSRS: &[u32] = &[
    0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207, 0x208, 0x209, 0x20a, 0x20b, 0x20c,
    0x20d, 0x20e, 0x20f, 0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e,
    0x26f, 0x277, 0x2ff,
];

/// Words in the legacy 4 KiB `kvm_xsave` region.
const XSAVE_REGION_WORDS: usize = 1024;
/// Words of the buffer handed to KVM_SET_XSAVE. KVM reads the vCPU's
/// guest-FPU uABI size, which exceeds 4 KiB only with dynamically enabled
/// features (AMX, about 11 KiB); 16 KiB covers every size KVM reports today.
const XSAVE_SET_WORDS: usize = 4096;
/// Largest XSAVE image accepted from a snapshot (64 KiB).
const XSAVE_MAX_WORDS: usize = 16384;

/// A failure while saving or restoring vCPU or VM KVM state; names the piece.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// Errno from KVM.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The saved CPUID table cannot be handed to KVM.
    #[error("CPUID table: {0}")]
    CpuidTable(String),
    /// An MSR batch could not be built.
    #[error("MSR table: {0}")]
    MsrTable(String),
    /// KVM_SET_MSRS refused one saved MSR.
    #[error("KVM_SET_MSRS: KVM refused MSR {index:#x} = {data:#x}")]
    MsrRefused {
        /// MSR index.
        index: u32,
        /// Value that was being restored.
        data: u64,
    },
    /// The saved XSAVE image has an impossible size.
    #[error("XSAVE image: {words} 32-bit words; expected {min}..={max}")]
    XsaveSize {
        /// Words in the saved image.
        words: usize,
        /// Smallest valid size.
        min: usize,
        /// Largest accepted size.
        max: usize,
    },
    /// A saved irqchip carries the wrong chip id.
    #[error("KVM_SET_IRQCHIP: saved chip has id {found}, expected {expected}")]
    ChipId {
        /// The id this slot must hold.
        expected: u32,
        /// The id found in the saved state.
        found: u32,
    },
    /// The state has neither an FPU nor an XSAVE image.
    #[error("FPU: the state has neither KVM_GET_FPU nor KVM_GET_XSAVE data")]
    NoFpu,
    /// A kvm-bindings structure could not be allocated.
    #[error("{what}: {reason}")]
    Alloc {
        /// Which structure.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// Maps a kvm-ioctls error to `StateError::Kvm` for ioctl `what`.
pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Kvm { what, source }
}

/// The legacy FPU image of KVM_GET_FPU, with named fields so it serializes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct FpuState {
    /// x87/MMX registers ST0-ST7 (80 bits each, padded to 16 bytes).
    pub fpr: [[u8; 16]; 8],
    /// x87 control word.
    pub fcw: u16,
    /// x87 status word.
    pub fsw: u16,
    /// Abridged x87 tag word.
    pub ftwx: u8,
    /// Last x87 opcode.
    pub last_opcode: u16,
    /// Last x87 instruction pointer.
    pub last_ip: u64,
    /// Last x87 data pointer.
    pub last_dp: u64,
    /// SSE registers XMM0-XMM15.
    pub xmm: [[u8; 16]; 16],
    /// SSE control/status register.
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        FpuState {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// Nested-virtualization state (KVM_GET_NESTED_STATE), kept only when the
/// guest actually uses nested virtualization.
#[derive(Serialize, Deserialize, Clone)]
#[serde(transparent)]
pub struct NestedState(pub KvmNestedStateBuffer);

impl std::fmt::Debug for NestedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NestedState")
            .field("flags", &self.0.flags)
            .field("format", &self.0.format)
            .field("size", &self.0.size)
            .finish_non_exhaustive()
    }
}

/// Everything needed to resume one vCPU in a fresh process.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct VcpuState {
    /// The CPUID table (KVM_GET_CPUID2); restored first.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Guest TSC frequency (KVM_GET_TSC_KHZ), when the host reports it.
    pub tsc_khz: Option<u32>,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// Legacy FPU image; only kept when there is no XSAVE image. XSAVE is a
    /// superset, and on XSAVE hosts KVM_GET/SET_FPU do not even agree with
    /// it (SET_FPU leaves XSTATE_BV alone, so the guest never sees it).
    pub fpu: Option<FpuState>,
    /// XSAVE image as 32-bit words (KVM_GET_XSAVE/KVM_GET_XSAVE2), when
    /// KVM_CAP_XSAVE is reported.
    pub xsave: Option<Vec<u32>>,
    /// Extended control registers, when KVM_CAP_XCRS is reported.
    pub xcrs: Option<kvm_xcrs>,
    /// MSR values KVM let us read.
    pub msrs: Vec<kvm_msr_entry>,
    /// MSR indices KVM refused to read (not saved, not restored).
    pub skipped_msrs: Vec<u32>,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// Pending/injected exceptions, interrupts, NMIs, SMM state.
    pub events: kvm_vcpu_events,
    /// Run state (runnable, halted, waiting for SIPI, ...).
    pub mp_state: kvm_mp_state,
    /// Debug registers DR0-DR3, DR6, DR7.
    pub debug_regs: kvm_debugregs,
    /// Nested-virtualization state, if the guest had any.
    pub nested: Option<NestedState>,
    /// State the host could not provide, with the reason.
    pub omitted: Vec<String>,
}

/// MSR indices to save: KVM's list plus `EXTRA_MSRS`, without duplicates.
fn msr_indices(kvm: &Kvm) -> Result<Vec<u32>, StateError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
    let mut indices: Vec<u32> = list.as_slice().to_vec();
    for extra in EXTRA_MSRS {
        if !indices.contains(extra) {
            indices.push(*extra);
        }
    }
    Ok(indices)
}

/// Reads `indices`, dropping the ones KVM refuses. KVM_GET_MSRS stops at
/// the first MSR it cannot read and returns how many it read, so the batch
/// is retried from just past the refused one.
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<(Vec<kvm_msr_entry>, Vec<u32>), StateError> {
    let mut saved = Vec::with_capacity(indices.len());
    let mut skipped = Vec::new();
    for batch in indices.chunks(KVM_MAX_MSR_ENTRIES) {
        let mut rest = batch;
        while !rest.is_empty() {
            let entries: Vec<kvm_msr_entry> = rest
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs =
                Msrs::from_entries(&entries).map_err(|e| StateError::MsrTable(e.to_string()))?;
            let read = vcpu.get_msrs(&mut msrs).map_err(kvm_err("KVM_GET_MSRS"))?;
            saved.extend(msrs.as_slice().iter().take(read).copied());
            match rest.get(read) {
                Some(&refused) => {
                    log::debug!("KVM_GET_MSRS refused MSR {refused:#x}; not saving it");
                    skipped.push(refused);
                    rest = rest.get(read + 1..).unwrap_or_default();
                }
                None => break,
            }
        }
    }
    Ok((saved, skipped))
}

/// Writes `entries`; any MSR KVM refuses is an error naming it.
fn write_msrs(vcpu: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), StateError> {
    for batch in entries.chunks(KVM_MAX_MSR_ENTRIES) {
        let msrs = Msrs::from_entries(batch).map_err(|e| StateError::MsrTable(e.to_string()))?;
        let written = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if let Some(refused) = batch.get(written) {
            return Err(StateError::MsrRefused {
                index: refused.index,
                data: refused.data,
            });
        }
    }
    Ok(())
}

/// Warns when KVM accepted the TSC write but did not apply it: on this PVM
/// host the guest TSC is the host TSC, so the guest sees it jump by the time
/// spent saved.
fn check_tsc(vcpu: &VcpuFd, wanted: u64, khz: Option<u32>) {
    let Ok((read, _)) = read_msrs(vcpu, &[MSR_IA32_TSC]) else {
        return;
    };
    let Some(now) = read.first().map(|m| m.data) else {
        return;
    };
    // About one second of TSC ticks.
    let tolerance = u64::from(khz.unwrap_or(1_000_000)).saturating_mul(1000);
    if now.abs_diff(wanted) > tolerance {
        log::warn!(
            "KVM did not apply the restored TSC ({wanted:#x}, now {now:#x}); \
             the guest TSC follows the host TSC on this host"
        );
    }
}

/// Reads the XSAVE image, through KVM_GET_XSAVE2 when the host's image is
/// larger than the legacy 4 KiB.
fn read_xsave(vcpu: &VcpuFd, kvm: &Kvm) -> Result<Vec<u32>, StateError> {
    let size = usize::try_from(kvm.check_extension_int(Cap::Xsave2)).unwrap_or(0);
    let words = size.div_ceil(4);
    if words <= XSAVE_REGION_WORDS {
        let xsave = vcpu.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?;
        return Ok(xsave.region.to_vec());
    }
    let mut buf = Xsave::new(words - XSAVE_REGION_WORDS).map_err(|e| StateError::Alloc {
        what: "KVM_GET_XSAVE2 buffer",
        reason: e.to_string(),
    })?;
    // SAFETY: the buffer holds `size` bytes, the size KVM_CAP_XSAVE2 says
    // KVM_GET_XSAVE2 writes for this process.
    unsafe { vcpu.get_xsave2(&mut buf) }.map_err(kvm_err("KVM_GET_XSAVE2"))?;
    let fam = buf.as_fam_struct_ref();
    let mut image = fam.xsave.region.to_vec();
    image.extend_from_slice(buf.as_slice());
    Ok(image)
}

/// Writes a saved XSAVE image through a buffer KVM cannot read past.
fn write_xsave(vcpu: &VcpuFd, image: &[u32]) -> Result<(), StateError> {
    if !(XSAVE_REGION_WORDS..=XSAVE_MAX_WORDS).contains(&image.len()) {
        return Err(StateError::XsaveSize {
            words: image.len(),
            min: XSAVE_REGION_WORDS,
            max: XSAVE_MAX_WORDS,
        });
    }
    let total = image.len().max(XSAVE_SET_WORDS);
    let mut buf = Xsave::new(total - XSAVE_REGION_WORDS).map_err(|e| StateError::Alloc {
        what: "KVM_SET_XSAVE buffer",
        reason: e.to_string(),
    })?;
    let (region, extra) = image.split_at(XSAVE_REGION_WORDS);
    // SAFETY: only the `region` array is written; `len` is left alone.
    let fam = unsafe { buf.as_mut_fam_struct() };
    fam.xsave.region.copy_from_slice(region);
    for (dst, src) in buf.as_mut_slice().iter_mut().zip(extra) {
        *dst = *src;
    }
    // SAFETY: the buffer is `total` words (at least 16 KiB, zero-padded),
    // more than the guest-FPU size KVM_SET_XSAVE reads.
    unsafe { vcpu.set_xsave2(&buf) }.map_err(kvm_err("KVM_SET_XSAVE"))
}

impl VcpuState {
    /// Captures the state of a vCPU that is not running (paused VMM).
    pub fn save(vcpu: &VcpuFd, kvm: &Kvm) -> Result<VcpuState, StateError> {
        let mut omitted = Vec::new();
        let cpuid = vcpu
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let tsc_khz = match vcpu.get_tsc_khz() {
            Ok(khz) if khz > 0 => Some(khz),
            Ok(_) => {
                omitted.push("TSC frequency: KVM_GET_TSC_KHZ returned 0".to_string());
                None
            }
            Err(e) => {
                omitted.push(format!("TSC frequency: KVM_GET_TSC_KHZ failed: {e}"));
                None
            }
        };
        let regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
        let sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        let (fpu, xsave) = if kvm.check_extension(Cap::Xsave) {
            (None, Some(read_xsave(vcpu, kvm)?))
        } else {
            omitted.push("xsave: KVM_CAP_XSAVE not reported (legacy FPU only)".to_string());
            let fpu = vcpu.get_fpu().map_err(kvm_err("KVM_GET_FPU"))?;
            (Some(FpuState::from(&fpu)), None)
        };
        let xcrs = if kvm.check_extension(Cap::Xcrs) {
            Some(vcpu.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?)
        } else {
            omitted.push("xcrs: KVM_CAP_XCRS not reported".to_string());
            None
        };
        let (msrs, skipped_msrs) = read_msrs(vcpu, &msr_indices(kvm)?)?;
        if !skipped_msrs.is_empty() {
            log::debug!("MSRs KVM would not read: {skipped_msrs:#x?}");
        }
        let lapic = vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
        let events = vcpu
            .get_vcpu_events()
            .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?;
        let mp_state = vcpu.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?;
        let debug_regs = vcpu
            .get_debug_regs()
            .map_err(kvm_err("KVM_GET_DEBUGREGS"))?;
        let nested = if kvm.check_extension_int(Cap::NestedState) == 0 {
            omitted.push("nested state: KVM_CAP_NESTED_STATE not reported".to_string());
            None
        } else {
            let mut buf = KvmNestedStateBuffer::empty();
            match vcpu.nested_state(&mut buf) {
                Ok(Some(_)) => Some(NestedState(buf)),
                Ok(None) => None,
                Err(e) => {
                    omitted.push(format!("nested state: KVM_GET_NESTED_STATE failed: {e}"));
                    None
                }
            }
        };
        for what in &omitted {
            log::debug!("vCPU snapshot omits {what}");
        }
        Ok(VcpuState {
            cpuid,
            tsc_khz,
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            msrs,
            skipped_msrs,
            lapic,
            events,
            mp_state,
            debug_regs,
            nested,
            omitted,
        })
    }

    /// Loads this state into a fresh vCPU (created, never run, in a VM that
    /// has the in-kernel irqchip). Order: CPUID, TSC frequency, sregs,
    /// regs, FPU/XSAVE, XCRs, MSRs (TSC before the deadline), nested state,
    /// LAPIC, TSC deadline (needs the LAPIC timer mode), events, mp_state,
    /// debug registers.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), StateError> {
        let cpuid =
            CpuId::from_entries(&self.cpuid).map_err(|e| StateError::CpuidTable(e.to_string()))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        if let Some(khz) = self.tsc_khz {
            if vcpu.get_tsc_khz().ok() != Some(khz) {
                vcpu.set_tsc_khz(khz).map_err(kvm_err("KVM_SET_TSC_KHZ"))?;
            }
        }
        vcpu.set_sregs(&self.sregs)
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        vcpu.set_regs(&self.regs).map_err(kvm_err("KVM_SET_REGS"))?;
        match (&self.xsave, &self.fpu) {
            (Some(image), _) => write_xsave(vcpu, image)?,
            (None, Some(fpu)) => vcpu
                .set_fpu(&kvm_fpu::from(fpu))
                .map_err(kvm_err("KVM_SET_FPU"))?,
            (None, None) => return Err(StateError::NoFpu),
        }
        if let Some(xcrs) = &self.xcrs {
            vcpu.set_xcrs(xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
        }
        let (deadline, msrs): (Vec<kvm_msr_entry>, Vec<kvm_msr_entry>) = self
            .msrs
            .iter()
            .partition(|m| m.index == MSR_IA32_TSC_DEADLINE);
        write_msrs(vcpu, &msrs)?;
        if let Some(tsc) = self.msr(MSR_IA32_TSC) {
            check_tsc(vcpu, tsc, self.tsc_khz);
        }
        if let Some(nested) = &self.nested {
            vcpu.set_nested_state(&nested.0)
                .map_err(kvm_err("KVM_SET_NESTED_STATE"))?;
        }
        vcpu.set_lapic(&self.lapic)
            .map_err(kvm_err("KVM_SET_LAPIC"))?;
        write_msrs(vcpu, &deadline)?;
        let mut events = self.events;
        // GET does not mark these valid; SET ignores them unless marked.
        events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
        vcpu.set_vcpu_events(&events)
            .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm_err("KVM_SET_MP_STATE"))?;
        vcpu.set_debug_regs(&self.debug_regs)
            .map_err(kvm_err("KVM_SET_DEBUGREGS"))
    }

    /// The saved value of MSR `index`, if it was saved.
    pub fn msr(&self, index: u32) -> Option<u64> {
        self.msrs.iter().find(|m| m.index == index).map(|m| m.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::cpuid::{vcpu_cpuid, CpuidPolicy};
    use crate::x86_64::layout::KVM_TSS_ADDRESS;
    use crate::x86_64::regs::configure_vcpu;
    use kvm_bindings::{kvm_pit_config, KVM_MP_STATE_HALTED};
    use kvm_ioctls::VmFd;

    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const APIC_TPR: usize = 0x80;
    /// XSAVE header XSTATE_BV (byte 512) and XMM0 (byte 160) as word indices.
    const XSTATE_BV_WORD: usize = 128;
    const XMM0_WORD: usize = 40;

    /// A VM with irqchip and PIT, and one configured vCPU.
    fn vm_with_vcpu(kvm: &Kvm) -> (VmFd, VcpuFd) {
        let vm = kvm.create_vm().unwrap();
        vm.set_tss_address(KVM_TSS_ADDRESS as usize).unwrap();
        vm.create_irq_chip().unwrap();
        vm.create_pit2(kvm_pit_config::default()).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let policy = CpuidPolicy {
            hide_pvm_unsupported: true,
            keep: Vec::new(),
            ..Default::default()
        };
        let cpuid = vcpu_cpuid(&supported, 0, &crate::CpuTopology::flat(1), &policy).unwrap();
        configure_vcpu(&vcpu, &cpuid, None).unwrap();
        (vm, vcpu)
    }

    fn kvm_or_skip() -> Option<Kvm> {
        if !std::path::Path::new("/dev/kvm").exists() {
            println!("note: /dev/kvm absent, skipping");
            return None;
        }
        Some(Kvm::new().unwrap())
    }

    fn set_msr(vcpu: &VcpuFd, index: u32, data: u64) {
        let entry = kvm_msr_entry {
            index,
            data,
            ..Default::default()
        };
        assert_eq!(
            vcpu.set_msrs(&Msrs::from_entries(&[entry]).unwrap())
                .unwrap(),
            1
        );
    }

    fn get_msr(vcpu: &VcpuFd, index: u32) -> u64 {
        let entry = kvm_msr_entry {
            index,
            ..Default::default()
        };
        let mut msrs = Msrs::from_entries(&[entry]).unwrap();
        assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 1);
        msrs.as_slice()[0].data
    }

    /// Puts recognizable values in a vCPU; returns the TSC written.
    fn scribble(vcpu: &VcpuFd) -> u64 {
        let mut regs = vcpu.get_regs().unwrap();
        regs.rip = 0x1234_5678;
        regs.rax = 0xdead_beef_cafe;
        regs.r15 = 0x0f0f;
        vcpu.set_regs(&regs).unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        sregs.cr0 |= 1; // PE
        sregs.cr2 = 0xabc0;
        vcpu.set_sregs(&sregs).unwrap();
        // KVM_SET_FPU writes the legacy area without marking x87/SSE in
        // XSTATE_BV, so on XSAVE hosts it is invisible; write the XSAVE image.
        let mut xsave = vcpu.get_xsave().unwrap();
        xsave.region[XSTATE_BV_WORD] |= 3;
        xsave.region[0] = 0x27f;
        xsave.region[6] = 0x9f80;
        xsave.region[XMM0_WORD] = 0x5555;
        // SAFETY: KVM_CAP_XSAVE2 is at most 4 KiB here (no dynamic features
        // were enabled), so KVM reads only this struct.
        unsafe { vcpu.set_xsave(&xsave) }.unwrap();
        let tsc = 1 << 40;
        set_msr(vcpu, MSR_IA32_TSC, tsc);
        set_msr(vcpu, MSR_KERNEL_GS_BASE, 0xffff_8880_1234_5000);
        let mut lapic = vcpu.get_lapic().unwrap();
        lapic.regs[APIC_TPR] = 0x20;
        vcpu.set_lapic(&lapic).unwrap();
        let mut dregs = vcpu.get_debug_regs().unwrap();
        dregs.db[0] = 0x4000;
        vcpu.set_debug_regs(&dregs).unwrap();
        vcpu.set_mp_state(kvm_mp_state {
            mp_state: KVM_MP_STATE_HALTED,
        })
        .unwrap();
        tsc
    }

    #[test]
    fn real_kvm_vcpu_state_round_trips_through_json() {
        let Some(kvm) = kvm_or_skip() else { return };
        let (_vm1, vcpu1) = vm_with_vcpu(&kvm);
        let tsc = scribble(&vcpu1);
        let state = VcpuState::save(&vcpu1, &kvm).unwrap();
        println!(
            "caps: xsave={} xsave2={} xcrs={} nested={} tsc_control={}",
            kvm.check_extension_int(Cap::Xsave),
            kvm.check_extension_int(Cap::Xsave2),
            kvm.check_extension_int(Cap::Xcrs),
            kvm.check_extension_int(Cap::NestedState),
            kvm.check_extension_int(Cap::TscControl),
        );
        println!(
            "saved {} MSRs, skipped {:#x?}",
            state.msrs.len(),
            state.skipped_msrs
        );
        println!("omitted: {:?}, tsc_khz {:?}", state.omitted, state.tsc_khz);
        assert_eq!(state.msr(MSR_KERNEL_GS_BASE), Some(0xffff_8880_1234_5000));
        // PVM accepts but ignores TSC writes (guest TSC = host TSC), so
        // only check the TSC never goes backwards and stays close.
        let saved_tsc = state.msr(MSR_IA32_TSC).unwrap();
        println!("TSC written {tsc:#x}, saved {saved_tsc:#x}");
        assert!(saved_tsc >= tsc);

        let json = serde_json::to_string(&state).unwrap();
        println!("VcpuState JSON: {} bytes", json.len());
        let back: VcpuState = serde_json::from_str(&json).unwrap();

        // A fresh VM: only the bare vCPU, no configure_vcpu.
        let vm2 = kvm.create_vm().unwrap();
        vm2.set_tss_address(KVM_TSS_ADDRESS as usize).unwrap();
        vm2.create_irq_chip().unwrap();
        let vcpu2 = vm2.create_vcpu(0).unwrap();
        back.restore(&vcpu2).unwrap();

        let regs = vcpu2.get_regs().unwrap();
        assert_eq!(
            (regs.rip, regs.rax, regs.r15),
            (0x1234_5678, 0xdead_beef_cafe, 0x0f0f)
        );
        let sregs = vcpu2.get_sregs().unwrap();
        assert_eq!(sregs.cr0, state.sregs.cr0);
        assert_eq!(sregs.cr0 & 1, 1);
        assert_eq!(sregs.cr2, 0xabc0);
        assert_eq!(get_msr(&vcpu2, MSR_KERNEL_GS_BASE), 0xffff_8880_1234_5000);
        let restored_tsc = get_msr(&vcpu2, MSR_IA32_TSC);
        assert!(
            restored_tsc >= saved_tsc && restored_tsc - saved_tsc < 1 << 36,
            "TSC {restored_tsc:#x} vs saved {saved_tsc:#x}"
        );
        for m in &state.msrs {
            if m.index != MSR_IA32_TSC && m.index != MSR_IA32_TSC_DEADLINE {
                assert_eq!(get_msr(&vcpu2, m.index), m.data, "MSR {:#x}", m.index);
            }
        }
        assert_eq!(vcpu2.get_lapic().unwrap().regs[APIC_TPR], 0x20);
        assert_eq!(vcpu2.get_mp_state().unwrap().mp_state, KVM_MP_STATE_HALTED);
        assert_eq!(vcpu2.get_debug_regs().unwrap().db[0], 0x4000);
        let cpuid = vcpu2.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
        assert_eq!(cpuid.as_slice(), state.cpuid.as_slice());
        let x = vcpu2.get_xsave().unwrap();
        assert_eq!(x.region[0] & 0xffff, 0x27f);
        assert_eq!(x.region[6], 0x9f80);
        assert_eq!(x.region[XMM0_WORD], 0x5555);
        if let Some(xcrs) = &state.xcrs {
            assert_eq!(vcpu2.get_xcrs().unwrap().xcrs, xcrs.xcrs);
        }
        // Saving the restored vCPU gives the same registers again.
        let again = VcpuState::save(&vcpu2, &kvm).unwrap();
        assert_eq!(again.regs, state.regs);
        assert_eq!(again.skipped_msrs, state.skipped_msrs);
    }

    #[test]
    fn real_kvm_garbage_state_is_an_error() {
        let Some(kvm) = kvm_or_skip() else { return };
        let (_vm, vcpu) = vm_with_vcpu(&kvm);
        let good = VcpuState::save(&vcpu, &kvm).unwrap();
        let fresh = |kvm: &Kvm| {
            let vm = kvm.create_vm().unwrap();
            vm.create_irq_chip().unwrap();
            let vcpu = vm.create_vcpu(0).unwrap();
            (vm, vcpu)
        };

        let mut bad = good.clone();
        bad.msrs.push(kvm_msr_entry {
            index: 0xdead_beef,
            data: 1,
            ..Default::default()
        });
        let (_vm2, v) = fresh(&kvm);
        let err = bad.restore(&v).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::MsrRefused {
                    index: 0xdead_beef,
                    ..
                }
            ),
            "{err}"
        );

        let mut bad = good.clone();
        bad.cpuid = vec![kvm_cpuid_entry2::default(); KVM_MAX_CPUID_ENTRIES + 1];
        let (_vm3, v) = fresh(&kvm);
        assert!(matches!(bad.restore(&v), Err(StateError::CpuidTable(_))));

        // Leaf 0x80000008 with a 17-bit virtual address width: KVM rejects it.
        let mut bad = good.clone();
        for e in bad.cpuid.iter_mut().filter(|e| e.function == 0x8000_0008) {
            e.eax = (e.eax & !0xff00) | (17 << 8);
        }
        let (_vm4, v) = fresh(&kvm);
        let err = bad.restore(&v).unwrap_err();
        println!("bad CPUID: {err}");
        assert!(
            matches!(
                err,
                StateError::Kvm {
                    what: "KVM_SET_CPUID2",
                    ..
                }
            ),
            "{err}"
        );

        let mut bad = good.clone();
        bad.xsave = Some(vec![0; 10]);
        bad.fpu = None;
        let (_vm5, v) = fresh(&kvm);
        assert!(matches!(
            bad.restore(&v),
            Err(StateError::XsaveSize { words: 10, .. })
        ));

        let mut bad = good.clone();
        bad.xsave = None;
        bad.fpu = None;
        let (_vm6, v) = fresh(&kvm);
        assert!(matches!(bad.restore(&v), Err(StateError::NoFpu)));

        // Truncated JSON is a parse error, not a panic.
        let json = serde_json::to_string(&good).unwrap();
        assert!(serde_json::from_str::<VcpuState>(&json[..json.len() / 2]).is_err());
    }

    #[test]
    fn fpu_state_converts_both_ways() {
        let mut raw = kvm_fpu {
            fcw: 0x37f,
            fsw: 0x4000,
            ftwx: 0x80,
            last_opcode: 0x1d9,
            last_ip: 0x1000,
            last_dp: 0x2000,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        raw.fpr[7][9] = 0x40;
        raw.xmm[15][0] = 0xaa;
        let ours = FpuState::from(&raw);
        assert_eq!(kvm_fpu::from(&ours), raw);
        let json = serde_json::to_string(&ours).unwrap();
        assert_eq!(serde_json::from_str::<FpuState>(&json).unwrap(), ours);
    }
}
