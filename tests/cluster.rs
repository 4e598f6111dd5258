//! The harness itself: what every other integration test relies on.

use std::sync::Barrier;

use crate::support::wait_for;

#[test]
fn two_tests_in_parallel_each_get_their_own_database_on_the_same_cluster() {
    let cluster = philotes_testkit::shared();
    let barrier = Barrier::new(2);
    let names: Vec<(String, u16)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let db = cluster.database("parallel").expect("database created");
                    db.psql(&format!("CREATE TABLE mine (who int); INSERT INTO mine VALUES ({i})")).expect("setup");
                    barrier.wait();
                    // Each database sees only its own row.
                    assert_eq!(db.psql("SELECT string_agg(who::text, ',') FROM mine").expect("query"), i.to_string());
                    barrier.wait();
                    (db.name().to_string(), db.cluster().port())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert_ne!(names[0].0, names[1].0, "each test gets its own database");
    assert_eq!(names[0].1, names[1].1, "on the same cluster");
}

#[test]
fn a_dropped_test_database_is_gone() {
    let cluster = philotes_testkit::shared();
    let db = cluster.database("dropped").expect("database created");
    let name = db.name().to_string();
    drop(db);
    let left = cluster.psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")).expect("query");
    assert_eq!(left, "0");
}

/// Resets `wal_sender_timeout` when dropped, so a failed wait never leaves the shared cluster changed.
struct ResetWalSenderTimeout;

impl Drop for ResetWalSenderTimeout {
    fn drop(&mut self) {
        let cluster = philotes_testkit::shared();
        cluster.psql("postgres", "ALTER SYSTEM RESET wal_sender_timeout").expect("reset");
        cluster.psql("postgres", "SELECT pg_reload_conf()").expect("reload");
    }
}

#[tokio::test]
async fn the_cluster_runs_with_logical_wal_and_alter_system_takes_effect() {
    let cluster = philotes_testkit::shared();
    assert_eq!(cluster.psql("postgres", "SHOW wal_level").expect("query"), "logical");
    // Settings live in an included file, so ALTER SYSTEM (postgresql.auto.conf) still wins over them.
    let _reset = ResetWalSenderTimeout;
    cluster.psql("postgres", "ALTER SYSTEM SET wal_sender_timeout = '61s'").expect("alter system");
    cluster.psql("postgres", "SELECT pg_reload_conf()").expect("reload");
    wait_for("ALTER SYSTEM to take effect", std::time::Duration::from_secs(5), || async {
        cluster.psql("postgres", "SHOW wal_sender_timeout").is_ok_and(|v| v == "61s")
    })
    .await;
}

#[tokio::test]
async fn a_test_database_accepts_async_connections() {
    let db = philotes_testkit::shared().database("async").expect("database created");
    let client = db.connect().await.expect("connect");
    let row = client.query_one("SELECT current_database()", &[]).await.expect("query");
    assert_eq!(row.get::<_, String>(0), db.name());
}
