//! Keeps docs/compatibility.md true: every `vm.create` row of its table of
//! refused properties is sent to a real chv and must be refused with a
//! 400 saying `<property>…: not supported by chv`, while the same body
//! without it is accepted; and every property chv.yaml leaves out of its
//! positive values (the `Off`, `Absent` and `NoneOf` schemas) is listed in
//! one of the document's tables. Also: `vm.info` of a default config
//! against Cloud Hypervisor's serialisation of it
//! (`tests/golden/ch-vm-info-default.json`), the deliberate differences
//! listed.

use std::collections::BTreeSet;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use chv_tests::api_client::http;
use chv_tests::{testguest, workspace_dir, Chv, Scratch};
use serde_json::{json, Value};

/// The rows of the document's tables: (where, property, value) for the
/// refused table, (property) for the table of values outside the spec.
fn doc_rows() -> (Vec<(String, String, String)>, Vec<String>) {
    let text = std::fs::read_to_string(workspace_dir().join("docs/compatibility.md"))
        .expect("docs/compatibility.md");
    let mut refused = Vec::new();
    let mut outside = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        match cells.as_slice() {
            [w, p, v, _] if tick(p).is_some() => refused.push((
                w.to_string(),
                tick(p).unwrap_or_default().to_string(),
                tick(v).unwrap_or_default().to_string(),
            )),
            [p, _] if tick(p).is_some() => outside.push(tick(p).unwrap_or_default().to_string()),
            _ => {}
        }
    }
    (refused, outside)
}

/// The text between backticks, if `c` is one code span.
fn tick(c: &str) -> Option<&str> {
    c.strip_prefix('`').and_then(|c| c.strip_suffix('`'))
}

/// Sets `path` (`a.b`, `disks[].iommu`: first element) in `v`.
fn set(v: &mut Value, path: &str, value: Value) {
    let mut cur = v;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (name, index) = match part.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (*part, false),
        };
        let last = i + 1 == parts.len();
        if last && !index {
            cur[name] = value;
            return;
        }
        if cur.get(name).is_none() {
            cur[name] = if index { json!([{}]) } else { json!({}) };
        }
        cur = &mut cur[name];
        if index {
            cur = &mut cur[0];
        }
    }
}

#[test]
fn refused_properties_are_refused_by_name() {
    let dir = Scratch::new("compat");
    let sock = dir.path("api.sock");
    let chv = Chv::spawn(&["--api-socket", &format!("path={}", sock.display())]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&sock).is_err() {
        if Instant::now() > deadline {
            chv.fail("the API socket never accepted");
        }
        thread::sleep(Duration::from_millis(20));
    }
    for (name, len) in [("disk.img", 8u64 << 20), ("pmem.img", 4 << 20)] {
        std::fs::File::create(dir.path(name))
            .and_then(|f| f.set_len(len))
            .expect("image");
    }
    // One device of every kind, so `disks[].…` and the like have one.
    let base = json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": 64u64 << 20, "shared": true},
        "payload": {"kernel": testguest(), "cmdline": "test=ticker"},
        "serial": {"mode": "Null"},
        "console": {"mode": "Off"},
        "disks": [{"path": dir.path("disk.img")}],
        "net": [{}],
        "rng": {"src": "/dev/urandom"},
        "vsock": {"cid": 3, "socket": dir.path("vsock.sock")},
        "fs": [{"tag": "share", "socket": dir.path("fs.sock")}],
        "pmem": [{"file": dir.path("pmem.img")}],
        "platform": {},
    });
    let (st, body) = http(&sock, "PUT", "vm.create", Some(&base.to_string()));
    chv.check(st == 204, &format!("the base config: {st} {body}"));
    let (st, body) = http(&sock, "PUT", "vm.delete", None);
    chv.check(st == 204, &format!("vm.delete: {st} {body}"));

    let (refused, _) = doc_rows();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (place, property, value) in refused.iter().filter(|r| r.0 == "vm.create") {
        let value: Value = serde_json::from_str(value)
            .unwrap_or_else(|e| panic!("{place} {property}: value is not JSON ({e})"));
        let mut body = base.clone();
        set(&mut body, property, value);
        let (st, text) = http(&sock, "PUT", "vm.create", Some(&body.to_string()));
        let named = text.replace("[0]", "[]");
        if st / 100 == 2 {
            http(&sock, "PUT", "vm.delete", None);
        }
        if !(st == 400
            && named.contains(property.as_str())
            && named.contains("not supported by chv"))
        {
            wrong.push(format!("{property}: {st} {text}"));
        }
        checked += 1;
    }
    assert!(
        checked >= 40,
        "only {checked} vm.create rows in the document"
    );
    assert!(
        wrong.is_empty(),
        "docs/compatibility.md lists these as refused, but chv answered otherwise:\n{}",
        wrong.join("\n")
    );
    eprintln!("{checked} refused VmConfig properties checked");
}

