//! Rate limits: how fast a webhook's deliveries may start (`rate_limit`
//! on the webhook, else `delivery.rate_limit`). Each limit is a GCRA token
//! bucket (`governor`): `burst` starts at once, then one every
//! `1 / per_second`. Every attempt takes a start, retries, probes and
//! replays too; a delivery that waits for one is not attempted, so it
//! spends no retry. With the JetStream store the bucket is shared through
//! NATS instead ([`crate::store::jetstream::JetStream::claim_starts`]), so the
//! limit is the webhook's, whatever the number of instances.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};

use crate::rules::model::{RateLimit, Webhook};

/// The limit that applies to `webhook`: its own, else the default.
pub fn limit_of(webhook: &Webhook, default: Option<RateLimit>) -> Option<RateLimit> {
    webhook.rate_limit.or(default)
}

/// One interval between starts at the limit's rate.
fn interval(limit: RateLimit) -> Duration {
    Duration::from_secs_f64(1.0 / limit.per_second)
}

fn quota(limit: RateLimit) -> Quota {
    let period = interval(limit).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// Each webhook's bucket in this process, made again when its limit changes.
#[derive(Default)]
pub struct Limits {
    buckets: Mutex<HashMap<String, (RateLimit, Arc<DefaultDirectRateLimiter>)>>,
}

impl Limits {
    /// Takes one start for `key` under `limit` now, or says how long until
    /// the next one is free.
    pub fn take(&self, key: &str, limit: RateLimit) -> Result<(), Duration> {
        let bucket = {
            let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
            match buckets.get(key) {
                Some((l, b)) if *l == limit => b.clone(),
                _ => {
                    let b = Arc::new(DefaultDirectRateLimiter::direct(quota(limit)));
                    buckets.insert(key.to_string(), (limit, b.clone()));
                    b
                }
            }
        };
        bucket.check().map_err(|not_until| {
            not_until
                .wait_time_from(DefaultClock::default().now())
                .max(Duration::from_millis(1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limits = Limits::default();
        let limit = RateLimit {
            per_second: 10.0,
            burst: 3,
        };
        for _ in 0..3 {
            assert_eq!(limits.take("w", limit), Ok(()));
        }
        let wait = limits.take("w", limit).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // Another webhook has a bucket of its own.
        assert_eq!(limits.take("other", limit), Ok(()));
        // A changed limit starts a new bucket.
        let faster = RateLimit {
            per_second: 10.0,
            burst: 5,
        };
        assert_eq!(limits.take("w", faster), Ok(()));
    }
}
