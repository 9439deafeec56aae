//! Answers REST API requests (Cloud Hypervisor's endpoints and JSON bodies)
//! on the VMM thread: `dispatch` routes each endpoint; `hotplug` adds and
//! removes devices, `resize` handles `vm.resize`.

mod hotplug;
mod resize;

use std::os::fd::OwnedFd;

use api_server::{ApiResponse, Endpoint};
use serde::{Deserialize, Serialize};

use crate::config::{DiskConfig, FsConfig, NetConfig, PmemConfig, VmConfig, VsockConfig};
use crate::control_loop::{Next, VmState, Vmm};
use crate::device_manager::DeviceManager;
use crate::migration;
use crate::snapshot::{self, RestoreConfig, SnapshotConfig};
use crate::vm::{Vm, VmExit};
use hotplug::{remove_from_config, AddDevice};

/// `vmm.ping`'s answer.
#[derive(Serialize)]
struct VmmPingResponse {
    build_version: &'static str,
    version: &'static str,
    pid: u32,
    features: Vec<&'static str>,
}

/// `vm.info`'s answer.
#[derive(Serialize)]
struct VmInfo<'a> {
    config: &'a VmConfig,
    state: &'static str,
    memory_actual_size: u64,
}

/// `vm.send-migration`'s body (Cloud Hypervisor's `SendMigrationData`).
#[derive(Deserialize)]
struct SendMigration {
    destination_url: String,
    /// Cloud Hypervisor's same-host flag (memory passed as fds). chv sends
    /// the pages over the Unix socket either way; the receiver ends up with
    /// the same guest, so both values are accepted.
    #[serde(default)]
    #[allow(dead_code)]
    local: bool,
    /// Longest pause of the guest the sender aims for.
    #[serde(default = "default_downtime_ms")]
    downtime_ms: u64,
    /// Time allowed for the pre-copy rounds.
    #[serde(default = "default_timeout_s")]
    timeout_s: u64,
    /// What to do when `timeout_s` passes before the downtime target is
    /// reachable.
    #[serde(default)]
    timeout_strategy: migration::TimeoutStrategy,
    /// Parallel connections (chv: one).
    #[serde(default = "default_connections")]
    connections: u32,
    /// TLS certificates directory (chv: none, Unix sockets only).
    #[serde(default)]
    tls_dir: Option<String>,
    /// Pre-copy or post-copy (chv: pre-copy).
    #[serde(default)]
    memory_mode: MigrationMode,
}

fn default_downtime_ms() -> u64 {
    300
}
fn default_timeout_s() -> u64 {
    3600
}
fn default_connections() -> u32 {
    1
}

/// Cloud Hypervisor's `MigrationMode`.
#[derive(Deserialize, Default, PartialEq, Eq, Debug)]
enum MigrationMode {
    /// Copy memory, then stop and copy what changed.
    #[default]
    Precopy,
    /// Run on the receiver and fetch pages on demand.
    Postcopy,
}

/// `vm.receive-migration`'s body (Cloud Hypervisor's `ReceiveMigrationData`).
#[derive(Deserialize)]
struct ReceiveMigration {
    receiver_url: String,
    /// TLS certificates directory (chv: none).
    #[serde(default)]
    tls_dir: Option<String>,
    /// Pre-copy or post-copy (chv: pre-copy).
    #[serde(default)]
    memory_mode: MigrationMode,
    /// VFIO fds (chv: no VFIO).
    #[serde(default)]
    vfio_fds: Option<Vec<serde_json::Value>>,
    /// iommufd fd (chv: no VFIO).
    #[serde(default)]
    iommufd_fd: Option<i32>,
    /// Host NUMA nodes for memory zones (chv: no zones).
    #[serde(default)]
    zone_updates: Vec<serde_json::Value>,
}

