//! Helpers for the decoder's unit tests: a builder for pgoutput messages and the loader of the checked-in
//! fixtures of real server output.

use std::path::PathBuf;

use bytes::Bytes;

use crate::position::Lsn;

/// Builds one pgoutput message byte by byte, in the wire format (big-endian, NUL-terminated strings).
#[derive(Debug, Default, Clone)]
pub(crate) struct Msg(Vec<u8>);

impl Msg {
    pub(crate) fn new(tag: u8) -> Self {
        Msg(vec![tag])
    }
    pub(crate) fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub(crate) fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn str(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    pub(crate) fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// A text column value: `t`, length, bytes.
    pub(crate) fn text(self, s: &str) -> Self {
        let len = i32::try_from(s.len()).unwrap();
        self.u8(b't').i32(len).raw(s.as_bytes())
    }
    pub(crate) fn build(self) -> Bytes {
        Bytes::from(self.0)
    }
}

/// One line of a fixture: what `pg_logical_slot_peek_binary_changes` returned for one message.
#[derive(Debug, Clone)]
pub(crate) struct FixtureLine {
    /// The `lsn` column of the peek.
    pub(crate) lsn: Lsn,
    /// The `xid` column of the peek (0 for a non-transactional message).
    pub(crate) xid: u32,
    /// The pgoutput message.
    pub(crate) data: Bytes,
}

/// The fixture directory, `stages/tests/fixtures/pgoutput`.
pub(crate) fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pgoutput")
}

/// Loads `NAME.hex`: `lsn xid hex` per line, `#` comments.
pub(crate) fn fixture(name: &str) -> Vec<FixtureLine> {
    let path = fixture_dir().join(format!("{name}.hex"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|line| {
            let mut parts = line.split(' ');
            let (Some(lsn), Some(xid), Some(hex), None) = (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                panic!("{}: bad line {line:?}", path.display())
            };
            FixtureLine { lsn: lsn.parse().unwrap(), xid: xid.parse().unwrap(), data: Bytes::from(unhex(hex)) }
        })
        .collect()
}

fn unhex(hex: &str) -> Vec<u8> {
    let pairs = hex.as_bytes().chunks_exact(2);
    assert!(pairs.remainder().is_empty(), "odd hex length");
    pairs.map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap()).collect()
}
