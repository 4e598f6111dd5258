//! [`TableId`]: a source table by its schema and name, the one type every stage, store module and message uses
//! for it.

use std::fmt;

/// A source table: `schema.table`. A followed table keeps the name it was first seen with (its identity: a
/// rename does not change where its changes go), so this is the name in the buffer's tables as well.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    /// The schema (namespace) in the source database.
    pub schema: String,
    /// The table's name.
    pub table: String,
}

impl TableId {
    /// `schema.table`.
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> Self {
        Self { schema: schema.into(), table: table.into() }
    }
}

/// As SQL would need it written: each part quoted only when it is not a plain lower-case identifier
/// (`public.orders`, `"Sales"."Order Items"`), so a message names the table exactly.
impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", Ident(&self.schema), Ident(&self.table))
    }
}

struct Ident<'a>(&'a str);

impl fmt::Display for Ident<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = self.0.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && self.0.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if plain {
            f.write_str(self.0)
        } else {
            write!(f, "\"{}\"", self.0.replace('"', "\"\""))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TableId;

    #[test]
    fn names_are_quoted_only_when_sql_would_need_it() {
        assert_eq!(TableId::new("public", "orders").to_string(), "public.orders");
        assert_eq!(TableId::new("Sales", "order items").to_string(), "\"Sales\".\"order items\"");
        assert_eq!(TableId::new("s", "a\"b").to_string(), "s.\"a\"\"b\"");
        assert_eq!(TableId::new("s", "1t").to_string(), "s.\"1t\"");
    }
}
