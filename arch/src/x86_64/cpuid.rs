//! Guest CPUID: per-vCPU topology (APIC ids, x2APIC levels), the physical
//! address width, nested virtualization, and hiding of the CPU features this
//! host's PVM instruction emulator cannot execute.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use super::error::CpuidError;
use super::topology::TopologyIds;
use crate::CpuTopology;

/// True when the host KVM is PVM (`/sys/module/kvm_pvm` exists).
pub fn is_pvm_host() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// Instructions this PVM host's emulator is known not to handle (for error
/// messages).
pub const PVM_UNSUPPORTED_INSTRUCTIONS: &[&str] =
    &["XSAVE/XRSTOR", "CMPXCHG16B", "POPCNT", "INT3", "FWAIT"];

/// Which CPU features to hide from the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuidPolicy {
    /// Hide the features the PVM emulator cannot run.
    pub hide_pvm_unsupported: bool,
    /// Feature names to expose anyway ("xsave", "cx16", ... or "all").
    pub keep: Vec<String>,
    /// Keep the host's VMX/SVM bits (nested virtualization).
    pub nested: bool,
    /// Cap on the physical address width (leaf 0x8000_0008); `0` keeps the
    /// host's.
    pub max_phys_bits: u8,
}

/// A CPUID register.
#[derive(Clone, Copy)]
enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// One feature bit: leaf, subleaf, register, bit number.
type Bit = (u32, u32, Reg, u8);

/// A hideable feature and every CPUID bit that depends on it.
struct Feature {
    name: &'static str,
    bits: &'static [Bit],
    /// Also blank the XSAVE state leaf 0xD.
    clears_xsave_leaf: bool,
}

/// Features hidden by `hide_pvm_unsupported`. XSAVE takes the AVX family
/// with it: those need XSAVE-managed state.
const FEATURES: &[Feature] = &[
    Feature {
        name: "xsave",
        bits: &[
            (1, 0, Reg::Ecx, 26),           // XSAVE
            (1, 0, Reg::Ecx, 27),           // OSXSAVE
            (1, 0, Reg::Ecx, 28),           // AVX
            (1, 0, Reg::Ecx, 12),           // FMA
            (1, 0, Reg::Ecx, 29),           // F16C
            (7, 0, Reg::Ebx, 5),            // AVX2
            (7, 0, Reg::Ebx, 16),           // AVX512F
            (7, 0, Reg::Ebx, 17),           // AVX512DQ
            (7, 0, Reg::Ebx, 21),           // AVX512IFMA
            (7, 0, Reg::Ebx, 26),           // AVX512PF
            (7, 0, Reg::Ebx, 27),           // AVX512ER
            (7, 0, Reg::Ebx, 28),           // AVX512CD
            (7, 0, Reg::Ebx, 30),           // AVX512BW
            (7, 0, Reg::Ebx, 31),           // AVX512VL
            (7, 0, Reg::Ecx, 1),            // AVX512VBMI
            (7, 0, Reg::Ecx, 6),            // AVX512VBMI2
            (7, 0, Reg::Ecx, 9),            // VAES
            (7, 0, Reg::Ecx, 10),           // VPCLMULQDQ
            (7, 0, Reg::Ecx, 11),           // AVX512VNNI
            (7, 0, Reg::Ecx, 12),           // AVX512BITALG
            (7, 0, Reg::Ecx, 14),           // AVX512VPOPCNTDQ
            (7, 0, Reg::Edx, 2),            // AVX512_4VNNIW
            (7, 0, Reg::Edx, 3),            // AVX512_4FMAPS
            (7, 0, Reg::Edx, 8),            // AVX512_VP2INTERSECT
            (7, 0, Reg::Edx, 22),           // AMX_BF16
            (7, 0, Reg::Edx, 23),           // AVX512_FP16
            (7, 0, Reg::Edx, 24),           // AMX_TILE
            (7, 0, Reg::Edx, 25),           // AMX_INT8
            (7, 1, Reg::Eax, 4),            // AVX_VNNI
            (7, 1, Reg::Eax, 5),            // AVX512_BF16
            (0x8000_0001, 0, Reg::Ecx, 11), // XOP
            (0x8000_0001, 0, Reg::Ecx, 16), // FMA4
        ],
        clears_xsave_leaf: true,
    },
    Feature {
        name: "cx16",
        bits: &[(1, 0, Reg::Ecx, 13)],
        clears_xsave_leaf: false,
    },
    Feature {
        name: "popcnt",
        bits: &[(1, 0, Reg::Ecx, 23)],
        clears_xsave_leaf: false,
    },
    Feature {
        name: "fsgsbase",
        bits: &[(7, 0, Reg::Ebx, 0)],
        clears_xsave_leaf: false,
    },
    Feature {
        name: "rdpid",
        bits: &[(7, 0, Reg::Ecx, 22)],
        clears_xsave_leaf: false,
    },
    Feature {
        name: "pcid",
        bits: &[(1, 0, Reg::Ecx, 17)],
        clears_xsave_leaf: false,
    },
    Feature {
        name: "invpcid",
        bits: &[(7, 0, Reg::Ebx, 10)],
        clears_xsave_leaf: false,
    },
    Feature {
        name: "smap",
        bits: &[(7, 0, Reg::Ebx, 20)],
        clears_xsave_leaf: false,
    },
];

