//! Adding and removing vCPUs of a running VM through ACPI processor hotplug
//! (`vm.resize` with `desired_vcpus`).
//!
//! Adding: KVM_CREATE_VCPU (once per id: KVM cannot destroy a vCPU, so an
//! id added again reuses its parked fd), the same CPUID/MSR/LAPIC setup as
//! the boot vCPUs, and a thread that enters `KVM_RUN`. The new vCPU waits
//! for INIT/SIPI in the in-kernel LAPIC; the guest sends them when it
//! onlines the CPU. The controller marks it enabled and inserting, and the
//! GED interrupt makes the guest's AML notify the processor device.
//!
//! Removing: the controller marks the highest vCPUs removing; the guest
//! offlines them and runs their `_EJ0`. The eject (on the vCPU thread that
//! ran the AML) records the id and wakes the VMM loop, which stops and
//! joins that vCPU's thread and parks its fd ([`VcpuHotplug::reap`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arch::AcpiHotplugLayout;
use devices::acpi::{CpuHotplugController, CpuHotplugState, GedEvents, GED_CPU_HOTPLUG};
use devices::Bus;
use kvm_ioctls::{VcpuFd, VmFd};

use super::{spawn_shared, PauseGate, VcpuContext, VcpuHandle};

// The AML's GED dispatch and the device agree on the event bit and ports.
const _: () = assert!(match arch::PLATFORM.acpi_hotplug {
    Some(l) => {
        l.event_cpu_hotplug == GED_CPU_HOTPLUG
            && l.cpu_hotplug_port_size as u64 == devices::acpi::CPU_HOTPLUG_REGISTER_SIZE
    }
    None => true,
});

/// How long the VMM waits for a retired vCPU thread to end.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a resize was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    /// The target is not in `1..=max_vcpus`.
    #[error("desired_vcpus={desired}: must be between 1 and max_vcpus ({max})")]
    OutOfRange {
        /// The requested count.
        desired: u8,
        /// The configured maximum.
        max: u8,
    },
    /// The guest has not ejected every vCPU it was asked to remove yet.
    #[error(
        "a vCPU removal is still in progress in the guest; retry once it has ejected the vCPU"
    )]
    RemovalPending,
    /// The VM was built without CPU hotplug (max_vcpus equal to boot_vcpus).
    #[error(
        "desired_vcpus={desired}: this VM cannot change its vCPU count (it was started \
         with {current} vCPUs and max_vcpus={current}; boot with --cpus boot=N,max=M, M > N)"
    )]
    NotHotpluggable {
        /// The requested count.
        desired: u8,
        /// The vCPU count (boot = max).
        current: u8,
    },
    /// A vCPU could not be created, configured or started.
    #[error("vcpu{0}: {1}")]
    Vcpu(u8, String),
    /// The guest could not be interrupted.
    #[error("cannot raise the GED interrupt: {0}")]
    Notify(std::io::Error),
}

/// What the hotplug path needs to build vCPUs after boot.
pub struct VcpuSetup {
    /// The KVM VM.
    pub vm_fd: Arc<VmFd>,
    /// Shared with every vCPU thread.
    pub ctx: VcpuContext,
    /// Builds each vCPU's initial state, as for the boot vCPUs.
    pub cpu_config: Arc<arch::CpuConfig>,
}

