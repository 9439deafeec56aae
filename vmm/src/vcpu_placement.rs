//! Where vCPU threads run: host CPU affinity (`cpus.affinity`) and Linux
//! core scheduling (`cpus.core_scheduling`, `PR_SCHED_CORE`), applied by
//! each vCPU thread to itself before it installs its seccomp filter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crate::config::{CoreScheduling, CpusConfig};

use libc::{
    PR_SCHED_CORE, PR_SCHED_CORE_CREATE, PR_SCHED_CORE_SCOPE_THREAD, PR_SCHED_CORE_SHARE_FROM,
};

/// The placement of every vCPU of one VM.
#[derive(Debug, Default)]
pub struct VcpuPlacement {
    affinity: HashMap<u8, Vec<usize>>,
    core_scheduling: Option<CoreScheduling>,
    /// Thread id of the vCPU that made the VM's cookie (`Vm` mode).
    cookie_owner: AtomicI32,
    /// Set once core scheduling was found missing, so it is logged once.
    unavailable: AtomicBool,
}

impl VcpuPlacement {
    /// The placement `cpus` asks for.
    pub fn new(cpus: &CpusConfig) -> Self {
        Self {
            affinity: cpus
                .affinity
                .iter()
                .flatten()
                .map(|a| (a.vcpu, a.host_cpus.clone()))
                .collect(),
            core_scheduling: Some(cpus.core_scheduling),
            cookie_owner: AtomicI32::new(0),
            unavailable: AtomicBool::new(false),
        }
    }

    /// Applies vCPU `id`'s affinity and core-scheduling cookie to the
    /// calling thread. Affinity failures are errors (the user asked for
    /// those CPUs); a host kernel without core scheduling is logged once.
    pub fn apply_to_current_thread(&self, id: u8) -> Result<(), String> {
        if let Some(cpus) = self.affinity.get(&id) {
            set_affinity(cpus).map_err(|e| {
                format!("cpus.affinity: vcpu{id} cannot be pinned to host CPUs {cpus:?}: {e}")
            })?;
        }
        match self.core_scheduling {
            None | Some(CoreScheduling::Off) => Ok(()),
            Some(CoreScheduling::Vcpu) => {
                self.core_sched(id, PR_SCHED_CORE_CREATE, 0);
                Ok(())
            }
            Some(CoreScheduling::Vm) => {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
                match self.cookie_owner.compare_exchange(
                    0,
                    tid,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => self.core_sched(id, PR_SCHED_CORE_CREATE, 0),
                    Err(owner) => self.core_sched(id, PR_SCHED_CORE_SHARE_FROM, owner),
                }
                Ok(())
            }
        }
    }

    fn core_sched(&self, id: u8, op: libc::c_int, pid: i32) {
        // SAFETY: PR_SCHED_CORE takes integer arguments only.
        let rc = unsafe {
            libc::prctl(
                PR_SCHED_CORE,
                op as libc::c_ulong,
                pid as libc::c_ulong,
                PR_SCHED_CORE_SCOPE_THREAD as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if !self.unavailable.swap(true, Ordering::AcqRel) {
                log::info!(
                    "cpus.core_scheduling: PR_SCHED_CORE failed on vcpu{id} ({err}); this host \
                     kernel has no core scheduling (CONFIG_SCHED_CORE), so vCPUs share cores \
                     with other tasks"
                );
            }
        }
    }
}

fn set_affinity(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: config validation keeps `cpu` below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a live cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CpuAffinity;

    #[test]
    fn pins_the_calling_thread() {
        let cpus = CpusConfig {
            affinity: Some(vec![CpuAffinity {
                vcpu: 1,
                host_cpus: vec![0],
            }]),
            ..CpusConfig::default()
        };
        let placement = VcpuPlacement::new(&cpus);
        std::thread::spawn(move || {
            placement.apply_to_current_thread(1).unwrap();
            // SAFETY: sched_getcpu has no preconditions.
            assert_eq!(unsafe { libc::sched_getcpu() }, 0);
            // vCPU 0 has no affinity: nothing changes.
            placement.apply_to_current_thread(0).unwrap();
        })
        .join()
        .unwrap();
        let bad = VcpuPlacement::new(&CpusConfig {
            affinity: Some(vec![CpuAffinity {
                vcpu: 0,
                host_cpus: vec![1000],
            }]),
            ..CpusConfig::default()
        });
        let err = bad.apply_to_current_thread(0).unwrap_err();
        assert!(err.starts_with("cpus.affinity: vcpu0"), "{err}");
    }
}