/// The name that keeps every feature.
const KEEP_ALL: &str = "all";

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: more than one logical processor per package.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX: Intel VMX.
pub const LEAF1_ECX_VMX: u32 = 1 << 5;
/// Leaf 0x8000_0001 ECX: AMD SVM.
pub const EXT1_ECX_SVM: u32 = 1 << 2;

/// Validates `keep` names (error names the unknown feature).
pub fn validate_feature_names(names: &[String]) -> Result<(), CpuidError> {
    for name in names {
        if name != KEEP_ALL && !FEATURES.iter().any(|f| f.name == name) {
            let mut known: Vec<&str> = FEATURES.iter().map(|f| f.name).collect();
            known.push(KEEP_ALL);
            return Err(CpuidError::UnknownFeature {
                name: name.clone(),
                known: known.join(", "),
            });
        }
    }
    Ok(())
}

/// The features `policy` hides.
fn hidden_features(policy: &CpuidPolicy) -> Vec<&'static Feature> {
    if !policy.hide_pvm_unsupported || policy.keep.iter().any(|k| k == KEEP_ALL) {
        return Vec::new();
    }
    FEATURES
        .iter()
        .filter(|f| !policy.keep.iter().any(|k| k == f.name))
        .collect()
}

/// Mutable access to one register of an entry.
fn reg_mut(entry: &mut kvm_cpuid_entry2, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Eax => &mut entry.eax,
        Reg::Ebx => &mut entry.ebx,
        Reg::Ecx => &mut entry.ecx,
        Reg::Edx => &mut entry.edx,
    }
}

