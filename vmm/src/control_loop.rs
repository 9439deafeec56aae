//! The VMM thread: owns the VM (if any), and waits on one epoll set for the
//! guest (power-off, reset, vCPU errors), host signals, the serial console's
//! stdin and API requests.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::mpsc::{channel, Receiver};

use api_server::ApiRequest;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{ConsoleOutputMode, VmConfig};
use crate::snapshot::{self, RestoreConfig, VmSnapshot};
use crate::vcpu::{self, VcpuEvent};
use crate::vm::{RestoreMemory, Vm, VmExit, VmSource};
use crate::{seccomp, terminal, VmmError};
use devices::seccomp::{BpfProgram, SeccompMode};
use std::sync::Arc;

const TOKEN_EXIT: u64 = 1;
const TOKEN_RESET: u64 = 2;
const TOKEN_VCPU: u64 = 3;
const TOKEN_SIGNAL: u64 = 4;
const TOKEN_STDIN: u64 = 5;
const TOKEN_API: u64 = 6;

/// Signals that ask chv to stop; blocked in every thread and read from a
/// signalfd by the control loop.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The VM's lifecycle state, named as in Cloud Hypervisor's `vm.info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// A configuration exists but the VM was not booted (or was shut down).
    Created,
    /// vCPUs are running.
    Running,
    /// vCPUs are parked.
    Paused,
}

impl VmState {
    /// The name `vm.info` reports.
    pub fn name(self) -> &'static str {
        match self {
            VmState::Created => "Created",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
        }
    }
}

/// What the control loop should do after handling an event.
pub(crate) enum Next {
    /// Keep waiting.
    Continue,
    /// The VM changed (booted, rebooted, shut down): re-arm the epoll set.
    Rearm,
    /// Leave the loop with this result.
    Exit(VmExit),
}

/// The VMM: the configuration, the VM built from it and the fds the
/// control loop waits on.
pub struct Vmm {
    pub(crate) config: Option<VmConfig>,
    pub(crate) filters: ThreadFilters,
    pub(crate) vm: Option<Vm>,
    pub(crate) state: VmState,
    signals: std::fs::File,
    tty_input: bool,
    /// Stdin is out of the epoll set while the guest's receive FIFO is
    /// full; the loop polls for room instead of dropping input.
    stdin_throttled: bool,
    api: Option<(Receiver<ApiRequest>, EventFd)>,
    /// Descriptors clients passed over the API socket (tap fds) that the
    /// configuration refers to by number; they stay open while the VM
    /// configuration exists, so a reboot can open them again.
    pub(crate) preserved_fds: Vec<std::os::fd::OwnedFd>,
}

/// How often a throttled stdin checks the serial receive FIFO for room.
const STDIN_RETRY_MS: i32 = 5;

/// Seccomp filters for the threads a VM starts (`None`: not filtered).
#[derive(Clone)]
pub struct ThreadFilters {
    /// Installed by every vCPU thread.
    pub vcpu: Option<Arc<BpfProgram>>,
    /// Installed by every virtio device worker thread.
    pub worker: Option<Arc<BpfProgram>>,
}

