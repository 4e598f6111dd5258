//! A big source transaction through the capture: a million rows in one transaction spill into the buffer in
//! segments, in bounded memory (the capture's peak RSS, read from /proc, stays under a stated bound), contiguous
//! and in insertion order.

use std::time::Instant;

use philotes_schemas::Value;
use philotes_stages::position::Lsn;

use crate::support::{connect, database, pipeline_file, start_capture, wait_durable, DEFAULT_SEGMENT};

// ---------------------------------------------------------------------------------------------------------
// 4. A million rows in one transaction, in bounded memory.
// ---------------------------------------------------------------------------------------------------------

/// The stated bound on the capture's peak RSS for a 1M-row transaction (default segment limits: 8 MiB segments,
/// 32 MiB spill bound, 1,024-item stage queues).
const PEAK_RSS_BOUND_MIB: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_transaction_goes_through_with_peak_rss_under_the_bound() {
    let db = database("cap_million");
    db.psql("CREATE TABLE m (id bigint, v int, t text); ALTER TABLE m REPLICA IDENTITY FULL").expect("schema");
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.m"], &[], DEFAULT_SEGMENT);
    let capture = start_capture(&db, &file).await;
    let idle_rss = capture.peak_rss_kib();

    let rows: i64 = 1_000_000;
    let started = Instant::now();
    client
        .batch_execute(&format!("INSERT INTO m SELECT g, g % 1000, 'row number ' || g FROM generate_series(1, {rows}) g"))
        .await
        .expect("one big transaction");
    let committed = started.elapsed();
    wait_durable(&client, db.name(), rows, &capture).await;
    let through = started.elapsed();
    let peak = capture.peak_rss_kib();
    capture.stop_cleanly().await;
    println!(
        "1M-row transaction: committed on the source after {committed:?}, durable in the buffer after {through:?}; \
         capture peak RSS {} MiB (idle {} MiB), bound {PEAK_RSS_BOUND_MIB} MiB",
        peak / 1024,
        idle_rss / 1024
    );
    assert!(peak / 1024 < PEAK_RSS_BOUND_MIB, "peak RSS {} MiB is over the bound of {PEAK_RSS_BOUND_MIB} MiB", peak / 1024);

    // Contiguous seqs 0..1M in one commit LSN, checked on the segment rows (no need to decode a million events).
    let segments = philotes_stages::store::segments::all(&client, db.name()).await.expect("segments");
    let mut spans: Vec<(u64, u64, i32, Lsn, Lsn)> =
        segments.iter().map(|s| (s.row.first.seq, s.row.last.seq, s.row.events, s.row.first.commit_lsn, s.row.last.commit_lsn)).collect();
    spans.sort_unstable();
    let commit = spans[0].3;
    let mut next = 0;
    for (first, last, events, a, b) in &spans {
        assert_eq!((*a, *b), (commit, commit), "one transaction");
        assert_eq!(*first, next, "segments follow each other without gap or overlap");
        assert_eq!(*events as u64, last - first + 1);
        next = last + 1;
    }
    assert_eq!(next, rows as u64);
    assert!(spans.len() > 1, "the transaction was cut into segments");
    // Spot-check the values of the first and last segments.
    for s in [segments.first().expect("a segment"), segments.last().expect("a segment")] {
        for e in philotes_stages::segment::decode(&s.row.payload).expect("decodes") {
            let new = e.new.expect("insert");
            let Value::Int64(id) = new[0] else { panic!("{new:?}") };
            assert_eq!(id as u64, e.seq + 1, "rows in insertion order");
            assert_eq!(new[2], Value::Text(format!("row number {id}")));
        }
    }
}

