//! `migrate`: applies migrations/ in order, once, safely from several processes at once.

use philotes::migrate::{self, Migration, MigrateError};

#[tokio::test]
async fn migrate_twice_is_a_no_op() {
    let db = philotes_testkit::shared().database("migrate_twice").expect("database");
    let mut client = db.connect().await.expect("connect");
    let first = migrate::migrate(&mut client).await.expect("first run");
    assert_eq!(first.applied.len(), migrate::MIGRATIONS.len());
    let second = migrate::migrate(&mut client).await.expect("second run");
    assert!(second.applied.is_empty(), "second run applied {:?}", second.applied);
    let recorded = db.psql("SELECT count(*) FROM philotes.schema_migrations").expect("query");
    assert_eq!(recorded, migrate::MIGRATIONS.len().to_string());
    assert_eq!(db.psql("SELECT to_regclass('philotes.pipelines') IS NOT NULL").expect("query"), "t");
}

#[tokio::test]
async fn concurrent_migrators_apply_each_file_once() {
    let db = philotes_testkit::shared().database("migrate_concurrent").expect("database");
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut client = db.connect().await.expect("connect");
        tasks.push(tokio::spawn(async move { migrate::migrate(&mut client).await }));
    }
    let mut applied = 0;
    for task in tasks {
        applied += task.await.expect("task").expect("migrate").applied.len();
    }
    assert_eq!(applied, migrate::MIGRATIONS.len(), "each file applied by exactly one migrator");
}

#[tokio::test]
async fn an_edited_migration_is_refused_and_changes_nothing() {
    let db = philotes_testkit::shared().database("migrate_edited").expect("database");
    let mut client = db.connect().await.expect("connect");
    let original = [Migration { version: 1, name: "0001_a.sql", sql: "CREATE TABLE public.a (x int);" }];
    migrate::apply(&mut client, &original).await.expect("first");
    let edited = [
        Migration { version: 1, name: "0001_a.sql", sql: "CREATE TABLE public.a (x bigint);" },
        Migration { version: 2, name: "0002_b.sql", sql: "CREATE TABLE public.b (x int);" },
    ];
    let err = migrate::apply(&mut client, &edited).await.expect_err("edited file refused");
    assert!(matches!(err, MigrateError::Edited { .. }), "{err}");
    assert!(err.to_string().contains("0001_a.sql"), "{err}");
    assert_eq!(db.psql("SELECT to_regclass('public.b') IS NULL").expect("query"), "t", "nothing applied");
}

#[tokio::test]
async fn a_failing_migration_leaves_the_database_as_it_was() {
    let db = philotes_testkit::shared().database("migrate_failing").expect("database");
    let mut client = db.connect().await.expect("connect");
    let broken = [
        Migration { version: 1, name: "0001_ok.sql", sql: "CREATE TABLE public.ok (x int);" },
        Migration { version: 2, name: "0002_broken.sql", sql: "CREATE TABLE public.broken (x no_such_type);" },
    ];
    let err = migrate::apply(&mut client, &broken).await.expect_err("broken file fails");
    assert!(err.to_string().contains("0002_broken.sql"), "{err}");
    assert_eq!(db.psql("SELECT to_regclass('public.ok') IS NULL").expect("query"), "t", "rolled back whole");
}

#[tokio::test]
async fn segment_payloads_are_lz4_compressed_where_the_server_has_lz4() {
    let db = philotes_testkit::shared().database("migrate_lz4").expect("database");
    let mut client = db.connect().await.expect("connect");
    migrate::migrate(&mut client).await.expect("migrate");
    // Debian's PostgreSQL is built with lz4 (the test servers are), so 0003 took effect here.
    let (compression, storage) = (
        db.psql("SELECT attcompression FROM pg_attribute WHERE attrelid = 'philotes.segments'::regclass AND attname = 'payload'")
            .expect("query"),
        db.psql("SELECT attstorage FROM pg_attribute WHERE attrelid = 'philotes.segments'::regclass AND attname = 'payload'")
            .expect("query"),
    );
    assert_eq!((compression.as_str(), storage.as_str()), ("l", "x"), "payload: lz4, stored extended");
}
