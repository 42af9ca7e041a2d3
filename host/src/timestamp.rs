//! Commit timestamps and watermarks as one exact type.
//!
//! Spanner timestamps have nanosecond precision; every position in the flow (a record's
//! commit time, a partition's watermark, `--start`/`--end`) is a [`Timestamp`], always in UTC,
//! printed as RFC 3339 with a `Z` suffix and only the fractional digits it needs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime, UtcOffset};

/// A point in time with nanosecond precision, in UTC.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

/// A string that is not an RFC 3339 timestamp.
#[derive(Debug, thiserror::Error)]
#[error("{input:?} is not an RFC 3339 timestamp (expected e.g. 2026-01-31T12:00:00Z)")]
pub struct TimestampParseError {
    input: String,
}

impl Timestamp {
    /// The current time of this machine's clock.
    pub fn now() -> Self {
        Self(OffsetDateTime::now_utc())
    }

    /// Nanoseconds since the Unix epoch.
    pub fn unix_nanos(self) -> i128 {
        self.0.unix_timestamp_nanos()
    }

    /// The timestamp `nanos` nanoseconds after the Unix epoch.
    pub fn from_unix_nanos(nanos: i128) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .map(Self)
    }

    /// This timestamp moved by `d` (saturating at the representable range).
    pub fn saturating_add(self, d: std::time::Duration) -> Self {
        Self(
            self.0
                .saturating_add(Duration::try_from(d).unwrap_or(Duration::MAX)),
        )
    }

    /// How long after `earlier` this is (zero when it is not later).
    pub fn duration_since(self, earlier: Timestamp) -> std::time::Duration {
        let nanos = (self.unix_nanos() - earlier.unix_nanos()).max(0);
        std::time::Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// This timestamp moved back by `d` (saturating at the representable range).
    pub fn saturating_sub(self, d: std::time::Duration) -> Self {
        Self(
            self.0
                .saturating_sub(Duration::try_from(d).unwrap_or(Duration::MAX)),
        )
    }
}

impl From<OffsetDateTime> for Timestamp {
    fn from(t: OffsetDateTime) -> Self {
        Self(t.to_offset(UtcOffset::UTC))
    }
}

impl From<Timestamp> for OffsetDateTime {
    fn from(t: Timestamp) -> Self {
        t.0
    }
}

impl From<Timestamp> for prost_types::Timestamp {
    fn from(t: Timestamp) -> Self {
        prost_types::Timestamp {
            seconds: t.0.unix_timestamp(),
            nanos: t.0.nanosecond() as i32,
        }
    }
}

impl FromStr for Timestamp {
    type Err = TimestampParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OffsetDateTime::parse(s.trim(), &Rfc3339)
            .map(Self::from)
            .map_err(|_| TimestampParseError {
                input: s.to_owned(),
            })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `time`'s RFC 3339 output prints "Z" for UTC and trims trailing fractional zeros,
        // like Go's RFC3339Nano, which is what the Go screamer emits.
        match self.0.format(&Rfc3339) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets_and_prints_utc_with_z() {
        let t: Timestamp = "2026-11-27T21:00:00.123456789+01:00".parse().unwrap();
        assert_eq!(t.to_string(), "2026-11-27T20:00:00.123456789Z");
        let t: Timestamp = "2026-11-27T20:00:00.500000+00:00".parse().unwrap();
        assert_eq!(t.to_string(), "2026-11-27T20:00:00.5Z");
        let t: Timestamp = "2026-11-27T20:00:00Z".parse().unwrap();
        assert_eq!(t.to_string(), "2026-11-27T20:00:00Z");
    }

    #[test]
    fn rejects_garbage_with_the_input_named() {
        let err = "yesterday".parse::<Timestamp>().unwrap_err();
        assert!(err.to_string().contains("\"yesterday\""), "{err}");
    }

    #[test]
    fn nanos_round_trip() {
        let t: Timestamp = "2026-11-27T20:00:00.000000001Z".parse().unwrap();
        assert_eq!(Timestamp::from_unix_nanos(t.unix_nanos()), Some(t));
        let p = prost_types::Timestamp::from(t);
        assert_eq!(p.nanos, 1);
    }
}
