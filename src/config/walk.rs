//! Typed reads from the positioned YAML tree that record a problem instead of stopping.
//!
//! Every read returns `Option`: `None` means "absent" or "wrong, and already reported", so the
//! decoder can go on and find the next problem. Problems about a key's value point at the key
//! (where its path is written); problems about list items point at the item.

use std::time::Duration;

use super::interpolate::interpolate;
use super::model::Keyword;
use super::units::{parse_bytes, parse_duration};
use super::yaml::{Entry, Node, Pos, Value};
use super::Report;

/// A value found in the file, with the position to blame and its key path.
#[derive(Debug, Clone)]
pub(crate) struct Field<'n> {
    /// The value.
    pub node: &'n Node,
    /// Its key's position (or the item's, in a list).
    pub pos: Pos,
    /// Dotted key path.
    pub path: String,
}

/// A mapping whose keys have been checked against the known ones.
#[derive(Debug, Clone)]
pub(crate) struct Section<'n> {
    /// Dotted key path of the mapping ("" for the root).
    pub path: String,
    /// Where the mapping's key is written: blamed for missing keys.
    pub pos: Pos,
    entries: &'n [Entry],
}

impl<'n> Section<'n> {
    /// The value of `key`, unless absent or null.
    pub fn field(&self, key: &str) -> Option<Field<'n>> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .filter(|e| !matches!(e.value.value, Value::Null))
            .map(|e| Field {
                node: &e.value,
                pos: e.key_pos,
                path: join(&self.path, key),
            })
    }

    /// Every entry, for mappings whose keys are data (table names, stage names).
    pub fn entries(&self) -> impl Iterator<Item = (&'n str, Field<'n>)> + '_ {
        self.entries.iter().map(|e| {
            (
                e.key.as_str(),
                Field {
                    node: &e.value,
                    pos: e.key_pos,
                    path: join(&self.path, &e.key),
                },
            )
        })
    }
}

/// `a.b` + `c` → `a.b.c`; keys with dots (table names) are bracketed: `tables[public.t]`.
pub(crate) fn join(parent: &str, key: &str) -> String {
    match (parent.is_empty(), key.contains('.')) {
        (_, true) => format!("{parent}[{key}]"),
        (true, false) => key.to_owned(),
        (false, false) => format!("{parent}.{key}"),
    }
}

/// Reads typed values out of the tree, recording problems in the report.
pub(crate) struct Walker<'r, 'e> {
    report: &'r mut Report,
    env: &'e dyn Fn(&str) -> Option<String>,
}

impl<'r, 'e> Walker<'r, 'e> {
    pub(crate) fn new(report: &'r mut Report, env: &'e dyn Fn(&str) -> Option<String>) -> Self {
        Self { report, env }
    }

    /// Records a problem.
    pub fn problem(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.report.push(pos, path, message);
    }

    /// Records `result`'s error at `field`.
    pub fn check<T>(&mut self, field: &Field<'_>, result: Result<T, String>) -> Option<T> {
        result
            .map_err(|message| self.problem(field.pos, &field.path, message))
            .ok()
    }

