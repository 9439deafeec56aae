//! Builds the tiny test guest (guest/*.c, guest/start.S) with the system gcc
//! into OUT_DIR and exposes its path to the crate as `CHV_TESTGUEST`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The guest's sources, compiled and linked in this order.
const SOURCES: [&str; 7] = [
    "start.S",
    "testguest.c",
    "pci.c",
    "virtio.c",
    "virtio_tests.c",
    "virtio_hostile.c",
    "firmware.c",
];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let guest = manifest.join("guest");
    let output = out_dir.join("testguest");
    let cc = env::var("CHV_TESTGUEST_CC").unwrap_or_else(|_| "gcc".to_string());

    for f in SOURCES.iter().chain(["guest.h", "linker.ld"].iter()) {
        println!("cargo:rerun-if-changed=guest/{f}");
    }
    println!("cargo:rerun-if-env-changed=CHV_TESTGUEST_CC");

    let status = Command::new(&cc)
        .args([
            "-ffreestanding",
            "-nostdlib",
            "-static",
            "-fno-pic",
            "-no-pie",
            "-mno-red-zone",
            "-mgeneral-regs-only",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wl,--build-id=none",
            "-Wl,-z,max-page-size=0x1000",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg(format!("-Wl,-T,{}", guest.join("linker.ld").display()))
        .arg("-o")
        .arg(&output)
        .args(SOURCES.iter().map(|f| guest.join(f)))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc} to build the test guest: {e}"));
    assert!(
        status.success(),
        "{cc} failed to build the test guest ({status})"
    );
    println!("cargo:rustc-env=CHV_TESTGUEST={}", output.display());
}
