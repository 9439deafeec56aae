//! A sampling profiler of the guest, for developers measuring where guest
//! time goes (on hosts where guest kernel code is emulated, the VMM decides
//! much of that time through what it describes to the guest).
//!
//! Set `CHV_GUEST_PROFILE=<file>` and run with `--seccomp false` (the
//! timers need system calls the filters forbid). Every vCPU thread then arms
//! a 1 ms timer on its own CPU clock (it fires at the host's tick, 4 ms
//! here) that interrupts `KVM_RUN`; the thread records the guest RIP and
//! re-enters. The VMM appends all samples to `<file>` when the VM shuts
//! down (or is rebuilt after a guest reset), one
//! `<ms since start> <vcpu> <rip in hex>` line each.
//! `scripts/bench/guest_profile.py` turns them into a per-function table
//! with a `System.map`.

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// One recorded guest RIP.
struct Sample {
    ms: u32,
    vcpu: u8,
    rip: u64,
}

/// The samples of one VMM process.
struct GuestProfiler {
    path: String,
    start: Instant,
    samples: Mutex<Vec<Sample>>,
}

static PROFILER: OnceLock<Option<GuestProfiler>> = OnceLock::new();

thread_local! {
    /// Whether this thread's sampling timer is armed.
    static ARMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn profiler() -> Option<&'static GuestProfiler> {
    PROFILER
        .get_or_init(|| {
            std::env::var("CHV_GUEST_PROFILE")
                .ok()
                .filter(|p| !p.is_empty())
                .map(|path| GuestProfiler {
                    path,
                    start: Instant::now(),
                    samples: Mutex::new(Vec::new()),
                })
        })
        .as_ref()
}

/// Whether `CHV_GUEST_PROFILE` asked for samples.
pub fn enabled() -> bool {
    profiler().is_some()
}

/// Arms a timer on the calling thread's CPU clock that sends `signal` to
/// this thread every millisecond of its CPU time. Call it from a vCPU thread
/// before that thread installs its seccomp filter. Does nothing unless
/// profiling is enabled.
pub fn arm_current_thread(signal: libc::c_int) {
    if !enabled() {
        return;
    }
    // SAFETY: a zeroed sigevent is a valid starting value; the fields that
    // matter are set below.
    let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
    event.sigev_notify = libc::SIGEV_THREAD_ID;
    event.sigev_signo = signal;
    // SAFETY: gettid has no preconditions.
    event.sigev_notify_thread_id = unsafe { libc::gettid() };
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: `event` and `timer` are valid for the call; the timer belongs
    // to this process and lives until exit.
    if unsafe { libc::timer_create(libc::CLOCK_THREAD_CPUTIME_ID, &mut event, &mut timer) } != 0 {
        log::warn!(
            "guest profile: timer_create failed: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let period = libc::timespec {
        tv_sec: 0,
        tv_nsec: 1_000_000,
    };
    let spec = libc::itimerspec {
        it_interval: period,
        it_value: period,
    };
    // SAFETY: `timer` was just created and `spec` is a valid itimerspec.
    if unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) } != 0 {
        log::warn!(
            "guest profile: timer_settime failed: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    ARMED.with(|a| a.set(true));
}

/// Whether the calling thread samples (its timer is armed).
pub fn armed() -> bool {
    ARMED.with(|a| a.get())
}

/// Records that vCPU `vcpu` was at guest address `rip`; only threads whose
/// timer is armed record, so kicks of other threads add no samples.
pub fn record(vcpu: u8, rip: u64) {
    if !armed() {
        return;
    }
    if let Some(p) = profiler() {
        let ms = u32::try_from(p.start.elapsed().as_millis()).unwrap_or(u32::MAX);
        p.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Sample { ms, vcpu, rip });
    }
}

/// Writes the samples taken so far to the profile file and clears them.
pub fn flush() {
    let Some(p) = profiler() else { return };
    let samples = std::mem::take(&mut *p.samples.lock().unwrap_or_else(|e| e.into_inner()));
    if samples.is_empty() {
        return;
    }
    let mut text = String::with_capacity(samples.len() * 24);
    for s in &samples {
        text.push_str(&format!("{} {} {:x}\n", s.ms, s.vcpu, s.rip));
    }
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    match written {
        Ok(()) => log::info!("guest profile: {} samples in {}", samples.len(), p.path),
        Err(e) => log::warn!("guest profile: cannot write {}: {e}", p.path),
    }
}
