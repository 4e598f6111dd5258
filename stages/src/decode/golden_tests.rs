//! Golden tests: real pgoutput bytes captured from PostgreSQL 15 (`stages/tests/fixtures/pgoutput/*.hex`) are
//! decoded and rendered one line per [`Decoded`] item, and compared with the checked-in `*.golden` text.
//! `UPDATE_GOLDEN=1 cargo test -p philotes-stages golden` rewrites the golden files; review their diff.

use std::fmt::Write as _;

use super::test_support::{fixture, fixture_dir, FixtureLine};
use super::*;
use crate::position::Lsn;

/// Decodes every line of a fixture with a fresh decoder (or one resuming after `checkpoint`).
fn decode(lines: &[FixtureLine], checkpoint: Option<Lsn>) -> Vec<Decoded> {
    let mut decoder = checkpoint.map_or_else(Decoder::new, Decoder::resume_after);
    let mut out = Vec::new();
    for line in lines {
        decoder
            .push_bytes(line.data.clone(), &mut out)
            .unwrap_or_else(|e| panic!("message at {} (xid {}): {e}", line.lsn, line.xid));
    }
    assert_eq!(decoder.open_transaction(), None, "the fixture ends inside a transaction");
    out
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` from µs since the Unix epoch (proleptic Gregorian, no dependency needed).
fn timestamp(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:06}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

fn value(bytes: &[u8], binary: bool) -> String {
    const SHOWN: usize = 24;
    let (shown, cut) = if binary {
        let head = &bytes[..bytes.len().min(SHOWN)];
        (format!("0x{}", head.iter().map(|b| format!("{b:02x}")).collect::<String>()), bytes.len() > SHOWN)
    } else {
        let text = String::from_utf8_lossy(bytes);
        let head: String = text.chars().take(SHOWN).collect();
        let cut = head.len() < text.len();
        (format!("{head:?}"), cut)
    };
    let kind = if binary { 'b' } else { 't' };
    if cut {
        format!("{kind}[{}]{shown}…", bytes.len())
    } else {
        format!("{kind}{shown}")
    }
}

fn tuple(data: &TupleData) -> String {
    let cols: Vec<String> = data
        .iter()
        .map(|c| match c {
            ColumnData::Null => "null".to_owned(),
            ColumnData::UnchangedToast => "unchanged-toast".to_owned(),
            ColumnData::Text(b) => value(b, false),
            ColumnData::Binary(b) => value(b, true),
        })
        .collect();
    format!("({})", cols.join(", "))
}

/// One readable line per item.
fn render(items: &[Decoded]) -> String {
    let mut s = String::new();
    for item in items {
        let line = match item {
            Decoded::Begin { commit_lsn, xid, commit_ts } => {
                format!("begin lsn={commit_lsn} xid={xid} ts={}", timestamp(*commit_ts))
            }
            Decoded::Origin { commit_lsn, origin_lsn, name } => {
                format!("  origin lsn={commit_lsn} name={name:?} origin_lsn={origin_lsn}")
            }
            Decoded::Relation(r) => {
                let cols: Vec<String> = r
                    .columns
                    .iter()
                    .map(|c| {
                        let key = if c.is_key { " key" } else { "" };
                        format!("{} oid={} typmod={}{key}", c.name, c.type_oid, c.type_modifier)
                    })
                    .collect();
                format!(
                    "  relation id={} {}.{} identity={} [{}]",
                    r.id,
                    r.namespace,
                    r.name,
                    r.replica_identity.as_str(),
                    cols.join("; ")
                )
            }
            Decoded::Type(t) => format!("  type id={} {}.{}", t.id, t.namespace, t.name),
            Decoded::Change(c) => {
                let mut line = format!(
                    "  change {} {} rel={} xid={} ts={}",
                    c.position(),
                    c.op.code(),
                    c.relation_id,
                    c.xid,
                    timestamp(c.commit_ts)
                );
                if let Some(old) = &c.old {
                    let kind = match old.kind {
                        OldKind::Key => "key",
                        OldKind::Full => "full",
                    };
                    let _ = write!(line, " old[{kind}]={}", tuple(&old.data));
                }
                if let Some(new) = &c.new {
                    let _ = write!(line, " new={}", tuple(new));
                }
                line
            }
            Decoded::Commit { commit_lsn, end_lsn, commit_ts } => {
                format!("commit lsn={commit_lsn} end={end_lsn} ts={}", timestamp(*commit_ts))
            }
            Decoded::Message { commit_lsn, message } => format!(
                "{}message in={} transactional={} lsn={} prefix={:?} content={}",
                if commit_lsn.is_some() { "  " } else { "" },
                commit_lsn.map_or("-".to_owned(), |l| l.to_string()),
                message.transactional,
                message.lsn,
                message.prefix,
                value(&message.content, false)
            ),
        };
        s.push_str(&line);
        s.push('\n');
    }
    s
}

fn check_golden(name: &str) {
    let lines = fixture(name);
    let rendered = render(&decode(&lines, None));
    let path = fixture_dir().join(format!("{name}.golden"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    if rendered != expected {
        let diff = rendered
            .lines()
            .zip(expected.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map_or("(length differs)".to_owned(), |(i, (a, b))| format!("line {}:\n got: {a}\nwant: {b}", i + 1));
        panic!("{} differs from the decoder's output; {diff}\n(UPDATE_GOLDEN=1 rewrites it)", path.display());
    }
}

#[test]
fn golden_text_mode_fixture_decodes_as_recorded() {
    check_golden("workload");
}

#[test]
fn golden_binary_mode_fixture_decodes_as_recorded() {
    check_golden("workload_binary");
}

#[test]
fn timestamps_render_as_utc() {
    assert_eq!(timestamp(0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(timestamp(super::pgoutput::PG_EPOCH_OFFSET_MICROS), "2000-01-01T00:00:00.000000Z");
    assert_eq!(timestamp(1_767_323_045_000_001), "2026-01-02T03:04:05.000001Z");
}

#[test]
fn the_fixture_covers_every_proto_1_message_kind() {
    let mut seen = std::collections::BTreeSet::new();
    for line in fixture("workload") {
        seen.insert(parse(line.data).unwrap().kind());
    }
    let all = ["Begin", "Commit", "Delete", "Insert", "Message", "Origin", "Relation", "Truncate", "Type", "Update"];
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), all);
}

#[test]
fn real_update_of_a_toasted_column_keeps_it_unchanged_not_null() {
    let items = decode(&fixture("workload"), None);
    let toasted: Vec<&ChangeEvent> = items
        .iter()
        .filter_map(|d| match d {
            Decoded::Change(c) if c.op == Op::Update => Some(c),
            _ => None,
        })
        .filter(|c| c.new.as_ref().is_some_and(|n| n.contains(&ColumnData::UnchangedToast)))
        .collect();
    assert!(toasted.len() >= 2, "expected unchanged TOAST under DEFAULT and FULL identity: {toasted:?}");
}

#[test]
fn real_stream_resumed_after_a_checkpoint_skips_delivered_transactions() {
    let lines = fixture("workload");
    let all = decode(&lines, None);
    let commits: Vec<Lsn> = all
        .iter()
        .filter_map(|d| match d {
            Decoded::Commit { commit_lsn, .. } => Some(*commit_lsn),
            _ => None,
        })
        .collect();
    let checkpoint = commits[2];
    let resumed = decode(&lines, Some(checkpoint));
    let relations = |items: &[Decoded]| items.iter().filter(|d| matches!(d, Decoded::Relation(_))).count();
    assert_eq!(relations(&resumed), relations(&all), "relations of skipped transactions still flow");
    let kept: Vec<&Decoded> = all
        .iter()
        .filter(|d| match d {
            Decoded::Begin { commit_lsn, .. } | Decoded::Commit { commit_lsn, .. } => *commit_lsn > checkpoint,
            Decoded::Change(c) => c.commit_lsn > checkpoint,
            _ => false,
        })
        .collect();
    let resumed_kept: Vec<&Decoded> = resumed
        .iter()
        .filter(|d| matches!(d, Decoded::Begin { .. } | Decoded::Commit { .. } | Decoded::Change(_)))
        .collect();
    assert_eq!(resumed_kept, kept);
    assert!(!kept.is_empty());
}

#[test]
fn peek_reports_a_commit_at_its_end_lsn() {
    // A fact of the SQL interface worth pinning: the `lsn` column of a Commit row is the Commit's end LSN.
    for line in fixture("workload") {
        if let PgOutputMessage::Commit { end_lsn, .. } = parse(line.data).unwrap() {
            assert_eq!(line.lsn, end_lsn);
        }
    }
}
