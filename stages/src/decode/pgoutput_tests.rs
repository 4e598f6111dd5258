//! Unit tests of the pgoutput parser: every proto-1 message kind, every way a message can be malformed, and
//! property tests that no input bytes make it panic.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::decode::test_support::{fixture, Msg};

fn ok(data: Bytes) -> PgOutputMessage {
    parse(data.clone()).unwrap_or_else(|e| panic!("{e} in {data:02x?}"))
}

fn text(s: &str) -> ColumnData {
    ColumnData::Text(Bytes::copy_from_slice(s.as_bytes()))
}

/// One valid message of every kind and shape, built by hand.
fn samples() -> Vec<Bytes> {
    vec![
        Msg::new(b'B').u64(0x16_B374_D848).i64(0).u32(740).build(),
        Msg::new(b'C').u8(0).u64(0x100).u64(0x130).i64(-1).build(),
        Msg::new(b'O').u64(0xABCD_EF01).str("upstream").build(),
        Msg::new(b'R')
            .u32(16390)
            .str("public")
            .str("t")
            .u8(b'f')
            .i16(2)
            .u8(1)
            .str("id")
            .u32(23)
            .i32(-1)
            .u8(0)
            .str("v")
            .u32(1043)
            .i32(14)
            .build(),
        Msg::new(b'Y').u32(16500).str("public").str("mood").build(),
        Msg::new(b'I').u32(7).u8(b'N').i16(4).text("1").u8(b'n').u8(b'u').u8(b'b').i32(2).raw(&[0, 1]).build(),
        Msg::new(b'U').u32(7).u8(b'N').i16(1).text("x").build(),
        Msg::new(b'U').u32(7).u8(b'K').i16(2).text("1").u8(b'n').u8(b'N').i16(2).text("2").u8(b'u').build(),
        Msg::new(b'U').u32(7).u8(b'O').i16(1).text("a").u8(b'N').i16(1).text("b").build(),
        Msg::new(b'D').u32(7).u8(b'K').i16(1).text("1").build(),
        Msg::new(b'D').u32(7).u8(b'O').i16(0).build(),
        Msg::new(b'T').i32(2).u8(3).u32(10).u32(11).build(),
        Msg::new(b'M').u8(1).u64(0x42).str("p").i32(1).raw(b"x").build(),
        Msg::new(b'M').u8(0).u64(0x43).str("").i32(0).build(),
    ]
}

#[test]
fn begin_converts_the_commit_time_to_the_unix_epoch() {
    let msg = ok(Msg::new(b'B').u64(0x16_B374_D848).i64(1).u32(740).build());
    assert_eq!(
        msg,
        PgOutputMessage::Begin { final_lsn: Lsn(0x16_B374_D848), commit_ts: 946_684_800_000_001, xid: 740 }
    );
}

#[test]
fn commit_keeps_both_lsns_and_flags() {
    let msg = ok(Msg::new(b'C').u8(0).u64(0x100).u64(0x130).i64(-PG_EPOCH_OFFSET_MICROS).build());
    assert_eq!(msg, PgOutputMessage::Commit { flags: 0, commit_lsn: Lsn(0x100), end_lsn: Lsn(0x130), commit_ts: 0 });
}

#[test]
fn origin_carries_its_name_and_lsn() {
    let msg = ok(Msg::new(b'O').u64(0xABCD_EF01).str("upstream").build());
    assert_eq!(msg, PgOutputMessage::Origin { commit_lsn: Lsn(0xABCD_EF01), name: "upstream".into() });
}

#[test]
fn relation_lists_columns_keys_and_identity() {
    let PgOutputMessage::Relation(rel) = ok(samples()[3].clone()) else { panic!("not a relation") };
    assert_eq!(rel.id, 16390);
    assert_eq!((rel.namespace.as_str(), rel.name.as_str()), ("public", "t"));
    assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
    assert_eq!(
        rel.columns,
        vec![
            RelationColumn { is_key: true, name: "id".into(), type_oid: 23, type_modifier: -1 },
            RelationColumn { is_key: false, name: "v".into(), type_oid: 1043, type_modifier: 14 },
        ]
    );
    for (code, identity) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'f', ReplicaIdentity::Full),
        (b'i', ReplicaIdentity::Index),
    ] {
        let PgOutputMessage::Relation(rel) = ok(Msg::new(b'R').u32(1).str("").str("t").u8(code).i16(0).build()) else {
            panic!("not a relation")
        };
        assert_eq!(rel.replica_identity, identity);
        assert_eq!(rel.namespace, "", "pg_catalog is sent as an empty namespace");
    }
}