/// Blocks the stop signals in the calling thread (threads spawned later
/// inherit the mask) and returns a signalfd that reports them.
fn stop_signal_fd() -> Result<std::fs::File, VmmError> {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t we own.
    unsafe { libc::sigemptyset(&mut set) };
    for s in STOP_SIGNALS {
        // SAFETY: `set` is initialized and `s` a valid signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    // SAFETY: valid set pointer; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(VmmError::ControlLoop(std::io::Error::from_raw_os_error(rc)));
    }
    // SAFETY: valid set pointer; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(VmmError::ControlLoop(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Runs chv: boots `config` when given, serves the API when `api_socket`
/// is given, and returns when the guest powers off, a stop signal arrives
/// or the API asks the VMM to shut down. A guest reset rebuilds the VM.
pub fn run(
    config: Option<VmConfig>,
    api_socket: Option<&str>,
    seccomp_mode: SeccompMode,
    restore: Option<RestoreConfig>,
) -> Result<VmExit, VmmError> {
    let signals = stop_signal_fd()?;
    // Without an API socket nothing can hot-plug: describe no slots.
    crate::device_manager::set_hotplug_possible(api_socket.is_some());
    vcpu::install_kick_handler().map_err(VmmError::ControlLoop)?;
    let filters = ThreadFilters {
        vcpu: seccomp::vcpu_filter(seccomp_mode).map_err(VmmError::Seccomp)?,
        worker: seccomp::thread_setup(&seccomp::worker_thread_rules(), seccomp_mode)
            .map_err(VmmError::Seccomp)?,
    };
    let api_filter = seccomp::thread_setup(&seccomp::api_thread_rules(), seccomp_mode)
        .map_err(VmmError::Seccomp)?;
    seccomp::apply_vmm_filter(seccomp_mode).map_err(VmmError::Seccomp)?;
    let api = match api_socket {
        Some(arg) => {
            let listener =
                api_server::listener_from_arg(arg).map_err(|e| VmmError::Api(e.to_string()))?;
            let (tx, rx) = channel();
            let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?;
            let server_wake = wake.try_clone().map_err(VmmError::EventFd)?;
            let setup: Option<api_server::ThreadSetup> = api_filter.map(|f| {
                Box::new(move || {
                    devices::seccomp::apply_current_thread(&f).map_err(|e| e.to_string())
                }) as api_server::ThreadSetup
            });
            let options = api_server::ServerOptions {
                ping_body: Some(crate::api::ping_body()),
                ..Default::default()
            };
            api_server::start_server_with_options(listener, tx, server_wake, setup, options)
                .map_err(|e| VmmError::Api(e.to_string()))?;
            Some((rx, wake))
        }
        None => None,
    };
    let tty_input = config
        .as_ref()
        .is_some_and(|c| c.serial.mode == ConsoleOutputMode::Tty);
    if tty_input {
        terminal::set_raw_mode();
    }
    let mut vmm = Vmm {
        config,
        filters,
        vm: None,
        state: VmState::Created,
        signals,
        tty_input,
        stdin_throttled: false,
        api,
        preserved_fds: Vec::new(),
    };
    let result = vmm.run_loop(restore);
    if let Some(mut vm) = vmm.vm.take() {
        vm.shutdown();
    }
    terminal::restore();
    result
}

impl Vmm {
    /// Builds and starts the VM from the stored configuration.
    pub(crate) fn boot(&mut self) -> Result<(), VmmError> {
        let config = self
            .config
            .as_ref()
            .ok_or_else(|| VmmError::Config("no VM configuration (vm.create first)".into()))?;
        self.vm = Some(Vm::boot(config, &self.filters)?);
        self.state = VmState::Running;
        // A VM created over the API may have its serial port on the tty.
        self.take_serial_input();
        self.record_pty_paths();
        Ok(())
    }

    /// Puts the paths of `Pty`-mode consoles into the configuration, where
    /// `vm.info` shows them (as Cloud Hypervisor does, in `file`).
    pub(crate) fn record_pty_paths(&mut self) {
        let (Some(vm), Some(config)) = (&self.vm, &mut self.config) else {
            return;
        };
        let [serial, console] = &vm.pty_paths;
        if serial.is_some() {
            config.serial.file = serial.clone();
        }
        if console.is_some() {
            config.console.file = console.clone();
        }
    }

    /// Rebuilds the VM a snapshot describes; it stays paused unless
    /// `restore.resume` is set. Nothing is started if any part fails.
    pub(crate) fn restore(&mut self, restore: &RestoreConfig) -> Result<(), VmmError> {
        let (dir, snap) =
            Self::read_snapshot(restore).map_err(|e| VmmError::Snapshot(e.to_string()))?;
        self.restore_snapshot(restore, &dir, snap)
    }

    /// Reads and checks the snapshot `restore` names (the part of a restore
    /// that fails on bad input rather than on the host).
    pub(crate) fn read_snapshot(
        restore: &RestoreConfig,
    ) -> Result<(std::path::PathBuf, VmSnapshot), snapshot::SnapshotError> {
        let dir = snapshot::dir_from_url(&restore.source_url, "source_url")?;
        let snap = VmSnapshot::read(&dir)?;
        snap.config.validate().map_err(|e| {
            snapshot::SnapshotError::Invalid(format!("the saved VM config is invalid: {e}"))
        })?;
        Ok((dir, snap))
    }

    /// Builds the VM of an already read snapshot (see [`Self::restore`]).
    pub(crate) fn restore_snapshot(
        &mut self,
        restore: &RestoreConfig,
        dir: &std::path::Path,
        mut snap: VmSnapshot,
    ) -> Result<(), VmmError> {
        let started = std::time::Instant::now();
        restore
            .apply_overrides(&mut snap.config)
            .map_err(|e| VmmError::Snapshot(e.to_string()))?;
        let vm = Vm::build(
            &snap.config,
            &self.filters,
            VmSource::Restore {
                snapshot: &snap,
                memory: RestoreMemory::File {
                    dir,
                    mode: restore.memory_mode(),
                },
            },
        )?;
        self.config = Some(snap.config);
        self.state = VmState::Paused;
        self.take_serial_input();
        if restore.resume {
            vm.resume();
            self.state = VmState::Running;
        }
        self.vm = Some(vm);
        self.record_pty_paths();
        log::info!(
            "restored {} in {:.1} ms",
            dir.display(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        Ok(())
    }

    /// Forwards stdin to the guest's serial port when the VM's config (one
    /// that came with a restore or a migration) asks for a tty serial.
    pub(crate) fn take_serial_input(&mut self) {
        let tty = self
            .config
            .as_ref()
            .is_some_and(|c| c.serial.mode == ConsoleOutputMode::Tty);
        if tty && !self.tty_input {
            terminal::set_raw_mode();
            self.tty_input = true;
        }
    }

    /// Stops and drops the VM, keeping its configuration.
    pub(crate) fn shutdown_vm(&mut self) {
        if let Some(mut vm) = self.vm.take() {
            vm.shutdown();
        }
        self.state = VmState::Created;
    }

    fn run_loop(&mut self, restore: Option<RestoreConfig>) -> Result<VmExit, VmmError> {
        if let Some(restore) = restore {
            self.restore(&restore)?;
        } else if self.config.is_some() {
            self.boot()?;
        }
        loop {
            let epoll = self.arm()?;
            loop {
                match self.wait(&epoll)? {
                    Next::Continue => {}
                    Next::Rearm => break,
                    Next::Exit(exit) => return Ok(exit),
                }
            }
        }
    }

    /// An epoll set for the current VM (if any), the signals and the API.
    fn arm(&mut self) -> Result<Epoll, VmmError> {
        let epoll = Epoll::new().map_err(VmmError::ControlLoop)?;
        let add = |fd: i32, token: u64| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(VmmError::ControlLoop)
        };
        add(self.signals.as_raw_fd(), TOKEN_SIGNAL)?;
        if let Some((_, wake)) = &self.api {
            add(wake.as_raw_fd(), TOKEN_API)?;
        }
        if let Some(vm) = &self.vm {
            add(vm.exit_evt.eventfd().as_raw_fd(), TOKEN_EXIT)?;
            add(vm.reset_evt.eventfd().as_raw_fd(), TOKEN_RESET)?;
            add(vm.vcpu_event_fd.as_raw_fd(), TOKEN_VCPU)?;
            if self.tty_input && vm.serial.is_some() {
                // Fails for stdin that epoll cannot watch (/dev/null, files):
                // then there is simply no console input.
                let _ = add(libc::STDIN_FILENO, TOKEN_STDIN);
            }
        }
        self.stdin_throttled = false;
        Ok(epoll)
    }

    /// Room in the guest's serial receive FIFO (0 without a serial port).
    fn serial_room(&self) -> usize {
        self.vm
            .as_ref()
            .and_then(|vm| vm.serial.as_ref())
            .map_or(0, |s| {
                s.lock().unwrap_or_else(|e| e.into_inner()).input_capacity()
            })
    }

    fn wait(&mut self, epoll: &Epoll) -> Result<Next, VmmError> {
        let mut events = [EpollEvent::default(); 8];
        let timeout = if self.stdin_throttled {
            STDIN_RETRY_MS
        } else {
            -1
        };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(Next::Continue),
            Err(e) => return Err(VmmError::ControlLoop(e)),
        };
        if self.stdin_throttled && self.serial_room() > 0 {
            let ev = EpollEvent::new(EventSet::IN, TOKEN_STDIN);
            if epoll
                .ctl(ControlOperation::Add, libc::STDIN_FILENO, ev)
                .is_ok()
            {
                self.stdin_throttled = false;
            }
        }
        for ev in &events[..n] {
            let next = match ev.data() {
                TOKEN_EXIT => Next::Exit(VmExit::PowerOff),
                TOKEN_RESET => self.guest_reset()?,
                TOKEN_VCPU => self.vcpu_events()?,
                TOKEN_SIGNAL => {
                    let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
                    let _ = (&self.signals).read(&mut buf);
                    log::info!("stop signal received, shutting down");
                    Next::Exit(VmExit::Stopped)
                }
                TOKEN_STDIN => self.stdin_input(epoll),
                TOKEN_API => self.api_requests(),
                _ => Next::Continue,
            };
            if !matches!(next, Next::Continue) {
                return Ok(next);
            }
        }
        Ok(Next::Continue)
    }

    fn guest_reset(&mut self) -> Result<Next, VmmError> {
        log::info!("guest reset: rebooting the VM");
        self.shutdown_vm();
        self.boot()?;
        Ok(Next::Rearm)
    }

    fn vcpu_events(&mut self) -> Result<Next, VmmError> {
        let Some(vm) = &mut self.vm else {
            return Ok(Next::Continue);
        };
        // The first event decides; the others are vCPUs that stopped for
        // the same reason.
        match vm.take_vcpu_events().into_iter().next() {
            Some(VcpuEvent::PowerOff) => Ok(Next::Exit(VmExit::PowerOff)),
            Some(VcpuEvent::Reset) => self.guest_reset(),
            Some(VcpuEvent::Error(msg)) => Err(VmmError::Guest(msg)),
            None => Ok(Next::Continue),
        }
    }

    fn stdin_input(&mut self, epoll: &Epoll) -> Next {
        let mut buf = [0u8; 64];
        let room = self.serial_room().min(buf.len());
        if room == 0 {
            // The guest has not drained the FIFO: leave the bytes in stdin
            // and look again shortly (see `wait`).
            let _ = epoll.ctl(
                ControlOperation::Delete,
                libc::STDIN_FILENO,
                EpollEvent::default(),
            );
            self.stdin_throttled = true;
            return Next::Continue;
        }
        // Read the descriptor directly: std's buffered stdin could keep
        // bytes that epoll would then never report again.
        // SAFETY: `buf` is valid and writable for `room` <= its length bytes.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), room) };
        match usize::try_from(n) {
            Ok(0) | Err(_) => {
                let _ = epoll.ctl(
                    ControlOperation::Delete,
                    libc::STDIN_FILENO,
                    EpollEvent::default(),
                );
            }
            Ok(n) => {
                if let Some(serial) = self.vm.as_ref().and_then(|vm| vm.serial.as_ref()) {
                    serial
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .enqueue_input(&buf[..n]);
                }
            }
        }
        Next::Continue
    }

    fn api_requests(&mut self) -> Next {
        let Some((rx, wake)) = &self.api else {
            return Next::Continue;
        };
        let _ = wake.read();
        let requests: Vec<ApiRequest> = rx.try_iter().collect();
        let mut next = Next::Continue;
        for req in requests {
            let (response, after) = self.handle_api(req.endpoint, &req.body, req.fds);
            // The API thread may have given up waiting; nothing to do then.
            let _ = req.respond.send(response);
            if matches!(after, Next::Exit(_)) {
                // Exit only once the API thread has written the answer
                // (vmm.shutdown's client waits for it).
                let _ = req.written.recv_timeout(std::time::Duration::from_secs(1));
            }
            if !matches!(after, Next::Continue) {
                next = after;
            }
        }
        next
    }
}
