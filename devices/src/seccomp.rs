//! Per-thread seccomp filters: building them from allow-lists and installing them.
//!
//! Every thread chv starts describes the system calls it needs as a
//! [`ThreadRules`] allow-list; [`build`] compiles it into a BPF program for
//! the chosen [`SeccompMode`] and [`apply_current_thread`] installs it on the
//! calling thread only (no TSYNC), so each thread keeps its own, narrowest list.
//!
//! Filters are inherited by threads created afterwards and stack with the
//! filter a thread installs itself: a system call must pass both. A thread
//! that spawns other threads therefore needs an allow-list that covers its
//! children's lists too.
//!
//! With [`SeccompMode::Enabled`] a forbidden system call raises `SIGSYS`; the
//! handler installed by [`install_sigsys_handler`] names the thread and the
//! system call on stderr and ends the process.

use std::collections::BTreeMap;
use std::sync::Once;

pub use seccompiler::BpfProgram;
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

/// `--seccomp true|false|log`: how chv filters its own system calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// Filters installed; a forbidden system call kills the VMM (`true`).
    #[default]
    Enabled,
    /// Filters installed; forbidden system calls are only logged by the
    /// kernel (audit log / dmesg) and then run (`log`).
    Log,
    /// No filters (`false`).
    Disabled,
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The allow-list could not be compiled into BPF.
    #[error("cannot build the seccomp filter of thread {thread}: {source}")]
    Build {
        /// Name of the thread the list is for.
        thread: &'static str,
        /// What seccompiler rejected.
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("cannot install a seccomp filter: {0}")]
    Apply(seccompiler::Error),
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// Exit status of chv after a forbidden system call (128 + SIGSYS, what a
/// shell reports for a process killed by SIGSYS).
pub const SIGSYS_EXIT_CODE: i32 = 128 + libc::SIGSYS;

/// One argument condition: argument `index` (0-based) equals `value`.
///
/// Only the low 32 bits are compared: every argument chv filters on (ioctl
/// request, prctl option, fcntl command) is read by the kernel as a 32-bit
/// value, so the high half cannot change what the call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ArgEq {
    /// Argument position, 0..=5.
    pub index: u8,
    /// Required value.
    pub value: u64,
}

/// Which calls of one system call are allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Args {
    /// Any arguments.
    Any,
    /// Calls matching at least one of these condition sets; a set matches
    /// when all of its conditions hold.
    OneOf(Vec<Vec<ArgEq>>),
}

/// System calls of x86_64 that aarch64 (the asm-generic table) lacks, each
/// with the generic call that replaces it: allowing the generic call allows
/// the older form too, so one list serves every architecture.
#[cfg(target_arch = "x86_64")]
pub const LEGACY_FORMS: &[(libc::c_long, libc::c_long)] = &[
    (libc::SYS_epoll_pwait, libc::SYS_epoll_wait),
    (libc::SYS_ppoll, libc::SYS_poll),
    (libc::SYS_renameat, libc::SYS_rename),
    (libc::SYS_mkdirat, libc::SYS_mkdir),
    (libc::SYS_unlinkat, libc::SYS_unlink),
];

/// System calls of x86_64 that this architecture lacks (none: it only has
/// the generic forms).
#[cfg(not(target_arch = "x86_64"))]
pub const LEGACY_FORMS: &[(libc::c_long, libc::c_long)] = &[];

/// The allow-list of one kind of thread: system call numbers and, for some,
/// the argument values they may be called with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadRules {
    name: &'static str,
    syscalls: BTreeMap<i64, Args>,
}

