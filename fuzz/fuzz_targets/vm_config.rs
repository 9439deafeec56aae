//! The VM configuration front ends, on every input:
//!
//! 1. the input as an API `VmConfig` JSON body (`vm.create`):
//!    `serde_json::from_slice`, then `validate()`; whatever parses must
//!    survive serialize → deserialize unchanged.
//! 2. the input cut at NUL bytes into argv words for
//!    `vmm::cli::parse_args(["chv", ...])` (non-UTF-8 words included); a
//!    configuration it accepts must pass `validate()` and round-trip
//!    through JSON too (it is what `vm.info` reports and `vm.create` takes).
//!    Known finding, tolerated: `--kernel`/`--initramfs` take any OS
//!    string, and a non-UTF-8 path cannot be written as JSON, so such a
//!    config is not serializable (`vm.info` answers 500); reproducer in
//!    `regressions/vm_config/kernel-path-not-utf8`.
//! 3. the input as one `--disk` value for `vmm::cli::parse_disk_option`
//!    (what `chv-remote add-disk` sends); an accepted disk must pass
//!    `DiskConfig::validate` and round-trip through JSON.
//!
//! Seeds are plain JSON bodies and NUL-separated command lines.
//! `CHV_FUZZ_STATS=1` prints each front end's verdict per input (with
//! `-runs=0`, shows which seeds get past parsing).

#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use vmm::cli::{parse_args, parse_disk_option};
use vmm::config::VmConfig;

/// Most argv words passed on (clap's cost grows with the word count).
const MAX_WORDS: usize = 64;

/// Serializes `value` and reads it back: must give an equal value.
fn round_trip<T>(value: &T, what: &str)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let text = match serde_json::to_vec(value) {
        Ok(t) => t,
        Err(e) => panic!("{what}: cannot serialize {value:?}: {e}"),
    };
    match serde_json::from_slice::<T>(&text) {
        Ok(back) => assert_eq!(
            &back,
            value,
            "{what}: JSON round trip changed the value ({})",
            String::from_utf8_lossy(&text)
        ),
        Err(e) => panic!(
            "{what}: own JSON does not parse back: {e}: {}",
            String::from_utf8_lossy(&text)
        ),
    }
}

/// Whether `CHV_FUZZ_STATS` is set.
fn stats() -> bool {
    static STATS: OnceLock<bool> = OnceLock::new();
    *STATS.get_or_init(|| std::env::var_os("CHV_FUZZ_STATS").is_some())
}

/// Whether a path of `vm` is not UTF-8 (the known finding above).
fn has_non_utf8_path(vm: &VmConfig) -> bool {
    let p = &vm.payload;
    let mut paths: Vec<&Path> = Vec::new();
    paths.extend(p.kernel.as_deref());
    paths.extend(p.initramfs.as_deref());
    paths.extend(vm.serial.file.as_deref());
    paths.extend(vm.console.file.as_deref());
    for d in vm.disks.iter().flatten() {
        paths.extend(d.path.as_deref());
    }
    paths.extend(vm.rng.as_ref().map(|r| r.src.as_path()));
    paths.extend(vm.vsock.as_ref().map(|v| v.socket.as_path()));
    paths.iter().any(|path| path.to_str().is_none())
}

fn json(data: &[u8]) {
    let config = match serde_json::from_slice::<VmConfig>(data) {
        Ok(c) => c,
        Err(e) => {
            if stats() {
                eprintln!("vm_config stats: json: {e}");
            }
            return;
        }
    };
    let valid = config.validate();
    if stats() {
        eprintln!("vm_config stats: json: parsed, validate {valid:?}");
    }
    round_trip(&config, "VmConfig from JSON");
}

fn argv(data: &[u8]) {
    let words = data
        .split(|&b| b == 0)
        .take(MAX_WORDS)
        .map(|w| OsString::from_vec(w.to_vec()));
    let args = std::iter::once(OsString::from("chv")).chain(words);
    let cli = match parse_args(args) {
        Ok(cli) => cli,
        Err(e) => {
            if stats() {
                eprintln!("vm_config stats: argv: {e}");
            }
            return;
        }
    };
    if stats() {
        eprintln!("vm_config stats: argv: ok, vm {}", cli.vm.is_some());
    }
    if let Some(vm) = cli.vm {
        if let Err(e) = vm.validate() {
            panic!("parse_args accepted a config that validate() refuses: {e}: {vm:?}");
        }
        if !has_non_utf8_path(&vm) {
            round_trip(&vm, "VmConfig from argv");
        }
    }
}

fn disk_option(data: &[u8]) {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let disk = match parse_disk_option(value) {
        Ok(d) => d,
        Err(e) => {
            if stats() {
                eprintln!("vm_config stats: disk: {e}");
            }
            return;
        }
    };
    if stats() {
        eprintln!("vm_config stats: disk: ok");
    }
    if let Err(e) = disk.validate(0) {
        panic!("parse_disk_option accepted a disk that validate() refuses: {e}: {disk:?}");
    }
    round_trip(&disk, "DiskConfig from --disk");
}

fuzz_target!(|data: &[u8]| {
    json(data);
    argv(data);
    disk_option(data);
});
