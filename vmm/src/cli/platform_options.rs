//! `--platform num_pci_segments=N,serial_number=S,uuid=U,oem_strings=[a,b]`
//! (Cloud Hypervisor's syntax); the values are checked with the whole
//! configuration ([`PlatformConfig::validate`]).

use super::options::{parse_list, parse_u64, split_options, OptionError};
use crate::config::PlatformConfig;

/// Keys accepted by `--platform`, for error messages.
const PLATFORM_KEYS: &str = "num_pci_segments, iommu_segments, serial_number, uuid or oem_strings";

/// Parses one `--platform` value.
pub(super) fn parse_platform(value: &str) -> Result<PlatformConfig, OptionError> {
    let mut platform = PlatformConfig::default();
    for item in split_options(value)? {
        match item.key.as_str() {
            "num_pci_segments" => {
                let v = item.value()?;
                platform.num_pci_segments = u16::try_from(parse_u64(&item.key, v)?)
                    .map_err(|_| OptionError::invalid(&item.key, v, "must fit 16 bits"))?;
            }
            "iommu_segments" => {
                let v = item.value()?;
                let segments = parse_list(&item.key, v)?
                    .iter()
                    .map(|s| {
                        s.parse::<u16>()
                            .map_err(|_| OptionError::invalid(&item.key, v, "not a segment number"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                platform.iommu_segments = Some(segments);
            }
            "serial_number" => platform.serial_number = Some(item.non_empty_value()?.to_owned()),
            "uuid" => platform.uuid = Some(item.non_empty_value()?.to_owned()),
            "oem_strings" => platform.oem_strings = Some(parse_list(&item.key, item.value()?)?),
            _ => {
                return Err(OptionError::UnknownKey {
                    key: item.key,
                    expected: PLATFORM_KEYS,
                })
            }
        }
    }
    Ok(platform)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_keys() {
        let p = parse_platform(
            "num_pci_segments=2,serial_number=abc,uuid=00112233-4455-6677-8899-aabbccddeeff,\
             oem_strings=[x=1,y]",
        )
        .unwrap();
        assert_eq!(p.num_pci_segments, 2);
        assert_eq!(p.serial(), Some("abc"));
        assert_eq!(
            p.oem_strings,
            Some(vec!["x=1".to_string(), "y".to_string()])
        );
        // Platforms without SMBIOS (aarch64) refuse serial_number by name.
        assert_eq!(p.validate().is_ok(), arch::PLATFORM.smbios);
        let e = parse_platform("num_pci_segments=70000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_pci_segments"), "{e}");
        let e = parse_platform("foo=1").unwrap_err().to_string();
        assert!(e.contains("foo"), "{e}");
        assert_eq!(
            parse_platform("iommu_segments=[1]").unwrap().iommu_segments,
            Some(vec![1])
        );
    }
}
