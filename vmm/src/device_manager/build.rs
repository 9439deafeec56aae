//! Building each virtio device from its configuration: opening the disk
//! image, the tap, the vsock socket, the console's host end and the rng
//! source, and the balloon and virtio-mem devices over guest RAM.

use std::os::fd::AsFd;
use std::sync::Arc;

use virtio_devices::block::disk::{open_disk_with_format, DiskOptions};
use virtio_devices::block::{BlockCounters, BlockOptions, VirtioBlock};
use virtio_devices::console::VirtioConsole;
use virtio_devices::net::{MacAddr, NetBackend, NetCounters, NetOptions, VirtioNet};
use virtio_devices::rate_limiter::RateLimitGroup;
use virtio_devices::rng::VirtioRng;
use virtio_devices::vsock::VirtioVsock;
use virtio_devices::VirtioDevice;

use super::{lock, DeviceManager};
use crate::config::{
    ConsoleConfig, ConsoleOutputMode, DiskConfig, NetConfig, RngConfig, VsockConfig,
};
use crate::console_host::{open_output, HostConsole};
use crate::VmmError;

/// The guest MAC a `--net` entry names, if any.
pub(super) fn guest_mac(net: &NetConfig) -> Result<Option<MacAddr>, VmmError> {
    net.mac
        .as_ref()
        .map(|m| {
            m.parse::<MacAddr>()
                .map_err(|e| VmmError::Config(format!("--net: mac={m}: {e}")))
        })
        .transpose()
}

/// The virtio-net options a `--net` entry asks for.
pub(super) fn net_options(net: &NetConfig, id: &str) -> Result<NetOptions, VmmError> {
    let backend = match (&net.tap, &net.fds) {
        (_, Some(fds)) => NetBackend::Fds(fds.clone()),
        (Some(tap), None) => NetBackend::Name(tap.clone()),
        (None, None) => NetBackend::Name("vmtap%d".into()),
    };
    let mac = guest_mac(net)?;
    Ok(NetOptions {
        backend,
        mac,
        ip: net.ip,
        mask: net.mask,
        mtu: net.mtu,
        num_queues: u16::try_from(net.num_queues).unwrap_or(u16::MAX),
        queue_size: net.queue_size,
        offload_tso: net.offload_tso,
        offload_csum: net.offload_csum,
        id: id.to_string(),
        rate_limit: net.rate_limiter_config.as_ref().map(|c| c.limits()),
    })
}

/// A NIC's device and, for chv's own virtio-net, its traffic counters.
pub(super) type BuiltNet = (Box<dyn VirtioDevice>, Option<Arc<NetCounters>>);

/// A disk's device and, for chv's own virtio-blk, its I/O counters.
pub(super) type BuiltDisk = (Box<dyn VirtioDevice>, Option<Arc<BlockCounters>>);

impl DeviceManager {
    /// Opens `disk`'s image and builds its virtio-blk device with id `id`.
    pub(super) fn build_disk(&self, disk: &DiskConfig, id: &str) -> Result<BuiltDisk, VmmError> {
        if disk.vhost_user {
            return Ok((self.build_vhost_user_disk(disk, id)?, None));
        }
        let path = disk
            .path
            .as_ref()
            .ok_or_else(|| VmmError::Config(format!("--disk: disk {id} has no path=")))?;
        let opts = DiskOptions {
            readonly: disk.readonly,
            direct: disk.direct,
            // Locked as Cloud Hypervisor locks it (OFD locks).
            lock_granularity: match disk.lock_granularity {
                crate::config::LockGranularity::ByteRange => {
                    virtio_devices::block::disk::LockGranularity::ByteRange
                }
                crate::config::LockGranularity::Full => {
                    virtio_devices::block::disk::LockGranularity::Full
                }
            },
        };
        let rate_limit = match (&disk.rate_limiter_config, &disk.rate_limit_group) {
            (Some(c), _) => Some(
                RateLimitGroup::new(id, c.limits())
                    .map_err(|e| VmmError::Config(format!("--disk: id={id}: {e}")))?,
            ),
            (None, Some(name)) => Some(self.rate_groups.get(name).cloned().ok_or_else(|| {
                VmmError::Config(format!("--disk: rate_limit_group={name}: no such group"))
            })?),
            (None, None) => None,
        };
        let image =
            open_disk_with_format(path, disk.image_type.and_then(|t| t.format_name()), &opts)
                .map_err(|e| VmmError::Config(format!("--disk: path={}: {e}", path.display())))?;
        let mut blk = VirtioBlock::new(
            image,
            BlockOptions {
                readonly: disk.readonly,
                serial: disk.serial.clone(),
                num_queues: u16::try_from(disk.num_queues).unwrap_or(u16::MAX),
                queue_size: disk.queue_size,
                id: id.to_string(),
                rate_limit,
            },
        )
        .map_err(|e| VmmError::Config(format!("--disk: {e}")))?;
        let counters = blk.counters();
        if let Some(s) = &self.thread_setup {
            blk.set_thread_setup(s.clone());
        }
        Ok((Box::new(blk), Some(counters)))
    }

    /// Opens (or creates) `net`'s tap and builds its virtio-net device with
    /// id `id` (or connects to its vhost-user backend: no counters then).
    pub(super) fn build_net(&self, net: &NetConfig, id: &str) -> Result<BuiltNet, VmmError> {
        if net.vhost_user {
            return Ok((self.build_vhost_user_net(net, id)?, None));
        }
        let mut dev = VirtioNet::new(net_options(net, id)?)
            .map_err(|e| VmmError::Config(format!("--net: {e}")))?;
        log::info!("{id}: tap {} mac {}", dev.tap_name(), dev.mac());
        if let Some(s) = &self.thread_setup {
            dev.set_thread_setup(s.clone());
        }
        let counters = dev.counters();
        Ok((Box::new(dev), Some(counters)))
    }

