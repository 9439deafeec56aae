//! The system calls each chv thread may make, as seccomp allow-lists.
//!
//! The lists were derived by running chv under `strace -f` (test guest
//! scenarios: power-off, every reset path, triple fault, hostile I/O,
//! serial to a tty and to a file, log file, stop signals; the Linux guest kit
//! with 2 vCPUs rebooting repeatedly) plus the error paths read from the
//! code (internal-error report, panic hook, abort).
//!
//! The main thread's filter is installed in [`crate::run`] before the first
//! boot. A guest reset rebuilds the VM on the main thread, so its list has to
//! allow everything `Vm::boot` does anyway; installing it before the first
//! boot means every start exercises that list (a missing call shows up at
//! once, not at the first guest reboot) and loading the kernel image is
//! filtered too.
//!
//! Filters are inherited and stack: vCPU threads start under the main
//! thread's filter and add their own, so a vCPU system call must pass both.
//! [`vmm_thread_rules`] therefore includes [`vcpu_thread_rules`]; a test
//! checks it.

use std::sync::Arc;

use devices::seccomp::{
    apply_current_thread, build, common_rules, install_sigsys_handler, virtio_worker_rules,
    BpfProgram, SeccompError, SeccompMode, ThreadRules,
};
use kvm_bindings::{kvm_dirty_log, kvm_irqfd, kvm_userspace_memory_region, KVMIO};

/// Request numbers of the architecture-neutral KVM ioctls chv issues (from
/// the KVM API headers); the others come from [`arch::seccomp`].
mod nr {
    use super::*;
    vmm_sys_util::ioctl_io_nr!(KVM_GET_API_VERSION, KVMIO, 0x00);
    vmm_sys_util::ioctl_io_nr!(KVM_CREATE_VM, KVMIO, 0x01);
    vmm_sys_util::ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
    vmm_sys_util::ioctl_io_nr!(KVM_GET_VCPU_MMAP_SIZE, KVMIO, 0x04);
    vmm_sys_util::ioctl_io_nr!(KVM_CREATE_VCPU, KVMIO, 0x41);
    vmm_sys_util::ioctl_iow_nr!(
        KVM_SET_USER_MEMORY_REGION,
        KVMIO,
        0x46,
        kvm_userspace_memory_region
    );
    vmm_sys_util::ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
    vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    vmm_sys_util::ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_bindings::kvm_ioeventfd);
    vmm_sys_util::ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);
    vmm_sys_util::ioctl_iow_nr!(
        KVM_SET_GSI_ROUTING,
        KVMIO,
        0x6a,
        kvm_bindings::kvm_irq_routing
    );
}

/// KVM ioctls issued while the guest programs its PCI devices, from the vCPU
/// thread that trapped the access: MSI-X routes and irqfds, and moving
/// ioeventfds when the guest moves a BAR.
fn pci_runtime_ioctls() -> Vec<u64> {
    [
        nr::KVM_SET_GSI_ROUTING(),
        nr::KVM_IOEVENTFD(),
        nr::KVM_IRQFD(),
    ]
    .to_vec()
}

/// What a vCPU thread needs to activate a virtio device when the driver sets
/// DRIVER_OK: creating the worker's epoll set and kill eventfd, starting its
/// thread (which installs its own filter under this one, so the worker's
/// calls must pass here too).
fn device_activation_rules() -> ThreadRules {
    worker_thread_rules()
        .allow(&[
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_epoll_create1,
            libc::SYS_eventfd2,
            libc::SYS_rseq,
            libc::SYS_set_robust_list,
            libc::SYS_sched_getaffinity,
            libc::SYS_getrandom,
        ])
        .allow_ioctls(&[libc::TIOCGWINSZ])
        .allow_arg(
            libc::SYS_prctl,
            0,
            &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
        )
        .allow_arg(
            libc::SYS_seccomp,
            0,
            &[u64::from(libc::SECCOMP_SET_MODE_FILTER)],
        )
}

