//! Test helpers: a scratch directory and a `qemu-img` runner.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A scratch directory removed when dropped.
pub(crate) struct TestDir(PathBuf);

impl TestDir {
    /// Creates a fresh, uniquely named directory under the temp dir.
    pub(crate) fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("chv-disk-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TestDir(p)
    }

    /// The directory's path.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `qemu-img` can be run; prints a skip note when it cannot.
pub(crate) fn have_qemu_img() -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        println!("skipping: qemu-img not found");
    }
    ok
}

/// Runs `qemu-img` with `args`, returning (success, stdout + stderr).
pub(crate) fn qemu_img(args: &[&str]) -> (bool, String) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs `qemu-img` and panics with its output if it fails.
pub(crate) fn qemu_img_ok(args: &[&str]) -> String {
    let (ok, text) = qemu_img(args);
    assert!(ok, "qemu-img {args:?} failed: {text}");
    text
}
