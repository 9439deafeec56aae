//! The VM configuration front ends, on every input:
//!
//! 1. the input as an API `VmConfig` JSON body (`vm.create`):
//!    `serde_json::from_slice`, then `validate()`; whatever parses must
//!    survive serialize → deserialize unchanged.
//! 2. the input cut at NUL bytes into argv words for
//!    `vmm::cli::parse_args(["chv", ...])` (non-UTF-8 words included); a
//!    configuration it accepts must pass `validate()` and round-trip
//!    through JSON too (it is what `vm.info` reports and `vm.create` takes).
//! 3. the input as one `--disk` value for `vmm::cli::parse_disk_option`
//!    (what `chv-remote add-disk` sends); an accepted disk must pass
//!    `DiskConfig::validate` and round-trip through JSON.
//!
//! Seeds are plain JSON bodies and NUL-separated command lines.

#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

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

fn json(data: &[u8]) {
    let Ok(config) = serde_json::from_slice::<VmConfig>(data) else {
        return;
    };
    let _ = config.validate();
    round_trip(&config, "VmConfig from JSON");
}

fn argv(data: &[u8]) {
    let words = data
        .split(|&b| b == 0)
        .take(MAX_WORDS)
        .map(|w| OsString::from_vec(w.to_vec()));
    let args = std::iter::once(OsString::from("chv")).chain(words);
    let Ok(cli) = parse_args(args) else {
        return;
    };
    if let Some(vm) = cli.vm {
        if let Err(e) = vm.validate() {
            panic!("parse_args accepted a config that validate() refuses: {e}: {vm:?}");
        }
        round_trip(&vm, "VmConfig from argv");
    }
}

fn disk_option(data: &[u8]) {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(disk) = parse_disk_option(value) else {
        return;
    };
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
