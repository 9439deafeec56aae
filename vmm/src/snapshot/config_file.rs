//! `config.json` in a snapshot directory: the VM configuration in Cloud
//! Hypervisor's form, written beside `state.json` so that a sandbox runtime
//! can edit it between snapshot and restore (Kata changes `memory.shared`
//! and the vsock socket path, for example).
//!
//! On restore an edited `config.json` replaces the configuration saved in
//! `state.json`, as long as it describes the same machine: the same vCPUs,
//! the same RAM layout, and the same devices in the same places. Paths,
//! sockets, taps, backing choices and the like may change; a change that
//! the saved guest state could not follow is refused with the field named.

use std::path::Path;

use serde_json::Value;

use super::SnapshotError;
use crate::config::VmConfig;

/// Name of the configuration file in a snapshot directory.
pub const CONFIG_FILE: &str = "config.json";

/// Writes `config` to `dir/config.json` (through a temporary file and a
/// rename, like `state.json`).
pub fn write(dir: &Path, config: &VmConfig) -> Result<(), SnapshotError> {
    let json = serde_json::to_vec_pretty(config)
        .map_err(|e| SnapshotError::Io(format!("encoding {CONFIG_FILE}: {e}")))?;
    let tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
    std::fs::write(&tmp, &json)
        .map_err(|e| SnapshotError::Io(format!("writing {}: {e}", tmp.display())))?;
    let dst = dir.join(CONFIG_FILE);
    std::fs::rename(&tmp, &dst)
        .map_err(|e| SnapshotError::Io(format!("renaming to {}: {e}", dst.display())))
}

/// The configuration to restore with: `dir/config.json` when it exists and
/// is compatible with `saved` (the one in `state.json`), else `saved`.
pub fn read_edited(dir: &Path, saved: &VmConfig) -> Result<Option<VmConfig>, SnapshotError> {
    let path = dir.join(CONFIG_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SnapshotError::Io(format!("{}: {e}", path.display()))),
    };
    let edited: VmConfig = crate::config::parse_json(&bytes, CONFIG_FILE)
        .map_err(|e| SnapshotError::Invalid(format!("{CONFIG_FILE}: {e}")))?;
    edited
        .validate()
        .map_err(|e| SnapshotError::Invalid(format!("{CONFIG_FILE}: {e}")))?;
    check_same_machine(saved, &edited)?;
    Ok(Some(edited))
}

/// Fields of each device list that fix where the device is and what the
/// guest was told about it.
const DEVICE_SHAPE: &[&str] = &[
    "id",
    "pci_segment",
    "pci_device_id",
    "num_queues",
    "queue_size",
    "readonly",
    "mac",
    "mtu",
    "tag",
    "size",
    "deflate_on_oom",
    "free_page_reporting",
    "iommu",
    "vhost_user",
];

/// Refuses an edited configuration that changes what the saved guest state
/// depends on, naming the first such field.
fn check_same_machine(saved: &VmConfig, edited: &VmConfig) -> Result<(), SnapshotError> {
    let (a, b) = (to_value(saved)?, to_value(edited)?);
    let same = |pointer: &str| a.pointer(pointer) == b.pointer(pointer);
    for pointer in [
        "/cpus",
        "/memory/size",
        "/memory/hotplug_method",
        "/memory/hotplug_size",
        "/memory/hotplugged_size",
        "/platform/num_pci_segments",
        "/pci_segments",
        "/console/pci_segment",
        "/serial/mode",
        "/console/mode",
        "/iommu",
    ] {
        if !same(pointer) {
            return Err(changed(pointer));
        }
    }
    for list in [
        "disks",
        "net",
        "fs",
        "pmem",
        "devices",
        "user_devices",
        "vdpa",
    ] {
        let (x, y) = (items(&a, list), items(&b, list));
        if x.len() != y.len() {
            return Err(SnapshotError::Invalid(format!(
                "{CONFIG_FILE}: {list} has {} devices, the snapshot {}",
                y.len(),
                x.len()
            )));
        }
        for (i, (x, y)) in x.iter().zip(&y).enumerate() {
            for key in DEVICE_SHAPE {
                if x.get(key) != y.get(key) {
                    return Err(changed(&format!("/{list}/{i}/{key}")));
                }
            }
        }
    }
    for single in ["rng", "vsock", "balloon"] {
        let (x, y) = (a.get(single), b.get(single));
        if x.is_some_and(Value::is_null) != y.is_some_and(Value::is_null) {
            return Err(changed(&format!("/{single}")));
        }
        for key in DEVICE_SHAPE {
            let (x, y) = (x.and_then(|v| v.get(key)), y.and_then(|v| v.get(key)));
            if x != y {
                return Err(changed(&format!("/{single}/{key}")));
            }
        }
    }
    // Memory zones: same ids and sizes (their backing may change).
    let zones = |v: &Value| -> Vec<(Value, Value)> {
        items_at(v, "/memory/zones")
            .iter()
            .map(|z| {
                (
                    z.get("id").cloned().unwrap_or(Value::Null),
                    z.get("size").cloned().unwrap_or(Value::Null),
                )
            })
            .collect()
    };
    if zones(&a) != zones(&b) {
        return Err(changed("/memory/zones"));
    }
    Ok(())
}

