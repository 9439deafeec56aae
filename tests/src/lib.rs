//! Helpers shared by the end-to-end tests: where the `chv` binary, the tiny
//! test guest and the Linux guest kit are, and [`Chv`], a running `chv`
//! process whose console output is captured so tests can wait for marker
//! lines and assert on exact output.
//!
//! Run: `cargo test -p chv-tests` (all), `--test testguest` (fast, ~1 min),
//! `--test linux_boot -- --nocapture` (three Linux boots, ~4 min; prints
//! boot times).
//!
//! Environment knobs:
//! - `CHV_BIN`: the `chv` binary to test (otherwise `cargo build -p vmm --bin
//!   chv` is run once per test binary and `<target>/debug/chv` is used; set
//!   `CHV_NO_BUILD=1` to skip that build and take whatever binary exists).
//! - `CHV_GUEST_DIR`: directory with `vmlinux` and `initramfs.cpio` (otherwise
//!   `<repo>/../shared/guest`, then `<repo>/target/guest-kit`).
//! - `CHV_SKIP_LINUX=1`: skip the Linux boot tests when no kit is found
//!   (without it, a missing kit fails those tests).

pub mod api_client;
pub mod base_snapshot;
pub mod go_client;
pub mod host_tools;
pub mod migration;
pub mod netns;
pub mod threads;
pub mod ticker;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Path of the tiny test guest ELF built by build.rs from `tests/guest/`.
pub fn testguest() -> PathBuf {
    PathBuf::from(env!("CHV_TESTGUEST"))
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory for this workspace (`CARGO_TARGET_DIR` honoured).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_dir().join(dir)
            }
        }
        None => workspace_dir().join("target"),
    }
}

