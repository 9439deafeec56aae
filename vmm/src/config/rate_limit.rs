//! Rate-limiter configuration (Cloud Hypervisor's `RateLimiterConfig`,
//! `TokenBucketConfig` and `RateLimitGroupConfig`), its validation and its
//! conversion to the device model's [`RateLimits`].
//!
//! JSON shape: `{"bandwidth": {"size": bytes, "one_time_burst": bytes,
//! "refill_time": ms}, "ops": {...}}`; groups are `{"id": "...",
//! "rate_limiter_config": {...}}`.

use serde::{Deserialize, Serialize};
use virtio_devices::rate_limiter::{BucketConfig, RateLimits, MAX_REFILL_TIME_MS};

use super::{ConfigError, VmConfig};

/// One token bucket: `size` tokens refilled every `refill_time` ms, plus
/// `one_time_burst` extra tokens usable once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucketConfig {
    /// Bucket size (bytes or operations).
    pub size: u64,
    /// Initial extra credit, spent first and never refilled.
    #[serde(default)]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill a whole bucket.
    pub refill_time: u64,
}

impl TokenBucketConfig {
    /// Why the bucket is unusable, if it is.
    pub fn check(&self) -> Result<(), String> {
        if self.size == 0 {
            return Err("size must be at least 1".into());
        }
        if !(1..=MAX_REFILL_TIME_MS).contains(&self.refill_time) {
            return Err(format!(
                "refill_time must be between 1 and {MAX_REFILL_TIME_MS} ms"
            ));
        }
        Ok(())
    }

    fn bucket(&self) -> BucketConfig {
        BucketConfig {
            size: self.size,
            one_time_burst: self.one_time_burst.unwrap_or(0),
            refill_time_ms: self.refill_time,
        }
    }
}

/// A bandwidth (bytes) and/or an operations bucket; absent ones do not
/// limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimiterConfig {
    /// Bytes per `refill_time`.
    #[serde(default)]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Requests (disks) or frames (net) per `refill_time`.
    #[serde(default)]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// Why a bucket is unusable, naming it (`bandwidth: …` or `ops: …`).
    pub fn check(&self) -> Result<(), String> {
        for (name, bucket) in [("bandwidth", &self.bandwidth), ("ops", &self.ops)] {
            if let Some(b) = bucket {
                b.check().map_err(|reason| format!("{name}: {reason}"))?;
            }
        }
        Ok(())
    }

    /// The device model's limits (for `BlockOptions`/`NetOptions`); a
    /// missing `one_time_burst` is 0.
    pub fn limits(&self) -> RateLimits {
        RateLimits {
            bandwidth: self.bandwidth.map(|b| b.bucket()),
            ops: self.ops.map(|b| b.bucket()),
        }
    }
}

/// `--rate-limit-group id=…,bw_size=…`: limits shared by every disk that
/// names the group in `rate_limit_group`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitGroupConfig {
    /// Group id, referenced by `DiskConfig::rate_limit_group`.
    pub id: String,
    /// The shared limits.
    pub rate_limiter_config: RateLimiterConfig,
}

