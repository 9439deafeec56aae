//! `NetConfig`: a virtio-net device over a tap.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::*;

/// `--net tap=…,mac=…,ip=…` or `--net vhost_user=on,socket=…` (Cloud
/// Hypervisor's `NetConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetConfig {
    /// Tap interface to open or create; `vmtap%d` (kernel-chosen number)
    /// when neither `tap` nor `fds` is given.
    #[serde(default)]
    pub tap: Option<String>,
    /// IPv4 address set on the host side of the tap.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Netmask for `ip`.
    #[serde(default)]
    pub mask: Option<Ipv4Addr>,
    /// Guest MAC (`12:34:56:78:9a:bc`); random locally administered when
    /// absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// MAC of the host side of the tap.
    #[serde(default)]
    pub host_mac: Option<String>,
    /// Place the device behind a virtual IOMMU (chv has none).
    #[serde(default)]
    pub iommu: bool,
    /// MTU offered to the guest and set on the tap.
    #[serde(default)]
    pub mtu: Option<u16>,
    /// Total RX+TX queues (even; > 2 enables multi-queue).
    #[serde(default = "default_net_num_queues")]
    pub num_queues: usize,
    /// Size of each queue.
    #[serde(default = "default_net_queue_size")]
    pub queue_size: u16,
    /// Served by a vhost-user backend on `vhost_socket` instead of chv.
    #[serde(default)]
    pub vhost_user: bool,
    /// The vhost-user backend's socket.
    #[serde(default)]
    pub vhost_socket: Option<String>,
    /// Whether chv connects to the backend (`Client`) or listens (`Server`).
    #[serde(default)]
    pub vhost_mode: VhostMode,
    /// Device identifier; generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Already opened tap queue fds (one per queue pair) instead of `tap`.
    #[serde(default)]
    pub fds: Option<Vec<i32>>,
    /// PCI segment (host bridge) the device sits on.
    #[serde(default)]
    pub pci_segment: u16,
    /// PCI device (slot) number on that segment; the first free one when
    /// absent.
    #[serde(default)]
    pub pci_device_id: Option<u8>,
    /// Offer TCP segmentation offload (effective with `offload_csum`).
    #[serde(default = "default_true")]
    pub offload_tso: bool,
    /// Cloud Hypervisor's UDP fragmentation offload switch. chv never offers
    /// UFO (Linux stopped using it in 4.14), so either value behaves alike.
    #[serde(default = "default_true")]
    pub offload_ufo: bool,
    /// Offer checksum offload.
    #[serde(default = "default_true")]
    pub offload_csum: bool,
    /// Limits applied to receive and, separately, to transmit (bytes and
    /// frames).
    #[serde(default)]
    pub rate_limiter_config: Option<RateLimiterConfig>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            tap: None,
            ip: None,
            mask: None,
            mac: None,
            host_mac: None,
            iommu: false,
            mtu: None,
            num_queues: default_net_num_queues(),
            queue_size: default_net_queue_size(),
            vhost_user: false,
            vhost_socket: None,
            vhost_mode: VhostMode::default(),
            id: None,
            fds: None,
            pci_segment: 0,
            pci_device_id: None,
            offload_tso: true,
            offload_ufo: true,
            offload_csum: true,
            rate_limiter_config: None,
        }
    }
}

/// Which side of a vhost-user socket chv is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum VhostMode {
    /// chv connects to the backend's socket.
    #[default]
    Client,
    /// chv listens and the backend connects.
    Server,
}

/// Default number of virtio-net queues: one RX/TX pair (as Cloud
/// Hypervisor).
pub fn default_net_num_queues() -> usize {
    2
}

/// Default virtio-net queue size (as Cloud Hypervisor).
pub fn default_net_queue_size() -> u16 {
    256
}

/// Most queues (RX + TX) one net device may have: 16 pairs.
pub const MAX_NET_QUEUES: usize = 32;

/// Largest virtio-net queue size.
pub const MAX_NET_QUEUE_SIZE: u16 = 4096;

/// Smallest MTU a guest driver accepts (the IPv4 minimum).
pub const MIN_NET_MTU: u16 = 68;

