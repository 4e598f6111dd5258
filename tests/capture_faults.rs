//! The capture under crashes and lost connections: the real `philotes run --role capture` binary killed (SIGKILL),
//! stopped (SIGTERM) and cut off from its walsender and buffer sessions mid-workload, and a second capture of the
//! same pipeline started beside the first. The reference is the workload's plan: every committed insert and
//! update in the buffer exactly once, nothing of a rolled-back transaction, and the slot never confirming a
//! transaction the buffer did not hold.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use philotes_schemas::Value;
use philotes_stages::position::{Lsn, Position};
use philotes_testkit::TestDatabase;
use tokio_postgres::types::PgLsn;

use crate::support::{
    checkpoint, connect, database, durable_count, durable_events, lsn, pipeline_file, slot_name, start_capture,
    wait_durable, wait_for, Philotes, Stored,
};

// ---------------------------------------------------------------------------------------------------------
// 2. and 3. Crashes and lost connections: exactly once.
// ---------------------------------------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*), seeded from the clock and printed, so a failure can be
/// replayed by setting `PHILOTES_TEST_SEED`.
struct Rng(u64);

impl Rng {
    fn from_env_or_clock() -> Self {
        let seed = std::env::var("PHILOTES_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
        });
        println!("PHILOTES_TEST_SEED={seed}");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One transaction of the exactly-once workload.
#[derive(Debug, Clone)]
struct Txn {
    number: i32,
    first_id: i64,
    rows: i64,
    /// Ids (inserted earlier) whose payload this transaction appends '+' to.
    updates: Vec<i64>,
    rollback: bool,
}

/// Rolled-back transactions insert ids from here on: none of them may reach the buffer.
const ROLLED_BACK_IDS: i64 = 10_000_000;

fn plan_workload(rng: &mut Rng, total_rows: i64, sizes: &[i64]) -> Vec<Txn> {
    let mut plan = Vec::new();
    let (mut next_id, mut inserted, mut number) = (1, 0, 0);
    let mut rolled_back_id = ROLLED_BACK_IDS;
    while inserted < total_rows {
        number += 1;
        let rollback = number % 23 == 0;
        let rows = sizes[rng.below(sizes.len() as u64) as usize].min(total_rows - inserted);
        let updates = if number % 7 == 0 && next_id > 1 {
            (0..rng.below(20) + 1).map(|_| 1 + rng.below(next_id as u64 - 1) as i64).collect::<HashSet<_>>().into_iter().collect()
        } else {
            Vec::new()
        };
        if rollback {
            plan.push(Txn { number, first_id: rolled_back_id, rows: rows.min(500), updates, rollback });
            rolled_back_id += 500;
        } else {
            plan.push(Txn { number, first_id: next_id, rows, updates, rollback });
            next_id += rows;
            inserted += rows;
        }
    }
    plan
}

const PAYLOAD_PAD: usize = 40;

fn payload(id: i64) -> String {
    format!("row-{id}-{}", "x".repeat(PAYLOAD_PAD))
}

async fn run_workload(client: tokio_postgres::Client, plan: Vec<Txn>, pace: Duration) {
    for txn in plan {
        let mut sql = format!(
            "BEGIN; INSERT INTO kw SELECT g, {}, 'row-' || g || '-' || repeat('x', {PAYLOAD_PAD}) FROM generate_series({}, {}) g;",
            txn.number,
            txn.first_id,
            txn.first_id + txn.rows - 1
        );
        for id in &txn.updates {
            sql.push_str(&format!(" UPDATE kw SET payload = payload || '+' WHERE id = {id};"));
        }
        sql.push_str(if txn.rollback { " ROLLBACK;" } else { " COMMIT;" });
        client.batch_execute(&sql).await.expect("workload transaction");
        tokio::time::sleep(pace).await;
    }
}

/// Samples `(confirmed_flush_lsn, checkpoint commit LSN, checkpoint end LSN)` until `stop`.
async fn sample_slot(client: tokio_postgres::Client, slot: String, pipeline: String, stop: Arc<AtomicBool>) -> Vec<(Lsn, Lsn, Lsn)> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // Slot first, checkpoint after: the checkpoint only grows, so this order can never report a false breach.
        let confirmed = client
            .query_opt("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .expect("slot")
            .and_then(|r| r.get::<_, Option<PgLsn>>(0))
            .map(lsn);
        if let (Some(confirmed), Some((commit, end))) = (confirmed, checkpoint(&client, &pipeline).await) {
            samples.push((confirmed, commit, end));
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    samples
}

/// Checks the buffer against the workload plan: every committed insert and update exactly once, nothing of a
/// rolled-back transaction, whole transactions with contiguous seqs, in commit order.
fn check_exactly_once(stored: &[Stored], plan: &[Txn]) -> BTreeMap<i32, Lsn> {
    let positions: HashSet<Position> = stored.iter().map(|s| s.event.position()).collect();
    assert_eq!(positions.len(), stored.len(), "a position (commit_lsn, seq) is never stored twice");

    let mut inserts: HashMap<i64, usize> = HashMap::new();
    let mut updates: HashMap<i64, Vec<(Position, String)>> = HashMap::new();
    let mut txn_lsn: BTreeMap<i32, Lsn> = BTreeMap::new();
    let mut seqs: BTreeMap<Lsn, Vec<u64>> = BTreeMap::new();
    for s in stored {
        let e = &s.event;
        seqs.entry(e.commit_lsn).or_default().push(e.seq);
        let new = e.new.as_ref().expect("inserts and updates only");
        let (Value::Int64(id), Value::Int32(txn)) = (&new[0], &new[1]) else { panic!("unexpected row {new:?}") };
        let Value::Text(text) = &new[2] else { panic!("unexpected payload {new:?}") };
        match e.op.code() {
            'I' => {
                *inserts.entry(*id).or_default() += 1;
                assert_eq!(text, &payload(*id), "insert payload of {id}");
                let previous = txn_lsn.insert(*txn, e.commit_lsn);
                assert!(previous.is_none_or(|p| p == e.commit_lsn), "transaction {txn} split over two commit LSNs");
            }
            'U' => updates.entry(*id).or_default().push((e.position(), text.clone())),
            other => panic!("unexpected op {other}"),
        }
    }
    let committed: Vec<&Txn> = plan.iter().filter(|t| !t.rollback).collect();
    let expected_ids: i64 = committed.iter().map(|t| t.rows).sum();
    let doubled: Vec<_> = inserts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(doubled.is_empty(), "inserts stored twice: {doubled:?}");
    assert!(inserts.keys().all(|id| *id < ROLLED_BACK_IDS), "a rolled-back insert reached the buffer");
    let missing: Vec<i64> = (1..=expected_ids).filter(|id| !inserts.contains_key(id)).take(5).collect();
    assert!(missing.is_empty(), "inserts lost: {missing:?}… ({} of {expected_ids} stored)", inserts.len());

    let mut expected_updates: HashMap<i64, usize> = HashMap::new();
    for txn in &committed {
        for id in &txn.updates {
            *expected_updates.entry(*id).or_default() += 1;
        }
    }
    for (id, n) in &expected_updates {
        let got = updates.get_mut(id).map_or_else(Vec::new, std::mem::take);
        assert_eq!(got.len(), *n, "updates of id {id}");
        let mut got = got;
        got.sort();
        for (k, (_, text)) in got.iter().enumerate() {
            assert_eq!(text, &format!("{}{}", payload(*id), "+".repeat(k + 1)), "update {k} of id {id}");
        }
    }
    assert!(updates.values().all(Vec::is_empty), "updates of ids never updated (or of rolled-back transactions)");

    // Whole transactions: seqs 0..n, and commit LSNs in the order the workload committed.
    for (commit, mut list) in seqs {
        list.sort_unstable();
        assert!(list.iter().enumerate().all(|(i, s)| *s == i as u64), "transaction at {commit} has gaps in its seqs");
    }
    let lsns: Vec<Lsn> = txn_lsn.values().copied().collect();
    assert!(lsns.windows(2).all(|w| w[0] < w[1]), "commit LSNs follow the workload's commit order");
    assert_eq!(txn_lsn.len(), committed.iter().filter(|t| t.rows > 0).count(), "every committed transaction");
    txn_lsn
}

/// The slot never confirmed a transaction the buffer did not hold: no buffered commit lies between a sample's
/// checkpoint and its confirmed position. Returns how many samples had the slot past the checkpoint's end LSN
/// (legitimately: keepalive positions with no change of ours in between).
fn check_slot_never_passed_the_buffer(samples: &[(Lsn, Lsn, Lsn)], commits: &[Lsn]) -> usize {
    assert!(!samples.is_empty(), "the slot was sampled");
    let mut ahead = 0;
    for (confirmed, commit, end) in samples {
        assert!(end >= commit, "checkpoint end {end} before commit {commit}");
        if let Some(lost) = commits.iter().find(|c| *c > commit && *c < confirmed) {
            panic!("the slot confirmed {confirmed} while the buffer's checkpoint was {commit}: transaction {lost} was released before it was durable");
        }
        if confirmed > end {
            ahead += 1;
        }
    }
    ahead
}

/// The pipeline's capture lock in `pg_locks` (the advisory lock `store::pipelines` takes), granted or awaited.
const CAPTURE_LOCK: &str = "FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid = hashtext('philotes.capture')::oid AND objid = hashtext($1)::oid";

/// The backend that holds the pipeline's capture lock, if one does.
async fn capture_lock_holder(client: &tokio_postgres::Client, pipeline: &str) -> Option<i32> {
    let sql = format!("SELECT pid {CAPTURE_LOCK} AND granted");
    client.query_opt(sql.as_str(), &[&pipeline]).await.expect("pg_locks").map(|r| r.get(0))
}

/// How many backends wait for the pipeline's capture lock.
async fn capture_lock_waiters(client: &tokio_postgres::Client, pipeline: &str) -> i64 {
    let sql = format!("SELECT count(*) {CAPTURE_LOCK} AND NOT granted");
    client.query_one(sql.as_str(), &[&pipeline]).await.expect("pg_locks").get(0)
}

const KILL_SEGMENT: &str = "{ max_events: 200, max_bytes: 32KiB, max_age: 20ms }";

/// The setting of an exactly-once test: its database with table `kw`, a client, a pipeline file with small
/// segments, the seeded generator, a workload plan of `total_rows` in transactions of `sizes`, and how many
/// changes the plan commits.
struct KwTest {
    db: TestDatabase,
    client: tokio_postgres::Client,
    file: std::path::PathBuf,
    rng: Rng,
    plan: Vec<Txn>,
    expected: i64,
}

async fn kw_test(hint: &str, total_rows: i64, sizes: &[i64]) -> KwTest {
    let db = database(hint);
    db.psql("CREATE TABLE kw (id bigint PRIMARY KEY, txn int NOT NULL, payload text NOT NULL)").expect("schema");
    let client = connect(&db).await;
    let file = pipeline_file(&db, &["public.kw"], &[], KILL_SEGMENT);
    let mut rng = Rng::from_env_or_clock();
    let plan = plan_workload(&mut rng, total_rows, sizes);
    let expected: i64 = plan.iter().filter(|t| !t.rollback).map(|t| t.rows + t.updates.len() as i64).sum();
    KwTest { db, client, file, rng, plan, expected }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_killed_five_times_and_stopped_once_mid_workload_enqueues_every_committed_transaction_exactly_once() {
    // Mostly small transactions, some large enough to spill (a 128 KiB spill bound is ~1,200 rows here).
    let KwTest { db, client, file, mut rng, plan, expected } = kw_test("cap_kill", 100_000, &[1, 2, 5, 20, 100, 400, 1_500, 6_000, 15_000]).await;

    let mut capture = start_capture(&db, &file).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_slot(connect(&db).await, slot_name(&db), db.name().to_string(), stop.clone()));
    let workload = tokio::spawn(run_workload(connect(&db).await, plan.clone(), Duration::from_millis(15)));
    let started = Instant::now();

    // Which session holds the pipeline's capture lock just before each kill: a capture takes it as it starts.
    let mut holders = Vec::new();
    for run in 1..=5 {
        let wait = Duration::from_millis(400 + rng.below(2_000));
        tokio::time::sleep(wait).await;
        capture.assert_running();
        holders.push(capture_lock_holder(&client, db.name()).await);
        capture.kill();
        println!("killed run {} after {wait:?} ({} changes durable)", run - 1, durable_count(&client, db.name()).await);
        capture = Philotes::capture(&file, run);
    }
    // And a clean stop at a random moment, mid-transaction as likely as not: it must drain and exit 0.
    tokio::time::sleep(Duration::from_millis(200 + rng.below(1_000))).await;
    holders.push(capture_lock_holder(&client, db.name()).await);
    capture.stop_cleanly().await;
    println!("stopped run 5 cleanly ({} changes durable)", durable_count(&client, db.name()).await);
    capture = Philotes::capture(&file, 6);
    workload.await.expect("workload");
    let workload_done = started.elapsed();
    wait_durable(&client, db.name(), expected, &capture).await;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.expect("sampler");
    capture.stop_cleanly().await;
    println!("workload {workload_done:?}, all durable after {:?}", started.elapsed());

    let all = philotes_stages::store::segments::all(&client, db.name()).await.expect("segments");
    let stored = durable_events(&client, db.name()).await;
    assert_eq!(all.iter().map(|s| i64::from(s.row.events)).sum::<i64>(), stored.len() as i64, "nothing left above the checkpoint after a clean stop");
    assert_eq!(stored.len() as i64, expected, "changes in the buffer");
    let txn_lsn = check_exactly_once(&stored, &plan);
    let commits: Vec<Lsn> = txn_lsn.values().copied().collect();
    let ahead = check_slot_never_passed_the_buffer(&samples, &commits);
    println!("{} slot samples, {ahead} with the slot past the checkpoint's end LSN on a keepalive", samples.len());
    // Runs 1 to 5 were restarts: a run that started holds the lock in a session of its own, not its predecessor's.
    let restarts = holders.windows(2).filter(|w| w[1].is_some() && w[1] != w[0]).count();
    assert!(restarts >= 4, "the restarted captures resumed ({restarts} of 5 held the capture lock: {holders:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_walsender_and_buffer_sessions_are_reconnected_by_the_same_process_and_nothing_is_lost() {
    let KwTest { db, client, file, plan, expected, .. } = kw_test("cap_walsender", 30_000, &[1, 10, 100, 1_000, 4_000]).await;

    let capture = start_capture(&db, &file).await;
    let pid = capture.pid();
    let workload_client = connect(&db).await;
    let mut ours: Vec<i32> = Vec::new();
    for c in [&client, &workload_client] {
        ours.push(c.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0));
    }
    let workload = tokio::spawn(run_workload(workload_client, plan.clone(), Duration::from_millis(20)));
    let slot = slot_name(&db);
    for round in 1..=3 {
        // Mid-stream: once more changes arrived since the last round.
        let floor = durable_count(&client, db.name()).await + 1;
        wait_for("changes to arrive", Duration::from_secs(60), || async {
            (durable_count(&client, db.name()).await >= floor).then_some(())
        })
        .await;
        let old: i32 = client
            .query_one("SELECT pg_terminate_backend(active_pid)::int * active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .expect("terminate walsender")
            .get(0);
        assert!(old > 0, "round {round}: a walsender was terminated");
        if round == 2 {
            // The capture's SQL sessions too (buffer writes, type catalog): every backend but the test's own. The
            // walsender was just terminated, so the capture may be between sessions: retry until some were there.
            wait_for("the capture's SQL sessions to terminate", Duration::from_secs(60), || async {
                let terminated: i64 = client
                    .query_one(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
                         WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> ALL($1)",
                        &[&ours],
                    )
                    .await
                    .expect("terminate sessions")
                    .get(0);
                (terminated > 0).then_some(())
            })
            .await;
        }
        wait_for("a new walsender", Duration::from_secs(60), || async {
            let row = client
                .query_one("SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                .await
                .expect("slot");
            let now: i32 = row.get(0);
            (now != 0 && now != old).then_some(())
        })
        .await;
        capture.assert_running();
    }
    workload.await.expect("workload");
    wait_durable(&client, db.name(), expected, &capture).await;
    assert_eq!(capture.pid(), pid);
    // Each round saw a new walsender while the process stayed the same: three reconnects from the checkpoint.
    capture.stop_cleanly().await;
    let stored = durable_events(&client, db.name()).await;
    assert_eq!(stored.len() as i64, expected);
    check_exactly_once(&stored, &plan);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_capture_of_the_same_pipeline_waits_and_never_deletes_what_the_first_is_spilling() {
    // Big transactions only: the first capture is spilling (segments above its checkpoint) most of the time.
    let KwTest { db, client, file, mut rng, plan, expected } = kw_test("cap_second", 60_000, &[6_000, 10_000]).await;

    let first = start_capture(&db, &file).await;
    let workload = tokio::spawn(run_workload(connect(&db).await, plan.clone(), Duration::from_millis(5)));
    // The second one keeps trying to start while the first streams (a rolling deploy, an operator's mistake).
    let second = Philotes::capture(&file, 1);
    second
        .wait_until("the second capture to wait for the capture lock", Duration::from_secs(30), || async {
            capture_lock_waiters(&client, db.name()).await > 0
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500 + rng.below(1_500))).await;
    second.assert_running();
    assert_eq!(capture_lock_waiters(&client, db.name()).await, 1, "the second capture still waits");
    first.kill();
    workload.await.expect("workload");
    wait_durable(&client, db.name(), expected, &second).await;
    second.stop_cleanly().await;
    let stored = durable_events(&client, db.name()).await;
    assert_eq!(stored.len() as i64, expected);
    check_exactly_once(&stored, &plan);
}

