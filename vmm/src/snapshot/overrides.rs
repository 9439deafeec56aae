//! What a restore may change so that each clone of one snapshot gets its
//! own host-side identity: the serial port's and the virtio console's host
//! ends (files, sockets, ptys), and the vsock device's guest CID and host
//! socket. Tap fds come through Cloud Hypervisor's `net_fds`
//! ([`super::RestoredNetConfig`]).
//!
//! These are chv extensions of `vm.restore` / `--restore` (Cloud
//! Hypervisor has none; its users edit `config.json`, which chv honours
//! too, see [`super::config_file`]). The guest keeps its devices: a
//! console cannot be switched on or off, and a new CID reaches the guest
//! through the transport reset the vsock device sends on every restore.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::SnapshotError;
use crate::config::{ConsoleConfig, ConsoleOutputMode, VmConfig};

/// A restored vsock device's new CID and/or host socket.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RestoredVsockConfig {
    /// The guest's new context id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<u32>,
    /// The new host Unix socket path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// The host ends of `config`'s consoles and vsock device after a restore
/// with these overrides; refuses what the saved guest could not follow.
pub fn apply(
    config: &mut VmConfig,
    serial: Option<&ConsoleConfig>,
    console: Option<&ConsoleConfig>,
    vsock: Option<&RestoredVsockConfig>,
) -> Result<(), SnapshotError> {
    if let Some(new) = serial {
        replace_console(&mut config.serial, new, "serial")?;
    }
    if let Some(new) = console {
        replace_console(&mut config.console, new, "console")?;
    }
    if let Some(new) = vsock {
        let dev = config.vsock.as_mut().ok_or_else(|| {
            SnapshotError::Invalid("vsock: the snapshot has no vsock device".into())
        })?;
        if let Some(cid) = new.cid {
            if !(crate::config::MIN_VSOCK_CID..u32::MAX).contains(&cid) {
                return Err(SnapshotError::Invalid(format!(
                    "vsock.cid: {cid} is not a guest CID (3 to {})",
                    u32::MAX - 1
                )));
            }
            dev.cid = cid;
        }
        if let Some(socket) = &new.socket {
            if socket.as_os_str().is_empty() {
                return Err(SnapshotError::Invalid("vsock.socket: empty path".into()));
            }
            dev.socket = socket.clone();
        }
    }
    Ok(())
}

/// Gives `saved` the host end of `new`, keeping its place on the bus.
fn replace_console(
    saved: &mut ConsoleConfig,
    new: &ConsoleConfig,
    field: &str,
) -> Result<(), SnapshotError> {
    let off = |c: &ConsoleConfig| c.mode == ConsoleOutputMode::Off;
    if off(saved) != off(new) {
        return Err(SnapshotError::Invalid(format!(
            "{field}: the snapshot's {field} is {}; a restore can change its host side but \
             not switch it {}",
            if off(saved) { "off" } else { "on" },
            if off(saved) { "on" } else { "off" },
        )));
    }
    let needs = |mode, path: &Option<PathBuf>, what: &str| match (mode, path) {
        (true, None) => Err(SnapshotError::Invalid(format!(
            "{field}: {what} needs a path"
        ))),
        _ => Ok(()),
    };
    needs(new.mode == ConsoleOutputMode::File, &new.file, "file mode")?;
    needs(
        new.mode == ConsoleOutputMode::Socket,
        &new.socket,
        "socket mode",
    )?;
    saved.mode = new.mode;
    saved.file = new.file.clone();
    saved.socket = new.socket.clone();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VsockConfig;

    fn saved() -> VmConfig {
        VmConfig {
            serial: ConsoleConfig {
                file: Some("/t/serial.log".into()),
                ..ConsoleConfig::with_mode(ConsoleOutputMode::File)
            },
            vsock: Some(VsockConfig {
                cid: 3,
                socket: "/t/v.sock".into(),
                iommu: false,
                id: Some("vsock0".into()),
                pci_segment: 0,
                pci_device_id: Some(3),
            }),
            ..VmConfig::default()
        }
    }

    #[test]
    fn clones_get_their_own_consoles_and_vsock() {
        let mut c = saved();
        let serial = ConsoleConfig {
            socket: Some("/c1/serial.sock".into()),
            ..ConsoleConfig::with_mode(ConsoleOutputMode::Socket)
        };
        let vsock = RestoredVsockConfig {
            cid: Some(7),
            socket: Some("/c1/v.sock".into()),
        };
        apply(&mut c, Some(&serial), None, Some(&vsock)).unwrap();
        assert_eq!(c.serial.mode, ConsoleOutputMode::Socket);
        assert_eq!(c.serial.socket, Some("/c1/serial.sock".into()));
        assert_eq!(c.serial.file, None);
        let v = c.vsock.unwrap();
        assert_eq!((v.cid, v.socket), (7, "/c1/v.sock".into()));
        assert_eq!(v.pci_device_id, Some(3), "the device keeps its slot");
    }

    #[test]
    fn what_the_guest_could_not_follow_is_refused_by_name() {
        let err = |serial: Option<ConsoleConfig>,
                   console: Option<ConsoleConfig>,
                   vsock: Option<RestoredVsockConfig>| {
            apply(
                &mut saved(),
                serial.as_ref(),
                console.as_ref(),
                vsock.as_ref(),
            )
            .unwrap_err()
            .to_string()
        };
        let off = ConsoleConfig::with_mode(ConsoleOutputMode::Off);
        assert!(err(Some(off.clone()), None, None).contains("serial"));
        let pty = ConsoleConfig::with_mode(ConsoleOutputMode::Pty);
        // The saved virtio console is off (the default).
        let e = err(None, Some(pty), None);
        assert!(e.contains("console") && e.contains("switch it on"), "{e}");
        let file = ConsoleConfig::with_mode(ConsoleOutputMode::File);
        assert!(err(Some(file), None, None).contains("needs a path"));
        let cid = |cid| RestoredVsockConfig {
            cid: Some(cid),
            socket: None,
        };
        assert!(err(None, None, Some(cid(2))).contains("vsock.cid"));
        assert!(err(None, None, Some(cid(u32::MAX))).contains("vsock.cid"));
        let mut no_vsock = saved();
        no_vsock.vsock = None;
        let e = apply(&mut no_vsock, None, None, Some(&cid(5)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no vsock device"), "{e}");
    }
}
