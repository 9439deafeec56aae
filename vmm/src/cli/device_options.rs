//! Parsing of the virtio device options `--disk`, `--rng`, `--net` and
//! `--vsock` (Cloud Hypervisor syntax) into [`DiskConfig`], [`RngConfig`],
//! [`NetConfig`] and [`VsockConfig`].
//!
//! Values are range-checked here so that errors name the key as written;
//! [`crate::config::VmConfig::validate`] repeats the checks for API clients
//! and adds the cross-disk ones (duplicate ids).

use std::path::PathBuf;

use super::options::{parse_list, parse_toggle, parse_u64, split_options, OptionError, OptionItem};
use super::rate_limit_options::{group_id, RateLimitKeys};
use crate::config::{
    check_mac, default_disk_num_queues, default_disk_queue_size, valid_device_id,
    valid_disk_queue_size, valid_tap_name, DiskConfig, ImageType, NetConfig, RngConfig,
    MAX_DISK_QUEUES, MAX_DISK_QUEUE_SIZE, MAX_DISK_SERIAL_BYTES, MAX_NET_QUEUES,
    MAX_NET_QUEUE_SIZE, MIN_NET_MTU,
};
use crate::config::{VhostMode, VsockConfig, MAX_VSOCK_CID, MIN_VSOCK_CID};

/// Keys accepted by `--disk`, for error messages.
const DISK_KEYS: &str = "path, readonly, direct, num_queues, queue_size, serial, id, image_type, \
                         bw_*/ops_* limits, rate_limit_group, vhost_user, socket, pci_segment \
                         or iommu=off";

/// `--disk` keys Cloud Hypervisor knows that chv does not implement.
const DISK_UNSUPPORTED: [&str; 3] = ["queue_affinity", "backing_files", "sparse"];

/// Image types Cloud Hypervisor opens that chv does not.
const IMAGE_TYPES_UNSUPPORTED: [&str; 2] = ["vhd", "vhdx"];

/// Parses one `--disk` value, e.g. `path=/img,readonly=on,num_queues=2`.
///
/// `path` is required; the other keys default as in Cloud Hypervisor
/// (read-write, cached, one queue of 128 entries, no serial or id, image
/// type detected from the file).
pub(super) fn parse_disk(value: &str) -> Result<DiskConfig, OptionError> {
    let mut disk = DiskConfig {
        num_queues: default_disk_num_queues(),
        queue_size: default_disk_queue_size(),
        ..DiskConfig::default()
    };
    let mut rate = RateLimitKeys::default();
    for item in split_options(value)? {
        if rate.take(&item)? {
            continue;
        }
        match item.key.as_str() {
            "path" => disk.path = Some(PathBuf::from(item.non_empty_value()?)),
            "readonly" => disk.readonly = parse_toggle(&item.key, item.value()?)?,
            "direct" => disk.direct = parse_toggle(&item.key, item.value()?)?,
            "num_queues" => disk.num_queues = num_queues(&item)?,
            "queue_size" => disk.queue_size = queue_size(&item)?,
            "serial" => disk.serial = Some(serial(&item)?),
            "id" => disk.id = Some(device_id(&item)?),
            "image_type" => disk.image_type = Some(image_type(&item)?),
            "rate_limit_group" => disk.rate_limit_group = Some(group_id(&item)?),
            "pci_segment" => disk.pci_segment = pci_segment(&item)?,
            "iommu" => reject_iommu_on(&item)?,
            "vhost_user" => disk.vhost_user = parse_toggle(&item.key, item.value()?)?,
            "socket" => disk.vhost_socket = Some(item.non_empty_value()?.to_owned()),
            key if DISK_UNSUPPORTED.contains(&key) => {
                return Err(OptionError::Unsupported(item.key))
            }
            _ => {
                return Err(OptionError::UnknownKey {
                    key: item.key,
                    expected: DISK_KEYS,
                })
            }
        }
    }
    match (disk.vhost_user, &disk.path, &disk.vhost_socket) {
        (false, None, _) => return Err(OptionError::Missing("path (path=...)")),
        (false, _, Some(_)) => {
            return Err(OptionError::Conflict(
                "socket".into(),
                "vhost_user=off".into(),
            ))
        }
        (true, _, None) => return Err(OptionError::Missing("socket (vhost_user=on,socket=...)")),
        (true, Some(_), _) => {
            return Err(OptionError::Conflict("path".into(), "vhost_user=on".into()))
        }
        _ => {}
    }
    disk.rate_limiter_config = rate.finish()?;
    if disk.rate_limiter_config.is_some() && disk.rate_limit_group.is_some() {
        return Err(OptionError::Conflict(
            "rate_limit_group".into(),
            "bw_*/ops_*".into(),
        ));
    }
    Ok(disk)
}