/// A virtio device worker: the event loop and the I/O its device does
/// (disk reads/writes/flushes/discards, entropy reads, console writes and
/// tty input).
pub fn worker_thread_rules() -> ThreadRules {
    virtio_worker_rules(
        "virtio",
        &[
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_epoll_create1,
            libc::SYS_eventfd2,
            libc::SYS_timerfd_create,
            libc::SYS_timerfd_settime,
            libc::SYS_timerfd_gettime,
            // vsock: host Unix sockets of the hybrid backend.
            libc::SYS_accept4,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_shutdown,
            // vhost-user: requests with fds on the backend's socket, the
            // state-transfer pipe, the watchdog's shutdown of a stalled one.
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            libc::SYS_setsockopt,
            libc::SYS_pipe2,
            libc::SYS_ppoll,
        ],
    )
    .allow_ioctls(&[libc::TIOCGWINSZ, libc::FIONBIO])
    .allow_ioctls(&virtio_devices::net::TAP_RUNTIME_IOCTLS)
    .allow_arg(libc::SYS_fcntl, 1, &fcntl_commands())
}

/// fcntl commands chv threads use on their own descriptors (flags and
/// close-on-exec, duplicating with close-on-exec).
fn fcntl_commands() -> [u64; 5] {
    [
        libc::F_GETFD as u64,
        libc::F_SETFD as u64,
        libc::F_GETFL as u64,
        libc::F_SETFL as u64,
        libc::F_DUPFD_CLOEXEC as u64,
    ]
}

/// The API server thread: accepting clients and exchanging HTTP messages
/// with them over non-blocking Unix sockets, waking the VMM thread.
pub fn api_thread_rules() -> ThreadRules {
    common_rules("api")
        .allow(&[
            libc::SYS_accept4,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_pwait,
            libc::SYS_read,
            libc::SYS_recvfrom,
            // SCM_RIGHTS tap fds from clients.
            libc::SYS_recvmsg,
            libc::SYS_sendto,
            libc::SYS_shutdown,
        ])
        .allow_ioctls(&[libc::FIONBIO])
        .allow_arg(
            libc::SYS_fcntl,
            1,
            &[
                libc::F_GETFL as u64,
                libc::F_SETFL as u64,
                libc::F_GETFD as u64,
                libc::F_SETFD as u64,
            ],
        )
}

/// KVM ioctls the main thread issues while building a VM (`Vm::boot`):
/// the generic ones and the architecture's interrupt controller and vCPU
/// setup.
fn vm_setup_ioctls() -> Vec<u64> {
    let mut ioctls = vec![
        nr::KVM_GET_API_VERSION(),
        nr::KVM_CHECK_EXTENSION(),
        nr::KVM_CREATE_VM(),
        nr::KVM_GET_VCPU_MMAP_SIZE(),
        nr::KVM_SET_USER_MEMORY_REGION(),
        nr::KVM_IRQFD(),
        nr::KVM_CREATE_VCPU(),
    ];
    ioctls.extend(arch::seccomp::vm_setup_ioctls());
    ioctls
}

/// KVM ioctls of `vm.snapshot` and of a restore: reading and writing the
/// state of every vCPU and of the VM-wide in-kernel devices, and the dirty
/// log of a live migration.
fn snapshot_ioctls() -> Vec<u64> {
    let mut ioctls = arch::seccomp::snapshot_ioctls();
    ioctls.push(nr::KVM_GET_DIRTY_LOG());
    ioctls
}

/// Opening and configuring a tap device for virtio-net (`--net`): attach
/// by name, vnet header size, offloads, queues, and the host side's
/// address, netmask, MTU and up flag.
fn tap_setup_ioctls() -> Vec<u64> {
    [
        libc::TUNSETIFF,
        libc::TUNGETIFF,
        libc::TUNSETVNETHDRSZ,
        libc::TUNSETOFFLOAD,
        libc::TUNSETQUEUE,
        libc::SIOCSIFADDR,
        libc::SIOCSIFNETMASK,
        libc::SIOCSIFMTU,
        libc::SIOCGIFFLAGS,
        libc::SIOCSIFFLAGS,
    ]
    .to_vec()
}

