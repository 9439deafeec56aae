//! Network namespaces for tests that create taps: all their traffic stays
//! inside a namespace the test creates and deletes, never on the host's
//! interfaces.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{chv_bin, Chv};

/// A network namespace of this test process (`chv<tag>-<pid>-<n>`),
/// deleted on drop, even when the test fails.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace (`ip netns add`); needs root and iproute2.
    pub fn new(tag: &str) -> NetNs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "chv{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("cannot run `ip` (iproute2 installed?)");
        assert!(
            out.status.success(),
            "`ip netns add {name}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        NetNs { name }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a fresh thread that first joins this namespace, so the
    /// sockets, taps and processes `f` creates live in it (a socket keeps
    /// its namespace whichever thread uses it later; a child inherits the
    /// namespace of the thread that forked it).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns(2) on a valid namespace fd we own; it only
                // changes the network namespace of this (scoped) thread.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Output of `ip -n <ns> <args>` (stdout, or the error text).
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("cannot run `ip`");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Starts chv inside the namespace, with a pipe on its stdin
    /// ([`Chv::send_line`]).
    pub fn spawn_chv<S: AsRef<str> + Sync>(&self, args: &[S]) -> Chv {
        // Resolve (and maybe build) the binary outside the namespace.
        let _ = chv_bin();
        self.run(|| Chv::spawn_with_input(args))
    }

    /// Whether interface `name` exists in the namespace.
    pub fn has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", name])
            .output()
            .expect("cannot run `ip`")
            .status
            .success()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: `ip netns del {}` failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("warning: cannot run `ip netns del {}`: {e}", self.name),
        }
    }
}

/// Opens (creating) tap `name` in the calling thread's network namespace
/// as chv wants it (no packet info, virtio-net headers), without
/// close-on-exec so a chv started afterwards inherits it.
pub fn open_tap(name: &str) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads and writes the ifreq we own.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    assert_eq!(
        rc,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: clears FD_CLOEXEC on a descriptor we own.
    let rc = unsafe { libc::fcntl(tun.as_raw_fd(), libc::F_SETFD, 0) };
    assert_eq!(rc, 0, "F_SETFD: {}", std::io::Error::last_os_error());
    tun
}
