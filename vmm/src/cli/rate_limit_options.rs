//! The rate-limit keys of `--disk` and `--net` (`bw_size`,
//! `bw_one_time_burst`, `bw_refill_time`, `ops_size`, `ops_one_time_burst`,
//! `ops_refill_time`) and the `--rate-limit-group` option, in Cloud
//! Hypervisor syntax.
//!
//! Byte amounts accept size suffixes (`bw_size=1M`); refill times are
//! milliseconds. Unlike Cloud Hypervisor, which silently ignores a bucket
//! missing its size or refill time, a bucket given partly is an error.

use super::options::{parse_size, parse_u64, split_options, OptionError, OptionItem};
use crate::config::{RateLimitGroupConfig, RateLimiterConfig, TokenBucketConfig};
use virtio_devices::rate_limiter::MAX_REFILL_TIME_MS;

/// Keys accepted by `--rate-limit-group`, for error messages.
const GROUP_KEYS: &str = "id, bw_size, bw_one_time_burst, bw_refill_time, ops_size, \
                          ops_one_time_burst or ops_refill_time";

/// The three values of one bucket as given.
#[derive(Default)]
struct BucketKeys {
    size: Option<u64>,
    one_time_burst: Option<u64>,
    refill_time: Option<u64>,
}

impl BucketKeys {
    /// The bucket, `None` if no key of it was given.
    fn finish(self, prefix: &str) -> Result<Option<TokenBucketConfig>, OptionError> {
        let (size, refill_time) = match (self.size, self.refill_time, self.one_time_burst) {
            (None, None, None) => return Ok(None),
            (Some(size), Some(refill), _) => (size, refill),
            (None, _, _) => return Err(missing(prefix, "size")),
            (_, None, _) => return Err(missing(prefix, "refill_time")),
        };
        Ok(Some(TokenBucketConfig {
            size,
            one_time_burst: self.one_time_burst,
            refill_time,
        }))
    }
}

fn missing(prefix: &str, what: &str) -> OptionError {
    OptionError::Invalid {
        key: format!("{prefix}_{what}"),
        value: String::new(),
        reason: format!("missing: {prefix}_size and {prefix}_refill_time go together"),
    }
}

/// Collects the rate-limit keys of one option string.
#[derive(Default)]
pub(super) struct RateLimitKeys {
    bw: BucketKeys,
    ops: BucketKeys,
}

impl RateLimitKeys {
    /// Takes `item` if it is a rate-limit key (true), checking its value.
    pub(super) fn take(&mut self, item: &OptionItem) -> Result<bool, OptionError> {
        let slot = match item.key.as_str() {
            "bw_size" => &mut self.bw.size,
            "bw_one_time_burst" => &mut self.bw.one_time_burst,
            "bw_refill_time" => &mut self.bw.refill_time,
            "ops_size" => &mut self.ops.size,
            "ops_one_time_burst" => &mut self.ops.one_time_burst,
            "ops_refill_time" => &mut self.ops.refill_time,
            _ => return Ok(false),
        };
        let value = item.value()?;
        let key = item.key.as_str();
        let n = if key.starts_with("bw_") && !key.ends_with("refill_time") {
            parse_size(value).map_err(|e| OptionError::invalid(key, value, e.to_string()))?
        } else {
            parse_u64(key, value)?
        };
        if key.ends_with("_size") && n == 0 {
            return Err(OptionError::invalid(key, value, "must be at least 1"));
        }
        if key.ends_with("refill_time") && !(1..=MAX_REFILL_TIME_MS).contains(&n) {
            return Err(OptionError::invalid(
                key,
                value,
                format!("must be between 1 and {MAX_REFILL_TIME_MS} (milliseconds)"),
            ));
        }
        *slot = Some(n);
        Ok(true)
    }

    /// The limiter, `None` when no rate-limit key was given.
    pub(super) fn finish(self) -> Result<Option<RateLimiterConfig>, OptionError> {
        let bandwidth = self.bw.finish("bw")?;
        let ops = self.ops.finish("ops")?;
        if bandwidth.is_none() && ops.is_none() {
            return Ok(None);
        }
        Ok(Some(RateLimiterConfig { bandwidth, ops }))
    }
}