/// The `chv` binary under test: `CHV_BIN` if set, else the workspace's debug
/// build, which is (re)built once per test process with
/// `cargo build -p vmm --bin chv` unless `CHV_NO_BUILD=1`. Panics with the
/// build output if that fails.
pub fn chv_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("CHV_BIN") {
            let bin = PathBuf::from(bin);
            return if bin.is_file() {
                Ok(bin)
            } else {
                Err(format!("CHV_BIN={} is not a file", bin.display()))
            };
        }
        if std::env::var_os("CHV_NO_BUILD").is_none() {
            build_chv()?;
        }
        ["debug", "release"]
            .iter()
            .map(|profile| target_dir().join(profile).join("chv"))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "no chv binary under {}; run `cargo build -p vmm --bin chv` or set CHV_BIN",
                    target_dir().display()
                )
            })
    });
    match found {
        Ok(bin) => bin.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn build_chv() -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(["build", "-p", "vmm", "--bin", "chv"])
        .current_dir(workspace_dir())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run cargo to build chv: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`cargo build -p vmm --bin chv` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A scratch directory `chv-<tag>-<pid>` in the temp dir, removed on drop
/// unless the test failed (then kept for inspection).
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Creates the directory afresh.
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("chv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The real Linux guest: a PVH-capable `vmlinux` and a busybox
/// `initramfs.cpio` whose `/init` prints `GUEST-READY` (see the kit README).
#[derive(Clone, Debug)]
pub struct GuestKit {
    /// Uncompressed ELF kernel.
    pub kernel: PathBuf,
    /// Uncompressed busybox initramfs.
    pub initramfs: PathBuf,
}

impl GuestKit {
    /// `--kernel`, `--initramfs` and a quiet serial `--cmdline` whose
    /// `/init` runs `guest_cmd`, followed by `extra`.
    pub fn args(&self, guest_cmd: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--kernel".to_string(),
            self.kernel.display().to_string(),
            "--initramfs".into(),
            self.initramfs.display().to_string(),
            "--cmdline".into(),
            format!("console=ttyS0 quiet panic=-1 guest_cmd=\"{guest_cmd}\""),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }
}

/// Looks for the guest kit in `CHV_GUEST_DIR`, `<repo>/../shared/guest` and
/// `<repo>/target/guest-kit`; returns the first directory holding both files.
pub fn find_guest_kit() -> Option<GuestKit> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("CHV_GUEST_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    let repo = workspace_dir();
    dirs.push(repo.join("..").join("shared").join("guest"));
    dirs.push(repo.join("target").join("guest-kit"));
    dirs.into_iter().find_map(|dir| {
        let kit = GuestKit {
            kernel: dir.join("vmlinux"),
            initramfs: dir.join("initramfs.cpio"),
        };
        (kit.kernel.is_file() && kit.initramfs.is_file()).then_some(kit)
    })
}

/// The guest kit for a Linux boot test. Returns `None` (the caller returns
/// early) only when no kit exists and `CHV_SKIP_LINUX=1` is set; panics with
/// instructions when no kit exists otherwise, so a missing kit never passes.
pub fn require_guest_kit() -> Option<GuestKit> {
    if let Some(kit) = find_guest_kit() {
        return Some(kit);
    }
    if std::env::var("CHV_SKIP_LINUX").as_deref() == Ok("1") {
        eprintln!("no Linux guest kit found; skipped because CHV_SKIP_LINUX=1");
        return None;
    }
    panic!(
        "no Linux guest kit (vmlinux + initramfs.cpio) found in $CHV_GUEST_DIR, \
         {repo}/../shared/guest or {repo}/target/guest-kit. Build one with \
         scripts/guest-kit/build.sh, point CHV_GUEST_DIR at one, or set CHV_SKIP_LINUX=1 \
         to skip the Linux boot tests explicitly.",
        repo = workspace_dir().display()
    );
}

/// Output captured from a `chv` process so far.
#[derive(Debug, Default)]
pub struct Captured {
    /// Raw bytes chv wrote to stdout (the serial console with `--serial tty`).
    pub stdout: Vec<u8>,
    /// Raw bytes chv wrote to stderr (its log and error messages).
    pub stderr: Vec<u8>,
    /// Number of output streams that reached end-of-file (0..=2).
    pub closed: u8,
}

impl Captured {
    /// stdout as (lossy) UTF-8 text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// stderr as (lossy) UTF-8 text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// How often `needle` occurs in stdout.
    pub fn count(&self, needle: &str) -> usize {
        count_occurrences(&self.stdout, needle.as_bytes())
    }
    /// Whether both output streams are closed (chv most likely exited).
    pub fn all_closed(&self) -> bool {
        self.closed >= 2
    }
}

/// Counts non-overlapping occurrences of `needle` in `hay`.
pub fn count_occurrences(hay: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    let mut n = 0;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if &hay[i..i + needle.len()] == needle {
            n += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    n
}

type Shared = Arc<(Mutex<Captured>, Condvar)>;

/// A running `chv` process with captured stdout/stderr; killed on drop.
pub struct Chv {
    child: Child,
    shared: Shared,
    readers: Vec<JoinHandle<()>>,
    args: Vec<String>,
    started: Instant,
    status: Option<ExitStatus>,
    stdin: Option<std::process::ChildStdin>,
}

impl Chv {
    /// Starts `chv` with `args` (stdin is /dev/null).
    pub fn spawn<S: AsRef<str>>(args: &[S]) -> Chv {
        Self::start(args, false, &[])
    }

    /// Like [`Self::spawn`], with extra environment variables for chv.
    pub fn spawn_with_env<S: AsRef<str>>(args: &[S], env: &[(&str, &str)]) -> Chv {
        Self::start(args, false, env)
    }

    /// Starts `chv` with `args` and a pipe on its stdin, which a tty serial
    /// console forwards to the guest ([`Self::send_line`]).
    pub fn spawn_with_input<S: AsRef<str>>(args: &[S]) -> Chv {
        Self::start(args, true, &[])
    }

    /// Writes `line` and a newline to chv's stdin (the guest's serial
    /// input); needs [`Self::spawn_with_input`].
    pub fn send_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("chv was not started with input");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to chv's stdin");
    }

    fn start<S: AsRef<str>>(args: &[S], input: bool, env: &[(&str, &str)]) -> Chv {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let bin = chv_bin();
        let mut child = Command::new(&bin)
            .args(&args)
            .envs(env.iter().copied())
            .stdin(if input { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let shared: Shared = Arc::new((Mutex::new(Captured::default()), Condvar::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(reader_thread(out, shared.clone(), false));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(reader_thread(err, shared.clone(), true));
        }
        let stdin = child.stdin.take();
        Chv {
            child,
            shared,
            readers,
            args,
            started: Instant::now(),
            status: None,
            stdin,
        }
    }

    /// Process id of chv.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since chv was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn lock(&self) -> MutexGuard<'_, Captured> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Captured stdout (the guest console) as text.
    pub fn stdout(&self) -> String {
        self.lock().stdout_text()
    }

    /// Captured stdout as raw bytes.
    pub fn stdout_bytes(&self) -> Vec<u8> {
        self.lock().stdout.clone()
    }

    /// Captured stderr as text.
    pub fn stderr(&self) -> String {
        self.lock().stderr_text()
    }

    /// Waits until `check` returns `Some` for the captured output, or until
    /// `timeout`. `Err` says why it gave up (timeout or chv's output closed).
    pub fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&Captured) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock();
        loop {
            if let Some(v) = check(&guard) {
                return Ok(v);
            }
            if guard.all_closed() {
                return Err(format!(
                    "chv closed its output (exited) before {what} (after {:.1?})",
                    self.started.elapsed()
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {what} (chv running {:.1?})",
                    self.started.elapsed()
                ));
            }
            guard = self
                .shared
                .1
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until stdout contains `needle` at least `count` times; panics
    /// (with the whole console) on timeout or when any of `abort` appears
    /// first (e.g. `Kernel panic`).
    pub fn expect_count(&self, needle: &str, count: usize, abort: &[&str], timeout: Duration) {
        let what = format!("{count}x {needle:?}");
        let r = self.wait_until(timeout, &what, |c| {
            if c.count(needle) >= count {
                return Some(Ok(()));
            }
            abort
                .iter()
                .find(|a| c.count(a) > 0)
                .map(|a| Err(format!("{a:?} appeared while waiting for {what}")))
        });
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => self.fail(&e),
        }
    }

    /// Waits until stdout contains `needle` (see [`Chv::expect_count`]).
    pub fn expect(&self, needle: &str, abort: &[&str], timeout: Duration) {
        self.expect_count(needle, 1, abort, timeout)
    }

    /// Waits up to `timeout` for chv to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.status {
                return Some(st);
            }
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    self.status = Some(st);
                    self.join_readers();
                    return Some(st);
                }
                Ok(None) => {}
                Err(e) => self.fail(&format!("waitpid failed: {e}")),
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for chv to exit and panics (with the console) if it does not
    /// within `timeout`.
    pub fn expect_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_exit(timeout) {
            Some(st) => st,
            None => self.fail(&format!("chv did not exit within {timeout:?}")),
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to chv.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Kills chv (SIGKILL) if still running and reaps it.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            if let Ok(st) = self.child.wait() {
                self.status = Some(st);
            }
            self.join_readers();
        }
    }

    fn join_readers(&mut self) {
        // The readers end at EOF; a grandchild holding the pipes open would
        // block them, so only join once both streams are closed.
        let _ = self.wait_until(Duration::from_secs(5), "output EOF", |c| {
            c.all_closed().then_some(())
        });
        if self.lock().all_closed() {
            for r in self.readers.drain(..) {
                let _ = r.join();
            }
        }
    }

    /// Everything captured so far, formatted for a failure message.
    pub fn dump(&self) -> String {
        let c = self.lock();
        format!(
            "chv {:?} (running {:.1?}, status {:?})\n----- console (stdout) -----\n{}\n----- stderr -----\n{}\n-----",
            self.args,
            self.started.elapsed(),
            self.status,
            c.stdout_text(),
            c.stderr_text()
        )
    }
    /// Connects to a Unix socket chv listens on (a serial or console in
    /// `socket=` mode), retrying until `timeout`: chv answers `vmm.ping`
    /// before the VM, and so its sockets, are built.
    pub fn connect_unix(&self, path: &Path, timeout: Duration) -> std::os::unix::net::UnixStream {
        let deadline = Instant::now() + timeout;
        loop {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(s) => return s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => self.fail(&format!("cannot connect to {}: {e}", path.display())),
            }
        }
    }

    /// Panics with `msg` and the whole captured output.
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n{}", self.dump())
    }

    /// Asserts `cond`, failing with `msg` and the console otherwise.
    pub fn check(&self, cond: bool, msg: &str) {
        if !cond {
            self.fail(msg)
        }
    }

    /// Asserts that chv did not panic or crash: no panic text on stderr
    /// (Rust's "panicked", chv's panic hook "internal error") and, if it
    /// exited, not by SIGABRT/SIGSEGV/SIGBUS/SIGILL.
    pub fn assert_no_panic(&self) {
        let err = self.stderr();
        for text in ["panicked", "internal error", "RUST_BACKTRACE"] {
            self.check(
                !err.contains(text),
                &format!("chv stderr contains {text:?}"),
            );
        }
        let crash = self
            .status
            .and_then(|st| st.signal())
            .filter(|sig| [libc::SIGABRT, libc::SIGSEGV, libc::SIGBUS, libc::SIGILL].contains(sig));
        if let Some(sig) = crash {
            self.fail(&format!("chv crashed with signal {sig}"));
        }
    }

    /// Console lines (stdout split on '\n', trailing '\r' removed).
    pub fn lines(&self) -> Vec<String> {
        console_lines(&self.stdout())
    }
}

