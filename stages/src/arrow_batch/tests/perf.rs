//! Timing of the CPU part of a flush, step by step: segment decode (MessagePack), `build_batch`, and (for
//! reference) a plain Parquet `ArrowWriter` (zstd 1) of the batch. Runs a tiny size as a smoke test; set
//! `PHILOTES_PERF_ROWS` (e.g. 1000000) and run in release with `--nocapture` to read the times.

use std::time::{Duration, Instant};

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::*;
use crate::segment;

/// Events per segment (the order of what Enqueue writes for a large transaction).
const SEGMENT_EVENTS: usize = 10_000;

/// The benchmark's table: `id int8 (key), label text, amount numeric(12,2), created_at timestamptz, flag bool,
/// attrs jsonb, blob bytea, ratio float8`.
fn bench_table() -> Arc<TableSchema> {
    table(vec![
        col("id", PgType::Int8, true),
        col("label", PgType::Text, false),
        col("amount", numeric(12, 2), false),
        col("created_at", PgType::TimestampTz, false),
        col("flag", PgType::Bool, false),
        col("attrs", PgType::Jsonb, false),
        col("blob", PgType::Bytea, false),
        col("ratio", PgType::Float8, false),
    ])
}

/// A deterministic pseudo-random digest of `g` (the workload's md5 stand-in).
fn digest(g: u64) -> [u8; 16] {
    let mut x = g.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = [0; 16];
    for chunk in out.chunks_mut(8) {
        x ^= x >> 33;
        x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        x ^= x >> 29;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bench_row(g: u64) -> Vec<Value> {
    let d = digest(g);
    let cents = (g * 7919) % 10_000_000;
    vec![
        Value::Int64(g as i64),
        Value::Text(format!("customer-{}", hex(&d))),
        Value::Numeric(format!("{}.{:02}", cents / 100, cents % 100)),
        Value::TimestampTz(1_767_225_600_000_000 + g as i64 * 1_000_000),
        Value::Bool(g.is_multiple_of(2)),
        Value::Text(format!(
            r#"{{"id": {g}, "tag": "{}", "even": {}, "bucket": {}}}"#,
            &hex(&d)[..12],
            g.is_multiple_of(2),
            g % 97
        )),
        Value::Bytes(d.to_vec()),
        Value::Float64(((g * 104_729) % 1_000_003) as f64 / 1_000_003.0),
    ]
}

fn payloads(rows: usize) -> Vec<Vec<u8>> {
    (0..rows as u64)
        .collect::<Vec<_>>()
        .chunks(SEGMENT_EVENTS)
        .map(|chunk| {
            let events: Vec<SegmentEvent> = chunk
                .iter()
                .map(|&g| SegmentEvent {
                    op: crate::op::Op::Insert,
                    commit_lsn: Lsn(LSN_OF_TX + g / 100_000),
                    seq: g % 100_000,
                    xid: 731,
                    commit_ts: COMMIT_TS_OF_TX,
                    old_is_full: None,
                    old: None,
                    new: Some(bench_row(g)),
                })
                .collect();
            segment::encode(&events).expect("encodes")
        })
        .collect()
}

fn rate(rows: usize, took: Duration) -> String {
    format!(
        "{:>8.1} ms  {:>6.2} M rows/s",
        took.as_secs_f64() * 1e3,
        rows as f64 / took.as_secs_f64() / 1e6
    )
}

#[test]
fn flush_cpu_steps_timed() {
    let rows: usize = std::env::var("PHILOTES_PERF_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let t = bench_table();
    let target = changelog_schema(&t).expect("schema");
    let payloads = payloads(rows);
    let bytes: usize = payloads.iter().map(Vec::len).sum();

    // Once to warm the allocator (a flusher decodes claim after claim in memory it freed before), then timed.
    let decode_once = || -> Vec<Vec<SegmentEvent>> {
        payloads
            .iter()
            .map(|p| segment::decode(p).expect("decodes"))
            .collect()
    };
    let start = Instant::now();
    drop(decode_once());
    let cold = start.elapsed();
    // The generic rmp-serde path `segment::decode` used alone before its own reader (same warm allocator).
    let start = Instant::now();
    drop(
        payloads
            .iter()
            .map(|p| rmp_serde::from_slice::<Vec<SegmentEvent>>(p).expect("decodes"))
            .collect::<Vec<_>>(),
    );
    let generic = start.elapsed();
    let start = Instant::now();
    let events: Vec<Vec<SegmentEvent>> = payloads
        .iter()
        .map(|p| segment::decode(p).expect("decodes"))
        .collect();
    let decode = start.elapsed();

    let segments: Vec<(Arc<TableSchema>, Vec<SegmentEvent>)> =
        events.into_iter().map(|e| (t.clone(), e)).collect();
    let start = Instant::now();
    let out = build_batch(&target, &segments).expect("builds");
    let build = start.elapsed();
    // Again, in memory the allocator has had (a long-running flusher may or may not get it back).
    let start = Instant::now();
    drop(build_batch(&target, &segments).expect("builds"));
    let build_warm = start.elapsed();
    assert_eq!(out.batch.num_rows(), rows);
    assert!(out.rejected.is_empty());

    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("level")))
        .build();
    let start = Instant::now();
    let mut sink = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut sink, out.batch.schema(), Some(properties)).expect("writer");
    writer.write(&out.batch).expect("writes");
    writer.close().expect("closes");
    let write = start.elapsed();

    println!(
        "{rows} rows, {} segments, {:.1} MB of payload",
        payloads.len(),
        bytes as f64 / 1e6
    );
    println!("segment decode cold {}", rate(rows, cold));
    println!("rmp-serde decode    {}", rate(rows, generic));
    println!("segment decode      {}", rate(rows, decode));
    println!("build_batch         {}", rate(rows, build));
    println!("build_batch again   {}", rate(rows, build_warm));
    println!("decode + build      {}", rate(rows, decode + build));
    println!("ArrowWriter (zstd1) {}", rate(rows, write));
}
