//! One thread per vCPU: runs `KVM_RUN` and routes each exit to the buses.
//! [`hotplug`] adds and removes vCPUs of a running VM.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use devices::legacy::GuestStopEvent;
use devices::Bus;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

#[path = "vcpu_hotplug.rs"]
pub mod hotplug;

/// KVM_SYSTEM_EVENT types (from the KVM API documentation).
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// Why a vCPU thread stopped running the guest on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEvent {
    /// The guest asked to power off.
    PowerOff,
    /// The guest reset the machine (triple fault or a reset request).
    Reset,
    /// The vCPU hit something chv cannot continue from.
    Error(String),
}

/// Holds vCPU threads outside `KVM_RUN` while the VM is paused.
#[derive(Default)]
pub struct PauseGate {
    paused: Mutex<bool>,
    changed: Condvar,
    parked: AtomicUsize,
}

impl PauseGate {
    /// Asks every vCPU to park; the caller then kicks them out of KVM_RUN
    /// and waits for [`Self::parked`] to reach the vCPU count.
    pub fn close(&self) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    /// Lets parked vCPUs run again.
    pub fn open(&self) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.changed.notify_all();
    }

    /// How many vCPU threads are parked right now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Acquire)
    }

    /// Called by a vCPU thread between runs: blocks while the gate is closed
    /// (or until `stop` or `retire` is set, which `wake_all` makes it notice).
    fn wait_while_closed(&self, stop: &AtomicBool, retire: &AtomicBool) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if !*paused {
            return;
        }
        self.parked.fetch_add(1, Ordering::AcqRel);
        while *paused && !stop.load(Ordering::Acquire) && !retire.load(Ordering::Acquire) {
            paused = self.changed.wait(paused).unwrap_or_else(|e| e.into_inner());
        }
        self.parked.fetch_sub(1, Ordering::AcqRel);
    }

    /// Wakes parked threads so they re-check the stop flag.
    pub fn wake_all(&self) {
        let _guard = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        self.changed.notify_all();
    }
}

/// What the vCPU threads share with the VM that started them.
#[derive(Clone)]
pub struct VcpuContext {
    /// Port I/O bus.
    pub io_bus: Arc<Bus>,
    /// MMIO bus.
    pub mmio_bus: Arc<Bus>,
    /// Set when the VMM wants every vCPU thread to return.
    pub stop: Arc<AtomicBool>,
    /// Where vCPU threads report why they stopped.
    pub events: Sender<VcpuEvent>,
    /// Written after every event so the VMM's epoll loop wakes up.
    pub event_fd: Arc<EventFd>,
    /// Guest power-off and reset requests: once one is raised, no vCPU
    /// re-enters the guest.
    pub guest_stops: [GuestStopEvent; 2],
    /// Closed while the VM is paused.
    pub pause: Arc<PauseGate>,
    /// Seccomp filter every vCPU thread installs before running the guest.
    pub seccomp_filter: Option<Arc<devices::seccomp::BpfProgram>>,
    /// Host CPU affinity and core scheduling of each vCPU thread.
    pub placement: Arc<crate::vcpu_placement::VcpuPlacement>,
}

impl VcpuContext {
    fn report(&self, event: VcpuEvent) {
        // The receiver lives as long as the VM; a failed send means the VM is
        // already being torn down, which is what the event asks for anyway.
        let _ = self.events.send(event);
        if let Err(e) = self.event_fd.write(1) {
            log::error!("cannot wake the VMM loop: {e}");
        }
    }
}

/// Handle to a running vCPU thread.
pub struct VcpuHandle {
    /// The vCPU id (also its APIC id and ACPI processor UID).
    pub id: u8,
    /// The thread running the vCPU.
    pub thread: JoinHandle<()>,
    /// Set (then the thread kicked) to end this one thread, e.g. when the
    /// guest ejected the vCPU; the vCPU itself stays for a later re-add.
    pub retire: Arc<AtomicBool>,
    /// The vCPU itself. Its thread holds the lock only while inside
    /// `KVM_RUN` or handling an exit, so the VMM can read and write the
    /// vCPU's state (snapshot, restore) while the VM is paused.
    pub fd: Arc<Mutex<VcpuFd>>,
}

impl VcpuHandle {
    /// Kicks the thread out of `KVM_RUN` so it re-checks its flags.
    pub fn kick(&self) {
        // SAFETY: the pthread handle is alive (the thread has not been
        // joined: joining consumes the handle) and the kick signal has a
        // handler installed.
        unsafe { libc::pthread_kill(self.thread.as_pthread_t(), kick_signal()) };
    }
}

