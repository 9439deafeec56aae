//! The chv virtual machine monitor.
//!
//! `config` is the VM description shared by the CLI and the API; `cli` turns
//! Cloud Hypervisor-style command-line options into it; `vm` builds and owns
//! one guest; `vcpu` runs its vCPU threads; [`run`] is the VMM's control loop
//! that waits for the guest to power off or reset and for host signals.

pub mod cli;
pub mod config;
pub mod device_manager;
pub mod interrupt;
pub mod terminal;
pub mod vcpu;
pub mod vm;

use std::io::Read;
use std::os::fd::AsRawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use config::{ConsoleOutputMode, VmConfig};
use vcpu::VcpuEvent;
use vm::{Vm, VmExit};

/// Errors that stop the VMM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The configuration cannot be used (message names the option).
    #[error("{0}")]
    Config(String),
    /// Loading or configuring the guest payload failed.
    #[error("{0}")]
    Boot(String),
    /// A KVM ioctl failed.
    #[error("KVM: {0}")]
    Kvm(kvm_ioctls::Error),
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(String),
    /// An eventfd could not be created or used.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    /// Devices could not be placed on a bus.
    #[error("device bus: {0}")]
    Bus(devices::BusError),
    /// A vCPU could not be configured.
    #[error("vcpu{0}: {1}")]
    Vcpu(u8, String),
    /// A thread could not be started.
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
    /// The control loop's epoll or signal handling failed.
    #[error("control loop: {0}")]
    ControlLoop(std::io::Error),
    /// A vCPU stopped with an error.
    #[error("{0}")]
    Guest(String),
    /// A device could not be created or plugged in.
    #[error("device {0}")]
    Device(String),
}

const TOKEN_EXIT: u64 = 1;
const TOKEN_RESET: u64 = 2;
const TOKEN_VCPU: u64 = 3;
const TOKEN_SIGNAL: u64 = 4;
const TOKEN_STDIN: u64 = 5;

/// Signals that ask chv to stop; blocked in every thread and read from a
/// signalfd by the control loop.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Blocks the stop signals in the calling thread (threads spawned later
/// inherit the mask) and returns a signalfd that reports them.
fn stop_signal_fd() -> Result<std::fs::File, VmmError> {
    use std::os::fd::FromRawFd;
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

/// Boots `config` and runs it until the guest powers off (Ok) or chv is
/// asked to stop (Ok); a guest reset rebuilds the VM from the same config.
pub fn run(config: &VmConfig) -> Result<VmExit, VmmError> {
    let signals = stop_signal_fd()?;
    vcpu::install_kick_handler().map_err(VmmError::ControlLoop)?;
    let tty_input = config.serial.mode == ConsoleOutputMode::Tty;
    if tty_input {
        terminal::set_raw_mode();
    }
    let result = (|| loop {
        let mut vm = Vm::boot(config)?;
        let exit = control_loop(&vm, &signals, tty_input);
        vm.shutdown();
        match exit? {
            VmExit::Reset => {
                log::info!("guest reset: rebooting the VM");
                continue;
            }
            other => return Ok(other),
        }
    })();
    terminal::restore();
    result
}

fn control_loop(vm: &Vm, signals: &std::fs::File, tty_input: bool) -> Result<VmExit, VmmError> {
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
    add(vm.exit_evt.eventfd().as_raw_fd(), TOKEN_EXIT)?;
    add(vm.reset_evt.eventfd().as_raw_fd(), TOKEN_RESET)?;
    add(vm.vcpu_event_fd.as_raw_fd(), TOKEN_VCPU)?;
    add(signals.as_raw_fd(), TOKEN_SIGNAL)?;
    let mut stdin_open =
        tty_input && vm.serial.is_some() && add(libc::STDIN_FILENO, TOKEN_STDIN).is_ok();

    let mut events = vec![EpollEvent::default(); 8];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(VmmError::ControlLoop(e)),
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_EXIT => return Ok(VmExit::PowerOff),
                TOKEN_RESET => return Ok(VmExit::Reset),
                TOKEN_VCPU => {
                    // The first event decides; the others are vCPUs that
                    // stopped for the same reason.
                    if let Some(event) = vm.take_vcpu_events().into_iter().next() {
                        return match event {
                            VcpuEvent::PowerOff => Ok(VmExit::PowerOff),
                            VcpuEvent::Reset => Ok(VmExit::Reset),
                            VcpuEvent::Error(msg) => Err(VmmError::Guest(msg)),
                        };
                    }
                }
                TOKEN_SIGNAL => {
                    let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
                    let _ = (&*signals).read(&mut buf);
                    log::info!("stop signal received, shutting down");
                    return Ok(VmExit::Stopped);
                }
                TOKEN_STDIN if stdin_open => {
                    let mut buf = [0u8; 64];
                    // Read the descriptor directly: std's buffered stdin could
                    // keep bytes that epoll would then never report again.
                    // SAFETY: `buf` is a valid writable buffer of the given length.
                    let n = unsafe {
                        libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len())
                    };
                    match usize::try_from(n) {
                        Ok(0) | Err(_) => {
                            let _ = epoll.ctl(
                                ControlOperation::Delete,
                                libc::STDIN_FILENO,
                                EpollEvent::default(),
                            );
                            stdin_open = false;
                        }
                        Ok(n) => {
                            if let Some(serial) = &vm.serial {
                                serial
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .enqueue_input(&buf[..n]);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
