//! Parsing of `--fs` and `--pmem` (Cloud Hypervisor syntax) into
//! [`FsConfig`] and [`PmemConfig`]. Ranges are checked again, with the
//! field named, by [`crate::config::VmConfig::validate`].

use std::path::PathBuf;

use super::device_options::{device_id, pci_segment, reject_iommu_on};
use super::options::{parse_size, parse_toggle, parse_u64, split_options, OptionError, OptionItem};
use crate::config::{
    default_fs_num_queues, default_fs_queue_size, FsConfig, PmemConfig, MAX_FS_QUEUES,
    MAX_FS_QUEUE_SIZE,
};

/// Keys accepted by `--fs`, for error messages.
const FS_KEYS: &str = "tag, socket, num_queues, queue_size, id, pci_segment or iommu=off";

/// Parses one `--fs` value, e.g.
/// `tag=kataShared,socket=/run/fs.sock,num_queues=1,queue_size=1024`.
/// `tag` and `socket` are required; one queue of 1024 entries by default.
pub(super) fn parse_fs(value: &str) -> Result<FsConfig, OptionError> {
    let (mut tag, mut socket) = (None, None);
    let mut fs = FsConfig {
        tag: String::new(),
        socket: PathBuf::new(),
        num_queues: default_fs_num_queues(),
        queue_size: default_fs_queue_size(),
        id: None,
        pci_segment: 0,
        pci_device_id: None,
        iommu: false,
    };
    for item in split_options(value)? {
        match item.key.as_str() {
            "tag" => tag = Some(item.non_empty_value()?.to_owned()),
            "socket" => socket = Some(PathBuf::from(item.non_empty_value()?)),
            "num_queues" => fs.num_queues = fs_num_queues(&item)?,
            "queue_size" => fs.queue_size = fs_queue_size(&item)?,
            "id" => fs.id = Some(device_id(&item)?),
            "pci_segment" => fs.pci_segment = pci_segment(&item)?,
            "iommu" => reject_iommu_on(&item)?,
            _ => {
                return Err(OptionError::UnknownKey {
                    key: item.key,
                    expected: FS_KEYS,
                })
            }
        }
    }
    fs.tag = tag.ok_or(OptionError::Missing("tag (tag=...)"))?;
    fs.socket = socket.ok_or(OptionError::Missing("socket (socket=...)"))?;
    Ok(fs)
}

/// Parses the virtio-fs `num_queues=` (1..=`MAX_FS_QUEUES`).
fn fs_num_queues(item: &OptionItem) -> Result<usize, OptionError> {
    let value = item.value()?;
    match usize::try_from(parse_u64(&item.key, value)?) {
        Ok(n) if (1..=MAX_FS_QUEUES).contains(&n) => Ok(n),
        _ => Err(OptionError::invalid(
            &item.key,
            value,
            format!("must be between 1 and {MAX_FS_QUEUES}"),
        )),
    }
}

/// Parses the virtio-fs `queue_size=` (a power of two up to
/// `MAX_FS_QUEUE_SIZE`).
fn fs_queue_size(item: &OptionItem) -> Result<u16, OptionError> {
    let value = item.value()?;
    match u16::try_from(parse_u64(&item.key, value)?) {
        Ok(n) if n.is_power_of_two() && (2..=MAX_FS_QUEUE_SIZE).contains(&n) => Ok(n),
        _ => Err(OptionError::invalid(
            &item.key,
            value,
            format!("must be a power of two between 2 and {MAX_FS_QUEUE_SIZE}"),
        )),
    }
}

/// Keys accepted by `--pmem`, for error messages.
const PMEM_KEYS: &str = "file, size, discard_writes, id, pci_segment or iommu=off";

/// Parses one `--pmem` value, e.g. `file=/img,size=128M,discard_writes=on`.
/// `file` is required; the size defaults to the file's.
pub(super) fn parse_pmem(value: &str) -> Result<PmemConfig, OptionError> {
    let mut file = None;
    let mut pmem = PmemConfig {
        file: PathBuf::new(),
        size: None,
        iommu: false,
        discard_writes: false,
        id: None,
        pci_segment: 0,
        pci_device_id: None,
    };
    for item in split_options(value)? {
        match item.key.as_str() {
            "file" => file = Some(PathBuf::from(item.non_empty_value()?)),
            "size" => {
                let v = item.value()?;
                let size =
                    parse_size(v).map_err(|e| OptionError::invalid(&item.key, v, e.to_string()))?;
                pmem.size = Some(size);
            }
            "discard_writes" => pmem.discard_writes = parse_toggle(&item.key, item.value()?)?,
            "id" => pmem.id = Some(device_id(&item)?),
            "pci_segment" => pmem.pci_segment = pci_segment(&item)?,
            "iommu" => reject_iommu_on(&item)?,
            _ => {
                return Err(OptionError::UnknownKey {
                    key: item.key,
                    expected: PMEM_KEYS,
                })
            }
        }
    }
    pmem.file = file.ok_or(OptionError::Missing("file (file=...)"))?;
    Ok(pmem)
}
