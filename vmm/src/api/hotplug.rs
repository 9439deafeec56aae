//! `vm.add-*` and `vm.remove-device`: recording a device in the VM
//! configuration, hot-plugging it into a running VM, and taking the file
//! descriptors (tap fds, restore fds) a request carried.

use std::os::fd::{AsRawFd, OwnedFd};

use api_server::ApiResponse;

use super::{done, json, parse};
use crate::config::{NetConfig, VmConfig};
use crate::control_loop::{Next, Vmm};
use crate::device_manager::{DeviceManager, HotplugError, PciDeviceInfo};
use crate::snapshot::RestoreConfig;

/// How `vm.add-*` records and hot-plugs one kind of device.
pub(super) struct AddDevice<T> {
    /// Schema name for error messages ("DiskConfig").
    pub(super) schema: &'static str,
    /// Device kind for error messages ("disk").
    pub(super) what: &'static str,
    /// Adds the device to a VM configuration.
    pub(super) record: fn(&mut VmConfig, T),
    /// Plugs it into the running VM (filling in a generated id).
    pub(super) hotplug: fn(&mut DeviceManager, &mut T) -> Result<PciDeviceInfo, HotplugError>,
}

/// Position of device `id` in a device list: by its id, or for devices
/// without one by the id they got from their position (`_disk<i>`,
/// `_fs<i>`, …), as when they were plugged at boot.
fn position_of(ids: &[Option<&str>], prefix: &str, id: &str) -> Option<usize> {
    ids.iter().position(|d| *d == Some(id)).or_else(|| {
        ids.iter()
            .enumerate()
            .position(|(i, d)| d.is_none() && format!("{prefix}{i}") == id)
    })
}

/// Removes device `id` (disk, net, fs or pmem) from `config`; false when
/// no such device is configured. The devices of that kind left without an
/// id get the one they have on the bus first, which their new positions
/// would no longer give.
pub(super) fn remove_from_config(config: &mut VmConfig, id: &str) -> bool {
    /// Reads and sets a device config's `id`.
    struct Ids<T> {
        get: fn(&T) -> Option<&str>,
        set: fn(&mut T, String),
    }
    fn take<T>(list: &mut Option<Vec<T>>, prefix: &str, id: &str, ids: Ids<T>) -> bool {
        let Some(items) = list.as_mut() else {
            return false;
        };
        let known: Vec<Option<&str>> = items.iter().map(ids.get).collect();
        let Some(at) = position_of(&known, prefix, id) else {
            return false;
        };
        for (i, item) in items.iter_mut().enumerate() {
            if (ids.get)(item).is_none() {
                (ids.set)(item, format!("{prefix}{i}"));
            }
        }
        items.remove(at);
        true
    }
    take(
        &mut config.disks,
        "_disk",
        id,
        Ids {
            get: |d| d.id.as_deref(),
            set: |d, id| d.id = Some(id),
        },
    ) || take(
        &mut config.net,
        "_net",
        id,
        Ids {
            get: |n| n.id.as_deref(),
            set: |n, id| n.id = Some(id),
        },
    ) || take(
        &mut config.fs,
        "_fs",
        id,
        Ids {
            get: |f| f.id.as_deref(),
            set: |f, id| f.id = Some(id),
        },
    ) || take(
        &mut config.pmem,
        "_pmem",
        id,
        Ids {
            get: |p| p.id.as_deref(),
            set: |p, id| p.id = Some(id),
        },
    )
}

