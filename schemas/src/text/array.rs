//! One-dimensional array literals as `array_out` prints them: `{1,2,NULL}`, `{}`, `{"a \"q\" b","",NULL,"NULL"}`.
//! An element is quoted when it is empty, is `NULL` in any case, or holds `{`, `}`, `,`, `"`, `\` or white space;
//! inside quotes `"` and `\` are backslash-escaped. Multi-dimensional arrays and arrays with explicit bounds
//! (`[0:1]={…}`) are refused with a reason rather than flattened.

use crate::error::ParseError;
use crate::pg_type::PgType;
use crate::value::Value;

use super::parse_text;

/// Parses an array literal whose elements are of type `element`.
pub(super) fn parse_array(element: &PgType, text: &str) -> Result<Value, ParseError> {
    let fail = |reason: &str| ParseError::new(format!("{element}[]"), text, reason);
    if text.starts_with('[') {
        return Err(fail("arrays with explicit bounds are not supported"));
    }
    let inner = text
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .ok_or_else(|| fail("expected {…}"))?;
    let mut values = Vec::new();
    if inner.is_empty() {
        return Ok(Value::Array(values));
    }
    let bytes = inner.as_bytes();
    let mut i = 0;
    loop {
        let mut item = Vec::new();
        let quoted = bytes.get(i) == Some(&b'"');
        if quoted {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return Err(fail("unterminated quoted element")),
                    Some(b'"') => break,
                    Some(b'\\') => {
                        item.push(*bytes.get(i + 1).ok_or_else(|| fail("dangling backslash"))?);
                        i += 2;
                    }
                    Some(&b) => {
                        item.push(b);
                        i += 1;
                    }
                }
            }
            i += 1;
        } else {
            while let Some(&b) = bytes.get(i) {
                match b {
                    b',' => break,
                    b'{' => return Err(fail("multi-dimensional arrays are not supported")),
                    b'}' | b'"' => return Err(fail("unexpected character in an unquoted element")),
                    b'\\' => {
                        item.push(*bytes.get(i + 1).ok_or_else(|| fail("dangling backslash"))?);
                        i += 2;
                    }
                    _ => {
                        item.push(b);
                        i += 1;
                    }
                }
            }
        }
        // Bytes were split only at ASCII delimiters, so the element is still valid UTF-8.
        let item = String::from_utf8(item).map_err(|_| fail("element is not valid UTF-8"))?;
        if !quoted && item.is_empty() {
            return Err(fail("empty unquoted element"));
        }
        if !quoted && item.eq_ignore_ascii_case("NULL") {
            values.push(Value::Null);
        } else {
            values.push(parse_text(element, &item)?);
        }
        match bytes.get(i) {
            None => return Ok(Value::Array(values)),
            Some(b',') => i += 1,
            Some(_) => return Err(fail("expected , between elements")),
        }
    }
}
