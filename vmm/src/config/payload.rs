//! `PayloadConfig`: what to boot.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::*;

/// The kernel, initramfs and command line to boot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PayloadConfig {
    /// Firmware image (chv boots kernels directly; refused).
    #[serde(default)]
    pub firmware: Option<PathBuf>,
    /// ELF vmlinux (PVH or 64-bit entry) or bzImage.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Optional initramfs loaded next to the kernel.
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// IGVM image for confidential guests (refused).
    #[serde(default)]
    pub igvm: Option<PathBuf>,
    /// SEV-SNP host data (refused).
    #[serde(default)]
    pub host_data: Option<String>,
}

impl PayloadConfig {
    /// Checks that a kernel is given and that no path is empty.
    pub fn validate(&self) -> Result<(), ConfigError> {
        refuse_if(
            self.firmware.is_some(),
            "payload.firmware",
            "chv boots a kernel directly (payload.kernel)",
        )?;
        refuse_if(
            self.igvm.is_some(),
            "payload.igvm",
            "no confidential guests",
        )?;
        refuse_if(
            self.host_data.is_some(),
            "payload.host_data",
            "no confidential guests",
        )?;
        match &self.kernel {
            None => return Err(ConfigError::KernelMissing),
            Some(path) if path.as_os_str().is_empty() => {
                return Err(ConfigError::EmptyPath("payload.kernel"))
            }
            Some(_) => {}
        }
        if self
            .initramfs
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return Err(ConfigError::EmptyPath("payload.initramfs"));
        }
        if self.cmdline.as_ref().is_some_and(|c| c.contains('\0')) {
            return Err(ConfigError::CmdlineNul);
        }
        Ok(())
    }
}