/// Terminal ioctls: `isatty`/`tcgetattr` (TCGETS), `tcsetattr(TCSANOW)`
/// when the terminal is restored (TCSETS), window size for consoles.
fn tty_ioctls() -> Vec<u64> {
    [
        libc::TCGETS,
        libc::TCSETS,
        libc::TIOCGWINSZ,
        // Pty consoles: grantpt/unlockpt/ptsname on the master.
        libc::TIOCGPTN,
        libc::TIOCSPTLCK,
    ]
    .to_vec()
}

/// A vCPU thread after its filter is in place: `KVM_RUN` and the register
/// reads of [`arch::seccomp::vcpu_ioctls`]; device emulation (writes to the
/// serial output, eventfds and the log); the kick signal's return; thread
/// exit; and the crash paths (`statx` of `is_pvm_host` in the error report,
/// TCSETS from the panic hook, `tgkill(SIGABRT)` from abort).
pub fn vcpu_thread_rules() -> ThreadRules {
    common_rules("vcpu")
        .allow(&[libc::SYS_newfstatat, libc::SYS_statx])
        .allow_ioctls(&[nr::KVM_RUN(), libc::TCSETS])
        .allow_ioctls(&arch::seccomp::vcpu_ioctls())
        .allow_ioctls(&pci_runtime_ioctls())
        .merge(&device_activation_rules())
        .allow_arg(
            libc::SYS_fcntl,
            1,
            &[
                libc::F_GETFD as u64,
                libc::F_SETFD as u64,
                libc::F_GETFL as u64,
                libc::F_SETFL as u64,
                libc::F_DUPFD_CLOEXEC as u64,
            ],
        )
        .allow_arg(libc::SYS_tgkill, 2, &[libc::SIGABRT as u64])
}

