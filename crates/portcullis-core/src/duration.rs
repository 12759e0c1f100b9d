//! Durations in configuration: `250ms`, `30s`, `5m`, `12h`, `7d`, or a bare number of seconds.
//!
//! Use with serde as `#[serde(with = "portcullis_core::duration")]`.
//!
//! ```
//! use std::time::Duration;
//! use portcullis_core::duration;
//!
//! assert_eq!(duration::parse("90s")?, Duration::from_secs(90));
//! assert_eq!(duration::parse("1.5h").is_err(), true); // whole numbers only
//! assert_eq!(duration::format(Duration::from_secs(300)), "5m");
//! # Ok::<(), portcullis_core::ValueError>(())
//! ```

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

use crate::error::ValueError;

/// Parses a duration: digits followed by `ms`, `s`, `m`, `h` or `d` (or nothing, meaning
/// seconds).
///
/// # Errors
///
/// If the text is not of that form or overflows.
pub fn parse(text: &str) -> Result<Duration, ValueError> {
    let err = || {
        ValueError::new(
            "duration",
            "expected a whole number followed by ms, s, m, h or d (e.g. `30s`, `5m`)",
        )
    };
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(err());
    }
    let n: u64 = digits.parse().map_err(|_| err())?;
    let secs_per = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(err()),
    };
    n.checked_mul(secs_per)
        .map(Duration::from_secs)
        .ok_or_else(err)
}

/// Formats a duration in the largest unit that represents it exactly.
pub fn format(d: Duration) -> String {
    if d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    let s = d.as_secs();
    for (unit, per) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if s != 0 && s.is_multiple_of(per) {
            return format!("{}{unit}", s / per);
        }
    }
    format!("{s}s")
}

/// Serializes with [`format()`].
///
/// # Errors
///
/// Those of the serializer.
pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*d))
}

/// Deserializes a string with [`parse`], or an integer number of seconds.
///
/// # Errors
///
/// If the value is neither.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<'a> {
        Secs(u64),
        #[serde(borrow)]
        Text(std::borrow::Cow<'a, str>),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        for (text, want) in [
            ("0", 0),
            ("45", 45),
            ("30s", 30),
            ("5m", 300),
            ("2h", 7200),
            ("7d", 604_800),
            (" 10s ", 10),
        ] {
            assert_eq!(parse(text).unwrap(), Duration::from_secs(want), "{text}");
        }
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        for bad in [
            "",
            "s",
            "1.5s",
            "-1s",
            "10x",
            "10 s",
            "5M",
            "99999999999999999999d",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for d in [0, 1, 59, 60, 61, 3600, 86_400, 90_000] {
            let d = Duration::from_secs(d);
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn serde_accepts_strings_and_integers() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct C {
            #[serde(with = "super")]
            ttl: Duration,
        }
        let c: C = serde_json::from_str(r#"{"ttl": "5m"}"#).unwrap();
        assert_eq!(c.ttl, Duration::from_secs(300));
        let c: C = serde_json::from_str(r#"{"ttl": 42}"#).unwrap();
        assert_eq!(c.ttl, Duration::from_secs(42));
        assert!(serde_json::from_str::<C>(r#"{"ttl": "soon"}"#).is_err());
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"ttl":"42s"}"#);
    }
}