/// Parses `num_queues=` (1..=`MAX_DISK_QUEUES`).
fn num_queues(item: &OptionItem) -> Result<usize, OptionError> {
    let value = item.value()?;
    let count = parse_u64(&item.key, value)?;
    match usize::try_from(count) {
        Ok(count) if (1..=MAX_DISK_QUEUES).contains(&count) => Ok(count),
        _ => Err(OptionError::invalid(
            &item.key,
            value,
            format!("must be between 1 and {MAX_DISK_QUEUES}"),
        )),
    }
}

/// Parses `queue_size=` (a power of two in 2..=`MAX_DISK_QUEUE_SIZE`).
fn queue_size(item: &OptionItem) -> Result<u16, OptionError> {
    let value = item.value()?;
    let size = parse_u64(&item.key, value)?;
    match u16::try_from(size) {
        Ok(size) if valid_disk_queue_size(size) => Ok(size),
        _ => Err(OptionError::invalid(
            &item.key,
            value,
            format!("must be a power of two between 2 and {MAX_DISK_QUEUE_SIZE}"),
        )),
    }
}

/// Parses `serial=` (at most `MAX_DISK_SERIAL_BYTES` bytes).
fn serial(item: &OptionItem) -> Result<String, OptionError> {
    let value = item.non_empty_value()?;
    if value.len() > MAX_DISK_SERIAL_BYTES {
        return Err(OptionError::invalid(
            &item.key,
            value,
            format!(
                "{} bytes, at most {MAX_DISK_SERIAL_BYTES} allowed",
                value.len()
            ),
        ));
    }
    Ok(value.to_owned())
}

/// Parses `id=`: non-empty and not in the namespace of generated ids.
pub(super) fn device_id(item: &OptionItem) -> Result<String, OptionError> {
    let value = item.non_empty_value()?;
    if !valid_device_id(value) {
        return Err(OptionError::invalid(
            &item.key,
            value,
            "ids starting with '__' are reserved for chv",
        ));
    }
    Ok(value.to_owned())
}

/// Parses `image_type=raw|qcow2`.
fn image_type(item: &OptionItem) -> Result<ImageType, OptionError> {
    let value = item.value()?;
    match value {
        "raw" => return Ok(ImageType::Raw),
        "qcow2" => return Ok(ImageType::Qcow2),
        _ => {}
    }
    if IMAGE_TYPES_UNSUPPORTED.contains(&value) {
        return Err(OptionError::Unsupported(format!("image_type={value}")));
    }
    Err(OptionError::invalid(
        &item.key,
        value,
        "expected raw or qcow2",
    ))
}

/// Parses `pci_segment=N` (checked against `--platform num_pci_segments`
/// when the whole configuration is validated).
pub(super) fn pci_segment(item: &OptionItem) -> Result<u16, OptionError> {
    let value = item.value()?;
    let n = parse_u64(&item.key, value)?;
    u16::try_from(n).map_err(|_| OptionError::invalid(&item.key, value, "must fit 16 bits"))
}

/// Accepts `iommu=off` (Cloud Hypervisor's default); chv has no vIOMMU.
pub(super) fn reject_iommu_on(item: &OptionItem) -> Result<(), OptionError> {
    if parse_toggle(&item.key, item.value()?)? {
        return Err(OptionError::Unsupported("iommu=on".into()));
    }
    Ok(())
}

/// Keys accepted by `--rng`, for error messages.
const RNG_KEYS: &str = "src, pci_segment or iommu=off";

/// Parses `--rng src=PATH[,iommu=off]`; `src` defaults to `/dev/urandom`.
pub(super) fn parse_rng(value: &str) -> Result<RngConfig, OptionError> {
    let mut rng = RngConfig::default();
    for item in split_options(value)? {
        match item.key.as_str() {
            "src" => rng.src = PathBuf::from(item.non_empty_value()?),
            "pci_segment" => rng.pci_segment = pci_segment(&item)?,
            "iommu" => reject_iommu_on(&item)?,
            _ => {
                return Err(OptionError::UnknownKey {
                    key: item.key,
                    expected: RNG_KEYS,
                })
            }
        }
    }
    Ok(rng)
}

/// Keys accepted by `--net`, for error messages.
const NET_KEYS: &str = "tap, fd, mac, ip, mask, mtu, num_queues, queue_size, id, offload_tso, \
                        offload_csum, offload_ufo, pci_segment, vhost_user, socket, vhost_mode, \
                        bw_*/ops_* limits or iommu=off";