/// Per-vCPU CPUID from KVM_GET_SUPPORTED_CPUID: APIC id `vcpu_id` and the
/// x2APIC levels and cache sharing of `topology`, the hypervisor bit, the
/// physical address width and VMX/SVM as `policy` says, KVM's own leaves
/// kept, and the PVM-unsupported features hidden (logged once, for vCPU 0).
pub fn vcpu_cpuid(
    supported: &CpuId,
    vcpu_id: u8,
    topology: &CpuTopology,
    policy: &CpuidPolicy,
) -> Result<CpuId, CpuidError> {
    let num_vcpus = topology.vcpus();
    if num_vcpus == 0 || u32::from(vcpu_id) >= num_vcpus {
        return Err(CpuidError::BadVcpuId {
            vcpu_id,
            num_vcpus: num_vcpus.min(255) as u8,
        });
    }
    validate_feature_names(&policy.keep)?;
    let hidden = hidden_features(policy);
    let blank_xsave_leaf = hidden.iter().any(|f| f.clears_xsave_leaf);
    let src = supported.as_slice();
    let max_basic = src.iter().find(|e| e.function == 0).map_or(0, |e| e.eax);
    let has_leaf_1f = src.iter().any(|e| e.function == 0x1f);
    let apic_id = u32::from(vcpu_id);
    let ids = TopologyIds::new(topology);

    let mut entries: Vec<kvm_cpuid_entry2> = src
        .iter()
        .filter(|e| e.function != 0xb && e.function != 0x1f)
        .copied()
        .collect();
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0xffff) | (ids.package_ids() << 16) | (apic_id << 24);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if ids.per_package() > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
                if !policy.nested {
                    e.ecx &= !LEAF1_ECX_VMX;
                }
            }
            4 if e.eax & 0x1f != 0 => e.eax = ids.cache_eax(e.eax),
            0xd if blank_xsave_leaf => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x8000_0001 if !policy.nested => e.ecx &= !EXT1_ECX_SVM,
            0x8000_0008 if policy.max_phys_bits != 0 => {
                let host = e.eax & 0xff;
                e.eax = (e.eax & !0xff) | host.min(u32::from(policy.max_phys_bits));
            }
            _ => {}
        }
        for f in &hidden {
            for &(leaf, subleaf, reg, bit) in f.bits {
                if e.function == leaf && e.index == subleaf {
                    *reg_mut(e, reg) &= !(1u32 << bit);
                }
            }
        }
    }
    if max_basic >= 0xb {
        entries.extend(ids.entries(0xb, apic_id));
    }
    if max_basic >= 0x1f && has_leaf_1f {
        entries.extend(ids.entries(0x1f, apic_id));
    }

    if vcpu_id == 0 && !hidden.is_empty() {
        let names: Vec<&str> = hidden.iter().map(|f| f.name).collect();
        log::info!(
            "hiding CPU features the PVM instruction emulator cannot run: {} (re-expose with the keep list)",
            names.join(", ")
        );
    }
    CpuId::from_entries(&entries).map_err(|e| CpuidError::Table(e.to_string()))
}

