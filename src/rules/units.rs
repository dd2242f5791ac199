//! Durations (`10s`, `1h30m`, or a number of seconds) and sizes
//! (`64MiB`, `1 KB`, or a number of bytes) as written in rules and config.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration read from `10s`, `500ms`, `30d` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(s) => Duration::try_from_secs_f64(s).map(Dur).map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid duration {s}: expected a non-negative number of seconds"
                ))
            }),
            Raw::Text(t) => parse_duration(&t)
                .map(Dur)
                .map_err(serde::de::Error::custom),
        }
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration `{text}` ({e}); write e.g. 500ms, 10s, 24h, 30d"))
}

/// A size in bytes read from `1MiB`, `64 MB` or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(Size(b)),
            Raw::Text(t) => t
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| Size(b.as_u64()))
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "invalid size `{t}` ({e}); write e.g. 1MiB, 64MiB"
                    ))
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        let d: Dur = serde_json::from_str("\"30d\"").unwrap();
        assert_eq!(d.0, Duration::from_secs(30 * 86400));
        let d: Dur = serde_json::from_str("1.5").unwrap();
        assert_eq!(d.0, Duration::from_millis(1500));
        let s: Size = serde_json::from_str("\"1MiB\"").unwrap();
        assert_eq!(s.0, 1 << 20);
        assert!(serde_json::from_str::<Dur>("\"soon\"").is_err());
        assert!(serde_json::from_str::<Dur>("1e20").is_err());
        assert!(serde_json::from_str::<Dur>("-1").is_err());
    }
}