#[test]
fn type_names_a_custom_type() {
    let msg = ok(samples()[4].clone());
    assert_eq!(msg, PgOutputMessage::Type(CustomType { id: 16500, namespace: "public".into(), name: "mood".into() }));
}

#[test]
fn insert_reads_every_column_kind() {
    let msg = ok(samples()[5].clone());
    let expected =
        vec![text("1"), ColumnData::Null, ColumnData::UnchangedToast, ColumnData::Binary(Bytes::from_static(&[0, 1]))];
    assert_eq!(msg, PgOutputMessage::Insert { relation_id: 7, new: expected });
}

#[test]
fn update_old_tuple_is_absent_key_or_full() {
    let s = samples();
    assert_eq!(ok(s[6].clone()), PgOutputMessage::Update { relation_id: 7, old: None, new: vec![text("x")] });
    assert_eq!(
        ok(s[7].clone()),
        PgOutputMessage::Update {
            relation_id: 7,
            old: Some(OldTuple { kind: OldKind::Key, data: vec![text("1"), ColumnData::Null] }),
            new: vec![text("2"), ColumnData::UnchangedToast],
        }
    );
    assert_eq!(
        ok(s[8].clone()),
        PgOutputMessage::Update {
            relation_id: 7,
            old: Some(OldTuple { kind: OldKind::Full, data: vec![text("a")] }),
            new: vec![text("b")],
        }
    );
}

#[test]
fn delete_carries_a_key_or_full_old_tuple() {
    let s = samples();
    assert_eq!(
        ok(s[9].clone()),
        PgOutputMessage::Delete { relation_id: 7, old: OldTuple { kind: OldKind::Key, data: vec![text("1")] } }
    );
    assert_eq!(
        ok(s[10].clone()),
        PgOutputMessage::Delete { relation_id: 7, old: OldTuple { kind: OldKind::Full, data: vec![] } }
    );
    let err = parse(Msg::new(b'D').u32(7).u8(b'N').i16(0).build()).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Invalid {
            message: "Delete",
            what: "tuple marker (expected K or O)",
            value: "'N'".into(),
            offset: 5
        }
    );
}

#[test]
fn truncate_reads_options_and_every_relation() {
    assert_eq!(
        ok(samples()[11].clone()),
        PgOutputMessage::Truncate { cascade: true, restart_identity: true, relation_ids: vec![10, 11] }
    );
    assert_eq!(
        ok(Msg::new(b'T').i32(1).u8(2).u32(10).build()),
        PgOutputMessage::Truncate { cascade: false, restart_identity: true, relation_ids: vec![10] }
    );
}

#[test]
fn logical_messages_keep_prefix_content_and_flag() {
    let s = samples();
    assert_eq!(
        ok(s[12].clone()),
        PgOutputMessage::Message(LogicalMessage {
            transactional: true,
            lsn: Lsn(0x42),
            prefix: "p".into(),
            content: Bytes::from_static(b"x"),
        })
    );
    let PgOutputMessage::Message(m) = ok(s[13].clone()) else { panic!("not a message") };
    assert!(!m.transactional && m.content.is_empty() && m.prefix.is_empty());
}

#[test]
fn column_values_are_slices_of_the_input_not_copies() {
    let data = Msg::new(b'I').u32(7).u8(b'N').i16(1).text("abcdef").build();
    let range = data.as_ptr() as usize..data.as_ptr() as usize + data.len();
    let PgOutputMessage::Insert { new, .. } = ok(data.clone()) else { panic!("not an insert") };
    let ColumnData::Text(value) = &new[0] else { panic!("not text") };
    assert!(range.contains(&(value.as_ptr() as usize)));
}

#[test]
fn every_strict_prefix_of_a_valid_message_is_an_error() {
    let mut messages = samples();
    messages.extend(fixture("workload").into_iter().map(|l| l.data));
    for data in messages {
        ok(data.clone());
        for cut in 0..data.len() {
            let err = parse(data.slice(..cut)).expect_err("a prefix parsed");
            assert!(
                matches!(err, DecodeError::Empty | DecodeError::Truncated { .. }),
                "prefix {cut} of {data:02x?}: {err}"
            );
        }
    }
}

#[test]
fn truncation_errors_name_the_field_and_offset() {
    let err = parse(Msg::new(b'B').u64(1).i64(2).raw(&[0, 0]).build()).unwrap_err();
    assert_eq!(err, DecodeError::Truncated { message: "Begin", what: "xid", offset: 17, needed: 4, len: 19 });
    assert_eq!(
        err.to_string(),
        "truncated Begin message: xid needs 4 byte(s) at offset 17, but the message is 19 bytes long"
    );
    let err = parse(Msg::new(b'O').u64(1).raw(b"no-nul").build()).unwrap_err();
    assert!(matches!(err, DecodeError::Truncated { what: "origin name", offset: 9, .. }), "{err}");
    let err = parse(Msg::new(b'I').u32(7).u8(b'N').i16(1).u8(b't').i32(100).raw(b"short").build()).unwrap_err();
    assert!(matches!(err, DecodeError::Truncated { what: "column value", offset: 13, needed: 100, .. }), "{err}");
}