impl Drop for Chv {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Splits console text into lines, dropping a trailing `\r` from each.
pub fn console_lines(text: &str) -> Vec<String> {
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect()
}

fn reader_thread<R: Read + Send + 'static>(
    mut src: R,
    shared: Shared,
    is_err: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let n = src.read(&mut buf).unwrap_or(0);
            let (lock, cvar) = &*shared;
            let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
            if n == 0 {
                c.closed += 1;
                cvar.notify_all();
                return;
            }
            if is_err {
                c.stderr.extend_from_slice(&buf[..n]);
            } else {
                c.stdout.extend_from_slice(&buf[..n]);
            }
            cvar.notify_all();
        }
    })
}

/// Runs chv with `args` to completion (killed after `timeout`) and returns
/// its exit status (`None` when it had to be killed) with the process
/// handle for output inspection.
pub fn run_to_exit<S: AsRef<str>>(args: &[S], timeout: Duration) -> (Option<ExitStatus>, Chv) {
    let mut chv = Chv::spawn(args);
    let st = chv.wait_exit(timeout);
    if st.is_none() {
        chv.kill();
    }
    (st, chv)
}

/// Arguments that run the test guest's `hlt` scenario (64 MiB, serial on
/// stdout): a VM that does nothing, for start-up checks.
pub fn halted_guest_args() -> Vec<String> {
    [
        "--kernel",
        &testguest().display().to_string(),
        "--cmdline",
        "test=hlt",
        "--memory",
        "size=64M",
        "--serial",
        "tty",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Checks that chv refused to start: exit code 1 (`st`), no guest output,
/// no panic, and exactly one `chv: error:` line on stderr (besides
/// `chv: warn:` lines) that contains every one of `needles`. `what` names
/// the bad input in failures. Returns the error line.
pub fn expect_startup_error(
    chv: &Chv,
    st: Option<ExitStatus>,
    what: &str,
    needles: &[&str],
) -> String {
    chv.assert_no_panic();
    chv.check(
        st.and_then(|s| s.code()) == Some(1),
        &format!("{what}: want exit code 1, got {st:?}"),
    );
    chv.check(
        !chv.stdout().contains("TESTGUEST-START"),
        &format!("the guest started despite {what}"),
    );
    let stderr = chv.stderr();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("chv: warn:"))
        .collect();
    chv.check(
        lines.len() == 1 && lines[0].starts_with("chv: error:"),
        &format!("{what}: want exactly one `chv: error:` line on stderr"),
    );
    for needle in needles {
        chv.check(
            lines[0].contains(needle),
            &format!("{what}: the error line does not mention {needle:?}"),
        );
    }
    lines[0].to_string()
}

/// Runs the halted test guest with `extra` options, which chv must refuse
/// at start-up as [`expect_startup_error`] says; returns the error line.
pub fn expect_option_error(extra: &[String], needles: &[&str]) -> String {
    let mut args = halted_guest_args();
    args.extend_from_slice(extra);
    let (st, chv) = run_to_exit(&args, Duration::from_secs(20));
    expect_startup_error(&chv, st, &format!("{extra:?}"), needles)
}

/// Civil date (proleptic Gregorian, UTC) to seconds since the Unix epoch.
pub fn unix_time(year: i64, month: u32, day: u32, hour: u32, min: u32, sec: u32) -> i64 {
    // Days from 1970-01-01, counting from March so leap days end a year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec)
}

/// Whether this host's /dev/kvm is the PVM flavour (kvm_pvm module loaded),
/// where chv hides CPU features the instruction emulator cannot run.
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

pub use netns::open_tap;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_time_known_dates() {
        assert_eq!(unix_time(1970, 1, 1, 0, 0, 0), 0);
        assert_eq!(unix_time(2000, 3, 1, 0, 0, 0), 951_868_800);
        assert_eq!(unix_time(2024, 2, 29, 12, 34, 56), 1_709_210_096);
        assert_eq!(unix_time(2038, 1, 19, 3, 14, 8), 2_147_483_648);
    }

    #[test]
    fn counting_and_lines() {
        assert_eq!(count_occurrences(b"abcabcab", b"abc"), 2);
        assert_eq!(count_occurrences(b"aaaa", b"aa"), 2);
        assert_eq!(count_occurrences(b"x", b""), 0);
        assert_eq!(console_lines("a\r\nb\n"), vec!["a", "b", ""]);
    }

    #[test]
    fn testguest_is_built() {
        let data = std::fs::read(testguest()).expect("test guest");
        assert_eq!(&data[..4], b"\x7fELF");
        assert!(data.len() < 64 * 1024, "test guest should be tiny");
    }
}
