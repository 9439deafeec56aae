//! Parsing of the virtio device options `--disk` and `--rng` (Cloud
//! Hypervisor syntax) into [`DiskConfig`] and [`RngConfig`].
//!
//! Values are range-checked here so that errors name the key as written;
//! [`crate::config::VmConfig::validate`] repeats the checks for API clients
//! and adds the cross-disk ones (duplicate ids).

use std::path::PathBuf;

use super::options::{parse_toggle, parse_u64, split_options, OptionError, OptionItem};
use crate::config::{
    default_disk_num_queues, default_disk_queue_size, valid_device_id, valid_disk_queue_size,
    DiskConfig, RngConfig, DISK_IMAGE_TYPES, MAX_DISK_QUEUES, MAX_DISK_QUEUE_SIZE,
    MAX_DISK_SERIAL_BYTES,
};

/// Keys accepted by `--disk`, for error messages.
const DISK_KEYS: &str =
    "path, readonly, direct, num_queues, queue_size, serial, id, image_type or iommu=off";

/// `--disk` keys Cloud Hypervisor knows that chv does not implement.
const DISK_UNSUPPORTED: [&str; 14] = [
    "vhost_user",
    "socket",
    "vhost_socket",
    "rate_limit_group",
    "bw_size",
    "bw_one_time_burst",
    "bw_refill_time",
    "ops_size",
    "ops_one_time_burst",
    "ops_refill_time",
    "pci_segment",
    "queue_affinity",
    "backing_files",
    "sparse",
];

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
    for item in split_options(value)? {
        match item.key.as_str() {
            "path" => disk.path = Some(PathBuf::from(item.non_empty_value()?)),
            "readonly" => disk.readonly = parse_toggle(&item.key, item.value()?)?,
            "direct" => disk.direct = parse_toggle(&item.key, item.value()?)?,
            "num_queues" => disk.num_queues = num_queues(&item)?,
            "queue_size" => disk.queue_size = queue_size(&item)?,
            "serial" => disk.serial = Some(serial(&item)?),
            "id" => disk.id = Some(device_id(&item)?),
            "image_type" => disk.image_type = Some(image_type(&item)?),
            "iommu" => reject_iommu_on(&item)?,
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
    if disk.path.is_none() {
        return Err(OptionError::Missing("path (path=...)"));
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
fn device_id(item: &OptionItem) -> Result<String, OptionError> {
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
fn image_type(item: &OptionItem) -> Result<String, OptionError> {
    let value = item.value()?;
    if DISK_IMAGE_TYPES.contains(&value) {
        return Ok(value.to_owned());
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

/// Accepts `iommu=off` (Cloud Hypervisor's default); chv has no vIOMMU.
fn reject_iommu_on(item: &OptionItem) -> Result<(), OptionError> {
    if parse_toggle(&item.key, item.value()?)? {
        return Err(OptionError::Unsupported("iommu=on".into()));
    }
    Ok(())
}

/// Keys accepted by `--rng`, for error messages.
const RNG_KEYS: &str = "src or iommu=off";

/// Parses `--rng src=PATH[,iommu=off]`; `src` defaults to `/dev/urandom`.
pub(super) fn parse_rng(value: &str) -> Result<RngConfig, OptionError> {
    let mut rng = RngConfig::default();
    for item in split_options(value)? {
        match item.key.as_str() {
            "src" => rng.src = PathBuf::from(item.non_empty_value()?),
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