fn to_value(config: &VmConfig) -> Result<Value, SnapshotError> {
    serde_json::to_value(config)
        .map_err(|e| SnapshotError::Io(format!("encoding the VM config: {e}")))
}

fn items(v: &Value, list: &str) -> Vec<Value> {
    items_at(v, &format!("/{list}"))
}

fn items_at(v: &Value, pointer: &str) -> Vec<Value> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn changed(pointer: &str) -> SnapshotError {
    let field = pointer.trim_start_matches('/').replace('/', ".");
    SnapshotError::Invalid(format!(
        "{CONFIG_FILE}: {field} differs from the snapshot; only paths, sockets, taps and \
         backing options may be edited before a restore"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DiskConfig, VsockConfig};

    fn saved() -> VmConfig {
        let mut c = VmConfig::default();
        c.payload.kernel = Some("/k".into());
        c.disks = Some(vec![DiskConfig {
            path: Some("/a.img".into()),
            ..DiskConfig::default()
        }]);
        c.vsock = Some(VsockConfig {
            cid: 3,
            socket: "/run/v.sock".into(),
            iommu: false,
            id: None,
            pci_segment: 0,
            pci_device_id: None,
        });
        c
    }

    #[test]
    fn paths_may_change_but_shape_may_not() {
        let dir = std::env::temp_dir().join(format!("chv-cfgjson-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(read_edited(&dir, &saved()).unwrap().is_none());
        write(&dir, &saved()).unwrap();
        let mut v: Value =
            serde_json::from_slice(&std::fs::read(dir.join(CONFIG_FILE)).unwrap()).unwrap();
        v["vsock"]["socket"] = "/run/new.sock".into();
        // A new CID reaches the guest through the vsock transport reset.
        v["vsock"]["cid"] = 9.into();
        v["disks"][0]["path"] = "/b.img".into();
        std::fs::write(dir.join(CONFIG_FILE), v.to_string()).unwrap();
        let edited = read_edited(&dir, &saved()).unwrap().unwrap();
        let vsock = edited.vsock.unwrap();
        assert_eq!(
            (vsock.socket.as_path(), vsock.cid),
            (Path::new("/run/new.sock"), 9)
        );
        assert_eq!(
            edited.disks.unwrap()[0].path.as_deref(),
            Some(Path::new("/b.img"))
        );
        for (pointer, value) in [
            ("/memory/size", Value::from(1u64 << 30)),
            ("/cpus/boot_vcpus", Value::from(2)),
        ] {
            let mut w = v.clone();
            *w.pointer_mut(pointer).unwrap() = value;
            if pointer == "/cpus/boot_vcpus" {
                w["cpus"]["max_vcpus"] = 2.into();
            }
            std::fs::write(dir.join(CONFIG_FILE), w.to_string()).unwrap();
            let err = read_edited(&dir, &saved()).unwrap_err().to_string();
            let field = pointer.trim_start_matches('/').replace('/', ".");
            let field = if field.starts_with("cpus") {
                "cpus".into()
            } else {
                field
            };
            assert!(
                err.contains(&format!("{field} differs")),
                "{pointer}: {err}"
            );
        }
        let mut w = v.clone();
        w["disks"] = Value::Array(vec![]);
        std::fs::write(dir.join(CONFIG_FILE), w.to_string()).unwrap();
        let err = read_edited(&dir, &saved()).unwrap_err().to_string();
        assert!(err.contains("disks has 0 devices"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