impl SendMigration {
    /// Refuses values chv cannot honour, naming the field.
    fn check(&self) -> Result<migration::SendOptions, ApiResponse> {
        let refuse = |field: &str, why: &str| {
            Err(ApiResponse::error(
                400,
                format!("invalid SendMigrationData: {field}: not supported by chv ({why})"),
            ))
        };
        if self.downtime_ms == 0 || self.timeout_s == 0 || self.connections == 0 {
            return Err(ApiResponse::error(
                400,
                "invalid SendMigrationData: downtime_ms, timeout_s and connections must not be 0",
            ));
        }
        if self.connections != 1 {
            return refuse("connections", "one connection per migration");
        }
        if self.tls_dir.is_some() {
            return refuse("tls_dir", "migration runs over a local Unix socket");
        }
        if self.memory_mode != MigrationMode::Precopy {
            return refuse("memory_mode=Postcopy", "pre-copy only");
        }
        Ok(migration::SendOptions {
            downtime: std::time::Duration::from_millis(self.downtime_ms),
            timeout: std::time::Duration::from_secs(self.timeout_s),
            strategy: self.timeout_strategy,
        })
    }
}

impl ReceiveMigration {
    /// Refuses values chv cannot honour, naming the field.
    fn check(&self) -> Result<(), ApiResponse> {
        let refuse = |field: &str, why: &str| {
            Err(ApiResponse::error(
                400,
                format!("invalid ReceiveMigrationData: {field}: not supported by chv ({why})"),
            ))
        };
        if self.tls_dir.is_some() {
            return refuse("tls_dir", "migration runs over a local Unix socket");
        }
        if self.memory_mode != MigrationMode::Precopy {
            return refuse("memory_mode=Postcopy", "pre-copy only");
        }
        if self.vfio_fds.as_ref().is_some_and(|v| !v.is_empty()) || self.iommufd_fd.is_some() {
            return refuse("vfio_fds/iommufd_fd", "no VFIO");
        }
        if !self.zone_updates.is_empty() {
            return refuse("zone_updates", "zones are not bound to host NUMA nodes");
        }
        Ok(())
    }
}

/// `vm.resize-zone`'s body (Cloud Hypervisor's `VmResizeZone`).
#[derive(Deserialize)]
struct VmResizeZone {
    id: String,
    #[allow(dead_code)]
    desired_ram: u64,
}

/// `vm.resize-disk`'s body (Cloud Hypervisor's `VmResizeDisk`).
#[derive(Deserialize)]
struct VmResizeDisk {
    id: String,
    #[allow(dead_code)]
    desired_size: u64,
}

/// `vm.coredump`'s body (Cloud Hypervisor's `VmCoredumpData`).
#[derive(Deserialize)]
struct VmCoredump {
    #[allow(dead_code)]
    destination_url: String,
}

/// `vm.remove-device`'s body.
#[derive(Deserialize)]
struct VmRemoveDevice {
    id: String,
}

/// `vmm.ping`'s JSON body. The API thread answers pings with it directly
/// (see `api_server::ServerOptions::ping_body`).
pub fn ping_body() -> String {
    let ping = VmmPingResponse {
        build_version: env!("CARGO_PKG_VERSION"),
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        features: vec![],
    };
    // Plain strings and a number: encoding cannot fail.
    serde_json::to_string(&ping).unwrap_or_else(|_| "{}".into())
}

/// `vm.info`'s `memory_actual_size`, computed as Cloud Hypervisor does: the
/// boot RAM plus what was hot-plugged, over all zones, less what a balloon
/// holds (chv has no balloon device, so nothing).
fn memory_actual_size(config: &VmConfig) -> u64 {
    let m = &config.memory;
    let zones = m.zones.iter().flatten().fold(0u64, |sum, z| {
        sum.saturating_add(z.size)
            .saturating_add(z.hotplugged_size.unwrap_or(0))
    });
    m.size
        .saturating_add(m.hotplugged_size.unwrap_or(0))
        .saturating_add(zones)
}