impl NetConfig {
    /// Checks one net device; `index` is its position in `VmConfig::net`.
    /// Whether the tap or fds can be opened is checked by the VMM.
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        refuse_placement(&format!("net[{index}].pci_device_id"), self.pci_device_id)?;
        let q = self.num_queues;
        if !(2..=MAX_NET_QUEUES).contains(&q) || !q.is_multiple_of(2) {
            return Err(ConfigError::NetNumQueues { index, value: q });
        }
        let size = self.queue_size;
        if !size.is_power_of_two() || !(2..=MAX_NET_QUEUE_SIZE).contains(&size) {
            return Err(ConfigError::NetQueueSize { index, value: size });
        }
        if let Some(mac) = &self.mac {
            check_mac(mac).map_err(|reason| ConfigError::NetMac {
                index,
                value: mac.clone(),
                reason,
            })?;
        }
        if let Some(mtu) = self.mtu {
            if mtu < MIN_NET_MTU {
                return Err(ConfigError::NetMtu { index, value: mtu });
            }
        }
        if let Some(name) = &self.tap {
            if !valid_tap_name(name) {
                return Err(ConfigError::NetTapName {
                    index,
                    name: name.clone(),
                });
            }
            if self.fds.is_some() {
                return Err(ConfigError::NetTapAndFds(index));
            }
        }
        if let Some(fds) = &self.fds {
            if fds.len() * 2 != q || fds.iter().any(|&fd| fd < 0) {
                return Err(ConfigError::NetFds {
                    index,
                    fds: fds.len(),
                    num_queues: q,
                });
            }
        }
        let field = |name: &str| format!("net[{index}].{name}");
        refuse_if(self.iommu, field("iommu=true"), "no virtual IOMMU")?;
        if self.vhost_user {
            self.validate_vhost_user(index)?;
        } else {
            refuse_if(
                self.vhost_socket.is_some(),
                field("vhost_socket"),
                "only with vhost_user=true",
            )?;
        }
        refuse_if(
            self.host_mac.is_some(),
            field("host_mac"),
            "the tap keeps the MAC the kernel gave it",
        )?;
        if let Some(id) = &self.id {
            if !valid_device_id(id) {
                return Err(ConfigError::NetId {
                    index,
                    id: id.clone(),
                });
            }
        }
        Ok(())
    }
}

impl NetConfig {
    /// Checks a `vhost_user=true` device: a socket, one queue pair, and no
    /// setting that only chv's own tap-backed device has.
    fn validate_vhost_user(&self, index: usize) -> Result<(), ConfigError> {
        let field = |name: &str| format!("net[{index}].{name}");
        if self.vhost_socket.as_deref().is_none_or(str::is_empty) {
            return Err(invalid(
                field("vhost_socket"),
                "vhost_user=true needs the backend's socket (--net vhost_user=on,socket=PATH)",
            ));
        }
        let backend = "with vhost_user=true the backend moves the frames";
        refuse_if(self.tap.is_some(), field("tap"), backend)?;
        refuse_if(self.fds.is_some(), field("fds"), backend)?;
        refuse_if(
            self.ip.is_some() || self.mask.is_some(),
            field("ip/mask"),
            backend,
        )?;
        refuse_if(self.mtu.is_some(), field("mtu"), backend)?;
        refuse_if(
            self.rate_limiter_config.is_some(),
            field("rate_limiter_config"),
            backend,
        )?;
        refuse_if(
            self.num_queues != 2,
            field(&format!("num_queues={}", self.num_queues)),
            "vhost-user net has one queue pair (multi-queue needs a control queue)",
        )
    }
}

/// Whether `name` can name a Linux interface: 1 to 15 bytes, no `/`,
/// whitespace or NUL (a `%d` pattern is allowed).
pub fn valid_tap_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

/// Checks a MAC string: six hex bytes, unicast, not all zero.
pub fn check_mac(mac: &str) -> Result<(), String> {
    let parsed: virtio_devices::net::MacAddr = mac.parse().map_err(|_| {
        "not a MAC address (expected six hex bytes like 12:34:56:78:9a:bc)".to_string()
    })?;
    if parsed.0[0] & 1 != 0 {
        return Err("multicast address; the guest NIC needs a unicast one".into());
    }
    if parsed.0 == [0; 6] {
        return Err("all-zero address".into());
    }
    Ok(())
}
