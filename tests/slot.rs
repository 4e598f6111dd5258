//! A replication slot invalidated by `max_slot_wal_keep_size`: the capture stops with an error that says what
//! happened and how to recover. It needs a server of its own (the setting is cluster-wide and would invalidate
//! the slots of every other test on the shared cluster).

use std::time::Duration;

use philotes_testkit::{Cluster, ClusterOptions};

use crate::support::{pipeline_file, slot_name, Philotes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_stops_the_capture_with_what_happened_and_the_way_back() {
    let base = std::env::temp_dir().join(format!("philotes-slot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let cluster = Cluster::start(&ClusterOptions {
        base: base.clone(),
        port: None,
        owner_pid: Some(std::process::id()),
        extra_settings: vec!["max_slot_wal_keep_size = '1MB'".into(), "wal_keep_size = 0".into()],
    })
    .expect("a cluster of its own");
    let db = cluster.database("slot_lost").expect("database");
    db.psql("CREATE TABLE t (id bigint PRIMARY KEY, payload text)").expect("table");
    let file = pipeline_file(&db, &["public.t"], &[], "{ max_events: 1000, max_bytes: 1MiB, max_age: 50ms }");
    let slot = slot_name(&db);
    db.psql(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")).expect("slot");
    // Nobody reads the slot while WAL piles up past max_slot_wal_keep_size; checkpoints then remove that WAL.
    let mut status = String::new();
    for round in 0..20 {
        db.psql(&format!("INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series({0}, {0} + 19999) g", round * 20_000))
            .expect("workload");
        db.psql("SELECT pg_switch_wal()").expect("switch");
        db.psql("CHECKPOINT").expect("checkpoint");
        status = db
            .psql(&format!("SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{slot}'"))
            .expect("slot status");
        if status == "lost" {
            break;
        }
    }
    assert_eq!(status, "lost", "the slot should have been invalidated");

    let capture = Philotes::capture(&file, 0);
    let exit = capture.wait_exit(Duration::from_secs(60)).await;
    let log = capture.log();
    assert!(!exit.success(), "the capture must stop:\n{log}");
    // Kept on the log: the message is the product (what happened and the way back); status shows only the
    // slot's `lost` state, not the recovery.
    assert!(log.contains(&format!("replication slot {slot} has been invalidated")), "{log}");
    assert!(log.contains("max_slot_wal_keep_size"), "{log}");
    assert!(log.contains(&format!("pg_drop_replication_slot('{slot}')")), "{log}");
    drop(db);
    let _ = cluster.stop();
}

/// `philotes drop FILE`: refused while the capture streams, says what it would do without `--yes`, then removes
/// the slot, the publication philotes created and every buffer row of the pipeline; a publication philotes did
/// not create is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_removes_the_slot_the_publication_it_made_and_the_buffer_rows_only_when_stopped_and_confirmed() {
    let count = |db: &philotes_testkit::TestDatabase, sql: &str| db.psql(sql).expect("count");
    for own_publication in [false, true] {
        let db = philotes_testkit::shared().database(if own_publication { "drop_own_pub" } else { "drop_made_pub" }).expect("database");
        db.psql("CREATE TABLE t (id bigint PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')").expect("table");
        let pipeline = crate::flush::Pipeline::new(&db, &["public.t"], "{ workers: 1, max_events: 1000, interval: 100ms }");
        let name = pipeline.name.clone();
        let publication = format!("philotes_{name}");
        if own_publication {
            db.psql(&format!("CREATE PUBLICATION {publication} FOR TABLE t")).expect("a publication of the user's");
        }
        let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
        let file = pipeline.file.to_str().expect("utf-8 path").to_string();
        let refused = crate::support::philotes(&["drop", &file, "--yes"], &[]);
        assert_eq!(refused.status.code(), Some(1), "refused while streaming: {}", String::from_utf8_lossy(&refused.stderr));
        assert!(String::from_utf8_lossy(&refused.stderr).contains("stop every process"));
        run.stop_cleanly().await;

        let dry = crate::support::philotes(&["drop", &file], &[]);
        assert_eq!(dry.status.code(), Some(2), "{}", String::from_utf8_lossy(&dry.stdout));
        assert!(String::from_utf8_lossy(&dry.stdout).contains("--yes"));
        let slot = crate::support::slot_name(&db);
        assert_eq!(count(&db, &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'")), "1", "nothing dropped yet");

        let done = crate::support::philotes(&["drop", &file, "--yes"], &[]);
        let text = String::from_utf8_lossy(&done.stdout).to_string();
        assert_eq!(done.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&done.stderr));
        assert!(text.contains(&format!("replication slot {slot}: dropped")), "{text}");
        assert_eq!(count(&db, &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'")), "0");
        let publications = count(&db, &format!("SELECT count(*) FROM pg_publication WHERE pubname = '{publication}'"));
        if own_publication {
            assert!(text.contains("kept (philotes did not create it)"), "{text}");
            assert_eq!(publications, "1", "the user's publication is kept");
        } else {
            assert!(text.contains(&format!("publication {publication}: dropped")), "{text}");
            assert_eq!(publications, "0");
        }
        for table in ["pipelines", "checkpoints", "schemas", "table_watermarks", "source_tables", "snapshots"] {
            let column = if table == "pipelines" { "name" } else { "pipeline" };
            assert_eq!(count(&db, &format!("SELECT count(*) FROM philotes.{table} WHERE {column} = '{name}'")), "0", "philotes.{table}");
        }
    }
}

/// The WAL a slot keeps is a metric and in `status`; past `source.postgres.max_retained_wal` a warning says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_kept_by_the_slot_past_max_retained_wal_is_warned_about_and_measured() {
    let db = philotes_testkit::shared().database("retained_wal").expect("database");
    db.psql("CREATE TABLE t (id bigint PRIMARY KEY, v text)").expect("table");
    let pipeline = crate::flush::Pipeline::new(&db, &["public.t"], "{ workers: 1, max_events: 1000, interval: 100ms }");
    pipeline.rewrite("    status_interval: 1s\n", "    status_interval: 1s\n    max_retained_wal: 1\n");
    let port = crate::support::free_port();
    let metrics = format!("127.0.0.1:{port}");
    let run = pipeline.start_streaming(&db, &["--metrics", &metrics], &[], "run.log").await;
    db.psql("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g").expect("rows");
    run.wait_until("the retained-WAL warning", Duration::from_secs(30), || async {
        run.log().contains("the replication slot keeps more WAL on the source than source.postgres.max_retained_wal")
    })
    .await;
    let file = pipeline.file.to_str().expect("utf-8 path");
    let status = String::from_utf8_lossy(&crate::support::philotes(&["status", file], &[]).stdout).into_owned();
    assert!(status.contains("WAL kept") && status.contains("OVER the limit of 1 B"), "{status}");
    let json = crate::support::status_json(&pipeline.file);
    assert!(json["slot_retained_wal_bytes"].as_i64().is_some_and(|b| b > 1), "{json}");
    let body = crate::support::http_get(&metrics, "/metrics").await;
    assert!(body.contains("philotes_slot_retained_wal_bytes"), "{body}");
    assert_eq!(run.log().matches("keeps more WAL on the source").count(), 1, "warned once per excursion");
    run.stop_cleanly().await;
}

/// With the published tables idle while another database of the server writes WAL, the slot confirms past that
/// WAL instead of holding it; the capture writes a heartbeat (a transactional message in the source database)
/// every `heartbeat`, which a second slot of the test sees in the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_is_written_and_the_slot_moves_past_the_wal_of_busy_neighbours_while_the_tables_are_idle() {
    let db = philotes_testkit::shared().database("heartbeat").expect("database");
    let neighbour = philotes_testkit::shared().database("heartbeat_neighbour").expect("database");
    db.psql("CREATE TABLE t (id bigint PRIMARY KEY)").expect("table");
    let probe = format!("{}_probe", crate::support::slot_name(&db));
    db.psql(&format!("SELECT pg_create_logical_replication_slot('{probe}', 'test_decoding')")).expect("probe slot");
    let pipeline = crate::flush::Pipeline::new(&db, &["public.t"], "{ workers: 1, max_events: 1000, interval: 100ms }");
    pipeline.rewrite("    status_interval: 1s\n", "    status_interval: 1s\n    heartbeat: 1s\n");
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    neighbour.psql("CREATE TABLE busy AS SELECT g, repeat('x', 100) AS v FROM generate_series(1, 100000) g").expect("neighbour WAL");
    let after = neighbour.psql("SELECT pg_current_wal_lsn()").expect("lsn");
    let slot = crate::support::slot_name(&db);
    run.wait_until("the slot past the neighbour's WAL", Duration::from_secs(30), || async {
        db.psql(&format!("SELECT confirmed_flush_lsn >= '{after}'::pg_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"))
            .map(|v| v == "t")
            .unwrap_or(false)
    })
    .await;
    let beats = format!(
        "SELECT count(*) FROM pg_logical_slot_peek_changes('{probe}', NULL, NULL) WHERE data LIKE 'message: transactional: 1 prefix: philotes.heartbeat%'"
    );
    run.wait_until("two heartbeats in the WAL", Duration::from_secs(30), || async {
        db.psql(&beats).ok().and_then(|n| n.parse::<i64>().ok()).is_some_and(|n| n >= 2)
    })
    .await;
    run.stop_cleanly().await;
    db.psql(&format!("SELECT pg_drop_replication_slot('{probe}')")).expect("drop the probe slot");
}