#[test]
fn bad_values_are_named_with_their_offset() {
    let cases: Vec<(Bytes, &str, usize)> = vec![
        (Msg::new(b'I').u32(7).u8(b'X').build(), "tuple marker (expected N)", 5),
        (Msg::new(b'I').u32(7).u8(b'N').i16(-1).build(), "column count", 6),
        (Msg::new(b'I').u32(7).u8(b'N').i16(1).u8(b'z').build(), "column kind (expected n, u, t or b)", 8),
        (Msg::new(b'I').u32(7).u8(b'N').i16(1).u8(b't').i32(-5).build(), "column value length", 9),
        (Msg::new(b'U').u32(7).u8(b'Q').build(), "tuple marker (expected K, O or N)", 5),
        (Msg::new(b'U').u32(7).u8(b'K').i16(0).u8(b'K').build(), "tuple marker (expected N)", 8),
        (Msg::new(b'R').u32(1).str("s").str("t").u8(b'x').build(), "replica identity (expected d, n, f or i)", 9),
        (Msg::new(b'T').i32(-1).u8(0).build(), "relation count", 1),
        (Msg::new(b'M').u8(1).u64(1).str("p").i32(-1).build(), "content length", 12),
        (Msg::new(b'B').u64(1).i64(i64::MAX).u32(1).build(), "commit timestamp", 9),
    ];
    for (data, what, offset) in cases {
        match parse(data.clone()) {
            Err(DecodeError::Invalid { what: w, offset: o, .. }) => assert_eq!((w, o), (what, offset), "{data:02x?}"),
            other => panic!("{data:02x?}: expected invalid {what}, got {other:?}"),
        }
    }
}

#[test]
fn names_must_be_utf8() {
    let err = parse(Msg::new(b'Y').u32(1).str("ok").raw(&[0xff, 0xfe, 0]).build()).unwrap_err();
    assert_eq!(err, DecodeError::NotUtf8 { message: "Type", what: "type name", offset: 8 });
}

#[test]
fn trailing_bytes_are_an_error() {
    let err = parse(Msg::new(b'D').u32(7).u8(b'K').i16(0).u8(0).build()).unwrap_err();
    assert_eq!(err, DecodeError::TrailingBytes { message: "Delete", offset: 8, extra: 1 });
}

#[test]
fn empty_unknown_and_later_protocol_messages_are_rejected() {
    assert_eq!(parse(Bytes::new()).unwrap_err(), DecodeError::Empty);
    assert_eq!(parse(Bytes::from_static(b"Z")).unwrap_err(), DecodeError::UnknownTag { tag: b'Z' });
    let err = parse(Bytes::from_static(b"S\0\0\0\x01\x01")).unwrap_err();
    assert_eq!(err, DecodeError::Unsupported { tag: 'S', name: "Stream Start" });
    assert!(err.to_string().contains("proto_version 1"), "{err}");
    for tag in *b"EcAbPKrp" {
        assert!(matches!(parse(Msg::new(tag).build()), Err(DecodeError::Unsupported { .. })));
    }
}

#[test]
fn a_huge_truncate_count_does_not_reserve_memory_up_front() {
    let err = parse(Msg::new(b'T').i32(i32::MAX).u8(0).u32(1).build()).unwrap_err();
    assert!(matches!(err, DecodeError::Truncated { what: "relation OID", offset: 10, .. }), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(tag in prop::sample::select(b"BCORYIUDTMSZ".to_vec()), rest in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut data = vec![tag];
        data.extend(rest);
        let _ = parse(Bytes::from(data));
    }

    #[test]
    fn mutated_real_messages_never_panic(index in any::<prop::sample::Index>(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4), cut in any::<prop::sample::Index>()) {
        let lines = fixture("workload");
        let mut data = lines[index.index(lines.len())].data.to_vec();
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] = byte;
        }
        let full = parse(Bytes::from(data.clone()));
        let cut = cut.index(data.len() + 1);
        let prefix = parse(Bytes::from(data[..cut].to_vec()));
        if cut < data.len() && full.is_ok() {
            prop_assert!(prefix.is_err(), "a strict prefix of a valid message parsed");
        }
    }
}
