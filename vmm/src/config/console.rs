//! `ConsoleConfig`: where the serial port and the virtio console go.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::*;

/// Where a console device's output goes (Cloud Hypervisor's `ConsoleConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    /// Output file when `mode` is `File` (the pty's path in `vm.info`
    /// when `mode` is `Pty`).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Unix socket chv listens on when `mode` is `Socket`.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Output mode.
    pub mode: ConsoleOutputMode,
    /// Place the device behind a virtual IOMMU (chv has none).
    #[serde(default)]
    pub iommu: bool,
    /// Device id (the virtio console only).
    #[serde(default)]
    pub id: Option<String>,
    /// PCI segment (the virtio console only).
    #[serde(default)]
    pub pci_segment: u16,
    /// PCI device (slot) number (the virtio console only).
    #[serde(default)]
    pub pci_device_id: Option<u8>,
}

impl ConsoleConfig {
    /// Serial default: present, output discarded (as Cloud Hypervisor).
    pub fn default_serial() -> Self {
        Self::with_mode(ConsoleOutputMode::Null)
    }

    /// virtio-console default: absent.
    pub fn default_console() -> Self {
        Self::with_mode(ConsoleOutputMode::Off)
    }

    /// A console in `mode` with every other setting at its default.
    pub fn with_mode(mode: ConsoleOutputMode) -> Self {
        Self {
            file: None,
            socket: None,
            mode,
            iommu: false,
            id: None,
            pci_segment: 0,
            pci_device_id: None,
        }
    }
}

/// Console output modes, spelled as in Cloud Hypervisor's API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleOutputMode {
    /// Device absent.
    Off,
    /// A new pseudo-terminal; its path is logged and shown in `vm.info`.
    Pty,
    /// Host terminal (stdin/stdout); input is forwarded to the guest.
    Tty,
    /// Appended to a file.
    File,
    /// Device present, output discarded.
    Null,
    /// A Unix socket chv listens on; one client at a time gets the output
    /// and its input goes to the guest.
    Socket,
}

impl ConsoleConfig {
    /// Checks that `File` mode has a non-empty path; `device` names the
    /// field (`serial` or `console`) in the error.
    pub fn validate(&self, device: &'static str) -> Result<(), ConfigError> {
        refuse_if(
            self.iommu,
            format!("{device}.iommu=true"),
            "no virtual IOMMU",
        )?;
        if self.mode == ConsoleOutputMode::Socket
            && self
                .socket
                .as_ref()
                .is_none_or(|p| p.as_os_str().is_empty())
        {
            return Err(invalid(
                format!("{device}.socket"),
                "mode Socket needs the socket path",
            ));
        }
        if device == "serial" {
            let legacy = "the serial port is a legacy device, not on PCI";
            refuse_if(self.id.is_some(), "serial.id", legacy)?;
            refuse_if(self.pci_segment != 0, "serial.pci_segment", legacy)?;
            refuse_if(self.pci_device_id.is_some(), "serial.pci_device_id", legacy)?;
        }
        if self.mode == ConsoleOutputMode::File {
            match &self.file {
                None => return Err(ConfigError::ConsoleFileMissing(device)),
                Some(path) if path.as_os_str().is_empty() => {
                    return Err(ConfigError::EmptyPath(device))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}