impl ThreadRules {
    /// An empty list for threads called `name` (used in error messages).
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            syscalls: BTreeMap::new(),
        }
    }

    /// Name of the threads this list is for.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Allows each of `syscalls` with any arguments. Lists name the
    /// generic calls every architecture has (`epoll_pwait`, `ppoll`,
    /// `renameat`, ...); where the architecture also has an older form that
    /// libc may use instead, that form is allowed too ([`LEGACY_FORMS`]).
    pub fn allow(mut self, syscalls: &[libc::c_long]) -> Self {
        for &nr in syscalls {
            self.syscalls.insert(nr, Args::Any);
            for &(generic, legacy) in LEGACY_FORMS {
                if generic == nr {
                    self.syscalls.insert(legacy, Args::Any);
                }
            }
        }
        self
    }

    /// Allows `syscall` when all of `conditions` hold (in addition to what
    /// is already allowed for it).
    pub fn allow_when(mut self, syscall: libc::c_long, conditions: &[ArgEq]) -> Self {
        self.add(syscall, Args::OneOf(vec![conditions.to_vec()]));
        self
    }

    /// Allows `syscall` when argument `index` is one of `values`.
    pub fn allow_arg(mut self, syscall: libc::c_long, index: u8, values: &[u64]) -> Self {
        let sets = values
            .iter()
            .map(|&value| vec![ArgEq { index, value }])
            .collect();
        self.add(syscall, Args::OneOf(sets));
        self
    }

    /// Allows `ioctl` with each of the request numbers in `requests`.
    pub fn allow_ioctls(self, requests: &[u64]) -> Self {
        self.allow_arg(libc::SYS_ioctl, 1, requests)
    }

    /// Adds every system call (and argument set) of `other` to this list.
    pub fn merge(mut self, other: &ThreadRules) -> Self {
        for (&nr, args) in &other.syscalls {
            self.add(nr, args.clone());
        }
        self
    }

    /// What is allowed for `syscall`, if anything.
    pub fn get(&self, syscall: libc::c_long) -> Option<&Args> {
        self.syscalls.get(&syscall)
    }

    /// The allowed system call numbers, ascending.
    pub fn syscalls(&self) -> impl Iterator<Item = i64> + '_ {
        self.syscalls.keys().copied()
    }

    fn add(&mut self, nr: i64, args: Args) {
        let merged = match (self.syscalls.remove(&nr), args) {
            (None, args) => args,
            (Some(Args::Any), _) | (_, Args::Any) => Args::Any,
            (Some(Args::OneOf(mut old)), Args::OneOf(new)) => {
                for set in new {
                    if !old.contains(&set) {
                        old.push(set);
                    }
                }
                Args::OneOf(old)
            }
        };
        self.syscalls.insert(nr, merged);
    }
}

/// Compiles `rules` for `mode`: `None` when filtering is disabled.
///
/// Enabled: a system call outside the list raises `SIGSYS` (see
/// [`install_sigsys_handler`]). Log: it is logged by the kernel and allowed.
pub fn build(rules: &ThreadRules, mode: SeccompMode) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Enabled => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::Disabled => return Ok(None),
    };
    build_with_action(rules, mismatch).map(Some)
}

fn build_with_action(
    rules: &ThreadRules,
    mismatch: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let err = |source| SeccompError::Build {
        thread: rules.name,
        source,
    };
    let mut map = BTreeMap::new();
    for (&nr, args) in &rules.syscalls {
        let chain = match args {
            Args::Any => Vec::new(),
            Args::OneOf(sets) => sets
                .iter()
                .map(|set| {
                    let conditions = set
                        .iter()
                        .map(|c| {
                            SeccompCondition::new(
                                c.index,
                                SeccompCmpArgLen::Dword,
                                SeccompCmpOp::Eq,
                                c.value,
                            )
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    SeccompRule::new(conditions)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?,
        };
        map.insert(nr, chain);
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(err)?;
    let filter = SeccompFilter::new(map, mismatch, SeccompAction::Allow, arch).map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

/// Installs `filter` on the calling thread (and the threads it creates from
/// now on). Other threads are not affected.
pub fn apply_current_thread(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter).map_err(SeccompError::Apply)
}

/// The `_sigsys` view of the kernel's `siginfo_t` on 64-bit Linux, which the
/// libc crate does not expose.
#[repr(C)]
struct SigsysInfo {
    si_signo: libc::c_int,
    si_errno: libc::c_int,
    si_code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// Appends `bytes` to `buf` at `*len`, truncating at the end of `buf`.
fn push_bytes(buf: &mut [u8], len: &mut usize, bytes: &[u8]) {
    for &b in bytes {
        if let Some(slot) = buf.get_mut(*len) {
            *slot = b;
            *len += 1;
        }
    }
}

/// Appends the decimal form of `n` to `buf` without allocating.
fn push_decimal(buf: &mut [u8], len: &mut usize, n: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        push_bytes(buf, len, b"-");
    }
    push_bytes(buf, len, &digits[i..]);
}

/// Formats the SIGSYS report into `buf` and returns its length.
fn format_report(buf: &mut [u8], thread: &[u8], syscall: i64) -> usize {
    let mut len = 0;
    push_bytes(buf, &mut len, b"chv: seccomp: thread ");
    push_bytes(buf, &mut len, thread);
    push_bytes(buf, &mut len, b" made a forbidden system call ");
    push_decimal(buf, &mut len, syscall);
    push_bytes(buf, &mut len, b"\n");
    len
}

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work here: stack buffers, prctl, write, _exit.
    let syscall = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO
        // handlers; for SIGSYS its union holds the `_sigsys` member, which
        // `SigsysInfo` lays out.
        i64::from(unsafe { (*info.cast::<SigsysInfo>()).syscall })
    };
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) to `name`.
    let rc = unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let name_len = if rc == 0 {
        name.iter().position(|&b| b == 0).unwrap_or(name.len())
    } else {
        0
    };
    let mut buf = [0u8; 96];
    let len = format_report(&mut buf, &name[..name_len], syscall);
    // SAFETY: `buf[..len]` is initialized; write and _exit are
    // async-signal-safe.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len);
        libc::_exit(SIGSYS_EXIT_CODE);
    }
}

/// Installs, once per process, the `SIGSYS` handler that reports a system
/// call an [`SeccompMode::Enabled`] filter forbade.
///
/// It writes `chv: seccomp: thread <name> made a forbidden system call <nr>`
/// to stderr and ends the process with `_exit(`[`SIGSYS_EXIT_CODE`]`)`. chv
/// exits rather than aborting: `_exit` is a single `exit_group` call that
/// every filter allows, whereas `abort` needs signal calls that may be the
/// very ones a filter forbids, and a core dump of a VMM holds guest memory.
/// The handler only uses `prctl(PR_GET_NAME)`, `write` and `exit_group`, so
/// every thread's list must allow those.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // SAFETY: sigaction is plain data; zeroed is a valid starting value.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = sigsys_handler as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `act.sa_mask` is a valid sigset_t owned by `act`.
        unsafe { libc::sigemptyset(&mut act.sa_mask) };
        // SAFETY: valid signal number and sigaction; a null old-action
        // pointer is allowed.
        if unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) } != 0 {
            result = Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    });
    result
}

