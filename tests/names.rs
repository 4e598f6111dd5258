//! Source tables whose names need quoting — a dot, a capital letter, a space — listed with SQL-style quoted
//! identifiers in the pipeline file, captured by the real binary and read back from Iceberg row for row.

use std::time::Duration;

use crate::support::assert_status_clean;
use crate::flush::{self, Pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_named_with_a_dot_a_capital_or_a_space_reach_iceberg_under_their_own_names() {
    let db = philotes_testkit::shared().database("names_quoted").expect("database");
    db.psql(flush::SCHEMA).expect("schema");
    for table in ["t.dot", "Mixed Case", "t"] {
        flush::create_table(&db, table);
    }
    // `t` is there so that a name split at its dot (public.t + dot) would find a real table to confuse it with.
    let pipeline = Pipeline::new(
        &db,
        &[r#"'"public"."t.dot"'"#, r#"'public."Mixed Case"'"#],
        "{ workers: 2, max_events: 1000, interval: 200ms }",
    );
    let run = pipeline.start_streaming(&db, &[], &[], "run.log").await;
    for sql in [
        r#"INSERT INTO "t.dot" SELECT g, 'dot ' || g, g * 1.5, g % 2 = 0, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 day',
                jsonb_build_object('g', g), ARRAY['a'], 'x' FROM generate_series(1, 50) g"#,
        r#"UPDATE "t.dot" SET amount = amount + 1 WHERE id % 5 = 0"#,
        r#"DELETE FROM "t.dot" WHERE id > 45"#,
        r#"INSERT INTO "Mixed Case" VALUES (1, 'upper', 2.00, true, '2024-06-01 12:00:00+00', '{}', '{}', 'y')"#,
        "INSERT INTO t VALUES (1, 'not captured')",
    ] {
        db.psql(sql).expect("workload");
    }
    let after = flush::last_commit(&db, r#"UPDATE "Mixed Case" SET name = 'changed' WHERE id = 1"#);
    run.wait_until("every change in iceberg", Duration::from_secs(120), || async { flush::drained(&db, &pipeline.name, &after) })
        .await;
    assert_status_clean(&pipeline.file);
    run.stop_cleanly().await;

    for table in ["t.dot", "Mixed Case"] {
        let (rows, _) = flush::assert_both_readers_see_the_source(&db, &pipeline, table).await;
        assert!(!rows.is_empty(), "{table}: changes reached iceberg");
    }
    let published = db
        .psql(&format!("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_publication_tables WHERE pubname = 'philotes_{}'", pipeline.name))
        .expect("publication");
    assert_eq!(published, "Mixed Case,t.dot", "exactly the two listed tables are published");
}
