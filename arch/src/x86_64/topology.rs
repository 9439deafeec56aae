//! The CPUID view of the guest's CPU topology: x2APIC id widths per level
//! (leaves 0xB and 0x1F), logical-processor counts (leaf 1) and cache
//! sharing (leaf 4).
//!
//! vCPU `n` has APIC id `n`; each level is given as many id bits as its
//! count needs, so the ids decode to the right thread, core, die and
//! package when the lower levels are powers of two (see
//! [`CpuTopology::contiguity_error`]).

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::CpuTopology;

/// x2APIC topology level types (leaf 0xB/0x1F ECX bits 15:8).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;
const LEVEL_DIE: u32 = 5;

/// Bits of an x2APIC id needed to number `count` items.
pub fn id_bits(count: u8) -> u32 {
    match count {
        0 | 1 => 0,
        n => u32::BITS - u32::from(n - 1).leading_zeros(),
    }
}

/// The id widths and counts of one topology.
#[derive(Clone, Copy, Debug)]
pub struct TopologyIds {
    threads: u32,
    cores: u32,
    dies: u32,
    thread_bits: u32,
    core_bits: u32,
    die_bits: u32,
}

impl TopologyIds {
    /// The widths for `t`.
    pub fn new(t: &CpuTopology) -> Self {
        Self {
            threads: u32::from(t.threads_per_core),
            cores: u32::from(t.cores_per_die),
            dies: u32::from(t.dies_per_package),
            thread_bits: id_bits(t.threads_per_core),
            core_bits: id_bits(t.cores_per_die),
            die_bits: id_bits(t.dies_per_package),
        }
    }

    /// Logical processors in one package.
    pub fn per_package(&self) -> u32 {
        self.threads * self.cores * self.dies
    }

    /// Addressable APIC ids in one package (leaf 1 EBX[23:16]).
    pub fn package_ids(&self) -> u32 {
        (1u32 << (self.thread_bits + self.core_bits + self.die_bits)).min(255)
    }

    /// Leaf 4 EAX with the sharing (bits 25:14) and cores-per-package
    /// (bits 31:26) fields for this topology; `eax` is the host's.
    pub fn cache_eax(&self, eax: u32) -> u32 {
        let level = (eax >> 5) & 0x7;
        // L1 and L2 belong to a core; L3 to a package.
        let sharing = if level >= 3 {
            self.per_package() - 1
        } else {
            self.threads - 1
        };
        let cores = (1u32 << (self.core_bits + self.die_bits)) - 1;
        (eax & 0x3fff) | ((sharing & 0xfff) << 14) | ((cores & 0x3f) << 26)
    }

    /// The subleaves of leaf `leaf` (0xB, or 0x1F with its die level) for
    /// the vCPU with APIC id `apic_id`, ending with the invalid level.
    pub fn entries(&self, leaf: u32, apic_id: u32) -> Vec<kvm_cpuid_entry2> {
        let mut levels = vec![
            (LEVEL_SMT, self.thread_bits, self.threads),
            (
                LEVEL_CORE,
                self.thread_bits + self.core_bits,
                self.threads * self.cores,
            ),
        ];
        if leaf == 0x1f {
            levels.push((
                LEVEL_DIE,
                self.thread_bits + self.core_bits + self.die_bits,
                self.per_package(),
            ));
        } else {
            // Leaf 0xB has no die level: its core level spans the package.
            levels[1] = (
                LEVEL_CORE,
                self.thread_bits + self.core_bits + self.die_bits,
                self.per_package(),
            );
        }
        let entry = |index: u32, eax: u32, ebx: u32, ecx: u32| kvm_cpuid_entry2 {
            function: leaf,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            eax,
            ebx,
            ecx,
            edx: apic_id,
            ..Default::default()
        };
        let mut out: Vec<kvm_cpuid_entry2> = levels
            .iter()
            .zip(0u32..)
            .map(|(&(kind, shift, count), index)| entry(index, shift, count, (kind << 8) | index))
            .collect();
        let end = out.len() as u32;
        out.push(entry(end, 0, 0, end));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(t: u8, c: u8, d: u8, p: u8) -> CpuTopology {
        CpuTopology {
            threads_per_core: t,
            cores_per_die: c,
            dies_per_package: d,
            packages: p,
        }
    }

    #[test]
    fn id_bits_values() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(id_bits), [0, 1, 2, 2, 3, 3, 4]);
    }

    #[test]
    fn leaf_0x1f_levels() {
        let ids = TopologyIds::new(&topo(2, 3, 2, 2));
        let e = ids.entries(0x1f, 9);
        let got: Vec<_> = e
            .iter()
            .map(|e| (e.index, e.eax, e.ebx, e.ecx, e.edx))
            .collect();
        assert_eq!(
            got,
            [
                (0, 1, 2, 0x100, 9),
                (1, 3, 6, 0x201, 9),
                (2, 4, 12, 0x502, 9),
                (3, 0, 0, 3, 9)
            ]
        );
        let b = ids.entries(0xb, 1);
        assert_eq!(b.len(), 3);
        assert_eq!((b[1].eax, b[1].ebx, b[1].ecx), (4, 12, 0x201));
        assert_eq!(ids.package_ids(), 16);
    }

    #[test]
    fn cache_sharing() {
        let ids = TopologyIds::new(&topo(2, 4, 1, 2));
        let l1 = ids.cache_eax(1 << 5 | 1);
        let l3 = ids.cache_eax(3 << 5 | 3);
        assert_eq!((l1 >> 14) & 0xfff, 1);
        assert_eq!((l3 >> 14) & 0xfff, 7);
        assert_eq!(l3 >> 26, 3);
    }

    #[test]
    fn contiguity() {
        assert!(topo(1, 6, 1, 1).contiguity_error().is_none());
        assert!(topo(2, 4, 1, 2).contiguity_error().is_none());
        assert!(topo(3, 1, 1, 1).contiguity_error().is_none());
        let err = topo(3, 2, 1, 1).contiguity_error().unwrap();
        assert!(err.starts_with("threads_per_core=3"), "{err}");
        assert!(topo(1, 6, 1, 2)
            .contiguity_error()
            .unwrap()
            .starts_with("cores_per_die=6"));
    }
}