    /// Binds `vsock`'s listening socket and builds its virtio-vsock device
    /// with id `id`.
    pub(super) fn build_vsock(
        &self,
        vsock: &VsockConfig,
        id: &str,
    ) -> Result<Box<dyn VirtioDevice>, VmmError> {
        let mut dev = VirtioVsock::new(u64::from(vsock.cid), &vsock.socket, id).map_err(|e| {
            VmmError::Config(format!("--vsock: socket={}: {e}", vsock.socket.display()))
        })?;
        if let Some(s) = &self.thread_setup {
            dev.set_thread_setup(s.clone());
        }
        Ok(Box::new(dev))
    }

    /// Attaches traffic counters to the network device `id`.
    pub(super) fn set_net_counters(&self, id: &str, counters: Option<Arc<NetCounters>>) {
        let Some(counters) = counters else { return };
        if let Some(h) = lock(&self.devices).iter_mut().find(|d| d.id == id) {
            h.net_counters = Some(counters);
        }
    }

    /// Builds the virtio console with its host end as `console.mode` says
    /// (stdin/stdout, an append-only file, a pty or a socket); records the
    /// pty's path.
    pub(super) fn build_console(
        &mut self,
        console: &ConsoleConfig,
    ) -> Result<Box<dyn VirtioDevice>, VmmError> {
        let (output, input) = match console.mode {
            ConsoleOutputMode::Tty => {
                let stdin = std::io::stdin()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| VmmError::Config(format!("--console: cannot use stdin: {e}")))?;
                let output = open_output(console, "console").map_err(VmmError::Config)?;
                (output, Some(std::fs::File::from(stdin)))
            }
            ConsoleOutputMode::Pty | ConsoleOutputMode::Socket => {
                let host = HostConsole::open(console, "console", self.thread_setup.clone())
                    .map_err(VmmError::Config)?
                    .ok_or_else(|| VmmError::Config("console: no host end".into()))?;
                let input = host.device_end.try_clone().map_err(VmmError::Thread)?;
                let output = host.output().map_err(VmmError::Thread)?;
                self.console_pty = host.pty_path;
                (Some(output), Some(input))
            }
            _ => (
                open_output(console, "console").map_err(VmmError::Config)?,
                None,
            ),
        };
        let mut dev = VirtioConsole::new(output, input)
            .map_err(|e| VmmError::Config(format!("--console: {e}")))?;
        if let Some(s) = &self.thread_setup {
            dev.set_thread_setup(s.clone());
        }
        Ok(Box::new(dev))
    }

    /// Opens `rng.src` and builds the virtio-rng device over it.
    pub(super) fn build_rng(&self, rng: &RngConfig) -> Result<Box<dyn VirtioDevice>, VmmError> {
        let mut dev = VirtioRng::new(&rng.src)
            .map_err(|e| VmmError::Config(format!("--rng: src={}: {e}", rng.src.display())))?;
        if let Some(s) = &self.thread_setup {
            dev.set_thread_setup(s.clone());
        }
        Ok(Box::new(dev))
    }

    /// Adds the virtio-balloon `config` describes (RAM backed as `memory`
    /// says: hugetlb RAM is given back in whole huge pages).
    pub(super) fn add_balloon(
        &mut self,
        config: &crate::config::BalloonConfig,
        memory: &crate::config::MemoryConfig,
    ) -> Result<(), VmmError> {
        use virtio_devices::balloon::{BalloonOptions, VirtioBalloon};
        let huge_page_size = if memory.hugepages {
            memory
                .hugepage_size
                .unwrap_or_else(crate::memory::backing::default_hugepage_size)
        } else {
            0
        };
        let mut dev = VirtioBalloon::new(BalloonOptions {
            size: config.size,
            deflate_on_oom: config.deflate_on_oom,
            free_page_reporting: config.free_page_reporting,
            huge_page_size,
        })
        .map_err(|e| VmmError::Config(format!("--balloon: {e}")))?;
        if let Some(s) = &self.thread_setup {
            dev.set_thread_setup(s.clone());
        }
        self.balloon = Some(dev.control());
        let id = config.id.clone().unwrap_or_else(|| "_balloon".into());
        self.add_virtio(id, config.pci_segment, Box::new(dev), None)?;
        Ok(())
    }

    /// Adds the virtio-mem device over `region` (the guest RAM mapped for
    /// it); it asks the driver to plug `memory.hotplugged_size` at start.
    pub(super) fn add_virtio_mem(
        &mut self,
        region: &crate::memory::VirtioMemRegion,
        memory: &crate::config::MemoryConfig,
    ) -> Result<(), VmmError> {
        use virtio_devices::mem::{MemOptions, VirtioMem};
        let huge_page_size = if memory.hugepages {
            region.block_size
        } else {
            0
        };
        let mut dev = VirtioMem::new(MemOptions {
            addr: region.addr,
            region_size: region.size,
            block_size: region.block_size,
            requested_size: memory.hotplugged_size.unwrap_or(0),
            huge_page_size,
        })
        .map_err(|e| VmmError::Config(format!("--memory: hotplug_method=virtio-mem: {e}")))?;
        if let Some(s) = &self.thread_setup {
            dev.set_thread_setup(s.clone());
        }
        self.virtio_mem = Some(dev.control());
        self.add_virtio("_virtio-mem".into(), 0, Box::new(dev), None)?;
        Ok(())
    }
}