fn json<T: Serialize>(value: &T) -> ApiResponse {
    match serde_json::to_string(value) {
        Ok(s) => ApiResponse::ok_json(s),
        Err(e) => ApiResponse::error(500, format!("cannot encode response: {e}")),
    }
}

/// Parses a request body. Keys that are not part of the schema are
/// ignored, as Cloud Hypervisor's serde structs ignore them (none of them
/// denies unknown fields, and clients such as Kata's send keys of other
/// generations); each one is logged.
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, ApiResponse> {
    crate::config::parse_json(body, what)
        .map_err(|e| ApiResponse::error(400, format!("invalid {what} body: {e}")))
}

fn done() -> (ApiResponse, Next) {
    (ApiResponse::no_content(), Next::Continue)
}

impl Vmm {
    /// Handles one request; returns the response and what the control loop
    /// must do next.
    pub(crate) fn handle_api(
        &mut self,
        endpoint: Endpoint,
        body: &[u8],
        fds: Vec<OwnedFd>,
    ) -> (ApiResponse, Next) {
        match self.dispatch(endpoint, body, fds) {
            Ok(r) => r,
            Err(resp) => (resp, Next::Continue),
        }
    }

    fn dispatch(
        &mut self,
        endpoint: Endpoint,
        body: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(ApiResponse, Next), ApiResponse> {
        match endpoint {
            Endpoint::VmmPing => Ok((ApiResponse::ok_json(ping_body()), Next::Continue)),
            Endpoint::VmmShutdown => {
                self.shutdown_vm();
                Ok((ApiResponse::no_content(), Next::Exit(VmExit::Stopped)))
            }
            Endpoint::VmCreate => {
                if self.config.is_some() {
                    return Err(ApiResponse::error(
                        409,
                        "a VM is already created (vm.delete it first)",
                    ));
                }
                let config: VmConfig = parse(body, "VmConfig")?;
                config
                    .validate()
                    .map_err(|e| ApiResponse::error(400, format!("invalid VmConfig: {e}")))?;
                self.config = Some(config);
                self.state = VmState::Created;
                Ok(done())
            }
            Endpoint::VmBoot => {
                if self.config.is_none() {
                    return Err(ApiResponse::error(
                        404,
                        "no VM is created (vm.create first)",
                    ));
                }
                if self.vm.is_some() {
                    return Err(ApiResponse::error(409, "the VM is already booted"));
                }
                self.boot()
                    .map_err(|e| ApiResponse::error(500, format!("cannot boot the VM: {e}")))?;
                Ok((ApiResponse::no_content(), Next::Rearm))
            }
            Endpoint::VmInfo => {
                let config = self
                    .config
                    .as_ref()
                    .ok_or_else(|| ApiResponse::error(404, "no VM is created"))?;
                Ok((
                    json(&VmInfo {
                        config,
                        state: self.state.name(),
                        memory_actual_size: self
                            .vm
                            .as_ref()
                            .map_or_else(|| memory_actual_size(config), Vm::actual_ram_size),
                    }),
                    Next::Continue,
                ))
            }
            Endpoint::VmCounters => {
                let vm = self
                    .vm
                    .as_ref()
                    .ok_or_else(|| ApiResponse::error(404, "the VM is not booted"))?;
                Ok((json(&vm.devices.counters()), Next::Continue))
            }
            Endpoint::VmPause => {
                if self.config.is_none() {
                    return Err(ApiResponse::error(404, "no VM is created"));
                }
                let vm = self
                    .vm
                    .as_ref()
                    .ok_or_else(|| ApiResponse::error(405, "the VM is not booted"))?;
                if self.state != VmState::Running {
                    return Err(ApiResponse::error(405, "the VM is not running"));
                }
                vm.pause()
                    .map_err(|e| ApiResponse::error(500, e.to_string()))?;
                self.state = VmState::Paused;
                Ok(done())
            }
            Endpoint::VmResume => {
                if self.config.is_none() {
                    return Err(ApiResponse::error(404, "no VM is created"));
                }
                let vm = self
                    .vm
                    .as_ref()
                    .ok_or_else(|| ApiResponse::error(405, "the VM is not booted"))?;
                if self.state != VmState::Paused {
                    return Err(ApiResponse::error(405, "the VM is not paused"));
                }
                vm.resume();
                self.state = VmState::Running;
                Ok(done())
            }
            Endpoint::VmShutdown => {
                if self.vm.is_none() {
                    return Err(ApiResponse::error(404, "the VM is not booted"));
                }
                self.shutdown_vm();
                Ok((ApiResponse::no_content(), Next::Rearm))
            }
            Endpoint::VmReboot => {
                if self.vm.is_none() {
                    return Err(ApiResponse::error(404, "the VM is not booted"));
                }
                self.shutdown_vm();
                self.boot()
                    .map_err(|e| ApiResponse::error(500, format!("cannot reboot the VM: {e}")))?;
                Ok((ApiResponse::no_content(), Next::Rearm))
            }
            Endpoint::VmDelete => {
                self.shutdown_vm();
                self.config = None;
                self.preserved_fds.clear();
                Ok((ApiResponse::no_content(), Next::Rearm))
            }
            Endpoint::VmAddDisk => {
                let disk: DiskConfig = parse(body, "DiskConfig")?;
                self.add_device(
                    disk,
                    AddDevice {
                        schema: "DiskConfig",
                        what: "disk",
                        record: |c, d| c.disks.get_or_insert_with(Vec::new).push(d),
                        hotplug: DeviceManager::hotplug_disk,
                    },
                )
            }
            Endpoint::VmAddNet => {
                let mut net: NetConfig = parse(body, "NetConfig")?;
                if fds.is_empty() && net.fds.is_some() {
                    // Numbers without descriptors would name the VMM's
                    // own fds.
                    return Err(ApiResponse::error(
                        400,
                        "invalid NetConfig: fds must be sent with the request (SCM_RIGHTS)",
                    ));
                }
                let received = self.take_tap_fds(&mut net, fds)?;
                let added = self.add_device(
                    net,
                    AddDevice {
                        schema: "NetConfig",
                        what: "net device",
                        record: |c, n| c.net.get_or_insert_with(Vec::new).push(n),
                        hotplug: DeviceManager::hotplug_net,
                    },
                );
                if added.is_ok() {
                    self.preserved_fds.extend(received);
                }
                added
            }
            Endpoint::VmAddVsock => {
                let vsock: VsockConfig = parse(body, "VsockConfig")?;
                if self.config.as_ref().is_some_and(|c| c.vsock.is_some()) {
                    return Err(ApiResponse::error(
                        400,
                        "the VM already has a vsock device (one per VM)",
                    ));
                }
                self.add_device(
                    vsock,
                    AddDevice {
                        schema: "VsockConfig",
                        what: "vsock device",
                        record: |c, v| c.vsock = Some(v),
                        hotplug: DeviceManager::hotplug_vsock,
                    },
                )
            }
            Endpoint::VmAddFs => {
                let fs: FsConfig = parse(body, "FsConfig")?;
                self.add_device(
                    fs,
                    AddDevice {
                        schema: "FsConfig",
                        what: "virtio-fs device",
                        record: |c, f| c.fs.get_or_insert_with(Vec::new).push(f),
                        hotplug: DeviceManager::hotplug_fs,
                    },
                )
            }
            Endpoint::VmAddPmem => {
                let pmem: PmemConfig = parse(body, "PmemConfig")?;
                self.add_device(
                    pmem,
                    AddDevice {
                        schema: "PmemConfig",
                        what: "pmem device",
                        record: |c, p| c.pmem.get_or_insert_with(Vec::new).push(p),
                        hotplug: DeviceManager::hotplug_pmem,
                    },
                )
            }
            Endpoint::VmRemoveDevice => {
                let req: VmRemoveDevice = parse(body, "VmRemoveDevice")?;
                let config = self
                    .config
                    .as_mut()
                    .ok_or_else(|| ApiResponse::error(404, "no VM is created"))?;
                if let Some(vm) = self.vm.as_mut() {
                    use crate::device_manager::HotplugError;
                    vm.devices.request_unplug(&req.id).map_err(|e| match e {
                        HotplugError::NotFound(_) => ApiResponse::error(404, e.to_string()),
                        HotplugError::NotRemovable(_) | HotplugError::NotOnSegment0(_) => {
                            ApiResponse::error(400, e.to_string())
                        }
                        _ => ApiResponse::error(500, format!("cannot unplug: {e}")),
                    })?;
                }
                if !remove_from_config(config, &req.id) {
                    if self.vm.is_none() {
                        return Err(ApiResponse::error(
                            404,
                            format!("no device with id {}", req.id),
                        ));
                    }
                    log::warn!("{}: unplugged, but not found in the VM config", req.id);
                }
                Ok(done())
            }
            Endpoint::VmResize => self.resize(body),
            Endpoint::VmPowerButton => {
                let vm = self
                    .vm
                    .as_ref()
                    .ok_or_else(|| ApiResponse::error(404, "the VM is not booted"))?;
                vm.devices.power_button().map_err(|e| {
                    ApiResponse::error(500, format!("cannot press the power button: {e}"))
                })?;
                Ok(done())
            }
            Endpoint::VmSnapshot => {
                let req: SnapshotConfig = parse(body, "VmSnapshotConfig")?;
                let dir = snapshot::dir_from_url(&req.destination_url, "destination_url")
                    .map_err(|e| ApiResponse::error(400, e.to_string()))?;
                let (Some(vm), Some(config)) = (self.vm.as_ref(), self.config.as_ref()) else {
                    return Err(ApiResponse::error(404, "the VM is not booted"));
                };
                if self.state != VmState::Paused {
                    return Err(ApiResponse::error(
                        405,
                        "the VM must be paused for a snapshot (vm.pause first)",
                    ));
                }
                let started = std::time::Instant::now();
                vm.snapshot(config, &dir).map_err(|e| {
                    let status = match e {
                        snapshot::SnapshotError::Unsupported(_) => 400,
                        _ => 500,
                    };
                    ApiResponse::error(status, format!("snapshot failed: {e}"))
                })?;
                log::info!(
                    "snapshot written to {} in {:.1} ms",
                    dir.display(),
                    started.elapsed().as_secs_f64() * 1000.0
                );
                Ok(done())
            }
            Endpoint::VmRestore => {
                let mut req: RestoreConfig = parse(body, "RestoreConfig")?;
                req.check_supported()
                    .map_err(|e| ApiResponse::error(400, format!("invalid RestoreConfig: {e}")))?;
                let received = self.take_restore_fds(&mut req, fds)?;
                if self.vm.is_some() {
                    return Err(ApiResponse::error(
                        409,
                        "a VM is already running (vm.delete it first)",
                    ));
                }
                let (dir, snap) = Vmm::read_snapshot(&req)
                    .map_err(|e| ApiResponse::error(400, format!("cannot restore: {e}")))?;
                // Overrides the snapshot cannot take are the request's fault.
                req.apply_overrides(&mut snap.config.clone())
                    .map_err(|e| ApiResponse::error(400, format!("invalid RestoreConfig: {e}")))?;
                self.restore_snapshot(&req, &dir, snap)
                    .map_err(|e| ApiResponse::error(500, format!("cannot restore: {e}")))?;
                self.preserved_fds = received;
                Ok((ApiResponse::no_content(), Next::Rearm))
            }
            Endpoint::VmSendMigration => {
                let req: SendMigration = parse(body, "SendMigrationData")?;
                let options = req.check()?;
                migration::socket_path(&req.destination_url, "destination_url")
                    .map_err(|e| ApiResponse::error(400, e.to_string()))?;
                let (Some(vm), Some(config)) = (self.vm.as_ref(), self.config.as_ref()) else {
                    return Err(ApiResponse::error(404, "the VM is not booted"));
                };
                let stats = migration::send(vm, config, &req.destination_url, &options)
                    .map_err(|e| ApiResponse::error(500, format!("migration failed: {e}")))?;
                log::info!(
                    "migrated to {} in {:.1} ms ({} rounds, {} pages, downtime {:.1} ms)",
                    req.destination_url,
                    stats.total.as_secs_f64() * 1000.0,
                    stats.rounds,
                    stats.pages,
                    stats.downtime.as_secs_f64() * 1000.0
                );
                // The guest runs on the receiver now.
                self.shutdown_vm();
                Ok((ApiResponse::no_content(), Next::Exit(VmExit::Stopped)))
            }
            Endpoint::VmReceiveMigration => {
                let req: ReceiveMigration = parse(body, "ReceiveMigrationData")?;
                req.check()?;
                migration::socket_path(&req.receiver_url, "receiver_url")
                    .map_err(|e| ApiResponse::error(400, e.to_string()))?;
                if self.vm.is_some() {
                    return Err(ApiResponse::error(
                        409,
                        "a VM is already running (vm.delete it first)",
                    ));
                }
                let (config, vm) = migration::receive(&req.receiver_url, &self.filters)
                    .map_err(|e| ApiResponse::error(500, format!("migration failed: {e}")))?;
                self.config = Some(config);
                self.vm = Some(vm);
                self.state = VmState::Running;
                self.take_serial_input();
                Ok((ApiResponse::no_content(), Next::Rearm))
            }
            Endpoint::VmResizeZone => {
                let req: VmResizeZone = parse(body, "VmResizeZone")?;
                self.config
                    .as_ref()
                    .ok_or_else(|| ApiResponse::error(404, "no VM is created"))?;
                Err(ApiResponse::error(
                    400,
                    format!(
                        "invalid VmResizeZone: id={}: not supported by chv (zones cannot \
                         grow: memory.zones[].hotplug_size is not implemented)",
                        req.id
                    ),
                ))
            }
            Endpoint::VmResizeDisk => {
                let req: VmResizeDisk = parse(body, "VmResizeDisk")?;
                self.config
                    .as_ref()
                    .ok_or_else(|| ApiResponse::error(404, "no VM is created"))?;
                Err(ApiResponse::error(
                    400,
                    format!(
                        "invalid VmResizeDisk: desired_size: not supported by chv (disk {} \
                         keeps the size of its image)",
                        req.id
                    ),
                ))
            }
            Endpoint::VmCoredump => {
                let _: VmCoredump = parse(body, "VmCoredumpData")?;
                Err(ApiResponse::error(
                    400,
                    "invalid VmCoredumpData: destination_url: not supported by chv (no guest \
                     core dumps)",
                ))
            }
            Endpoint::VmAddDevice => self.add_unplugged(body, "DeviceConfig", |c, d| {
                c.devices.get_or_insert_with(Vec::new).push(d)
            }),
            Endpoint::VmAddUserDevice => self.add_unplugged(body, "UserDeviceConfig", |c, d| {
                c.user_devices.get_or_insert_with(Vec::new).push(d)
            }),
            Endpoint::VmAddVdpa => self.add_unplugged(body, "VdpaConfig", |c, d| {
                c.vdpa.get_or_insert_with(Vec::new).push(d)
            }),
            Endpoint::VmAddGenericVhostUser => {
                self.add_unplugged(body, "GenericVhostUserConfig", |c, d| {
                    c.generic_vhost_user.get_or_insert_with(Vec::new).push(d)
                })
            }
            other => Err(ApiResponse::error(
                501,
                format!("{} is not implemented by chv yet", other.name()),
            )),
        }
    }
}
