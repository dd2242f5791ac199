//! Classifying an attempt's outcome and choosing the wait before the next.

use std::time::{Duration, SystemTime};

use crate::rules::model::RetryPolicy;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    Timeout,
    /// Could not connect or the exchange broke.
    Error(String),
}

impl Attempt {
    /// The `status_class` label of the attempt.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Status { status, .. } => crate::metrics::status_class(*status),
            Self::Timeout => "timeout",
            Self::Error(_) => "error",
        }
    }

    /// How the attempt log and the dead letters name the outcome.
    pub fn label(&self) -> String {
        match self {
            Self::Status { status, .. } => status.to_string(),
            Self::Timeout => "timeout".into(),
            Self::Error(e) => format!("error: {e}"),
        }
    }

    pub fn succeeded(&self) -> bool {
        matches!(
            self,
            Self::Status {
                status: 200..=299,
                ..
            }
        )
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based) after `attempt`, or
    /// `None` when the attempt is final.
    pub fn next_delay(&self, attempt: &Attempt, retry: u32) -> Option<Duration> {
        if attempt.succeeded() || retry > self.max_retries {
            return None;
        }
        let retry_after = match attempt {
            Attempt::Status {
                status,
                retry_after,
            } if self.on_status.matches(*status) => *retry_after,
            Attempt::Timeout if self.on_timeout => None,
            Attempt::Error(_) if self.on_error => None,
            _ => return None,
        };
        let index = (retry as usize).min(self.backoff.len()).saturating_sub(1);
        let backoff = self.backoff.get(index).copied().unwrap_or_default();
        Some(backoff.max(retry_after.unwrap_or_default().min(self.max_retry_after)))
    }
}

/// A `Retry-After` value: seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> Attempt {
        Attempt::Status {
            status: s,
            retry_after: None,
        }
    }

    #[test]
    fn default_policy_is_oneschemas() {
        let p = RetryPolicy::default();
        assert_eq!(p.next_delay(&status(429), 1), Some(Duration::from_secs(1)));
        assert_eq!(p.next_delay(&status(408), 2), Some(Duration::from_secs(5)));
        assert_eq!(p.next_delay(&status(429), 3), None);
        assert_eq!(
            p.next_delay(&Attempt::Timeout, 1),
            Some(Duration::from_secs(1))
        );
        assert_eq!(p.next_delay(&status(500), 1), None);
        assert_eq!(p.next_delay(&status(200), 1), None);
        assert_eq!(p.next_delay(&Attempt::Error("refused".into()), 1), None);
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let p = RetryPolicy::default();
        let a = Attempt::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(p.next_delay(&a, 1), Some(Duration::from_secs(7)));
        let a = Attempt::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(3600)),
        };
        assert_eq!(p.next_delay(&a, 1), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("12"), Some(Duration::from_secs(12)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