/// `--net` keys Cloud Hypervisor knows that chv does not implement.
const NET_UNSUPPORTED: [&str; 1] = ["host_mac"];

/// Parses `vhost_mode=client|server`.
fn vhost_mode(item: &OptionItem) -> Result<VhostMode, OptionError> {
    match item.non_empty_value()? {
        "client" => Ok(VhostMode::Client),
        "server" => Ok(VhostMode::Server),
        other => Err(OptionError::invalid(&item.key, other, "client or server")),
    }
}

/// Parses one `--net` value, e.g. `tap=tap0,mac=12:34:56:78:9a:bc`.
///
/// Defaults as in Cloud Hypervisor: one queue pair of 256 entries, TSO and
/// checksum offload on, a random MAC chosen by the device. With `fd=` and
/// no `num_queues`, the queue count follows the number of fds.
pub(super) fn parse_net(value: &str) -> Result<NetConfig, OptionError> {
    let mut net = NetConfig::default();
    let mut queues_given = false;
    let mut rate = RateLimitKeys::default();
    for item in split_options(value)? {
        if rate.take(&item)? {
            continue;
        }
        match item.key.as_str() {
            "tap" => net.tap = Some(tap_name(&item)?),
            "fd" => net.fds = Some(tap_fds(&item)?),
            "mac" => net.mac = Some(mac(&item)?),
            "ip" => net.ip = Some(ipv4(&item)?),
            "mask" => net.mask = Some(ipv4(&item)?),
            "mtu" => net.mtu = Some(mtu(&item)?),
            "num_queues" => {
                net.num_queues = net_num_queues(&item)?;
                queues_given = true;
            }
            "queue_size" => net.queue_size = net_queue_size(&item)?,
            "id" => net.id = Some(device_id(&item)?),
            "pci_segment" => net.pci_segment = pci_segment(&item)?,
            "offload_tso" => net.offload_tso = parse_toggle(&item.key, item.value()?)?,
            "offload_csum" => net.offload_csum = parse_toggle(&item.key, item.value()?)?,
            "offload_ufo" => net.offload_ufo = parse_toggle(&item.key, item.value()?)?,
            "iommu" => reject_iommu_on(&item)?,
            "vhost_user" => net.vhost_user = parse_toggle(&item.key, item.value()?)?,
            "socket" => net.vhost_socket = Some(item.non_empty_value()?.to_owned()),
            "vhost_mode" => net.vhost_mode = vhost_mode(&item)?,
            key if NET_UNSUPPORTED.contains(&key) => {
                return Err(OptionError::Unsupported(item.key))
            }
            _ => {
                return Err(OptionError::UnknownKey {
                    key: item.key,
                    expected: NET_KEYS,
                })
            }
        }
    }
    net.rate_limiter_config = rate.finish()?;
    if net.tap.is_some() && net.fds.is_some() {
        return Err(OptionError::Conflict("tap".into(), "fd".into()));
    }
    if let Some(fds) = &net.fds {
        if !queues_given {
            net.num_queues = fds.len() * 2;
        }
        if fds.len() * 2 != net.num_queues {
            return Err(OptionError::invalid(
                "fd",
                &format!("{fds:?}"),
                format!(
                    "{} fds for num_queues={} (one fd per RX/TX queue pair)",
                    fds.len(),
                    net.num_queues
                ),
            ));
        }
    }
    Ok(net)
}

/// Parses `tap=NAME` (a Linux interface name, `%d` pattern allowed).
fn tap_name(item: &OptionItem) -> Result<String, OptionError> {
    let value = item.non_empty_value()?;
    if !valid_tap_name(value) {
        return Err(OptionError::invalid(
            &item.key,
            value,
            "interface names are 1 to 15 bytes without '/', ':' or spaces",
        ));
    }
    Ok(value.to_owned())
}