/// Names of the features `policy` hides whose main CPUID bit is nonetheless
/// set in `effective` (what KVM reports back after KVM_SET_CPUID2).
///
/// PVM hosts merge the host's own leaf-1 bits into the guest's CPUID, so a
/// feature chv clears can come back; the VMM warns about those.
pub fn reexposed_features(effective: &CpuId, policy: &CpuidPolicy) -> Vec<&'static str> {
    hidden_features(policy)
        .into_iter()
        .filter(|f| {
            f.bits.first().is_some_and(|&(leaf, subleaf, reg, bit)| {
                effective.as_slice().iter().any(|e| {
                    let mut e = *e;
                    e.function == leaf
                        && e.index == subleaf
                        && *reg_mut(&mut e, reg) & (1 << bit) != 0
                })
            })
        })
        .map(|f| f.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// A synthetic "supported" table with every feature bit set.
    fn fake_supported() -> CpuId {
        CpuId::from_entries(&[
            entry(0, 0, [0x1f, 0, 0, 0]),
            entry(1, 0, [0x806f8, 0x0010_0800, !0, !0]),
            entry(4, 0, [0x121, 0, 0, 0]),
            entry(4, 3, [0x163, 0, 0, 0]),
            entry(7, 0, [0, !0, !0, !0]),
            entry(7, 1, [!0, 0, 0, 0]),
            entry(0xb, 0, [1, 2, 0x100, 9]),
            entry(0xd, 0, [7, 0x340, 0x340, 0]),
            entry(0x1f, 0, [1, 2, 0x100, 9]),
            entry(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn hide(keep: &[&str]) -> CpuidPolicy {
        CpuidPolicy {
            hide_pvm_unsupported: true,
            keep: keep.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn topology_per_vcpu() {
        let flat = crate::CpuTopology::flat(3);
        let c = vcpu_cpuid(&fake_supported(), 2, &flat, &CpuidPolicy::default()).unwrap();
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 2);
        // Addressable ids per package: 3 cores take 2 id bits.
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        for leaf in [0xb, 0x1f] {
            let smt = find(&c, leaf, 0);
            let core = find(&c, leaf, 1);
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
        }
        let end = find(&c, 0xb, 2);
        assert_eq!((end.ebx, (end.ecx >> 8) & 0xff, end.edx), (0, 0, 2));
        let die = find(&c, 0x1f, 2);
        assert_eq!((die.eax, die.ebx, die.ecx), (2, 3, 0x502));
        assert_eq!(find(&c, 4, 0).eax >> 26, 3);
        assert_eq!((find(&c, 4, 0).eax >> 14) & 0xfff, 0);
        assert_eq!((find(&c, 4, 3).eax >> 14) & 0xfff, 2);
        // KVM's signature leaf survives untouched.
        assert_eq!(find(&c, 0x4000_0000, 0).ebx, 0x4b4d_564b);
        // Two packages of two 2-thread cores: vCPU 5 is package 1, core 0,
        // thread 1.
        let t = crate::CpuTopology {
            threads_per_core: 2,
            cores_per_die: 2,
            dies_per_package: 1,
            packages: 2,
        };
        let c = vcpu_cpuid(&fake_supported(), 5, &t, &CpuidPolicy::default()).unwrap();
        let (smt, core) = (find(&c, 0xb, 0), find(&c, 0xb, 1));
        assert_eq!((smt.eax, smt.ebx, core.eax, core.ebx), (1, 2, 2, 4));
        assert_eq!(find(&c, 1, 0).ebx >> 24, 5);
        assert_ne!(find(&c, 1, 0).edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn nested_and_phys_bits() {
        let mut supported = fake_supported();
        let mut entries = supported.as_slice().to_vec();
        entries.push(kvm_cpuid_entry2 {
            function: 0x8000_0008,
            eax: 0x3030,
            ..Default::default()
        });
        supported = CpuId::from_entries(&entries).unwrap();
        let flat = crate::CpuTopology::flat(1);
        let policy = CpuidPolicy {
            nested: false,
            max_phys_bits: 40,
            ..Default::default()
        };
        let c = vcpu_cpuid(&supported, 0, &flat, &policy).unwrap();
        assert_eq!(find(&c, 1, 0).ecx & LEAF1_ECX_VMX, 0);
        assert_eq!(find(&c, 0x8000_0008, 0).eax, 0x3028);
        let policy = CpuidPolicy {
            nested: true,
            max_phys_bits: 52,
            ..Default::default()
        };
        let c = vcpu_cpuid(&supported, 0, &flat, &policy).unwrap();
        assert_ne!(find(&c, 1, 0).ecx & LEAF1_ECX_VMX, 0);
        // Never wider than the host.
        assert_eq!(find(&c, 0x8000_0008, 0).eax, 0x3030);
    }

    #[test]
    fn hiding_clears_features_and_xsave_leaf() {
        let c = vcpu_cpuid(
            &fake_supported(),
            0,
            &crate::CpuTopology::flat(1),
            &hide(&[]),
        )
        .unwrap();
        let l1 = find(&c, 1, 0);
        for bit in [26, 27, 28, 13, 23, 17, 12, 29] {
            assert_eq!(l1.ecx & (1 << bit), 0, "leaf 1 ecx bit {bit}");
        }
        let l7 = find(&c, 7, 0);
        for bit in [0, 5, 10, 20, 16] {
            assert_eq!(l7.ebx & (1 << bit), 0, "leaf 7 ebx bit {bit}");
        }
        assert_eq!(l7.ecx & (1 << 22), 0);
        assert_eq!(find(&c, 7, 1).eax & (1 << 4), 0);
        let d = find(&c, 0xd, 0);
        assert_eq!((d.eax, d.ebx, d.ecx, d.edx), (0, 0, 0, 0));
        // Unrelated bits stay.
        assert_ne!(l1.ecx & 1, 0);
        assert_ne!(l7.ebx & (1 << 9), 0);
    }

    #[test]
    fn keep_re_exposes_features() {
        let c = vcpu_cpuid(
            &fake_supported(),
            0,
            &crate::CpuTopology::flat(1),
            &hide(&["xsave", "popcnt"]),
        )
        .unwrap();
        let l1 = find(&c, 1, 0);
        assert_ne!(l1.ecx & (1 << 26), 0);
        assert_ne!(l1.ecx & (1 << 23), 0);
        assert_eq!(l1.ecx & (1 << 13), 0);
        assert_eq!(find(&c, 0xd, 0).eax, 7);
        let c = vcpu_cpuid(
            &fake_supported(),
            0,
            &crate::CpuTopology::flat(1),
            &hide(&["all"]),
        )
        .unwrap();
        assert_eq!(find(&c, 7, 0).ebx, !0);
    }

    #[test]
    fn bad_names_and_ids_are_rejected() {
        let err = validate_feature_names(&["xsave".into(), "avx9".into()]).unwrap_err();
        assert!(err.to_string().contains("avx9"));
        assert!(matches!(
            vcpu_cpuid(
                &fake_supported(),
                0,
                &crate::CpuTopology::flat(1),
                &hide(&["bogus"])
            ),
            Err(CpuidError::UnknownFeature { .. })
        ));
        assert!(matches!(
            vcpu_cpuid(
                &fake_supported(),
                1,
                &crate::CpuTopology::flat(1),
                &CpuidPolicy::default()
            ),
            Err(CpuidError::BadVcpuId { .. })
        ));
    }

    fn host_supported() -> Option<CpuId> {
        if !std::path::Path::new("/dev/kvm").exists() {
            println!("note: /dev/kvm absent, skipping");
            return None;
        }
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        Some(
            kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                .unwrap(),
        )
    }

    #[test]
    fn real_kvm_apic_ids() {
        let Some(supported) = host_supported() else {
            return;
        };
        for id in 0..4u8 {
            let c = vcpu_cpuid(
                &supported,
                id,
                &crate::CpuTopology::flat(4),
                &CpuidPolicy::default(),
            )
            .unwrap();
            assert_eq!(find(&c, 1, 0).ebx >> 24, u32::from(id));
            assert_eq!(find(&c, 0xb, 0).edx, u32::from(id));
            assert_eq!(find(&c, 0xb, 1).ebx, 4);
        }
    }

    #[test]
    fn real_kvm_hiding() {
        let Some(supported) = host_supported() else {
            return;
        };
        let c = vcpu_cpuid(&supported, 0, &crate::CpuTopology::flat(1), &hide(&[])).unwrap();
        let ecx = find(&c, 1, 0).ecx;
        assert_eq!(ecx & ((1 << 26) | (1 << 13) | (1 << 23)), 0);
        let host_ecx = find(&supported, 1, 0).ecx;
        let c = vcpu_cpuid(
            &supported,
            0,
            &crate::CpuTopology::flat(1),
            &hide(&["xsave", "cx16", "popcnt"]),
        )
        .unwrap();
        let kept = find(&c, 1, 0).ecx;
        for bit in [26, 13, 23] {
            assert_eq!(kept & (1 << bit), host_ecx & (1 << bit), "bit {bit}");
        }
    }

    #[test]
    fn reexposed_features_names_hidden_bits_still_set() {
        let policy = hide(&["cx16"]);
        // Everything set: every hidden feature is re-exposed, kept ones are not listed.
        let names = reexposed_features(&fake_supported(), &policy);
        assert!(names.contains(&"xsave") && names.contains(&"popcnt"));
        assert!(!names.contains(&"cx16"));
        // The table chv builds has them clear.
        let built =
            vcpu_cpuid(&fake_supported(), 0, &crate::CpuTopology::flat(1), &policy).unwrap();
        assert!(reexposed_features(&built, &policy).is_empty());
        let none = CpuidPolicy {
            hide_pvm_unsupported: false,
            keep: vec![],
            ..Default::default()
        };
        assert!(reexposed_features(&fake_supported(), &none).is_empty());
    }
}
