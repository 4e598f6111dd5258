//! A YAML node tree that remembers where every node and key was written.
//!
//! Serde stops at the first error and forgets positions; validation must report every problem with
//! its line and column. So the file is first read into this small tree (from `granit-parser`, the
//! event parser under `serde-saphyr`), then walked by `decode`. Aliases (`*name`) are refused, which
//! rules out alias bombs; anchors alone are harmless and ignored. Duplicate keys and extra documents
//! are reported. Nesting is bounded by the parser (255 levels).

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span};

use super::Report;

/// A 1-based line and column in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column (in characters), from 1.
    pub column: usize,
}

impl Pos {
    /// The start of the file, blamed for problems that have no better place.
    pub const START: Pos = Pos { line: 1, column: 1 };

    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

/// One node of the tree.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// What the node holds.
    pub value: Value,
    /// Where it starts.
    pub pos: Pos,
}

/// The content of a node. Scalars keep their raw text: `${…}` is expanded later, by the walker,
/// which knows the key path to name in an error.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// `~`, `null` or nothing at all (`key:` followed by a newline).
    Null,
    /// Any other scalar, quoted or not, as written.
    Scalar(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order.
    Map(Vec<Entry>),
}

impl Value {
    /// How the node is named in "expected …, found …" messages.
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "nothing".into(),
            Value::Scalar(text) => format!("{text:?}"),
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
        }
    }
}

/// One `key: value` of a mapping.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The key's text.
    pub key: String,
    /// Where the key is written: the place blamed for problems with its value.
    pub key_pos: Pos,
    /// The value.
    pub value: Node,
}

/// A collection being built.
enum Frame {
    Seq(Pos, Vec<Node>),
    Map(Pos, Vec<Entry>, Option<(String, Pos)>),
}

/// Reads `text` into a tree. Syntax errors are reported (parsing cannot go on after one) and give
/// `None`; an empty file gives a `Null` node.
pub(crate) fn parse_tree(text: &str, report: &mut Report) -> Option<Node> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    for event in Parser::new_from_str(text) {
        let (event, span) = match event {
            Ok(pair) => pair,
            Err(error) => {
                let marker = error.marker();
                let pos = Pos {
                    line: marker.line(),
                    column: marker.col() + 1,
                };
                report.push(pos, "", format!("YAML syntax error: {}", error.info()));
                return None;
            }
        };
        let pos = Pos::of(&span);
        let done = match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    report.push(
                        pos,
                        "",
                        "only one YAML document is allowed in a pipeline file",
                    );
                    break;
                }
                continue;
            }
            Event::SequenceStart(..) => {
                stack.push(Frame::Seq(pos, Vec::new()));
                continue;
            }
            Event::MappingStart(..) => {
                stack.push(Frame::Map(pos, Vec::new(), None));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(pos, items)) => Node {
                    value: Value::Seq(items),
                    pos,
                },
                Some(Frame::Map(pos, entries, _)) => Node {
                    value: Value::Map(entries),
                    pos,
                },
                None => continue,
            },
            Event::Scalar(text, style, ..) => Node {
                value: if style == ScalarStyle::Plain && is_null(&text) {
                    Value::Null
                } else {
                    Value::Scalar(text.into_owned())
                },
                pos,
            },
            Event::Alias(_) | Event::UnresolvedAlias(_) => {
                report.push(
                    pos,
                    "",
                    "YAML aliases (*name) are not allowed in pipeline files; write the value out",
                );
                Node {
                    value: Value::Null,
                    pos,
                }
            }
            _ => continue,
        };
        match stack.last_mut() {
            None => root = Some(done),
            Some(Frame::Seq(_, items)) => items.push(done),
            Some(Frame::Map(_, entries, pending)) => match pending.take() {
                None => {
                    let key = match done.value {
                        Value::Scalar(text) => text,
                        Value::Null => String::new(),
                        Value::Seq(_) | Value::Map(_) => {
                            report.push(done.pos, "", "mapping keys must be plain text");
                            String::new()
                        }
                    };
                    *pending = Some((key, done.pos));
                }
                Some((key, key_pos)) => {
                    if let Some(first) = entries.iter().find(|e| e.key == key) {
                        report.push(
                            key_pos,
                            "",
                            format!(
                                "duplicate key {key:?} (first written at line {})",
                                first.key_pos.line
                            ),
                        );
                    } else {
                        entries.push(Entry {
                            key,
                            key_pos,
                            value: done,
                        });
                    }
                }
            },
        }
    }
    Some(root.unwrap_or(Node {
        value: Value::Null,
        pos: Pos::START,
    }))
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> (Option<Node>, Report) {
        let mut report = Report::new("t.yaml");
        (parse_tree(text, &mut report), report)
    }

    #[test]
    fn keys_and_values_keep_their_line_and_column() {
        let (node, report) = tree("a:\n  b: 1\n  c: [x, y]\n");
        assert!(report.is_empty());
        let Value::Map(entries) = node.unwrap().value else {
            panic!("root is a mapping")
        };
        let Value::Map(inner) = &entries[0].value.value else {
            panic!("a is a mapping")
        };
        assert_eq!(inner[1].key, "c");
        assert_eq!(inner[1].key_pos, Pos { line: 3, column: 3 });
        let Value::Seq(items) = &inner[1].value.value else {
            panic!("c is a list")
        };
        assert_eq!(
            items[1].pos,
            Pos {
                line: 3,
                column: 10
            }
        );
    }

    #[test]
    fn aliases_are_refused_so_alias_bombs_cannot_expand() {
        let bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n";
        let (_, report) = tree(bomb);
        assert_eq!(report.problems().len(), 4);
        assert!(report.problems()[0].message.contains("aliases"));
    }

    #[test]
    fn duplicate_keys_and_second_documents_are_reported() {
        let (_, report) = tree("a: 1\na: 2\n---\nb: 1\n");
        let messages: Vec<_> = report.problems().iter().map(|p| &p.message).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].contains("duplicate key \"a\" (first written at line 1)"));
        assert!(messages[1].contains("one YAML document"));
    }

    #[test]
    fn syntax_errors_are_reported_with_their_position() {
        let (node, report) = tree("a: [1, 2\nb: 3\n");
        assert!(node.is_none());
        assert_eq!(report.problems().len(), 1);
        assert!(report.problems()[0]
            .message
            .starts_with("YAML syntax error"));
    }

    #[test]
    fn plain_null_words_are_null_but_quoted_ones_are_text() {
        let (node, _) = tree("a: ~\nb: 'null'\nc:\n");
        let Value::Map(entries) = node.unwrap().value else {
            panic!("root is a mapping")
        };
        assert!(matches!(entries[0].value.value, Value::Null));
        assert!(matches!(&entries[1].value.value, Value::Scalar(s) if s == "null"));
        assert!(matches!(entries[2].value.value, Value::Null));
    }
}