/// Signal used to kick a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the no-op handler for [`kick_signal`]; its only purpose is to
/// make `KVM_RUN` return `EINTR`.
pub fn install_kick_handler() -> std::io::Result<()> {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Starts a thread that runs `vcpu` until the guest stops it or `ctx.stop`.
pub fn spawn(id: u8, vcpu: VcpuFd, ctx: VcpuContext) -> std::io::Result<VcpuHandle> {
    spawn_shared(id, Arc::new(Mutex::new(vcpu)), ctx)
}

/// Like [`spawn`], for a vCPU that already ran on an earlier thread (a
/// vCPU re-added after an eject: KVM cannot destroy vCPUs, so the same fd
/// is used again).
pub fn spawn_shared(
    id: u8,
    fd: Arc<Mutex<VcpuFd>>,
    ctx: VcpuContext,
) -> std::io::Result<VcpuHandle> {
    let vcpu = fd.clone();
    let retire = Arc::new(AtomicBool::new(false));
    let retired = retire.clone();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            if ctx.seccomp_filter.is_none() {
                crate::guest_profile::arm_current_thread(kick_signal());
            } else if crate::guest_profile::enabled() {
                log::warn!("CHV_GUEST_PROFILE needs --seccomp false; not sampling vcpu{id}");
            }
            if let Err(e) = ctx.placement.apply_to_current_thread(id) {
                ctx.report(VcpuEvent::Error(e));
                return;
            }
            if let Some(filter) = &ctx.seccomp_filter {
                if let Err(e) = devices::seccomp::apply_current_thread(filter) {
                    ctx.report(VcpuEvent::Error(format!("vcpu{id}: {e}")));
                    return;
                }
            }
            if let Some(event) = run_loop(id, &vcpu, &ctx, &retired) {
                ctx.report(event);
            }
        })?;
    Ok(VcpuHandle {
        id,
        thread,
        retire,
        fd,
    })
}

fn run_loop(
    id: u8,
    shared: &Mutex<VcpuFd>,
    ctx: &VcpuContext,
    retire: &AtomicBool,
) -> Option<VcpuEvent> {
    loop {
        ctx.pause.wait_while_closed(&ctx.stop, retire);
        if ctx.stop.load(Ordering::Acquire)
            || retire.load(Ordering::Acquire)
            || ctx.guest_stops.iter().any(|e| e.is_raised())
        {
            return None;
        }
        let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
        let vcpu = &mut *guard;
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                ctx.io_bus.read(u64::from(port), data);
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                ctx.io_bus.write(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !ctx.mmio_bus.read(addr, data) {
                    log::debug!("vcpu{id}: unhandled MMIO read at {addr:#x}");
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !ctx.mmio_bus.write(addr, data) {
                    log::debug!("vcpu{id}: unhandled MMIO write at {addr:#x}");
                }
            }
            Ok(VcpuExit::Shutdown) => {
                log::info!("vcpu{id}: triple fault or shutdown, resetting the VM");
                return Some(VcpuEvent::Reset);
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                return Some(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => VcpuEvent::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => VcpuEvent::Reset,
                    KVM_SYSTEM_EVENT_CRASH => VcpuEvent::Error(format!("vcpu{id}: guest crashed")),
                    other => VcpuEvent::Error(format!("vcpu{id}: unknown system event {other}")),
                });
            }
            Ok(VcpuExit::Hlt) => {
                // With the in-kernel irqchip HLT is handled by KVM; seeing it
                // here means the vCPU has nothing left to do.
                log::debug!("vcpu{id}: HLT exit");
            }
            Ok(VcpuExit::InternalError) => return Some(internal_error(id, vcpu)),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Some(VcpuEvent::Error(format!(
                    "vcpu{id}: KVM failed to enter the guest (hardware reason {reason:#x}, host cpu {cpu})"
                )));
            }
            Ok(other) => {
                return Some(VcpuEvent::Error(format!(
                    "vcpu{id}: unexpected KVM exit {other:?}"
                )));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                if crate::guest_profile::armed() {
                    if let Ok(ip) = arch::instruction_pointer(vcpu) {
                        crate::guest_profile::record(id, ip);
                    }
                }
            }
            Err(e) => {
                return Some(VcpuEvent::Error(format!("vcpu{id}: KVM_RUN failed: {e}")));
            }
        }
    }
}

fn internal_error(id: u8, vcpu: &mut VcpuFd) -> VcpuEvent {
    // SAFETY: KVM set exit_reason to KVM_EXIT_INTERNAL_ERROR, so the `internal`
    // member of the exit union is the one it filled in.
    let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
    let ip = arch::instruction_pointer(vcpu)
        .map(|ip| format!("{ip:#x}"))
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let mut msg = format!(
        "vcpu{id}: KVM internal error (suberror {suberror}{}) at guest instruction pointer {ip}",
        if suberror == 1 {
            ": emulation failure"
        } else {
            ""
        }
    );
    if let Some(hint) = arch::internal_error_hint() {
        msg.push_str(". ");
        msg.push_str(&hint);
    }
    VcpuEvent::Error(msg)
}