/// The main (VMM) thread: the control loop (epoll, eventfds, signalfd,
/// stdin), building a VM again on a guest reset (`/dev/kvm`, payload files,
/// guest RAM mappings, the KVM VM and vCPU ioctls), starting vCPU threads
/// (clone3, which then run `rseq`, `set_robust_list`, `PR_SET_NAME` and
/// install their own filter under this one), kicking them (`tgkill` with the
/// kick signal), restoring the terminal and exiting.
///
/// It includes [`vcpu_thread_rules`] and the virtio worker base list, as
/// threads started from here inherit this filter.
pub fn vmm_thread_rules() -> ThreadRules {
    let kick = crate::vcpu::kick_signal() as u64;
    common_rules("chv")
        .allow(&[
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_dup,
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_pwait,
            libc::SYS_eventfd2,
            libc::SYS_fstat,
            libc::SYS_getrandom,
            libc::SYS_lseek,
            libc::SYS_newfstatat,
            libc::SYS_openat,
            libc::SYS_pread64,
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_rseq,
            libc::SYS_rt_sigaction,
            libc::SYS_sched_getaffinity,
            libc::SYS_set_robust_list,
            libc::SYS_statx,
            // Guest RAM backed by a memfd (`shared=on`, huge pages).
            libc::SYS_memfd_create,
        ])
        .allow_ioctls(&vm_setup_ioctls())
        .allow_ioctls(&tty_ioctls())
        .allow_ioctls(&tap_setup_ioctls())
        .allow_arg(
            libc::SYS_fcntl,
            1,
            &[
                libc::F_GETFD as u64,
                libc::F_SETFD as u64,
                libc::F_GETFL as u64,
                libc::F_SETFL as u64,
                libc::F_DUPFD_CLOEXEC as u64,
                // Disk image locks (OFD locks, as Cloud Hypervisor takes
                // them): taken when a disk is opened (boot, hotplug,
                // restore, receiving a migration), dropped and taken back
                // around a live migration's hand-over (`set_host_locks`).
                libc::F_OFD_SETLK as u64,
            ],
        )
        // vCPU threads inherit this filter and place themselves
        // (cpus.affinity, cpus.core_scheduling) before adding their own.
        .allow(&[libc::SYS_sched_setaffinity])
        .allow_arg(
            libc::SYS_prctl,
            0,
            &[
                libc::PR_SET_NAME as u64,
                libc::PR_SET_NO_NEW_PRIVS as u64,
                libc::PR_SCHED_CORE as u64,
            ],
        )
        .allow_arg(
            libc::SYS_seccomp,
            0,
            &[u64::from(libc::SECCOMP_SET_MODE_FILTER)],
        )
        .allow_arg(libc::SYS_tgkill, 2, &[kick, libc::SIGABRT as u64])
        // Snapshots: the state file (written, synced, renamed into place),
        // the sparse memory file, the snapshot directory.
        .allow(&[
            libc::SYS_write,
            libc::SYS_pwrite64,
            libc::SYS_fsync,
            libc::SYS_ftruncate,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_mkdirat,
            // Live migration over a Unix socket.
            libc::SYS_accept4,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_writev,
            libc::SYS_ppoll,
            libc::SYS_setsockopt,
        ])
        .allow_ioctls(&snapshot_ioctls())
        .allow(&[
            libc::SYS_fadvise64,
            libc::SYS_socket,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_unlinkat,
            libc::SYS_connect,
            // Socket consoles: the device's end and the relay's.
            libc::SYS_socketpair,
        ])
        .merge(&vcpu_thread_rules())
        .merge(&virtio_worker_rules("virtio", &[]))
        .merge(&api_thread_rules())
}

/// Builds a filter for `rules` in `mode` and wraps it as a thread-setup
/// closure, for threads started by other crates (device workers, the API
/// server) that install it first thing.
pub fn thread_setup(
    rules: &ThreadRules,
    mode: SeccompMode,
) -> Result<Option<Arc<BpfProgram>>, SeccompError> {
    Ok(build(rules, mode)?.map(Arc::new))
}

/// Installs the main thread's filter for `mode` on the calling thread (and
/// the SIGSYS reporter when filtering is enforced). Call once, from the
/// thread that runs [`crate::run`], before it starts any other thread.
pub fn apply_vmm_filter(mode: SeccompMode) -> Result<(), SeccompError> {
    let Some(filter) = build(&vmm_thread_rules(), mode)? else {
        return Ok(());
    };
    disable_heap_trimming();
    if mode == SeccompMode::Enabled {
        install_sigsys_handler()?;
    }
    apply_current_thread(&filter)
}

/// Stops glibc from giving freed heap memory back to the kernel.
///
/// The first time glibc shrinks a thread arena it opens
/// `/proc/sys/vm/overcommit_memory`, which no filtered thread may do; with
/// trimming off that never happens. Freed memory stays reusable by chv.
fn disable_heap_trimming() {
    // SAFETY: mallopt only changes allocator tunables; called before any
    // other thread exists.
    unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) };
}

