//! [`Op`]: the kind of a row change, shared by every stage that carries one.

/// What kind of change an event is, from the WAL (Decode) to the changelog `_op` column (ArrowBatch); stored in
/// segments as its `_op` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "char", try_from = "char")]
pub enum Op {
    /// A new row (`new` is set).
    Insert,
    /// A changed row (`new` is set; `old` per replica identity).
    Update,
    /// A deleted row (`old` is set).
    Delete,
    /// The table was emptied (neither `old` nor `new`). CASCADE is already expanded by the server into one event
    /// per table; RESTART IDENTITY is dropped, since it changes no row.
    Truncate,
    /// A row read by a snapshot (`new` is set); never decoded from the WAL.
    Read,
}

impl Op {
    /// The code of the changelog `_op` column (DESIGN.md, "Iceberg tables").
    pub fn code(self) -> char {
        match self {
            Op::Insert => 'I',
            Op::Update => 'U',
            Op::Delete => 'D',
            Op::Truncate => 'T',
            Op::Read => 'r',
        }
    }

    /// [`Op::code`] as the `_op` column's string.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "I",
            Op::Update => "U",
            Op::Delete => "D",
            Op::Truncate => "T",
            Op::Read => "r",
        }
    }

    /// The operation of an `_op` code.
    pub fn from_code(code: char) -> Option<Op> {
        [Op::Insert, Op::Update, Op::Delete, Op::Truncate, Op::Read].into_iter().find(|op| op.code() == code)
    }
}

impl From<Op> for char {
    fn from(op: Op) -> char {
        op.code()
    }
}

impl TryFrom<char> for Op {
    type Error = String;

    fn try_from(code: char) -> Result<Op, String> {
        Op::from_code(code).ok_or_else(|| format!("unknown change kind {code:?}"))
    }
}

