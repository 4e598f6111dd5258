//! Unit tests of the transaction assembler: tagging and seq numbering, the invariants it enforces, skipping of
//! already-delivered transactions, and streaming a 1M-change transaction in constant memory.

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::decode::pgoutput::{ColumnData, OldKind, ReplicaIdentity};

const TS: i64 = 1_700_000_000_000_000;

fn begin(lsn: u64, xid: u32) -> PgOutputMessage {
    PgOutputMessage::Begin { final_lsn: Lsn(lsn), commit_ts: TS, xid }
}

fn commit(lsn: u64) -> PgOutputMessage {
    PgOutputMessage::Commit { flags: 0, commit_lsn: Lsn(lsn), end_lsn: Lsn(lsn + 0x30), commit_ts: TS }
}

fn text(s: &str) -> ColumnData {
    ColumnData::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn insert(relation_id: u32, v: &str) -> PgOutputMessage {
    PgOutputMessage::Insert { relation_id, new: vec![text(v)] }
}

fn relation(id: u32) -> PgOutputMessage {
    PgOutputMessage::Relation(Relation {
        id,
        namespace: "public".into(),
        name: format!("t{id}"),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![],
    })
}

fn run(decoder: &mut Decoder, messages: impl IntoIterator<Item = PgOutputMessage>) -> Vec<Decoded> {
    let mut out = Vec::new();
    for m in messages {
        decoder.push(m, &mut out).unwrap_or_else(|e| panic!("{e}"));
    }
    out
}

fn changes(out: &[Decoded]) -> Vec<&ChangeEvent> {
    out.iter()
        .filter_map(|d| match d {
            Decoded::Change(c) => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn changes_are_tagged_with_the_begin_and_numbered_in_order() {
    let mut d = Decoder::new();
    let out = run(
        &mut d,
        [
            begin(0x100, 7),
            relation(1),
            insert(1, "a"),
            PgOutputMessage::Update { relation_id: 1, old: None, new: vec![text("b")] },
            PgOutputMessage::Delete { relation_id: 1, old: OldTuple { kind: OldKind::Key, data: vec![text("b")] } },
            commit(0x100),
            begin(0x200, 8),
            insert(1, "c"),
            commit(0x200),
        ],
    );
    assert_eq!(out[0], Decoded::Begin { commit_lsn: Lsn(0x100), xid: 7, commit_ts: TS });
    assert!(matches!(out[1], Decoded::Relation(_)));
    let c = changes(&out);
    let summary: Vec<_> = c.iter().map(|c| (c.commit_lsn.0, c.xid, c.seq, c.op)).collect();
    assert_eq!(
        summary,
        vec![
            (0x100, 7, 0, Op::Insert),
            (0x100, 7, 1, Op::Update),
            (0x100, 7, 2, Op::Delete),
            (0x200, 8, 0, Op::Insert)
        ]
    );
    assert!(c.iter().all(|c| c.commit_ts == TS && c.relation_id == 1));
    assert_eq!(c[1].position(), Position::new(Lsn(0x100), 1));
    assert_eq!(out[5], Decoded::Commit { commit_lsn: Lsn(0x100), end_lsn: Lsn(0x130), commit_ts: TS });
    assert_eq!(d.open_transaction(), None);
    assert_eq!(d.watermark(), Some(Lsn(0x200)));
    assert_eq!(Op::Truncate.code(), 'T');
}

#[test]
fn a_truncate_of_two_tables_yields_one_event_per_table() {
    let mut d = Decoder::new();
    let out = run(
        &mut d,
        [
            begin(0x100, 7),
            insert(1, "a"),
            PgOutputMessage::Truncate { cascade: true, restart_identity: false, relation_ids: vec![1, 2] },
            commit(0x100),
        ],
    );
    let c = changes(&out);
    assert_eq!(c.len(), 3);
    assert_eq!((c[1].relation_id, c[1].op, c[1].seq), (1, Op::Truncate, 1));
    assert_eq!((c[2].relation_id, c[2].op, c[2].seq), (2, Op::Truncate, 2));
    assert!(c[1].old.is_none() && c[1].new.is_none());
}

#[test]
fn unchanged_toast_and_old_tuple_kinds_pass_through_untouched() {
    let mut d = Decoder::new();
    let key = OldTuple { kind: OldKind::Key, data: vec![text("1"), ColumnData::Null] };
    let full = OldTuple { kind: OldKind::Full, data: vec![text("1"), ColumnData::UnchangedToast] };
    let out = run(
        &mut d,
        [
            begin(0x100, 7),
            PgOutputMessage::Update {
                relation_id: 1,
                old: Some(key.clone()),
                new: vec![text("2"), ColumnData::UnchangedToast],
            },
            PgOutputMessage::Delete { relation_id: 2, old: full.clone() },
            commit(0x100),
        ],
    );
    let c = changes(&out);
    assert_eq!(c[0].old.as_ref(), Some(&key));
    assert_eq!(c[0].new.as_ref().unwrap()[1], ColumnData::UnchangedToast);
    assert_eq!(c[1].old.as_ref(), Some(&full));
}

#[test]
fn messages_that_need_a_transaction_are_errors_outside_one() {
    let tx_message = PgOutputMessage::Message(LogicalMessage {
        transactional: true,
        lsn: Lsn(5),
        prefix: "p".into(),
        content: Bytes::new(),
    });
    let cases = [
        (insert(1, "a"), "Insert"),
        (PgOutputMessage::Update { relation_id: 1, old: None, new: vec![] }, "Update"),
        (PgOutputMessage::Delete { relation_id: 1, old: OldTuple { kind: OldKind::Key, data: vec![] } }, "Delete"),
        (PgOutputMessage::Truncate { cascade: false, restart_identity: false, relation_ids: vec![1] }, "Truncate"),
        (PgOutputMessage::Origin { commit_lsn: Lsn(1), name: "o".into() }, "Origin"),
        (commit(0x100), "Commit"),
        (tx_message, "Message"),
    ];
    for (message, kind) in cases {
        let mut out = Vec::new();
        let err = Decoder::new().push(message, &mut out).unwrap_err();
        assert_eq!(err, DecodeError::OutsideTransaction { message: kind });
        assert!(out.is_empty());
    }
}

#[test]
fn a_nested_begin_is_an_error_and_leaves_the_open_transaction_alone() {
    let mut d = Decoder::new();
    run(&mut d, [begin(0x100, 7), insert(1, "a")]);
    let mut out = Vec::new();
    let err = d.push(begin(0x200, 8), &mut out).unwrap_err();
    assert_eq!(err, DecodeError::NestedBegin { open_xid: 7, open_lsn: Lsn(0x100), new_xid: 8, new_lsn: Lsn(0x200) });
    assert_eq!(
        err.to_string(),
        "Begin of transaction 8 (commit LSN 0/200) while transaction 7 (commit LSN 0/100) is still open"
    );
    assert_eq!(d.open_transaction(), Some(Lsn(0x100)));
    let out = run(&mut d, [insert(1, "b"), commit(0x100)]);
    assert_eq!(changes(&out)[0].seq, 1, "the failed push did not disturb the numbering");
}

#[test]
fn a_commit_that_differs_from_its_begin_is_an_error() {
    let mut d = Decoder::new();
    run(&mut d, [begin(0x100, 7)]);
    let mut out = Vec::new();
    let err = d.push(commit(0x101), &mut out).unwrap_err();
    assert_eq!(err.to_string(), "Commit of transaction 7 has commit LSN 0/101, but its Begin announced 0/100");
    let late = PgOutputMessage::Commit { flags: 0, commit_lsn: Lsn(0x100), end_lsn: Lsn(0x130), commit_ts: TS + 1 };
    assert!(matches!(d.push(late, &mut out), Err(DecodeError::CommitMismatch { what: "commit timestamp", .. })));
    assert_eq!(d.open_transaction(), Some(Lsn(0x100)));
    assert!(out.is_empty());
}

#[test]
fn transactions_at_or_below_the_checkpoint_are_dropped_whole_but_relations_still_flow() {
    let mut d = Decoder::resume_after(Lsn(0x200));
    let out = run(
        &mut d,
        [
            begin(0x100, 7),
            relation(1),
            PgOutputMessage::Origin { commit_lsn: Lsn(1), name: "o".into() },
            insert(1, "old"),
            commit(0x100),
            begin(0x200, 8),
            PgOutputMessage::Type(CustomType { id: 9, namespace: "public".into(), name: "mood".into() }),
            relation(2),
            insert(2, "at the checkpoint"),
            PgOutputMessage::Truncate { cascade: false, restart_identity: false, relation_ids: vec![1, 2] },
            commit(0x200),
            begin(0x201, 9),
            insert(1, "new"),
            commit(0x201),
        ],
    );
    let kinds: Vec<_> = out
        .iter()
        .map(|d| match d {
            Decoded::Begin { commit_lsn, .. } => format!("begin {commit_lsn}"),
            Decoded::Relation(r) => format!("relation {}", r.id),
            Decoded::Type(t) => format!("type {}", t.id),
            Decoded::Change(c) => format!("change {}", c.position()),
            Decoded::Commit { commit_lsn, .. } => format!("commit {commit_lsn}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["relation 1", "type 9", "relation 2", "begin 0/201", "change 0/201#0", "commit 0/201"]);
    assert_eq!(d.skipped_transactions(), 2);
}

#[test]
fn a_redelivered_transaction_is_dropped_without_a_checkpoint() {
    let mut d = Decoder::new();
    let first = run(&mut d, [begin(0x100, 7), insert(1, "a"), commit(0x100)]);
    let again = run(&mut d, [begin(0x100, 7), insert(1, "a"), commit(0x100), begin(0x180, 8), commit(0x180)]);
    assert_eq!(first.len(), 3);
    assert_eq!(changes(&again).len(), 0);
    assert_eq!(again.len(), 2, "only the new, empty transaction: {again:?}");
    assert_eq!(d.skipped_transactions(), 1);
    d.skip_through(Lsn(0x10));
    assert_eq!(d.watermark(), Some(Lsn(0x180)), "the watermark never goes back");
}

#[test]
fn non_transactional_messages_flow_between_transactions_and_dedupe_by_lsn() {
    let msg = |lsn: u64| {
        PgOutputMessage::Message(LogicalMessage {
            transactional: false,
            lsn: Lsn(lsn),
            prefix: "nontx".into(),
            content: Bytes::from_static(b"hello"),
        })
    };
    let mut d = Decoder::resume_after(Lsn(0x100));
    let out = run(&mut d, [msg(0x80), msg(0x150), msg(0x150), begin(0x200, 7), msg(0x190), commit(0x200)]);
    let lsns: Vec<_> = out
        .iter()
        .filter_map(|d| match d {
            Decoded::Message { commit_lsn: None, message } => Some(message.lsn.0),
            _ => None,
        })
        .collect();
    assert_eq!(lsns, [0x14F, 0x18F], "placed on the last byte of their record (pgoutput sends its end)");
}

#[test]
fn a_transaction_committed_right_after_a_message_is_not_dropped() {
    // pgoutput gives a non-transactional message the end of its record, which is where the next record, here a
    // commit, starts: that transaction is after the message, never "at or below" it.
    let msg = PgOutputMessage::Message(LogicalMessage {
        transactional: false,
        lsn: Lsn(0x200),
        prefix: "philotes.snapshot".into(),
        content: Bytes::from_static(b"hw"),
    });
    let mut d = Decoder::new();
    let out = run(&mut d, [msg.clone(), begin(0x200, 7), commit(0x200)]);
    assert!(out.iter().any(|o| matches!(o, Decoded::Begin { commit_lsn: Lsn(0x200), .. })), "delivered: {out:?}");
    // After a restart whose checkpoint is the message's position, the same holds.
    let mut d = Decoder::resume_after(Lsn(0x1FF));
    let out = run(&mut d, [msg, begin(0x200, 7), commit(0x200)]);
    assert!(!out.iter().any(|o| matches!(o, Decoded::Message { .. })), "the message itself was delivered before");
    assert!(out.iter().any(|o| matches!(o, Decoded::Begin { commit_lsn: Lsn(0x200), .. })), "delivered: {out:?}");
}

#[test]
fn transactional_messages_and_origins_are_tagged_with_their_transaction() {
    let mut d = Decoder::new();
    let m =
        LogicalMessage { transactional: true, lsn: Lsn(0xF0), prefix: "p".into(), content: Bytes::from_static(b"x") };
    let out = run(
        &mut d,
        [
            begin(0x100, 7),
            PgOutputMessage::Origin { commit_lsn: Lsn(0xABCD), name: "upstream".into() },
            PgOutputMessage::Message(m.clone()),
            commit(0x100),
        ],
    );
    assert_eq!(out[1], Decoded::Origin { commit_lsn: Lsn(0x100), origin_lsn: Lsn(0xABCD), name: "upstream".into() });
    assert_eq!(out[2], Decoded::Message { commit_lsn: Some(Lsn(0x100)), message: m });
}

#[test]
fn a_million_change_transaction_streams_through_in_constant_memory() {
    // The decoder is a few words whatever the transaction size: it keeps no per-change state.
    assert!(std::mem::size_of::<Decoder>() <= 80, "Decoder grew to {} bytes", std::mem::size_of::<Decoder>());
    const N: u64 = 1_000_000;
    let started = Instant::now();
    let mut d = Decoder::new();
    let mut out = Vec::with_capacity(4);
    let row = vec![text("42"), ColumnData::Null];
    d.push(begin(0x1_0000_0000, 7), &mut out).unwrap();
    let mut seen = 0u64;
    for _ in 0..N {
        out.clear();
        d.push(PgOutputMessage::Insert { relation_id: 1, new: row.clone() }, &mut out).unwrap();
        let [Decoded::Change(c)] = out.as_slice() else { panic!("expected one change, got {out:?}") };
        assert_eq!(c.seq, seen);
        seen += 1;
        assert!(out.capacity() <= 4, "the output buffer grew");
    }
    out.clear();
    d.push(commit(0x1_0000_0000), &mut out).unwrap();
    assert_eq!(seen, N);
    assert!(matches!(out.as_slice(), [Decoded::Commit { .. }]));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

proptest! {
    /// Whatever the transactions and the checkpoint, exactly those committed above the checkpoint come out, in
    /// commit order, each whole with seq 0..n; relations always come out.
    #[test]
    fn output_is_every_transaction_above_the_checkpoint_in_order(
        sizes in prop::collection::vec(0usize..5, 0..12),
        checkpoint in 0u64..14,
        redeliver_from in 0usize..12,
    ) {
        let mut messages = Vec::new();
        let mut lsns = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let lsn = (i as u64 + 1) * 0x10;
            lsns.push((lsn, *size));
            messages.push(begin(lsn, i as u32));
            messages.push(relation(i as u32));
            for _ in 0..*size {
                messages.push(insert(i as u32, "v"));
            }
            messages.push(commit(lsn));
        }
        // A reconnect redelivers a tail of the stream.
        let tail_start = messages.iter().position(|m| matches!(m, PgOutputMessage::Begin { final_lsn, .. } if final_lsn.0 > redeliver_from as u64 * 0x10)).unwrap_or(messages.len());
        let tail: Vec<_> = messages[tail_start..].to_vec();
        messages.extend(tail);
        let mut d = Decoder::resume_after(Lsn(checkpoint * 0x10));
        let out = run(&mut d, messages);
        let mut expected = Vec::new();
        for (lsn, size) in lsns.iter().filter(|(lsn, _)| *lsn > checkpoint * 0x10) {
            expected.push(format!("B{lsn}"));
            expected.extend((0..*size).map(|s| format!("C{lsn}#{s}")));
            expected.push(format!("E{lsn}"));
        }
        let got: Vec<_> = out.iter().filter_map(|d| match d {
            Decoded::Begin { commit_lsn, .. } => Some(format!("B{}", commit_lsn.0)),
            Decoded::Change(c) => Some(format!("C{}#{}", c.commit_lsn.0, c.seq)),
            Decoded::Commit { commit_lsn, .. } => Some(format!("E{}", commit_lsn.0)),
            _ => None,
        }).collect();
        prop_assert_eq!(got, expected);
        let relations = out.iter().filter(|d| matches!(d, Decoded::Relation(_))).count();
        prop_assert_eq!(relations, sizes.len() + (sizes.len() - lsns.iter().position(|(l, _)| *l > redeliver_from as u64 * 0x10).unwrap_or(sizes.len())));
    }

    /// Any sequence of well-formed messages, in any order, gives items or errors, never a panic.
    #[test]
    fn random_message_sequences_never_panic(ops in prop::collection::vec((0u8..7, 0u64..4), 0..40)) {
        let mut d = Decoder::resume_after(Lsn(1));
        let mut out = Vec::new();
        for (op, lsn) in ops {
            let message = match op {
                0 => begin(lsn, 1),
                1 => commit(lsn),
                2 => insert(1, "x"),
                3 => PgOutputMessage::Truncate { cascade: false, restart_identity: false, relation_ids: vec![1, 2] },
                4 => relation(1),
                5 => PgOutputMessage::Origin { commit_lsn: Lsn(lsn), name: String::new() },
                _ => PgOutputMessage::Message(LogicalMessage { transactional: lsn % 2 == 0, lsn: Lsn(lsn), prefix: String::new(), content: Bytes::new() }),
            };
            let _ = d.push(message, &mut out);
        }
    }
}
