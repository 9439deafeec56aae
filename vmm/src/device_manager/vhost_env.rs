//! Interim switch for the vhost-user and pmem devices until the config
//! schema (`VmConfig.fs`, `VmConfig.pmem`) is wired: `CHV_FS` lists
//! virtio-fs devices and `CHV_PMEM` pmem devices, `;`-separated, in the
//! CLI's `key=value,…` syntax (`tag=…,socket=…[,num_queues=…][,queue_size=…]`,
//! `file=…[,size=…][,discard_writes=on]`).

use std::path::PathBuf;

use virtio_devices::fs::{FsOptions, DEFAULT_QUEUE_SIZE};

use crate::VmmError;

/// Environment variable listing virtio-fs devices.
pub const FS_ENV: &str = "CHV_FS";
/// Environment variable listing virtio-pmem devices.
pub const PMEM_ENV: &str = "CHV_PMEM";

/// One `--pmem` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PmemEntry {
    /// Backing file.
    pub file: PathBuf,
    /// Bytes to map (default: the file's size).
    pub size: Option<u64>,
    /// Map private: the file never changes.
    pub discard_writes: bool,
}

fn pairs<'a>(what: &str, entry: &'a str) -> Result<Vec<(&'a str, &'a str)>, VmmError> {
    entry
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .ok_or_else(|| VmmError::Config(format!("{what}: {p}: expected key=value")))
        })
        .collect()
}

fn entries(var: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_default()
        .split(';')
        .filter(|e| !e.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn number<T: std::str::FromStr>(what: &str, key: &str, v: &str) -> Result<T, VmmError> {
    v.parse()
        .map_err(|_| VmmError::Config(format!("{what}: {key}={v}: not a number")))
}

/// Parses one virtio-fs entry.
pub fn parse_fs(entry: &str) -> Result<FsOptions, VmmError> {
    let what = "--fs";
    let (mut tag, mut socket) = (None, None);
    let (mut num_queues, mut queue_size) = (1, DEFAULT_QUEUE_SIZE);
    for (k, v) in pairs(what, entry)? {
        match k {
            "tag" => tag = Some(v.to_string()),
            "socket" => socket = Some(PathBuf::from(v)),
            "num_queues" => num_queues = number(what, k, v)?,
            "queue_size" => queue_size = number(what, k, v)?,
            _ => return Err(VmmError::Config(format!("{what}: unknown field {k}"))),
        }
    }
    let opts = FsOptions {
        tag: tag.ok_or_else(|| VmmError::Config(format!("{what}: tag= is required")))?,
        socket: socket.ok_or_else(|| VmmError::Config(format!("{what}: socket= is required")))?,
        num_queues,
        queue_size,
    };
    opts.validate()
        .map_err(|e| VmmError::Config(format!("{what}: {e}")))?;
    Ok(opts)
}

/// Parses one virtio-pmem entry.
pub fn parse_pmem(entry: &str) -> Result<PmemEntry, VmmError> {
    let what = "--pmem";
    let (mut file, mut size, mut discard_writes) = (None, None, false);
    for (k, v) in pairs(what, entry)? {
        match k {
            "file" => file = Some(PathBuf::from(v)),
            "size" => {
                size = Some(
                    parse_size(v)
                        .ok_or_else(|| VmmError::Config(format!("{what}: size={v}: not a size")))?,
                )
            }
            "discard_writes" => {
                discard_writes = match v {
                    "on" | "true" => true,
                    "off" | "false" => false,
                    _ => {
                        return Err(VmmError::Config(format!(
                            "{what}: discard_writes={v}: on or off"
                        )))
                    }
                }
            }
            _ => return Err(VmmError::Config(format!("{what}: unknown field {k}"))),
        }
    }
    Ok(PmemEntry {
        file: file.ok_or_else(|| VmmError::Config(format!("{what}: file= is required")))?,
        size,
        discard_writes,
    })
}

/// `512M`, `2G`, `4096`, … in bytes.
fn parse_size(v: &str) -> Option<u64> {
    let (num, shift) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 10),
        b'M' | b'm' => (&v[..v.len() - 1], 20),
        b'G' | b'g' => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    num.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// The virtio-fs devices `CHV_FS` asks for.
pub fn fs_from_env() -> Result<Vec<FsOptions>, VmmError> {
    entries(FS_ENV).iter().map(|e| parse_fs(e)).collect()
}

/// The pmem devices `CHV_PMEM` asks for.
pub fn pmem_from_env() -> Result<Vec<PmemEntry>, VmmError> {
    entries(PMEM_ENV).iter().map(|e| parse_pmem(e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_fields() {
        let f =
            parse_fs("tag=kataShared,socket=/run/fs.sock,num_queues=1,queue_size=1024").unwrap();
        assert_eq!(f.tag, "kataShared");
        assert_eq!(f.queue_size, 1024);
        assert!(parse_fs("socket=/x")
            .unwrap_err()
            .to_string()
            .contains("tag="));
        assert!(parse_fs("tag=a,socket=/x,queue_size=1000")
            .unwrap_err()
            .to_string()
            .contains("queue_size"));
        assert!(parse_fs("tag=a,socket=/x,cache=always")
            .unwrap_err()
            .to_string()
            .contains("cache"));
        let p = parse_pmem("file=/tmp/p.img,size=64M,discard_writes=on").unwrap();
        assert_eq!(p.size, Some(64 << 20));
        assert!(p.discard_writes);
        assert!(parse_pmem("size=1G")
            .unwrap_err()
            .to_string()
            .contains("file="));
        assert!(parse_pmem("file=/x,size=lots")
            .unwrap_err()
            .to_string()
            .contains("size=lots"));
    }
}
