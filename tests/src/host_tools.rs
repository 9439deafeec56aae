//! Host programs the tests run (gcc, mkfs.ext4, qemu-img, ...), and the
//! ext4 disk that carries the static guest `vsock` tool into the kit's guest.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs a host tool in `dir` and returns its output, whatever the status.
pub fn run(dir: &Path, prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog} (is it installed?): {e}"))
}

/// Runs a host tool in `dir`; panics with its output unless it exits 0.
pub fn run_ok(dir: &Path, prog: &str, args: &[&str]) -> Output {
    let out = run(dir, prog, args);
    assert!(
        out.status.success(),
        "`{prog} {}` failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Builds `tools.ext4` (`size` bytes) in `dir`: the static `vsock` tool
/// (tests/guest-linux/vsock.c) and `files` (name, content) at its root.
pub fn vsock_tools_disk(dir: &Path, files: &[(&str, &[u8])], size: u64) -> PathBuf {
    let tree = dir.join("tools");
    std::fs::create_dir_all(&tree).expect("mkdir tools");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-linux/vsock.c");
    let (bin, src) = (tree.join("vsock"), src.display().to_string());
    let bin = bin.display().to_string();
    run_ok(
        dir,
        "gcc",
        &["-static", "-O2", "-pthread", "-Wall", "-o", &bin, &src],
    );
    for (name, content) in files {
        std::fs::write(tree.join(name), content).expect("write a tools file");
    }
    let img = dir.join("tools.ext4");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(size))
        .expect("create tools.ext4");
    run_ok(
        dir,
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "root_owner=0:0",
            "-d",
            "tools",
            "tools.ext4",
        ],
    );
    img
}
