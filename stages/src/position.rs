//! Log sequence numbers and positions: where an event sits in the source's history.
//!
//! One source transaction shares one commit LSN and may be split over several buffer segments, so a bare LSN
//! cannot say whether half of a transaction was written; a [`Position`] (`commit_lsn`, `seq`) can. Both types
//! order the way the WAL does, so watermarks and repair checks are plain comparisons (DESIGN.md, "Positions, not
//! bare LSNs").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A PostgreSQL write-ahead-log location (`pg_lsn`): a byte offset into the WAL, printed the Postgres way
/// (`16/B374D848`) so that log lines and `philotes status` can be pasted into SQL as they are.
///
/// Serialized as that string in human-readable formats (JSON, YAML) and as a plain `u64` in binary ones
/// (MessagePack segments), where the number is smaller and cheaper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid LSN `0/0`: Postgres uses it for "none", e.g. a slot that never confirmed anything.
    pub const ZERO: Lsn = Lsn(0);

    /// The LSN as the number Postgres stores (and as the Iceberg `_lsn` column holds it, as a long).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Self {
        Lsn(value)
    }
}

impl From<Lsn> for u64 {
    fn from(value: Lsn) -> Self {
        value.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a string is not an LSN; the text is kept so the message can show it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers of at most 8 digits separated by '/', e.g. 16/B374D848")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |part: &str| -> Result<u64, ParseLsnError> {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u64::from_str_radix(part, 16).map_err(|_| err())
        };
        Ok(Lsn((half(hi)? << 32) | half(lo)?))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Lsn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an LSN as \"16/B374D848\" or as an unsigned integer")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Lsn, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Lsn, E> {
                Ok(Lsn(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Lsn, E> {
                u64::try_from(v).map(Lsn).map_err(|_| E::custom(format!("negative LSN {v}")))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(Visitor)
        } else {
            deserializer.deserialize_u64(Visitor)
        }
    }
}

/// Where one change event sits: its transaction's commit LSN, then its order inside that transaction.
///
/// Watermarks, segment bounds and the Iceberg snapshot summary (`philotes.last-lsn` + `philotes.last-seq`) hold
/// positions, so "is this event already in the table?" is `event.position() <= watermark`, even when one
/// transaction was split over several segments or flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Position {
    /// The commit LSN of the source transaction the event belongs to: all events of one transaction share it,
    /// and transactions arrive in its order. Compared first (field order matters for the derived `Ord`).
    pub commit_lsn: Lsn,
    /// The 0-based order of the event within its transaction.
    pub seq: u64,
}

impl Position {
    /// A position from its parts.
    pub fn new(commit_lsn: Lsn, seq: u64) -> Self {
        Position { commit_lsn, seq }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.commit_lsn, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_prints_and_parses_the_postgres_way() {
        let lsn = Lsn(0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("16/B374D848".parse::<Lsn>(), Ok(lsn));
        assert_eq!("16/b374d848".parse::<Lsn>(), Ok(lsn));
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>(), Ok(Lsn(u64::MAX)));
    }

    #[test]
    fn malformed_lsn_strings_are_rejected() {
        for bad in ["", "/", "16", "16/", "/1", "1/2/3", "G/0", "123456789/0", "0/123456789", " 1/2", "+1/2"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn lsn_serializes_as_text_when_human_readable() {
        let lsn = Lsn(0x1_0000_00FF);
        let json = serde_json::to_string(&lsn).unwrap();
        assert_eq!(json, "\"1/FF\"");
        assert_eq!(serde_json::from_str::<Lsn>(&json).unwrap(), lsn);
        assert_eq!(serde_json::from_str::<Lsn>("4294967551").unwrap(), lsn);
        assert!(serde_json::from_str::<Lsn>("\"nope\"").is_err());
        let pos = Position::new(lsn, 7);
        let json = serde_json::to_string(&pos).unwrap();
        assert_eq!(json, r#"{"commit_lsn":"1/FF","seq":7}"#);
        assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), pos);
    }

    #[test]
    fn positions_order_by_lsn_then_seq() {
        let a = Position::new(Lsn(10), 5);
        let b = Position::new(Lsn(10), 6);
        let c = Position::new(Lsn(11), 0);
        assert!(a < b && b < c && a < c);
        assert_eq!(c.to_string(), "0/B#0");
    }
}