/// The VMM side of vCPU hotplug for one VM.
pub struct VcpuHotplug {
    setup: VcpuSetup,
    max: u8,
    state: CpuHotplugState,
    ged: GedEvents,
    /// vCPUs that ran before and have no thread now, by id.
    parked: Vec<Option<Arc<Mutex<VcpuFd>>>>,
    /// vCPUs the guest ejected whose threads were not retired yet.
    ejected: Arc<Mutex<Vec<u8>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VcpuHotplug {
    /// Puts the CPU hotplug controller (`boot` of `max` vCPUs enabled) on
    /// `io_bus` at the port of `layout`; events go through `ged`.
    pub fn new(
        setup: VcpuSetup,
        boot: u8,
        max: u8,
        io_bus: &Bus,
        layout: &AcpiHotplugLayout,
        ged: GedEvents,
    ) -> Result<Self, devices::BusError> {
        let state = CpuHotplugState::new(boot, max);
        let ejected = Arc::new(Mutex::new(Vec::new()));
        let (list, wake) = (ejected.clone(), setup.ctx.event_fd.clone());
        let controller = CpuHotplugController::new(
            state.clone(),
            Box::new(move |cpu| {
                lock(&list).push(cpu);
                if let Err(e) = wake.write(1) {
                    log::error!("vcpu{cpu} ejected, but the VMM loop cannot be woken: {e}");
                }
            }),
        );
        io_bus.insert(
            Arc::new(Mutex::new(controller)),
            u64::from(layout.cpu_hotplug_port),
            u64::from(layout.cpu_hotplug_port_size),
        )?;
        Ok(Self {
            setup,
            max,
            state,
            ged,
            parked: (0..max).map(|_| None).collect(),
            ejected,
        })
    }

    /// The most vCPUs the VM can have.
    pub fn max_vcpus(&self) -> u8 {
        self.max
    }

    /// Whether the guest still has to eject a vCPU it was asked to remove.
    pub fn removal_pending(&self) -> bool {
        self.state.removal_pending()
    }

    /// Retires the threads of the vCPUs the guest ejected since the last
    /// call: sets their flag and kicks them out of `KVM_RUN` (an offline
    /// vCPU sits in HLT inside KVM).
    fn stop_ejected(&self, vcpus: &[VcpuHandle], pause: &PauseGate) {
        let ids: Vec<u8> = std::mem::take(&mut *lock(&self.ejected));
        for id in ids {
            if let Some(h) = vcpus.iter().find(|h| h.id == id) {
                log::info!("vcpu{id}: ejected by the guest, stopping its thread");
                h.retire.store(true, Ordering::Release);
                pause.wake_all();
                h.kick();
            }
        }
    }

    /// Stops and joins the threads of the vCPUs the guest ejected, drops
    /// their handles from `vcpus` and parks their fds for a later re-add.
    pub fn reap(&mut self, vcpus: &mut Vec<VcpuHandle>, pause: &PauseGate) {
        self.stop_ejected(vcpus, pause);
        let deadline = Instant::now() + RETIRE_TIMEOUT;
        let mut kept = Vec::with_capacity(vcpus.len());
        for h in vcpus.drain(..) {
            if !h.retire.load(Ordering::Acquire) {
                kept.push(h);
                continue;
            }
            while !h.thread.is_finished() && Instant::now() < deadline {
                h.kick();
                std::thread::sleep(Duration::from_millis(1));
            }
            if !h.thread.is_finished() {
                log::warn!("vcpu{}: retired thread did not stop yet", h.id);
                kept.push(h);
                continue;
            }
            let id = h.id;
            let _ = h.thread.join();
            if let Some(slot) = self.parked.get_mut(usize::from(id)) {
                *slot = Some(h.fd);
            }
        }
        *vcpus = kept;
    }

    /// Brings the VM to `desired` vCPUs: starts the missing ones (and tells
    /// the guest), or asks the guest to eject the highest ones. `vcpus` are
    /// the running vCPU threads, ordered by id.
    pub fn resize(
        &mut self,
        vcpus: &mut Vec<VcpuHandle>,
        pause: &PauseGate,
        desired: u8,
    ) -> Result<(), ResizeError> {
        if desired == 0 || desired > self.max {
            return Err(ResizeError::OutOfRange {
                desired,
                max: self.max,
            });
        }
        self.reap(vcpus, pause);
        if self.state.removal_pending() {
            return Err(ResizeError::RemovalPending);
        }
        let mut changed = false;
        let mut result = Ok(());
        for id in 0..desired {
            if vcpus.iter().any(|h| h.id == id) {
                continue;
            }
            match self.start(id) {
                Ok(h) => {
                    let at = vcpus.partition_point(|v| v.id < id);
                    vcpus.insert(at, h);
                    changed = true;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        for h in vcpus.iter().filter(|h| h.id >= desired) {
            match self.state.request_removal(h.id) {
                Ok(()) => changed = true,
                Err(e) => log::warn!("vcpu{}: cannot request removal: {e}", h.id),
            }
        }
        if changed {
            self.ged
                .raise(GED_CPU_HOTPLUG)
                .map_err(ResizeError::Notify)?;
        }
        result
    }

    /// Creates (or takes back) vCPU `id`, configures it as an AP waiting
    /// for INIT/SIPI, starts its thread and marks it inserted.
    fn start(&mut self, id: u8) -> Result<VcpuHandle, ResizeError> {
        let err = |e: String| ResizeError::Vcpu(id, e);
        let fd = match self.parked.get_mut(usize::from(id)).and_then(Option::take) {
            Some(fd) => fd,
            None => {
                let s = &self.setup;
                let vcpu = s
                    .vm_fd
                    .create_vcpu(u64::from(id))
                    .map_err(|e| err(format!("KVM_CREATE_VCPU: {e}")))?;
                s.cpu_config
                    .configure(&vcpu, id, None)
                    .map_err(|e| err(e.to_string()))?;
                Arc::new(Mutex::new(vcpu))
            }
        };
        match spawn_shared(id, fd.clone(), self.setup.ctx.clone()) {
            Ok(h) => {
                self.state.insert(id).map_err(|e| err(e.to_string()))?;
                log::info!("vcpu{id}: hot-added");
                Ok(h)
            }
            Err(e) => {
                if let Some(slot) = self.parked.get_mut(usize::from(id)) {
                    *slot = Some(fd);
                }
                Err(err(format!("cannot start its thread: {e}")))
            }
        }
    }
}
