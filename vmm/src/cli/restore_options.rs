//! `--restore source_url=…`: the snapshot to start from, Cloud Hypervisor's
//! `net_fds` and chv's per-clone overrides (serial, console, vsock).

use super::console_options::parse_console;
use std::path::PathBuf;

use super::options::{parse_toggle, split_options, OptionError};

/// Parses `--restore source_url=...[,prefault=on|off][,resume=true|false]`
/// `[,net_fds=[id@[fd,...]]]` and chv's clone overrides
/// `[,serial="MODE"][,console="MODE"][,vsock_cid=N][,vsock_socket=PATH]`
/// (MODE in `--serial` syntax, e.g. `serial="socket=/run/c1.sock"`).
pub(super) fn parse_restore(value: &str) -> Result<crate::snapshot::RestoreConfig, OptionError> {
    let mut source_url = None;
    let mut prefault = false;
    let mut resume = false;
    let mut net_fds = None;
    let (mut serial, mut console) = (None, None);
    let mut vsock: Option<crate::snapshot::RestoredVsockConfig> = None;
    for item in split_options(value)? {
        match item.key.as_str() {
            "source_url" => source_url = Some(item.non_empty_value()?.to_owned()),
            "net_fds" => net_fds = Some(parse_net_fds(item.non_empty_value()?)?),
            "serial" => serial = Some(parse_console(item.non_empty_value()?)?),
            "console" => console = Some(parse_console(item.non_empty_value()?)?),
            "vsock_cid" => {
                let raw = item.non_empty_value()?;
                let cid = raw
                    .parse::<u32>()
                    .map_err(|_| OptionError::invalid("vsock_cid", raw, "not a number"))?;
                vsock.get_or_insert_with(Default::default).cid = Some(cid);
            }
            "vsock_socket" => {
                let path = PathBuf::from(item.non_empty_value()?);
                vsock.get_or_insert_with(Default::default).socket = Some(path);
            }
            "prefault" => prefault = parse_toggle("prefault", item.value()?)?,
            "resume" => resume = parse_toggle("resume", item.value()?)?,
            _ => {
                return Err(OptionError::UnknownKey {
                    key: item.key,
                    expected: "source_url, prefault, resume, net_fds, serial, console, \
                               vsock_cid, vsock_socket",
                })
            }
        }
    }
    let source_url = source_url.ok_or(OptionError::Missing("source_url"))?;
    crate::snapshot::dir_from_url(&source_url, "source_url")
        .map_err(|e| OptionError::invalid("source_url", &source_url, e.to_string()))?;
    Ok(crate::snapshot::RestoreConfig {
        source_url,
        prefault,
        resume,
        net_fds,
        memory_restore_mode: None,
        vfio_fds: None,
        iommufd_fd: None,
        zone_updates: Vec::new(),
        serial,
        console,
        vsock,
    })
}

/// Parses `net_fds=[id@[fd,...],...]` (`--restore`, and chv-remote's
/// `restore` as ch-remote's).
pub fn parse_net_fds(value: &str) -> Result<Vec<crate::snapshot::RestoredNetConfig>, OptionError> {
    let bad = |reason: &str| OptionError::invalid("net_fds", value, reason);
    let inner = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .ok_or_else(|| bad("expected [id@[fd,...],...]"))?;
    let mut nets = Vec::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (id, after) = rest
            .split_once("@[")
            .ok_or_else(|| bad("expected id@[fd,...]"))?;
        let (fds, after) = after.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        let id = id.trim();
        if id.is_empty() {
            return Err(bad("empty device id"));
        }
        let fds = fds
            .split(',')
            .map(|f| {
                f.trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|fd| *fd >= 0)
                    .ok_or_else(|| bad("fds are non-negative numbers"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        nets.push(crate::snapshot::RestoredNetConfig {
            id: id.to_owned(),
            num_fds: fds.len(),
            fds: Some(fds),
        });
        rest = after.strip_prefix(',').unwrap_or(after);
        if !after.is_empty() && !after.starts_with(',') {
            return Err(bad("expected , between devices"));
        }
    }
    if nets.is_empty() {
        return Err(bad("no device"));
    }
    Ok(nets)
}