impl Vmm {
    /// `vm.add-disk`/`add-net`/`add-vsock`: validates the configuration with
    /// the device added; before boot only records it (204), on a running VM
    /// hot-plugs it and records it with the id it got (200 + PciDeviceInfo).
    pub(super) fn add_device<T: Clone>(
        &mut self,
        mut device: T,
        kind: AddDevice<T>,
    ) -> Result<(ApiResponse, Next), ApiResponse> {
        let config = self
            .config
            .as_mut()
            .ok_or_else(|| ApiResponse::error(404, "no VM is created"))?;
        let mut candidate = config.clone();
        (kind.record)(&mut candidate, device.clone());
        candidate
            .validate()
            .map_err(|e| ApiResponse::error(400, format!("invalid {}: {e}", kind.schema)))?;
        let Some(vm) = self.vm.as_mut() else {
            // Not booted: the device is plugged at boot.
            *config = candidate;
            return Ok(done());
        };
        let info = (kind.hotplug)(&mut vm.devices, &mut device).map_err(|e| match e {
            HotplugError::DuplicateId(_)
            | HotplugError::VsockExists
            | HotplugError::NotOnSegment0(_) => ApiResponse::error(400, e.to_string()),
            _ => ApiResponse::error(500, format!("cannot hot-add the {}: {e}", kind.what)),
        })?;
        // Record it with the id it got, so vm.info, a reboot and
        // vm.remove-device see the same device.
        (kind.record)(config, device);
        Ok((json(&info), Next::Continue))
    }

    /// `vm.add-*` for device kinds chv cannot hot-plug: parses `body` as
    /// `schema`, checks the configuration with the device added (which
    /// names the field chv refuses) and, before boot, records it (204).
    pub(super) fn add_unplugged<T: serde::de::DeserializeOwned>(
        &mut self,
        body: &[u8],
        schema: &'static str,
        record: fn(&mut VmConfig, T),
    ) -> Result<(ApiResponse, Next), ApiResponse> {
        let device: T = parse(body, schema)?;
        let config = self
            .config
            .as_mut()
            .ok_or_else(|| ApiResponse::error(404, "no VM is created"))?;
        let mut candidate = config.clone();
        record(&mut candidate, device);
        candidate
            .validate()
            .map_err(|e| ApiResponse::error(400, format!("invalid {schema}: {e}")))?;
        if self.vm.is_some() {
            return Err(ApiResponse::error(
                400,
                format!("invalid {schema}: not supported by chv (hot-adding this device kind)"),
            ));
        }
        *config = candidate;
        Ok(done())
    }

    /// Points `net` at the tap fds that came with `vm.add-net` (preferred
    /// over any `fds` numbers in the JSON, as Cloud Hypervisor does) and
    /// returns them, to be kept open while the device exists.
    pub(super) fn take_tap_fds(
        &self,
        net: &mut NetConfig,
        fds: Vec<OwnedFd>,
    ) -> Result<Vec<OwnedFd>, ApiResponse> {
        if fds.is_empty() {
            return Ok(fds);
        }
        if fds.len() * 2 != net.num_queues {
            return Err(ApiResponse::error(
                400,
                format!(
                    "invalid NetConfig: {} tap fds sent for num_queues={} (one per RX/TX pair)",
                    fds.len(),
                    net.num_queues
                ),
            ));
        }
        net.fds = Some(fds.iter().map(AsRawFd::as_raw_fd).collect());
        net.tap = None;
        Ok(fds)
    }

    /// Hands the tap fds that came with `vm.restore` to the `net_fds`
    /// entries, `num_fds` each, in order (Cloud Hypervisor's rule).
    pub(super) fn take_restore_fds(
        &self,
        req: &mut RestoreConfig,
        fds: Vec<OwnedFd>,
    ) -> Result<Vec<OwnedFd>, ApiResponse> {
        let wanted: usize = req.net_fds.iter().flatten().map(|n| n.num_fds).sum();
        if req.net_fds.iter().flatten().any(|n| n.fds.is_some()) || wanted != fds.len() {
            return Err(ApiResponse::error(
                400,
                format!(
                    "invalid RestoreConfig: net_fds asks for {wanted} fds and {} were sent \
                     with the request (SCM_RIGHTS)",
                    fds.len()
                ),
            ));
        }
        let mut next = fds.iter().map(AsRawFd::as_raw_fd);
        for net in req.net_fds.iter_mut().flatten() {
            net.fds = Some(next.by_ref().take(net.num_fds).collect());
        }
        Ok(fds)
    }
}
