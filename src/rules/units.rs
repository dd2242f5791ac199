//! Durations (`10s`, `1h30m`, or a number of seconds) and sizes
//! (`64MiB`, `1 KB`, or a number of bytes) as written in rules and config.

use std::time::Duration;

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

/// A duration read from `10s`, `500ms`, `30d` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// How a duration is written, for error messages.
const DURATION_HINT: &str = "write e.g. 500ms, 10s, 24h, 30d or a number of seconds";

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurVisitor)
    }
}

struct DurVisitor;

impl<'de> Visitor<'de> for DurVisitor {
    type Value = Dur;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a duration ({DURATION_HINT})")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
        parse_duration(v).map(Dur).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
        Duration::try_from_secs_f64(v).map(Dur).map_err(|_| {
            E::custom(format!(
                "invalid duration `{v}`: a number of seconds must be 0 or more; {DURATION_HINT}"
            ))
        })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
        Ok(Dur(Duration::from_secs(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
        u64::try_from(v)
            .map(|s| Dur(Duration::from_secs(s)))
            .map_err(|_| {
                E::custom(format!(
                    "invalid duration `{v}`: a number of seconds must be 0 or more; {DURATION_HINT}"
                ))
            })
    }
}

/// `10s`, `1h30m`, `500ms`, `30d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    use humantime::DurationError as E;
    humantime::parse_duration(text.trim()).map_err(|e| {
        let why = match e {
            E::UnknownUnit { unit, .. } => format!(": unknown unit `{unit}`"),
            E::NumberOverflow => ": too long".to_string(),
            E::Empty => ": empty".to_string(),
            E::InvalidCharacter(_) | E::NumberExpected(_) => String::new(),
        };
        format!("invalid duration `{text}`{why}; {DURATION_HINT}")
    })
}

/// A size in bytes read from `1MiB`, `64 MB` or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// How a size is written, for error messages.
const SIZE_HINT: &str = "write e.g. 64KiB, 1MiB, 64MiB or a number of bytes";

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SizeVisitor)
    }
}

struct SizeVisitor;

impl<'de> Visitor<'de> for SizeVisitor {
    type Value = Size;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a size ({SIZE_HINT})")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
        v.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|_| E::custom(format!("invalid size `{v}`; {SIZE_HINT}")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
        Ok(Size(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
        u64::try_from(v).map(Size).map_err(|_| {
            E::custom(format!(
                "invalid size `{v}`: a number of bytes must be 0 or more; {SIZE_HINT}"
            ))
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Size, E> {
        Err(E::custom(format!(
            "invalid size `{v}`: a number of bytes is a whole number; {SIZE_HINT}"
        )))
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
        let d: Dur = serde_json::from_str("30").unwrap();
        assert_eq!(d.0, Duration::from_secs(30));
    }

    #[test]
    fn errors_say_what_is_wrong_and_how_to_write_it() {
        let err = |json: &str| serde_json::from_str::<Dur>(json).unwrap_err().to_string();
        assert!(err("\"soon\"").starts_with("invalid duration `soon`; write e.g. 500ms"));
        assert!(err("\"5 parsecs\"")
            .starts_with("invalid duration `5 parsecs`: unknown unit `parsecs`;"));
        assert!(
            err("[\"60s\"]").starts_with("invalid type: sequence, expected a duration (write e.g.")
        );
        assert!(
            err("-5").starts_with("invalid duration `-5`: a number of seconds must be 0 or more")
        );
        let err = serde_json::from_str::<Size>("\"64 megs\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid size `64 megs`; write e.g. 64KiB"),
            "{err}"
        );
    }
}