    /// The root mapping of the file.
    pub fn root<'n>(&mut self, node: &'n Node, known: &[&str]) -> Section<'n> {
        let field = Field {
            node,
            pos: Pos::START,
            path: String::new(),
        };
        self.open(&field, known)
    }

    /// The mapping at `parent.key`; empty when absent or null.
    pub fn section<'n>(&mut self, parent: &Section<'n>, key: &str, known: &[&str]) -> Section<'n> {
        match parent.field(key) {
            Some(field) => self.open(&field, known),
            None => Section {
                path: join(&parent.path, key),
                pos: parent.pos,
                entries: &[],
            },
        }
    }

    /// Opens `field` as a mapping, reporting unknown keys (an empty `known` accepts any key).
    pub fn open<'n>(&mut self, field: &Field<'n>, known: &[&str]) -> Section<'n> {
        let entries: &'n [Entry] = match &field.node.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            other => {
                let found = other.describe();
                self.problem(
                    field.pos,
                    &field.path,
                    format!("expected a mapping, found {found}"),
                );
                &[]
            }
        };
        if !known.is_empty() {
            for entry in entries.iter().filter(|e| !known.contains(&e.key.as_str())) {
                let hint = match closest(&entry.key, known) {
                    Some(near) => format!("did you mean {near:?}?"),
                    None => format!("known keys: {}", known.join(", ")),
                };
                self.problem(
                    entry.key_pos,
                    &join(&field.path, &entry.key),
                    format!("unknown key {:?} ({hint})", entry.key),
                );
            }
        }
        Section {
            path: field.path.clone(),
            pos: field.pos,
            entries,
        }
    }

    /// `section.key`, reporting it missing when absent or null.
    pub fn required<'n>(&mut self, section: &Section<'n>, key: &str) -> Option<Field<'n>> {
        let field = section.field(key);
        if field.is_none() {
            self.problem(
                section.pos,
                &join(&section.path, key),
                "missing required key",
            );
        }
        field
    }

    /// A scalar's text with `${…}` expanded.
    pub fn text(&mut self, field: &Field<'_>) -> Option<String> {
        match &field.node.value {
            Value::Scalar(raw) => {
                let expanded = interpolate(raw, self.env).map_err(|e| e.to_string());
                self.check(field, expanded)
            }
            other => {
                let found = other.describe();
                self.problem(
                    field.pos,
                    &field.path,
                    format!("expected a text value, found {found}"),
                );
                None
            }
        }
    }

    /// A non-empty text value, trimmed.
    pub fn word(&mut self, field: &Field<'_>) -> Option<String> {
        let text = self.text(field)?;
        let trimmed = text.trim();
        let result = if trimmed.is_empty() {
            Err("must not be empty".to_owned())
        } else {
            Ok(trimmed.to_owned())
        };
        self.check(field, result)
    }

    /// `section.key` as trimmed text, with its field; `None` when absent or empty after `${…}`
    /// expansion, so `key: ${VAR:-}` means "not set".
    pub fn optional<'n>(
        &mut self,
        section: &Section<'n>,
        key: &str,
    ) -> Option<(Field<'n>, String)> {
        let field = section.field(key)?;
        let text = self.text(&field)?;
        let trimmed = text.trim();
        (!trimmed.is_empty()).then(|| (field, trimmed.to_owned()))
    }

    /// `section.key` as text, `None` when absent or empty.
    pub fn opt_word(&mut self, section: &Section<'_>, key: &str) -> Option<String> {
        self.optional(section, key).map(|(_, text)| text)
    }

    /// `section.key` as text passing `check`; `None` when absent, empty or invalid (reported).
    pub fn opt_checked(
        &mut self,
        section: &Section<'_>,
        key: &str,
        check: fn(&str) -> Result<(), String>,
    ) -> Option<String> {
        let (field, text) = self.optional(section, key)?;
        let checked = check(&text).map(|()| text);
        self.check(&field, checked)
    }

    /// A whole number ≥ `min` (`_` separators allowed).
    pub fn integer(&mut self, field: &Field<'_>, min: u64) -> Option<u64> {
        let text = self.text(field)?;
        let digits: String = text.trim().chars().filter(|c| *c != '_').collect();
        let result = match digits.parse::<u64>() {
            Ok(n) if n >= min => Ok(n),
            Ok(n) => Err(format!("must be at least {min}, found {n}")),
            Err(_) => Err(format!("expected a whole number, found {text:?}")),
        };
        self.check(field, result)
    }

    /// `section.key` as a count ≥ 1; `None` when absent or invalid (reported).
    pub fn opt_count(&mut self, section: &Section<'_>, key: &str) -> Option<usize> {
        section.field(key).and_then(|f| {
            let n = self.integer(&f, 1)?;
            let result = usize::try_from(n).map_err(|_| format!("{n} is too large"));
            self.check(&f, result)
        })
    }

    /// `section.key` as a whole number ≥ 1, or `default`.
    pub fn number(&mut self, section: &Section<'_>, key: &str, default: u64) -> u64 {
        section
            .field(key)
            .and_then(|f| self.integer(&f, 1))
            .unwrap_or(default)
    }

    /// `section.key` as a positive duration (`200ms`, `1s`), or `default`.
    pub fn duration(&mut self, section: &Section<'_>, key: &str, default: Duration) -> Duration {
        section
            .field(key)
            .and_then(|f| {
                let text = self.text(&f)?;
                let result = parse_duration(&text).and_then(|d| {
                    if d.is_zero() {
                        Err("must be longer than 0".to_owned())
                    } else {
                        Ok(d)
                    }
                });
                self.check(&f, result)
            })
            .unwrap_or(default)
    }

    /// `section.key` as a positive byte size (`8MiB`, `4096`), or `default`.
    pub fn bytes(&mut self, section: &Section<'_>, key: &str, default: u64) -> u64 {
        section
            .field(key)
            .and_then(|f| {
                let text = self.text(&f)?;
                let result = parse_bytes(&text).and_then(|n| {
                    if n == 0 {
                        Err("must be larger than 0".to_owned())
                    } else {
                        Ok(n)
                    }
                });
                self.check(&f, result)
            })
            .unwrap_or(default)
    }

    /// `section.key` as `true`/`false`, or `default`.
    pub fn boolean(&mut self, section: &Section<'_>, key: &str, default: bool) -> bool {
        section
            .field(key)
            .and_then(|f| {
                let text = self.text(&f)?;
                let result = match text.trim() {
                    "true" | "True" | "TRUE" => Ok(true),
                    "false" | "False" | "FALSE" => Ok(false),
                    _ => Err(format!("expected true or false, found {text:?}")),
                };
                self.check(&f, result)
            })
            .unwrap_or(default)
    }

    /// A keyword of `T` (`changelog`, `mirror`, …).
    pub fn keyword<T: Keyword>(&mut self, field: &Field<'_>) -> Option<T> {
        let text = self.text(field)?;
        let found = T::ALL.iter().copied().find(|k| k.keyword() == text.trim());
        let result = found.ok_or_else(|| {
            let names: Vec<&str> = T::ALL.iter().map(|k| k.keyword()).collect();
            format!("expected one of {}, found {text:?}", names.join(", "))
        });
        self.check(field, result)
    }

    /// `section.key` as a keyword of `T`, or `default`.
    pub fn opt_keyword<T: Keyword>(&mut self, section: &Section<'_>, key: &str, default: T) -> T {
        section
            .field(key)
            .and_then(|f| self.keyword(&f))
            .unwrap_or(default)
    }

    /// A list's items (a single scalar counts as a one-item list).
    pub fn list<'n>(&mut self, field: &Field<'n>) -> Vec<Field<'n>> {
        match &field.node.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, node)| Field {
                    node,
                    pos: node.pos,
                    path: format!("{}[{i}]", field.path),
                })
                .collect(),
            Value::Scalar(_) => vec![field.clone()],
            other => {
                let found = other.describe();
                self.problem(
                    field.pos,
                    &field.path,
                    format!("expected a list, found {found}"),
                );
                Vec::new()
            }
        }
    }
}

/// The known key nearest to a misspelt one, when it is near enough to be a typo.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_keys_get_the_nearest_known_key_suggested() {
        assert_eq!(closest("slto", &["url", "slot", "tables"]), Some("slot"));
        assert_eq!(
            closest("publicaton", &["publication", "slot"]),
            Some("publication")
        );
        assert_eq!(closest("zzzzzz", &["url", "slot"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn key_paths_bracket_keys_that_contain_dots() {
        assert_eq!(join("", "sink"), "sink");
        assert_eq!(join("sink.iceberg", "mode"), "sink.iceberg.mode");
        assert_eq!(
            join("sink.iceberg.tables", "public.t"),
            "sink.iceberg.tables[public.t]"
        );
    }
}