/// Parses `fd=N` or `fd=[N,M,...]`.
fn tap_fds(item: &OptionItem) -> Result<Vec<i32>, OptionError> {
    let value = item.non_empty_value()?;
    let fds = parse_list(&item.key, value)?
        .iter()
        .map(|fd| match parse_u64(&item.key, fd) {
            Ok(n) if n <= i32::MAX as u64 => Ok(n as i32),
            _ => Err(OptionError::invalid(&item.key, value, "not a valid fd")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if fds.is_empty() || fds.len() * 2 > MAX_NET_QUEUES {
        return Err(OptionError::invalid(
            &item.key,
            value,
            format!("between 1 and {} fds allowed", MAX_NET_QUEUES / 2),
        ));
    }
    Ok(fds)
}

/// Parses `mac=12:34:56:78:9a:bc` (unicast, not all zero).
fn mac(item: &OptionItem) -> Result<String, OptionError> {
    let value = item.value()?;
    check_mac(value).map_err(|reason| OptionError::invalid(&item.key, value, reason))?;
    Ok(value.to_ascii_lowercase())
}

/// Parses an IPv4 address (`ip=`, `mask=`).
fn ipv4(item: &OptionItem) -> Result<std::net::Ipv4Addr, OptionError> {
    let value = item.value()?;
    value
        .parse()
        .map_err(|_| OptionError::invalid(&item.key, value, "not an IPv4 address"))
}

/// Parses `mtu=` (`MIN_NET_MTU..=65535`).
fn mtu(item: &OptionItem) -> Result<u16, OptionError> {
    let value = item.value()?;
    match u16::try_from(parse_u64(&item.key, value)?) {
        Ok(m) if m >= MIN_NET_MTU => Ok(m),
        _ => Err(OptionError::invalid(
            &item.key,
            value,
            format!("must be between {MIN_NET_MTU} and 65535"),
        )),
    }
}

/// Parses the net `num_queues=` (even, 2..=`MAX_NET_QUEUES`).
fn net_num_queues(item: &OptionItem) -> Result<usize, OptionError> {
    let value = item.value()?;
    match usize::try_from(parse_u64(&item.key, value)?) {
        Ok(n) if (2..=MAX_NET_QUEUES).contains(&n) && n.is_multiple_of(2) => Ok(n),
        _ => Err(OptionError::invalid(
            &item.key,
            value,
            format!("must be an even number between 2 and {MAX_NET_QUEUES}"),
        )),
    }
}

/// Parses the net `queue_size=` (a power of two in 2..=`MAX_NET_QUEUE_SIZE`).
fn net_queue_size(item: &OptionItem) -> Result<u16, OptionError> {
    let value = item.value()?;
    match u16::try_from(parse_u64(&item.key, value)?) {
        Ok(n) if n.is_power_of_two() && (2..=MAX_NET_QUEUE_SIZE).contains(&n) => Ok(n),
        _ => Err(OptionError::invalid(
            &item.key,
            value,
            format!("must be a power of two between 2 and {MAX_NET_QUEUE_SIZE}"),
        )),
    }
}

/// Keys accepted by `--vsock`, for error messages.
const VSOCK_KEYS: &str = "cid, socket, id, pci_segment or iommu=off";

/// Parses `--vsock cid=N,socket=PATH[,id=X]` (Cloud Hypervisor syntax).
///
/// `cid` and `socket` are required; the socket's directory must exist
/// (the socket itself is created when the VM starts).
pub(super) fn parse_vsock(value: &str) -> Result<VsockConfig, OptionError> {
    let mut cid = None;
    let mut socket = None;
    let mut id = None;
    let mut segment = 0;
    for item in split_options(value)? {
        match item.key.as_str() {
            "cid" => cid = Some(vsock_cid(&item)?),
            "socket" => socket = Some(vsock_socket(&item)?),
            "id" => id = Some(device_id(&item)?),
            "iommu" => reject_iommu_on(&item)?,
            "pci_segment" => segment = pci_segment(&item)?,
            _ => {
                return Err(OptionError::UnknownKey {
                    key: item.key,
                    expected: VSOCK_KEYS,
                })
            }
        }
    }
    Ok(VsockConfig {
        cid: cid.ok_or(OptionError::Missing("cid (cid=...)"))?,
        socket: socket.ok_or(OptionError::Missing("socket (socket=...)"))?,
        iommu: false,
        id,
        pci_segment: segment,
        pci_device_id: None,
    })
}

/// Parses `cid=` (`MIN_VSOCK_CID..=MAX_VSOCK_CID`).
fn vsock_cid(item: &OptionItem) -> Result<u32, OptionError> {
    let value = item.value()?;
    match u32::try_from(parse_u64(&item.key, value)?) {
        Ok(c) if (MIN_VSOCK_CID..=MAX_VSOCK_CID).contains(&c) => Ok(c),
        _ => Err(OptionError::invalid(
            &item.key,
            value,
            format!("must be between {MIN_VSOCK_CID} and {MAX_VSOCK_CID} (0-2 are reserved)"),
        )),
    }
}

/// Parses `socket=PATH`, whose parent directory must exist.
fn vsock_socket(item: &OptionItem) -> Result<PathBuf, OptionError> {
    let value = item.non_empty_value()?;
    let path = PathBuf::from(value);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(OptionError::invalid(
            &item.key,
            value,
            format!("directory {} does not exist", dir.display()),
        ));
    }
    if path.file_name().is_none() {
        return Err(OptionError::invalid(&item.key, value, "not a file path"));
    }
    Ok(path)
}
