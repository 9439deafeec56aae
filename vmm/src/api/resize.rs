//! `vm.resize`: vCPUs (`desired_vcpus`), RAM (`desired_ram`, ACPI or
//! virtio-mem hotplug) and the balloon (`desired_balloon`).

use api_server::ApiResponse;
use serde::Deserialize;

use super::{done, parse};
use crate::config::VmConfig;
use crate::control_loop::{Next, Vmm};
use crate::vm::Vm;

/// `vm.resize`'s body (Cloud Hypervisor's `VmResize`).
#[derive(Deserialize)]
struct VmResize {
    desired_vcpus: Option<u32>,
    desired_ram: Option<u64>,
    desired_balloon: Option<u64>,
}

impl Vmm {
    /// `vm.resize`: `desired_vcpus` (vCPU hotplug) and `desired_ram`
    /// (ACPI memory hotplug, see [`resize_ram`]). Before boot it
    /// only changes the configured count; on a running VM it hot-adds vCPUs
    /// or asks the guest to eject some (204 once requested; the guest
    /// finishes asynchronously). The configured `boot_vcpus` follows, as in
    /// Cloud Hypervisor, so `vm.info` and a reboot see the new count.
    pub(super) fn resize(&mut self, body: &[u8]) -> Result<(ApiResponse, Next), ApiResponse> {
        use crate::vcpu::hotplug::ResizeError;
        let req: VmResize = parse(body, "VmResize")?;
        let config = self
            .config
            .as_mut()
            .ok_or_else(|| ApiResponse::error(404, "no VM is created"))?;
        if let Some(desired) = req.desired_ram {
            resize_ram(config, self.vm.as_mut(), desired)?;
        }
        if let Some(desired) = req.desired_balloon {
            resize_balloon(config, self.vm.as_ref(), desired)?;
        }
        let Some(desired) = req.desired_vcpus else {
            return Ok(done());
        };
        let max = config.cpus.max_vcpus;
        let desired = u8::try_from(desired).map_err(|_| {
            ApiResponse::error(
                400,
                format!("desired_vcpus={desired}: must be between 1 and max_vcpus ({max})"),
            )
        })?;
        if desired == 0 || desired > max {
            return Err(ApiResponse::error(
                400,
                ResizeError::OutOfRange { desired, max }.to_string(),
            ));
        }
        if let Some(vm) = self.vm.as_mut() {
            if let Err(e) = vm.resize_vcpus(desired) {
                return Err(match e {
                    ResizeError::OutOfRange { .. } | ResizeError::NotHotpluggable { .. } => {
                        ApiResponse::error(400, e.to_string())
                    }
                    ResizeError::RemovalPending => ApiResponse::error(429, e.to_string()),
                    ResizeError::Vcpu(..) | ResizeError::Notify(_) => {
                        // Some vCPUs may have been added before the failure.
                        config.cpus.boot_vcpus =
                            u8::try_from(vm.vcpu_count()).unwrap_or(config.cpus.boot_vcpus);
                        ApiResponse::error(500, format!("cannot resize: {e}"))
                    }
                });
            }
        }
        config.cpus.boot_vcpus = desired;
        Ok(done())
    }
}

/// `vm.resize`'s `desired_ram`: on a running VM hot-adds RAM (ACPI), before
/// boot changes the configured size. `memory.size` follows, as in Cloud
/// Hypervisor, so `vm.info` and a reboot see the new size.
fn resize_ram(config: &mut VmConfig, vm: Option<&mut Vm>, desired: u64) -> Result<(), ApiResponse> {
    use crate::memory::hotplug::MemoryResizeError;
    let Some(vm) = vm else {
        if desired == config.memory.boot_size() {
            return Ok(());
        }
        if desired == 0 || !desired.is_multiple_of(crate::config::MEMORY_ALIGNMENT) {
            return Err(ApiResponse::error(
                400,
                format!("desired_ram={desired}: must be a non-zero multiple of 4 KiB"),
            ));
        }
        if config.memory.zones.as_ref().is_some_and(|z| !z.is_empty()) {
            return Err(ApiResponse::error(
                400,
                format!("desired_ram={desired}: the RAM is given by memory.zones"),
            ));
        }
        config.memory.size = desired;
        return Ok(());
    };
    match vm.resize_memory(desired) {
        Ok(()) => {
            match vm.devices.virtio_mem() {
                // As Cloud Hypervisor: memory.size stays the boot RAM and
                // hotplugged_size is what virtio-mem is asked to plug.
                Some(m) => config.memory.hotplugged_size = Some(m.requested_bytes()),
                None => config.memory.size = vm.ram_size(),
            }
            Ok(())
        }
        Err(
            e @ (MemoryResizeError::NotHotpluggable { .. }
            | MemoryResizeError::TooLarge { .. }
            | MemoryResizeError::Shrink { .. }
            | MemoryResizeError::Unaligned { .. }
            | MemoryResizeError::BelowBoot { .. }
            | MemoryResizeError::VirtioMem { .. }
            | MemoryResizeError::NoSlot(..)
            | MemoryResizeError::NoRoom(_)),
        ) => Err(ApiResponse::error(400, e.to_string())),
        Err(e) => {
            config.memory.size = vm.ram_size();
            Err(ApiResponse::error(500, format!("cannot resize: {e}")))
        }
    }
}

/// `vm.resize`'s `desired_balloon`: sets the balloon's target (the guest
/// inflates or deflates to it); `balloon.size` follows, as in Cloud
/// Hypervisor.
fn resize_balloon(config: &mut VmConfig, vm: Option<&Vm>, desired: u64) -> Result<(), ApiResponse> {
    let Some(balloon) = config.balloon.as_mut() else {
        if desired == 0 {
            return Ok(());
        }
        return Err(ApiResponse::error(
            400,
            format!("desired_balloon={desired}: the VM has no balloon device (--balloon)"),
        ));
    };
    if let Some(control) = vm.and_then(|vm| vm.devices.balloon()) {
        control
            .set_target(desired, vm.map_or(0, Vm::ram_size))
            .map_err(|e| ApiResponse::error(400, e.to_string()))?;
    } else if desired >= config.memory.boot_size() {
        return Err(ApiResponse::error(
            400,
            format!("desired_balloon={desired}: must be below the guest's RAM"),
        ));
    }
    balloon.size = desired;
    Ok(())
}