/// chv.yaml schema names → the property path prefix they stand for.
const SCHEMA_PREFIX: &[(&str, &str)] = &[
    ("VmConfig", ""),
    ("CpusConfig", "cpus."),
    ("CpuFeatures", "cpus.features."),
    ("MemoryConfig", "memory."),
    ("DiskConfig", "disks[]."),
    ("NetConfig", "net[]."),
    ("RngConfig", "rng."),
    ("SerialConfig", "serial."),
    ("ConsoleConfig", "console."),
    ("VsockConfig", "vsock."),
    ("PlatformConfig", "platform."),
    ("FsConfig", "fs[]."),
    ("PmemConfig", "pmem[]."),
];

#[test]
fn spec_restrictions_are_documented() {
    let spec = std::fs::read_to_string(workspace_dir().join("api-server/openapi/chv.yaml"))
        .expect("chv.yaml");
    let (refused, outside) = doc_rows();
    let documented: BTreeSet<&str> = refused
        .iter()
        .filter(|r| r.0 == "vm.create")
        .map(|r| r.1.as_str())
        .chain(outside.iter().map(String::as_str))
        .collect();
    let mut schema = "";
    let mut missing = Vec::new();
    let mut seen = 0;
    for line in spec.lines() {
        if line.starts_with("    ") && !line.starts_with("     ") && line.ends_with(':') {
            schema = line.trim().trim_end_matches(':');
            continue;
        }
        let restricted = ["Off", "Absent", "NoneOf"]
            .iter()
            .any(|s| line.contains(&format!("$ref: \"#/components/schemas/{s}\"")));
        let Some((prop, _)) = line.trim().split_once(':') else {
            continue;
        };
        let Some((_, prefix)) = SCHEMA_PREFIX.iter().find(|(s, _)| *s == schema) else {
            continue;
        };
        if restricted {
            seen += 1;
            let path = format!("{prefix}{prop}");
            if !documented.contains(path.as_str()) {
                missing.push(path);
            }
        }
    }
    assert!(
        seen >= 40,
        "only {seen} restricted properties found in chv.yaml"
    );
    assert!(
        missing.is_empty(),
        "restricted in chv.yaml but not in docs/compatibility.md: {missing:?}"
    );
}

/// Where chv's defaults differ from Cloud Hypervisor's on purpose (see
/// docs/compatibility.md, "vm.info").
const DEFAULT_DEVIATIONS: &[&str] = &[".config.console.mode", ".config.rng"];

/// Compares `ch` (Cloud Hypervisor's serialisation) with `chv` at `path`:
/// every value CH writes must be there and equal; what chv writes beyond
/// it must be a default (null, false, 0 or empty).
fn compare(path: &str, ch: &Value, chv: &Value, diffs: &mut Vec<String>) {
    if DEFAULT_DEVIATIONS.contains(&path) {
        return;
    }
    match (ch, chv) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(w) => compare(&p, v, w, diffs),
                    None => diffs.push(format!("{p}: missing")),
                }
            }
            for (k, w) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                let default = matches!(w, Value::Null | Value::Bool(false))
                    || w.as_u64() == Some(0)
                    || w.as_array().is_some_and(|a| a.is_empty());
                if !default {
                    diffs.push(format!(
                        "{path}.{k}: chv writes {w} where CH writes nothing"
                    ));
                }
            }
        }
        (a, b) if a == b => {}
        (a, b) => diffs.push(format!("{path}: CH {a}, chv {b}")),
    }
}

#[test]
fn vm_info_matches_cloud_hypervisor_defaults() {
    let dir = Scratch::new("compat-info");
    let sock = dir.path("api.sock");
    let chv = Chv::spawn(&["--api-socket", &format!("path={}", sock.display())]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&sock).is_err() {
        if Instant::now() > deadline {
            chv.fail("the API socket never accepted");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let kernel = testguest().display().to_string();
    let body = json!({"payload": {"kernel": kernel}}).to_string();
    let (st, text) = http(&sock, "PUT", "vm.create", Some(&body));
    chv.check(st == 204, &format!("vm.create: {st} {text}"));
    let (st, text) = http(&sock, "GET", "vm.info", None);
    chv.check(st == 200, &format!("vm.info: {st} {text}"));
    let info: Value = serde_json::from_str(&text).expect("vm.info JSON");
    let golden =
        std::fs::read_to_string(workspace_dir().join("tests/golden/ch-vm-info-default.json"))
            .expect("golden vm.info")
            .replace("/KERNEL", &kernel);
    let golden: Value = serde_json::from_str(&golden).expect("golden JSON");
    let mut diffs = Vec::new();
    compare("", &golden, &info, &mut diffs);
    chv.check(
        diffs.is_empty(),
        &format!("vm.info differs from Cloud Hypervisor's: {diffs:#?}\n{text}"),
    );
    // Every field of the config is present, defaults included.
    for key in [
        "disks", "net", "fs", "pmem", "balloon", "platform", "numa", "tpm",
    ] {
        chv.check(
            info["config"].get(key).is_some(),
            &format!("vm.info config lacks {key}"),
        );
    }
}
