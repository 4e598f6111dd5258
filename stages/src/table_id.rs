//! [`TableId`]: a source table by its schema and name, the one type the pipeline file, every stage, store module
//! and message uses for it.
//!
//! Written as the pipeline file writes it: `schema.table`, where a part may be an SQL-style quoted identifier
//! (`"my schema"."t.dot"`, `public."T"`, `""` inside quotes for a literal quote), so a table whose name holds a
//! dot, a quote or a space can be listed at all. Unquoted parts are taken exactly as written (no lowercasing, no
//! trimming): pipeline files written before quoting existed keep their meaning. [`TableId`]'s `Display` is the
//! inverse: it quotes a part only when reading it back unquoted would give something else, so ordinary names
//! print as they always did and what philotes prints can be pasted into the file or `--table`.

use std::borrow::Cow;
use std::fmt;

/// A source table: `schema.table`. A followed table keeps the name it was first seen with (its identity: a
/// rename does not change where its changes go), so this is the name in the buffer's tables as well.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    /// The schema (`public` when the file wrote an unqualified name).
    pub schema: String,
    /// The table's name.
    pub name: String,
}

impl TableId {
    /// `schema.name`.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self { schema: schema.into(), name: name.into() }
    }

    /// Parses `schema.table` or `table` (meaning `public.table`); see the module doc for quoting.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts = split(text)?;
        let (schema, name) = match parts.as_slice() {
            [name] => ("public", name.as_str()),
            [schema, name] => (schema.as_str(), name.as_str()),
            _ => {
                return Err(format!(
                    "expected schema.table, found {text:?} (quote a name that holds a dot: \"t.dot\")"
                ))
            }
        };
        if schema.trim().is_empty() || name.trim().is_empty() {
            return Err(format!("expected schema.table, found {text:?}"));
        }
        Ok(Self::new(schema, name))
    }
}

/// `schema.table`, each part quoted only when it must be to read back as itself (`public."t.dot"`).
impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", quoted(&self.schema), quoted(&self.name))
    }
}

/// Splits `text` at the dots outside quotes and unquotes each part.
///
/// Errors name what is wrong: an unbalanced quote, an empty quoted part, text glued to a quoted part, a quote
/// in the middle of an unquoted part.
fn split(text: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut part = String::new();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => {
                        return Err(format!(
                            "unbalanced quote in {text:?}: a quoted name needs its closing \" (write \"\" for a quote inside it)"
                        ))
                    }
                }
            }
            if part.is_empty() {
                return Err(format!("empty quoted name \"\" in {text:?}"));
            }
            parts.push(part);
            match chars.next() {
                None => return Ok(parts),
                Some('.') => continue,
                Some(c) => {
                    return Err(format!(
                        "unexpected {c:?} after a closing quote in {text:?} (expected . or the end)"
                    ))
                }
            }
        }
        let mut part = String::new();
        loop {
            match chars.next() {
                None => {
                    parts.push(part);
                    return Ok(parts);
                }
                Some('.') => break,
                Some('"') => {
                    return Err(format!(
                        "unexpected quote inside {text:?}: quote a whole name, as in \"{part}…\""
                    ))
                }
                Some(c) => part.push(c),
            }
        }
        parts.push(part);
    }
}

/// `part` as it must be written to read back as itself: quoted (with `"` doubled) when it holds a `.` or a
/// `"`, is blank, or starts or ends with whitespace (the file's values are trimmed); as it is otherwise.
fn quoted(part: &str) -> Cow<'_, str> {
    let needs_quotes = part.trim().is_empty()
        || part.contains(['.', '"'])
        || part.starts_with(char::is_whitespace)
        || part.ends_with(char::is_whitespace);
    if needs_quotes {
        Cow::Owned(format!("\"{}\"", part.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<String> {
        split(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn unquoted_parts_are_taken_exactly_as_written() {
        assert_eq!(ok("public.orders"), ["public", "orders"]);
        assert_eq!(ok("Sales.Orders"), ["Sales", "Orders"]);
        assert_eq!(ok("orders"), ["orders"]);
        assert_eq!(ok("a.b.c"), ["a", "b", "c"]);
        assert_eq!(ok("a."), ["a", ""]);
    }

    #[test]
    fn quoted_parts_keep_dots_spaces_case_and_doubled_quotes() {
        assert_eq!(ok(r#""public"."t.dot""#), ["public", "t.dot"]);
        assert_eq!(ok(r#""my schema"."t.dot""#), ["my schema", "t.dot"]);
        assert_eq!(ok(r#"public."T""#), ["public", "T"]);
        assert_eq!(ok(r#""a""b".c"#), ["a\"b", "c"]);
        assert_eq!(ok("\"\"\"\"\"\""), ["\"\""]);
    }

    #[test]
    fn malformed_quoting_is_refused_with_the_reason() {
        assert!(split(r#""public.t"#)
            .unwrap_err()
            .contains("unbalanced quote"));
        assert!(split(r#"public."t"#)
            .unwrap_err()
            .contains("unbalanced quote"));
        assert!(split(r#"public."t"x"#)
            .unwrap_err()
            .contains("after a closing quote"));
        assert!(split(r#"pub"lic".t"#)
            .unwrap_err()
            .contains("unexpected quote"));
        assert!(split(r#""".t"#).unwrap_err().contains("empty quoted name"));
    }

    #[test]
    fn only_parts_that_need_it_are_quoted_and_quoting_round_trips() {
        for plain in ["orders", "Orders", "my_table$1", "ünïcode"] {
            assert_eq!(quoted(plain), plain);
        }
        for part in ["t.dot", "a\"b", " lead", "trail ", " ", "my schema"] {
            let shown = quoted(part);
            assert_eq!(ok(&format!("{shown}.x"))[0], part, "{shown}");
        }
        assert_eq!(quoted("t.dot"), "\"t.dot\"");
        assert_eq!(quoted("a\"b"), "\"a\"\"b\"");
        assert_eq!(quoted("my schema"), "my schema");
    }
}