/// The vCPU threads' filter for `mode` (`None` when disabled), built once
/// and shared by every vCPU thread, which installs it with
/// [`apply_current_thread`] first thing.
pub fn vcpu_filter(mode: SeccompMode) -> Result<Option<Arc<BpfProgram>>, SeccompError> {
    Ok(build(&vcpu_thread_rules(), mode)?.map(Arc::new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::seccomp::Args;

    #[test]
    fn ioctl_numbers_match_the_kvm_headers() {
        assert_eq!(nr::KVM_RUN(), 0xae80);
        assert_eq!(nr::KVM_CREATE_VM(), 0xae01);
        assert_eq!(nr::KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
        assert_eq!(nr::KVM_IRQFD(), 0x4020_ae76);
    }

    /// A vCPU thread runs under both filters, so every call its list allows
    /// must pass the main thread's list with the same arguments.
    #[test]
    fn vmm_list_covers_the_vcpu_list() {
        let vmm = vmm_thread_rules();
        let vcpu = vcpu_thread_rules();
        for nr in vcpu.syscalls() {
            match (vcpu.get(nr), vmm.get(nr)) {
                (_, Some(Args::Any)) => {}
                (Some(Args::OneOf(need)), Some(Args::OneOf(have))) => {
                    for set in need {
                        assert!(
                            have.contains(set),
                            "syscall {nr}: {set:?} not in the VMM list"
                        );
                    }
                }
                (need, have) => panic!("syscall {nr}: vCPU {need:?}, VMM {have:?}"),
            }
        }
    }

    #[test]
    fn ioctls_are_argument_filtered() {
        for rules in [vmm_thread_rules(), vcpu_thread_rules()] {
            let Some(Args::OneOf(sets)) = rules.get(libc::SYS_ioctl) else {
                panic!("{}: ioctl allowed with any request", rules.name());
            };
            let kvm_run = [devices::seccomp::ArgEq {
                index: 1,
                value: nr::KVM_RUN(),
            }];
            assert!(sets.iter().any(|s| s[..] == kvm_run));
        }
        let vcpu = vcpu_thread_rules();
        // vCPU threads neither build VMs nor open files nor exec; they do
        // start device worker threads (a driver's DRIVER_OK arrives there).
        let Some(Args::OneOf(sets)) = vcpu.get(libc::SYS_ioctl) else {
            unreachable!()
        };
        assert!(!sets.iter().any(|s| s[0].value == nr::KVM_CREATE_VM()));
        for nr in [libc::SYS_openat, libc::SYS_execve] {
            assert!(vcpu.get(nr).is_none(), "vCPU list allows {nr}");
        }
    }

    #[test]
    fn lists_compile_in_every_mode() {
        for mode in [SeccompMode::Enabled, SeccompMode::Log] {
            assert!(build(&vmm_thread_rules(), mode).unwrap().is_some());
            assert!(vcpu_filter(mode).unwrap().is_some());
        }
        assert!(vcpu_filter(SeccompMode::Disabled).unwrap().is_none());
        apply_vmm_filter(SeccompMode::Disabled).unwrap();
    }

    fn seccomp_status(tid: libc::pid_t) -> String {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Seccomp:"))
            .unwrap()
            .to_owned()
    }

    /// A thread under the real vCPU filter (enforcing) can do what a vCPU
    /// thread does outside `KVM_RUN`: wait on a channel, write an eventfd,
    /// log to stderr and exit. A missing call would end the test process
    /// with the SIGSYS report naming it.
    #[test]
    fn vcpu_filter_allows_a_vcpu_threads_work() {
        install_sigsys_handler().unwrap();
        let filter = vcpu_filter(SeccompMode::Enabled).unwrap().unwrap();
        let evt = Arc::new(vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let thread_evt = evt.clone();
        let handle = std::thread::Builder::new()
            .name("vcpu-test".into())
            .spawn(move || {
                apply_current_thread(&filter).unwrap();
                // SAFETY: gettid has no arguments.
                let tid = unsafe { libc::gettid() };
                tid_tx.send(tid).unwrap();
                go_rx.recv().unwrap();
                thread_evt.write(1).unwrap();
                eprintln!("vcpu-test: done");
            })
            .unwrap();
        let tid = tid_rx.recv().unwrap();
        assert_eq!(seccomp_status(tid), "Seccomp:\t2");
        go_tx.send(()).unwrap();
        handle.join().unwrap();
        assert_eq!(evt.read().unwrap(), 1);
    }
}