/// Checks every rate limit of `config`: usable buckets, unique non-empty
/// group ids, and disks naming an existing group and not also a limit of
/// their own.
pub(super) fn validate(config: &VmConfig) -> Result<(), ConfigError> {
    let groups = config.rate_limit_groups.as_deref().unwrap_or_default();
    for (index, group) in groups.iter().enumerate() {
        if group.id.is_empty() || groups[..index].iter().any(|g| g.id == group.id) {
            return Err(ConfigError::RateLimitGroupId {
                index,
                id: group.id.clone(),
            });
        }
        group
            .rate_limiter_config
            .check()
            .map_err(|reason| ConfigError::RateLimitGroup { index, reason })?;
    }
    for (index, disk) in config.disks.iter().flatten().enumerate() {
        if let Some(limits) = &disk.rate_limiter_config {
            limits
                .check()
                .map_err(|reason| ConfigError::DiskRateLimiter { index, reason })?;
        }
        if let Some(name) = &disk.rate_limit_group {
            if disk.rate_limiter_config.is_some() {
                return Err(ConfigError::DiskRateLimitConflict(index));
            }
            if !groups.iter().any(|g| &g.id == name) {
                return Err(ConfigError::DiskRateLimitGroup {
                    index,
                    group: name.clone(),
                });
            }
        }
    }
    for (index, net) in config.net.iter().flatten().enumerate() {
        if let Some(limits) = &net.rate_limiter_config {
            limits
                .check()
                .map_err(|reason| ConfigError::NetRateLimiter { index, reason })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{DiskConfig, NetConfig, PayloadConfig};

    fn bucket(size: u64, refill_time: u64) -> Option<TokenBucketConfig> {
        Some(TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time,
        })
    }

    fn vm(disks: Vec<DiskConfig>, groups: Vec<RateLimitGroupConfig>) -> VmConfig {
        VmConfig {
            payload: PayloadConfig {
                kernel: Some(PathBuf::from("/k")),
                ..PayloadConfig::default()
            },
            disks: Some(disks),
            rate_limit_groups: Some(groups),
            ..VmConfig::default()
        }
    }

    fn disk(limits: Option<RateLimiterConfig>, group: Option<&str>) -> DiskConfig {
        DiskConfig {
            path: Some(PathBuf::from("/d")),
            num_queues: 1,
            queue_size: 128,
            rate_limiter_config: limits,
            rate_limit_group: group.map(String::from),
            ..DiskConfig::default()
        }
    }

    fn group(id: &str) -> RateLimitGroupConfig {
        RateLimitGroupConfig {
            id: id.into(),
            rate_limiter_config: RateLimiterConfig {
                bandwidth: bucket(1 << 20, 1000),
                ops: None,
            },
        }
    }

    #[test]
    fn json_shape_matches_cloud_hypervisor() {
        let json = r#"{"bandwidth":{"size":1048576,"one_time_burst":4096,"refill_time":1000},
                       "ops":{"size":100,"refill_time":1000}}"#;
        let c: RateLimiterConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.bandwidth.unwrap().one_time_burst, Some(4096));
        assert_eq!(c.ops, bucket(100, 1000));
        let l = c.limits();
        assert_eq!(l.ops.unwrap().one_time_burst, 0);
        assert_eq!(l.bandwidth.unwrap().size, 1 << 20);
        let back = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<RateLimiterConfig>(&back).unwrap(), c);
        // Unknown keys are ignored, as in Cloud Hypervisor.
        let unknown: RateLimiterConfig = serde_json::from_str(r#"{"bw":{}}"#).unwrap();
        assert_eq!(unknown, RateLimiterConfig::default());
        let g: RateLimitGroupConfig = serde_json::from_str(
            r#"{"id":"g0","rate_limiter_config":{"ops":{"size":5,"refill_time":10}}}"#,
        )
        .unwrap();
        assert_eq!(g.rate_limiter_config.ops, bucket(5, 10));
        // Absent fields serialize as null, which CH's clients read as absent.
        let mut config = vm(vec![disk(None, None)], vec![]);
        config.rate_limit_groups = None;
        let plain = serde_json::to_string(&config).unwrap();
        assert!(plain.contains(r#""rate_limit_groups":null"#), "{plain}");
    }

    #[test]
    fn validation() {
        let ok = vm(
            vec![disk(None, Some("g")), disk(None, Some("g"))],
            vec![group("g")],
        );
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(
            vm(vec![disk(None, Some("h"))], vec![group("g")]).validate(),
            Err(ConfigError::DiskRateLimitGroup {
                index: 0,
                group: "h".into()
            })
        );
        let own = RateLimiterConfig {
            bandwidth: None,
            ops: bucket(10, 100),
        };
        assert_eq!(
            vm(vec![disk(Some(own), Some("g"))], vec![group("g")]).validate(),
            Err(ConfigError::DiskRateLimitConflict(0))
        );
        assert_eq!(vm(vec![disk(Some(own), None)], vec![]).validate(), Ok(()));
        let zero = RateLimiterConfig {
            bandwidth: bucket(0, 100),
            ops: None,
        };
        let err = vm(vec![disk(None, None), disk(Some(zero), None)], vec![])
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "disks[1].rate_limiter_config: bandwidth: size must be at least 1"
        );
        assert_eq!(
            vm(vec![], vec![group("g"), group("g")]).validate(),
            Err(ConfigError::RateLimitGroupId {
                index: 1,
                id: "g".into()
            })
        );
        assert!(vm(vec![], vec![group("")]).validate().is_err());
        let mut slow = group("s");
        slow.rate_limiter_config.ops = bucket(1, 0);
        assert!(matches!(
            vm(vec![], vec![slow]).validate(),
            Err(ConfigError::RateLimitGroup { index: 0, .. })
        ));
        let mut net = vm(vec![], vec![]);
        net.net = Some(vec![NetConfig {
            rate_limiter_config: Some(RateLimiterConfig {
                bandwidth: None,
                ops: bucket(1, MAX_REFILL_TIME_MS + 1),
            }),
            ..NetConfig::default()
        }]);
        assert!(matches!(
            net.validate(),
            Err(ConfigError::NetRateLimiter { index: 0, .. })
        ));
    }
}
