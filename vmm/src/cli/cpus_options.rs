//! `--cpus`: Cloud Hypervisor's syntax, `boot=N,max=M,topology=T:C:D:P,
//! kvm_hyperv=off,max_phys_bits=N,affinity=[V@[H,...],...],nested=on,
//! core_scheduling=vm|vcpu|off,features=[...]`.

use super::options::{parse_list, parse_toggle, parse_u64, split_options, OptionItem};
use super::OptionError;
use crate::config::{CoreScheduling, CpuAffinity, CpuFeatures, CpuTopology, CpusConfig, MAX_VCPUS};

/// Keys accepted by `--cpus`, for error messages.
const CPUS_KEYS: &str = "boot, max, topology, kvm_hyperv, max_phys_bits, affinity, nested, \
                         core_scheduling or features";

/// Parses `--cpus`.
pub(super) fn parse_cpus(value: &str) -> Result<CpusConfig, OptionError> {
    let mut config = CpusConfig::default();
    let mut boot = None;
    let mut max = None;
    let mut features = CpuFeatures::default();
    for item in split_options(value)? {
        match item.key.as_str() {
            "boot" => boot = Some(vcpu_count(&item, 1)?),
            "max" => max = Some(item),
            "features" => {
                for name in parse_features(&item)? {
                    if name == "amx" {
                        features.amx = true;
                    } else {
                        features.keep.push(name);
                    }
                }
            }
            "topology" => config.topology = Some(parse_topology(&item)?),
            "kvm_hyperv" => config.kvm_hyperv = parse_toggle(&item.key, item.value()?)?,
            "nested" => config.nested = parse_toggle(&item.key, item.value()?)?,
            "max_phys_bits" => {
                let value = item.value()?;
                config.max_phys_bits = u8::try_from(parse_u64(&item.key, value)?)
                    .map_err(|_| OptionError::invalid(&item.key, value, "too large"))?;
            }
            "affinity" => config.affinity = Some(parse_affinity(&item)?),
            "core_scheduling" => {
                config.core_scheduling = match item.value()? {
                    "vm" => CoreScheduling::Vm,
                    "vcpu" => CoreScheduling::Vcpu,
                    "off" => CoreScheduling::Off,
                    other => {
                        return Err(OptionError::invalid(
                            &item.key,
                            other,
                            "expected vm, vcpu or off",
                        ))
                    }
                }
            }
            _ => {
                return Err(OptionError::UnknownKey {
                    key: item.key,
                    expected: CPUS_KEYS,
                })
            }
        }
    }
    config.boot_vcpus = boot.unwrap_or(1);
    config.max_vcpus = match max {
        Some(item) => vcpu_count(&item, config.boot_vcpus)?,
        None => config.boot_vcpus,
    };
    config.features = features;
    Ok(config)
}

/// Parses a vCPU count that must lie in `min..=MAX_VCPUS`.
fn vcpu_count(item: &OptionItem, min: u8) -> Result<u8, OptionError> {
    let value = item.value()?;
    let count = parse_u64(&item.key, value)?;
    match u8::try_from(count) {
        Ok(count) if (min..=MAX_VCPUS).contains(&count) => Ok(count),
        _ if min == 1 => Err(OptionError::invalid(
            &item.key,
            value,
            format!("must be between 1 and {MAX_VCPUS}"),
        )),
        _ => Err(OptionError::invalid(
            &item.key,
            value,
            format!("must be between boot ({min}) and {MAX_VCPUS}"),
        )),
    }
}

/// Parses `topology=threads_per_core:cores_per_die:dies_per_package:packages`.
fn parse_topology(item: &OptionItem) -> Result<CpuTopology, OptionError> {
    let value = item.value()?;
    let parts: Vec<&str> = value.split(':').collect();
    let bad = |reason: &str| OptionError::invalid(&item.key, value, reason);
    let [t, c, d, p] = parts[..] else {
        return Err(bad(
            "expected threads_per_core:cores_per_die:dies_per_package:packages",
        ));
    };
    let count = |s: &str| match s.parse::<u8>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad("each count must be between 1 and 255")),
    };
    Ok(CpuTopology {
        threads_per_core: count(t)?,
        cores_per_die: count(c)?,
        dies_per_package: count(d)?,
        packages: count(p)?,
    })
}

/// Parses `affinity=[V@[H,H-H,...],...]`: vCPU `V` runs on the listed host
/// CPUs (ranges allowed).
fn parse_affinity(item: &OptionItem) -> Result<Vec<CpuAffinity>, OptionError> {
    let value = item.value()?;
    let bad = |reason: String| OptionError::invalid(&item.key, value, reason);
    let inner = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .ok_or_else(|| bad("expected [vcpu@[host_cpu,...],...]".into()))?;
    let mut out = Vec::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let (vcpu, after) = rest
            .split_once("@[")
            .ok_or_else(|| bad(format!("'{rest}': expected vcpu@[host_cpu,...]")))?;
        let (cpus, after) = after
            .split_once(']')
            .ok_or_else(|| bad("unbalanced brackets".into()))?;
        let vcpu = vcpu
            .trim()
            .parse::<u8>()
            .map_err(|_| bad(format!("'{}' is not a vCPU number", vcpu.trim())))?;
        let mut host_cpus = Vec::new();
        for part in cpus.split(',') {
            let part = part.trim();
            let num = |s: &str| {
                s.parse::<usize>()
                    .map_err(|_| bad(format!("'{s}' is not a host CPU number")))
            };
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(bad(format!("range {a}-{b} is backwards")));
                    }
                    if b - a > 4096 {
                        return Err(bad(format!("range {a}-{b} is too long")));
                    }
                    host_cpus.extend(a..=b);
                }
                None => host_cpus.push(num(part)?),
            }
        }
        out.push(CpuAffinity { vcpu, host_cpus });
        rest = after.trim_start_matches(',').trim();
    }
    Ok(out)
}

/// Parses `features=[a,b]` or `features=a` into lower-case, de-duplicated
/// names. Whether a name is known is decided by the CPUID code.
fn parse_features(item: &OptionItem) -> Result<Vec<String>, OptionError> {
    let value = item.value()?;
    let mut names: Vec<String> = Vec::new();
    for name in parse_list(&item.key, value)? {
        let valid = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid {
            return Err(OptionError::invalid(
                &item.key,
                value,
                format!("invalid feature name '{name}'"),
            ));
        }
        let name = name.to_ascii_lowercase();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}
