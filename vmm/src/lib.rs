//! The chv virtual machine monitor.
//!
//! `config` is the VM description shared by the CLI and the API; `cli` turns
//! Cloud Hypervisor-style command-line options into it; `vm` builds and owns
//! one guest; `vcpu` runs its vCPU threads; `control_loop` is the VMM thread
//! that waits for the guest, for host signals and for API requests, which
//! `api` answers.

pub mod api;
pub mod cli;
pub mod config;
pub mod console_host;
pub mod control_loop;
pub mod device_manager;
pub mod generation_id;
pub mod guest_profile;
pub mod interrupt;
pub mod memory;
pub mod migration;
pub mod platform_devices;
pub mod seccomp;
pub mod snapshot;
pub mod terminal;
pub mod vcpu;
pub mod vcpu_placement;
pub mod vm;

pub use control_loop::run;

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
    /// A seccomp filter could not be built or installed.
    #[error("{0}")]
    Seccomp(devices::seccomp::SeccompError),
    /// A vCPU stopped with an error.
    #[error("{0}")]
    Guest(String),
    /// The API socket could not be set up.
    #[error("--api-socket: {0}")]
    Api(String),
    /// A device could not be created or plugged in.
    #[error("device {0}")]
    Device(String),
    /// A snapshot could not be restored.
    #[error("restore: {0}")]
    Snapshot(String),
}
