//! `--serial` and `--console`: where each console device's output goes
//! (Cloud Hypervisor's modes: `off`, `null`, `pty`, `tty`, `file=PATH`,
//! `socket=PATH`).

use std::path::PathBuf;

use super::options::{parse_toggle, split_options, OptionError};
use crate::config::{ConsoleConfig, ConsoleOutputMode};

/// What `--serial`/`--console` accept, for error messages.
const CONSOLE_MODES: &str = "off, null, pty, tty, file=PATH or socket=PATH";

/// Parses `--serial`/`--console`: `off`, `null`, `pty`, `tty`, `file=PATH`
/// or `socket=PATH` (plus Cloud Hypervisor's `iommu=off`).
pub(super) fn parse_console(value: &str) -> Result<ConsoleConfig, OptionError> {
    let mut chosen: Option<(String, ConsoleOutputMode)> = None;
    let mut file = None;
    let mut socket = None;
    for item in split_options(value)? {
        let mode = match item.key.as_str() {
            "off" => ConsoleOutputMode::Off,
            "null" => ConsoleOutputMode::Null,
            "tty" => ConsoleOutputMode::Tty,
            "pty" => ConsoleOutputMode::Pty,
            "file" => {
                file = Some(PathBuf::from(item.non_empty_value()?));
                ConsoleOutputMode::File
            }
            "socket" => {
                socket = Some(PathBuf::from(item.non_empty_value()?));
                ConsoleOutputMode::Socket
            }
            "iommu" => {
                if parse_toggle(&item.key, item.value()?)? {
                    return Err(OptionError::Unsupported("iommu=on".into()));
                }
                continue;
            }
            _ if item.value.is_none() => {
                return Err(OptionError::UnknownValue {
                    value: item.key,
                    expected: CONSOLE_MODES,
                })
            }
            _ => {
                return Err(OptionError::UnknownKey {
                    key: item.key,
                    expected: CONSOLE_MODES,
                })
            }
        };
        let takes_path = matches!(mode, ConsoleOutputMode::File | ConsoleOutputMode::Socket);
        if let (Some(value), false) = (&item.value, takes_path) {
            return Err(OptionError::invalid(&item.key, value, "takes no value"));
        }
        if let Some((previous, _)) = chosen {
            return Err(OptionError::Conflict(previous, item.key));
        }
        chosen = Some((item.key, mode));
    }
    let (_, mode) = chosen.ok_or(OptionError::Missing(
        "output mode (off, null, pty, tty, file=PATH or socket=PATH)",
    ))?;
    Ok(ConsoleConfig {
        file,
        socket,
        ..ConsoleConfig::with_mode(mode)
    })
}