/// System calls every chv thread needs once its filter is in place: thread
/// exit, memory management by the allocator, locks, time, signal return,
/// `restart_syscall` (the kernel resumes an interrupted sleep or poll with
/// it after SIGSTOP/SIGCONT or a debugger's attach) and the SIGSYS report
/// itself (`prctl(PR_GET_NAME)`, `write`, `exit_group`).
pub fn common_rules(name: &'static str) -> ThreadRules {
    ThreadRules::new(name)
        .allow(&[
            libc::SYS_brk,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_close,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_futex,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_madvise,
            libc::SYS_mmap,
            libc::SYS_mprotect,
            libc::SYS_mremap,
            libc::SYS_munmap,
            libc::SYS_nanosleep,
            libc::SYS_restart_syscall,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_sched_yield,
            libc::SYS_sigaltstack,
            libc::SYS_write,
            libc::SYS_writev,
        ])
        .allow_arg(libc::SYS_prctl, 0, &[libc::PR_GET_NAME as u64])
}

/// Base list of a virtio device worker thread (event loop plus block-style
/// I/O); devices add their own calls with `extra` (e.g. a tap device's
/// `readv`, or ioctls as [`ThreadRules::allow_ioctls`]).
pub fn virtio_worker_rules(name: &'static str, extra: &[libc::c_long]) -> ThreadRules {
    common_rules(name)
        .allow(&[
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_pwait,
            libc::SYS_fallocate,
            libc::SYS_fdatasync,
            libc::SYS_fsync,
            libc::SYS_lseek,
            libc::SYS_pread64,
            libc::SYS_preadv,
            libc::SYS_pwrite64,
            libc::SYS_pwritev,
            libc::SYS_read,
            libc::SYS_readv,
        ])
        .allow(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seccomp_status() -> String {
        std::fs::read_to_string("/proc/thread-self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Seccomp:"))
            .unwrap()
            .to_owned()
    }

    #[test]
    fn generic_calls_bring_their_legacy_forms() {
        let listed = [libc::SYS_epoll_pwait, libc::SYS_ppoll];
        let rules = ThreadRules::new("t").allow(&listed);
        let mut expected = listed.len();
        for &(generic, legacy) in LEGACY_FORMS {
            let brought = listed.contains(&generic);
            assert_eq!(rules.get(legacy).is_some(), brought, "legacy form {legacy}");
            expected += usize::from(brought);
        }
        #[cfg(target_arch = "x86_64")]
        assert_eq!(rules.get(libc::SYS_epoll_wait), Some(&Args::Any));
        assert_eq!(rules.syscalls().count(), expected);
    }

    #[test]
    fn build_per_mode() {
        let rules = common_rules("t");
        assert!(build(&rules, SeccompMode::Disabled).unwrap().is_none());
        let enabled = build(&rules, SeccompMode::Enabled).unwrap().unwrap();
        let log = build(&rules, SeccompMode::Log).unwrap().unwrap();
        assert!(!enabled.is_empty());
        // Same program except for the mismatch action.
        assert_eq!(enabled.len(), log.len());
        assert_ne!(enabled, log);
    }

    #[test]
    fn bad_argument_index_is_an_error() {
        let rules = ThreadRules::new("bad").allow_arg(libc::SYS_ioctl, 6, &[1]);
        let err = build(&rules, SeccompMode::Enabled).unwrap_err();
        assert!(err.to_string().contains("thread bad"), "{err}");
    }

    #[test]
    fn merge_unions_argument_sets() {
        let a = ThreadRules::new("a").allow_ioctls(&[1, 2]);
        let b = ThreadRules::new("b")
            .allow_ioctls(&[2, 3])
            .allow(&[libc::SYS_read]);
        let m = a.merge(&b);
        assert_eq!(m.name(), "a");
        let Some(Args::OneOf(sets)) = m.get(libc::SYS_ioctl) else {
            panic!("ioctl not argument-filtered")
        };
        let values: Vec<u64> = sets.iter().map(|s| s[0].value).collect();
        assert_eq!(values, [1, 2, 3]);
        assert_eq!(m.get(libc::SYS_read), Some(&Args::Any));
        // "Any" wins over argument sets, in both orders.
        let any = ThreadRules::new("c").allow(&[libc::SYS_ioctl]);
        assert_eq!(m.clone().merge(&any).get(libc::SYS_ioctl), Some(&Args::Any));
        assert_eq!(any.merge(&m).get(libc::SYS_ioctl), Some(&Args::Any));
    }

    #[test]
    fn report_is_formatted_without_allocating() {
        let mut buf = [0u8; 96];
        let n = format_report(&mut buf, b"vcpu3", 39);
        assert_eq!(
            &buf[..n],
            b"chv: seccomp: thread vcpu3 made a forbidden system call 39\n"
        );
        let n = format_report(&mut buf, b"", -1);
        assert!(buf[..n].ends_with(b"call -1\n"));
        // Too long for the buffer: truncated, never out of bounds.
        let mut small = [0u8; 10];
        assert_eq!(format_report(&mut small, b"x", i64::MIN), 10);
    }

    /// Applies an allow-list with `EPERM` as the mismatch action in a fresh
    /// thread (so the test process survives) and checks what it lets through.
    #[test]
    fn filter_applies_to_the_calling_thread_only() {
        let rules = common_rules("filtered")
            .allow(&[libc::SYS_openat, libc::SYS_read, libc::SYS_fstat])
            .allow_arg(libc::SYS_fcntl, 1, &[libc::F_GETFL as u64]);
        let prog = build_with_action(&rules, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
        let before = seccomp_status();
        let (status, pid_err, getfl, setfl) = std::thread::spawn(move || {
            apply_current_thread(&prog).unwrap();
            let status = seccomp_status();
            // SAFETY: getppid takes no arguments; it is not in the list.
            let rc = unsafe { libc::syscall(libc::SYS_getppid) };
            let pid_err = (rc, std::io::Error::last_os_error().raw_os_error());
            // SAFETY: fcntl on stderr with integer arguments.
            let getfl = unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_GETFL) };
            // SAFETY: as above; F_SETFL is filtered out, so nothing changes.
            let setfl = unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_SETFL, getfl) };
            (status, pid_err, getfl, setfl)
        })
        .join()
        .unwrap();
        assert_eq!(status, "Seccomp:\t2");
        assert_eq!(pid_err, (-1, Some(libc::EPERM)));
        assert!(getfl >= 0, "allowed fcntl(F_GETFL) failed");
        assert_eq!(setfl, -1, "fcntl(F_SETFL) is not in the list");
        // The test's own thread is untouched.
        assert_eq!(seccomp_status(), before);
        // SAFETY: no arguments.
        assert!(unsafe { libc::syscall(libc::SYS_getppid) } > 0);
    }

    /// Child half of `forbidden_call_reports_and_exits`: runs only when
    /// re-executed with CHV_SECCOMP_SIGSYS_CHILD set.
    #[test]
    fn sigsys_child() {
        if std::env::var_os("CHV_SECCOMP_SIGSYS_CHILD").is_none() {
            return;
        }
        install_sigsys_handler().unwrap();
        let prog = build(&common_rules("victim"), SeccompMode::Enabled)
            .unwrap()
            .unwrap();
        std::thread::Builder::new()
            .name("victim".into())
            .spawn(move || {
                apply_current_thread(&prog).unwrap();
                // SAFETY: no arguments; forbidden, so the handler exits.
                unsafe { libc::syscall(libc::SYS_getppid) };
            })
            .unwrap()
            .join()
            .unwrap();
        panic!("the forbidden system call returned");
    }

    #[test]
    fn forbidden_call_reports_and_exits() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "seccomp::tests::sigsys_child", "--nocapture"])
            .env("CHV_SECCOMP_SIGSYS_CHILD", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(SIGSYS_EXIT_CODE), "{stderr}");
        let expected = format!(
            "chv: seccomp: thread victim made a forbidden system call {}\n",
            libc::SYS_getppid
        );
        assert!(stderr.contains(&expected), "{stderr}");
    }
}