/// Parses `rate_limit_group=ID` of `--disk`.
pub(super) fn group_id(item: &OptionItem) -> Result<String, OptionError> {
    Ok(item.non_empty_value()?.to_owned())
}

/// Parses one `--rate-limit-group id=ID,bw_size=…,…` value; at least one
/// bucket is required.
pub(super) fn parse_rate_limit_group(value: &str) -> Result<RateLimitGroupConfig, OptionError> {
    let mut id = None;
    let mut keys = RateLimitKeys::default();
    for item in split_options(value)? {
        if keys.take(&item)? {
            continue;
        }
        match item.key.as_str() {
            "id" => id = Some(group_id(&item)?),
            _ => {
                return Err(OptionError::UnknownKey {
                    key: item.key,
                    expected: GROUP_KEYS,
                })
            }
        }
    }
    let id = id.ok_or(OptionError::Missing("id (id=...)"))?;
    let rate_limiter_config = keys.finish()?.ok_or(OptionError::Missing(
        "a limit (bw_size=... or ops_size=...)",
    ))?;
    Ok(RateLimitGroupConfig {
        id,
        rate_limiter_config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, burst: Option<u64>, refill_time: u64) -> Option<TokenBucketConfig> {
        Some(TokenBucketConfig {
            size,
            one_time_burst: burst,
            refill_time,
        })
    }

    fn keys(value: &str) -> Result<Option<RateLimiterConfig>, OptionError> {
        let mut k = RateLimitKeys::default();
        for item in split_options(value)? {
            assert!(k.take(&item)?, "{} not taken", item.key);
        }
        k.finish()
    }

    #[test]
    fn buckets_from_keys() {
        assert_eq!(
            keys("bw_size=1M,bw_refill_time=1000,ops_size=50,ops_one_time_burst=10,ops_refill_time=100"),
            Ok(Some(RateLimiterConfig {
                bandwidth: bucket(1 << 20, None, 1000),
                ops: bucket(50, Some(10), 100),
            }))
        );
        assert_eq!(
            keys("bw_one_time_burst=4K,bw_size=100,bw_refill_time=5"),
            Ok(Some(RateLimiterConfig {
                bandwidth: bucket(100, Some(4096), 5),
                ops: None,
            }))
        );
        let mut k = RateLimitKeys::default();
        let other = OptionItem {
            key: "path".into(),
            value: Some("/a".into()),
        };
        assert_eq!(k.take(&other), Ok(false));
        assert_eq!(k.finish(), Ok(None));
    }

    #[test]
    fn bad_keys() {
        let err = |v: &str| keys(v).unwrap_err().to_string();
        assert_eq!(
            err("bw_size=100"),
            "bw_refill_time=: missing: bw_size and bw_refill_time go together"
        );
        assert_eq!(
            err("ops_refill_time=100,ops_one_time_burst=3"),
            "ops_size=: missing: ops_size and ops_refill_time go together"
        );
        assert_eq!(
            err("ops_size=0,ops_refill_time=1"),
            "ops_size=0: must be at least 1"
        );
        assert!(
            err("bw_size=1,bw_refill_time=0").starts_with("bw_refill_time=0: must be between 1")
        );
        assert!(err("ops_size=1K,ops_refill_time=1").contains("not a non-negative decimal"));
        assert!(err("bw_size=1Q,bw_refill_time=1").contains("invalid size suffix"));
        assert_eq!(err("bw_size"), "'bw_size' needs a value (bw_size=...)");
    }

    #[test]
    fn groups() {
        assert_eq!(
            parse_rate_limit_group("id=g0,ops_size=10,ops_refill_time=100"),
            Ok(RateLimitGroupConfig {
                id: "g0".into(),
                rate_limiter_config: RateLimiterConfig {
                    bandwidth: None,
                    ops: bucket(10, None, 100),
                },
            })
        );
        assert_eq!(
            parse_rate_limit_group("bw_size=1,bw_refill_time=1"),
            Err(OptionError::Missing("id (id=...)"))
        );
        assert!(parse_rate_limit_group("id=g").is_err());
        assert!(parse_rate_limit_group("id=,bw_size=1,bw_refill_time=1").is_err());
        assert!(matches!(
            parse_rate_limit_group("id=g,path=/a"),
            Err(OptionError::UnknownKey { .. })
        ));
    }
}

#[cfg(test)]
mod command_line_tests {
    use super::super::parse_args;
    use crate::config::{RateLimiterConfig, TokenBucketConfig, VmConfig};

    fn vm(extra: &[&str]) -> Result<VmConfig, String> {
        let mut args = vec!["chv", "--kernel", "/vmlinux"];
        args.extend_from_slice(extra);
        parse_args(args)
            .map(|cli| cli.vm.unwrap())
            .map_err(|e| e.to_string())
    }

    fn ops(size: u64, refill_time: u64) -> Option<RateLimiterConfig> {
        Some(RateLimiterConfig {
            bandwidth: None,
            ops: Some(TokenBucketConfig {
                size,
                one_time_burst: None,
                refill_time,
            }),
        })
    }

    #[test]
    fn disk_net_and_group_options() {
        let vm = vm(&[
            "--rate-limit-group",
            "id=g,ops_size=100,ops_refill_time=1000",
            "id=h,bw_size=1M,bw_refill_time=1000",
            "--disk",
            "path=/a,rate_limit_group=g",
            "path=/b,rate_limit_group=g",
            "path=/c,ops_size=5,ops_refill_time=10",
            "--net",
            "tap=t0,ops_size=7,ops_refill_time=20",
        ])
        .unwrap();
        let groups = vm.rate_limit_groups.unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].rate_limiter_config, ops(100, 1000).unwrap());
        assert_eq!(
            groups[1].rate_limiter_config.bandwidth.unwrap().size,
            1 << 20
        );
        let disks = vm.disks.unwrap();
        assert_eq!(disks[0].rate_limit_group.as_deref(), Some("g"));
        assert_eq!(disks[1].rate_limit_group.as_deref(), Some("g"));
        assert_eq!(disks[0].rate_limiter_config, None);
        assert_eq!(disks[2].rate_limiter_config, ops(5, 10));
        assert_eq!(vm.net.unwrap()[0].rate_limiter_config, ops(7, 20));
    }

    #[test]
    fn rejected_combinations() {
        assert_eq!(
            vm(&["--disk", "path=/a,rate_limit_group=nope"]).unwrap_err(),
            "--disk: disks[0].rate_limit_group=nope: no such rate limit group"
        );
        assert_eq!(
            vm(&[
                "--disk",
                "path=/a,rate_limit_group=g,ops_size=1,ops_refill_time=1"
            ])
            .unwrap_err(),
            "--disk: 'rate_limit_group' and 'bw_*/ops_*' cannot be combined"
        );
        assert_eq!(
            vm(&["--net", "tap=t,bw_size=10"]).unwrap_err(),
            "--net: bw_refill_time=: missing: bw_size and bw_refill_time go together"
        );
        assert_eq!(
            vm(&[
                "--rate-limit-group",
                "id=g,ops_size=1,ops_refill_time=1",
                "id=g,ops_size=2,ops_refill_time=1"
            ])
            .unwrap_err(),
            "--rate-limit-group: rate_limit_groups[1].id='g': must be non-empty and unique"
        );
        assert!(vm(&["--rate-limit-group", "id=g"])
            .unwrap_err()
            .starts_with("--rate-limit-group: missing a limit"));
        let no_kernel = parse_args([
            "chv",
            "--rate-limit-group",
            "id=g,ops_size=1,ops_refill_time=1",
        ]);
        assert_eq!(
            no_kernel.unwrap_err().to_string(),
            "--rate-limit-group requires --kernel"
        );
    }
}
