//! The measurements of one run, each beside its baseline on the same data in the same run:
//! capture vs `pg_recvlogical` (same WAL), COPY into a buffer-like table, flush vs a plain `ArrowWriter` (same
//! rows), the flush of four tables with 1 and 2 flushers (vs itself with 1), and end to end vs `pg_recvlogical`
//! (same WAL), the initial snapshot of a filled table vs a binary `COPY … TO STDOUT` of it, and the mirror flush
//! vs the changelog flush of the same buffer (with its compaction vs a plain ArrowWriter rewrite).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use philotes_testkit::{Cluster, TestDatabase};
use tokio_postgres::Client;

use crate::procs::{self, PipelineFile, Philotes};
use crate::workload::{self, Workload, TABLE, TABLES};

/// What every scenario needs.
pub struct Env {
    /// The cluster (fsync off, see the header).
    pub cluster: Cluster,
    /// Server programs (pg_recvlogical).
    pub pg_bin: PathBuf,
    /// Scratch space for pipeline files, logs and warehouses; deleted with the cluster.
    pub work: PathBuf,
    /// Rows per workload.
    pub rows: u64,
    /// Rows of the table the snapshot scenario reads (`BENCH_SNAPSHOT_ROWS`).
    pub snapshot_rows: u64,
    /// The ArrowWriter baseline binary, when the flush scenario runs.
    pub arrow_writer: Option<PathBuf>,
}

impl Env {
    /// A generous bound for any one timed step: a minute plus 5k rows/s.
    pub fn timeout(&self) -> Duration {
        timeout(self.rows)
    }
}

/// A minute plus 5k rows/s for `rows` rows.
fn timeout(rows: u64) -> Duration {
    Duration::from_secs(60 + rows / 5_000)
}

/// A fresh database with a connection to it.
pub struct Db {
    /// The database (dropped with its slots at the end).
    pub db: TestDatabase,
    /// A connection for setup, polling and checks.
    pub client: Client,
}

impl Db {
    /// Creates a database; its name is also the pipeline name (unique, `[a-z0-9_]`).
    pub async fn create(env: &Env, hint: &str) -> anyhow::Result<Self> {
        let db = env.cluster.database(hint)?;
        let client = db.connect().await?;
        Ok(Self { db, client })
    }

    /// Flushes dirty buffers before a timed step, so that no step pays for the one before it.
    pub async fn checkpoint(&self) -> anyhow::Result<()> {
        self.client.batch_execute("CHECKPOINT").await?;
        Ok(())
    }

    pub fn dir(&self, env: &Env) -> anyhow::Result<PathBuf> {
        let dir = env.work.join(self.db.name());
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

/// Capture: `pg_recvlogical` and `philotes --role capture` each drain the same WAL from their own slot.
#[derive(Debug, Clone, Copy)]
pub struct Capture {
    /// The workload that wrote the WAL (its own speed, for context).
    pub workload_seconds: f64,
    /// WAL bytes of the workload.
    pub wal_bytes: i64,
    /// `pg_recvlogical` seconds.
    pub recvlogical: f64,
    /// philotes capture seconds (start of the process → checkpoint holds the last transaction).
    pub philotes: f64,
}

/// Runs the workload once and times both readers on it. Leaves the buffer holding every change (the flush
/// scenario's input) and the capture stopped.
pub async fn capture(env: &Env, db: &mut Db) -> anyhow::Result<Capture> {
    let name = db.db.name().to_string();
    let (recv_slot, philotes_slot) = (format!("{name}_recv"), procs::slot(&name));
    workload::prepare(&db.client, &[TABLE], &[&recv_slot, &philotes_slot]).await?;
    let file = PipelineFile::write(&db.dir(env)?, "capture", &name, &db.db.url(), &[TABLE], "bench_capture", None)?;
    procs::migrate(&file)?;
    let work: Workload = workload::run(&mut db.client, &[TABLE], env.rows).await?;

    db.checkpoint().await?;
    let recvlogical = procs::recvlogical(&env.pg_bin, env.cluster.port(), db.db.name(), &recv_slot, &work.end_lsn, env.timeout()).await?;
    slot_passed(&db.client, &recv_slot, &work.last_commit_floor).await?;

    let philotes = fill_buffer(env, db, &file, &work).await?;
    Ok(Capture { workload_seconds: work.seconds, wal_bytes: work.wal_bytes, recvlogical, philotes })
}

/// Runs `philotes --role capture` from its slot until its checkpoint holds the workload's last transaction, and
/// stops it; the seconds from process start. The buffer must then hold exactly the workload's changes.
async fn fill_buffer(env: &Env, db: &Db, file: &PipelineFile, work: &Workload) -> anyhow::Result<f64> {
    let name = db.db.name();
    db.checkpoint().await?;
    let started = Instant::now();
    let mut capture = [Philotes::start(file, "capture", "capture")?];
    let done = format!(
        "SELECT coalesce((SELECT commit_lsn >= '{floor}'::pg_lsn FROM philotes.checkpoints WHERE pipeline = '{name}'), false)",
        floor = work.last_commit_floor
    );
    let seconds = procs::wait_true(&db.client, &done, &mut capture, started, env.timeout()).await?;
    capture[0].stop()?;

    let buffered: i64 = db
        .client
        .query_one("SELECT coalesce(sum(events), 0)::bigint FROM philotes.segments WHERE pipeline = $1", &[&name])
        .await?
        .get(0);
    ensure!(buffered == i64::try_from(env.rows)?, "the buffer holds {buffered} changes after the capture, expected {}", env.rows);
    Ok(seconds)
}

/// Buffer baseline: one binary COPY of N rows with a 200-byte payload into a logged table shaped like
/// `philotes.segments` (its columns, defaults and indexes: `LIKE … INCLUDING DEFAULTS INCLUDING INDEXES`), with
/// the segment writer's own COPY statement and column types (`store::segments::COPY_IN`), so the baseline
/// writes every column the capture writes.
pub async fn copy(env: &Env, db: &mut Db) -> anyhow::Result<f64> {
    use philotes_stages::store::segments::{COPY_IN, COPY_TYPES};
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::{PgLsn, ToSql};

    let migrated: bool = db.client.query_one("SELECT to_regclass('philotes.segments') IS NOT NULL", &[]).await?.get(0);
    if !migrated {
        let name = db.db.name().to_string();
        let file = PipelineFile::write(&db.dir(env)?, "copy", &name, &db.db.url(), &[TABLE], "bench_copy", None)?;
        procs::migrate(&file)?;
    }
    db.client
        .batch_execute("CREATE TABLE public.bench_copy (LIKE philotes.segments INCLUDING DEFAULTS INCLUDING INDEXES)")
        .await
        .context("creating the COPY target")?;
    let statement = COPY_IN.replacen("COPY philotes.segments ", "COPY public.bench_copy ", 1);
    ensure!(statement != COPY_IN, "the segment writer's COPY no longer starts with `COPY philotes.segments`: {COPY_IN}");
    db.checkpoint().await?;
    let started = Instant::now();
    let tx = db.client.transaction().await?;
    let sink = tx.copy_in(statement.as_str()).await?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    futures::pin_mut!(writer);
    let mut payload = [0u8; 200];
    let committed = std::time::SystemTime::now();
    for i in 0..env.rows {
        // A payload that changes with every row (nothing for a compressor to find, like MessagePack of real rows).
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for chunk in payload.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let lsn = PgLsn::from(0x1_0000_0000 + i * 256);
        let seq = i64::try_from(i)?;
        // One value per column of the writer's COPY (a column added there fails to compile here); no trace context,
        // as the capture writes none without an OTLP endpoint, and a commit time as it always writes.
        let row: [&(dyn ToSql + Sync); COPY_TYPES.len()] = [
            &"bench", &"public", &TABLE, &1i32, &lsn, &seq, &lsn, &seq, &1i32, &200i32, &&payload[..], &None::<&str>,
            &committed,
        ];
        writer.as_mut().write(&row).await?;
    }
    let written = writer.finish().await?;
    tx.commit().await?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(written == env.rows, "COPY wrote {written} rows, expected {}", env.rows);
    db.client.batch_execute("DROP TABLE public.bench_copy").await?;
    Ok(seconds)
}

/// Flush: the buffer the capture filled, drained by `philotes --role flusher` with 1 worker and then (the same
/// segments put back) with `flush.workers: 2`, beside the ArrowWriter baseline on the rows the first flush wrote.
#[derive(Debug, Clone, Copy)]
pub struct Flush {
    /// `flush.workers: 1` seconds (process start → buffer empty).
    pub one_worker: f64,
    /// `flush.workers: 2` seconds.
    pub two_workers: f64,
    /// ArrowWriter seconds (write + close, data already in memory).
    pub arrow_writer: f64,
    /// Bytes of Parquet the flusher wrote (data files of the first flush).
    pub philotes_bytes: u64,
    /// Bytes of the ArrowWriter's file.
    pub arrow_writer_bytes: u64,
}

/// Runs the flush scenario on a buffer filled by [`capture`].
pub async fn flush(env: &Env, db: &mut Db, helper: &Path) -> anyhow::Result<Flush> {
    let name = db.db.name().to_string();
    save_buffer(db).await?;
    let mut seconds = [0.0; 2];
    let mut first_table = None;
    for (i, workers) in [1usize, 2].into_iter().enumerate() {
        if i > 0 {
            restore_buffer(db).await?;
        }
        let namespace = format!("bench_flush_w{workers}");
        let file = PipelineFile::write(&db.dir(env)?, &format!("flush-w{workers}"), &name, &db.db.url(), &[TABLE], &namespace, Some(workers))?;
        seconds[i] = drain(env, db, &[file]).await?;
        let table = iceberg_table(&db.client, &namespace, TABLE).await?;
        ensure!(table.records == env.rows, "Iceberg table {namespace}.{TABLE} holds {} rows, expected {}", table.records, env.rows);
        if i == 0 {
            first_table = Some(table);
        }
    }
    let table = first_table.context("first flush")?;
    let scratch = db.dir(env)?;
    let baseline = procs::arrow_writer(helper, &table.location, &scratch)?;
    ensure!(baseline.rows == env.rows, "the ArrowWriter baseline read {} rows from {}, expected {}", baseline.rows, table.location.display(), env.rows);
    drop_saved_buffer(db).await?;
    Ok(Flush {
        one_worker: seconds[0],
        two_workers: seconds[1],
        arrow_writer: baseline.seconds,
        philotes_bytes: parquet_bytes(&table.location)?,
        arrow_writer_bytes: baseline.bytes,
    })
}

/// Flush of several tables: N changes over the four [`TABLES`] (N/4 each), so that flushers can hold several
/// table leases at once, which one table (one lease) cannot show. The same buffer is drained three times, each
/// into a namespace of its own: one process with `flush.workers: 1`, one with `flush.workers: 2`, and two
/// processes with `flush.workers: 1` each (scale-out across processes, as deployed).
#[derive(Debug, Clone, Copy)]
pub struct FlushTables {
    /// One process, `flush.workers: 1` (process start → buffer empty).
    pub one_worker: f64,
    /// One process, `flush.workers: 2`.
    pub two_workers: f64,
    /// Two processes, `flush.workers: 1` each (first start → buffer empty).
    pub two_processes: f64,
}

/// Runs the multi-table flush scenario in its own database: the workload over [`TABLES`] and an untimed
/// capture fill the buffer, which is then drained as [`FlushTables`] says.
pub async fn flush_tables(env: &Env, db: &mut Db) -> anyhow::Result<FlushTables> {
    let name = db.db.name().to_string();
    workload::prepare(&db.client, &TABLES, &[&procs::slot(&name)]).await?;
    let capture = PipelineFile::write(&db.dir(env)?, "capture", &name, &db.db.url(), &TABLES, "bench_tables_capture", None)?;
    procs::migrate(&capture)?;
    let work = workload::run(&mut db.client, &TABLES, env.rows).await?;
    fill_buffer(env, db, &capture, &work).await?;
    save_buffer(db).await?;

    // (label, processes, flush.workers per process)
    let setups = [("w1", 1, 1), ("w2", 1, 2), ("p2", 2, 1)];
    let mut seconds = [0.0; 3];
    for (i, (label, processes, workers)) in setups.into_iter().enumerate() {
        if i > 0 {
            restore_buffer(db).await?;
        }
        let namespace = format!("bench_tables_{label}");
        let files = (1..=processes)
            .map(|p| {
                let file_name = format!("flush-tables-{label}-{p}");
                PipelineFile::write(&db.dir(env)?, &file_name, &name, &db.db.url(), &TABLES, &namespace, Some(workers))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        seconds[i] = drain(env, db, &files).await?;
        for (t, table) in TABLES.iter().enumerate() {
            let expected = workload::table_rows(env.rows, TABLES.len(), t);
            let records = iceberg_table(&db.client, &namespace, table).await?.records;
            ensure!(records == expected, "Iceberg table {namespace}.{table} holds {records} rows, expected {expected}");
        }
    }
    drop_saved_buffer(db).await?;
    Ok(FlushTables { one_worker: seconds[0], two_workers: seconds[1], two_processes: seconds[2] })
}

/// Mirror flush: one buffer of N changes on [`TABLE`] (70% inserts, 20% updates of rows an earlier flush
/// wrote, 10% deletes) drained twice, each into a namespace of its own, `flush.workers: 1`: as a changelog,
/// then as a mirror (fold per key, equality deletes, row-delta commit). Then the mirror table is compacted
/// (`philotes compact`), beside a plain ArrowWriter rewriting the compacted file's rows.
#[derive(Debug, Clone, Copy)]
pub struct MirrorFlush {
    /// The changelog flush (process start → buffer empty).
    pub changelog: f64,
    /// The mirror flush of the same buffer.
    pub mirror: f64,
    /// `philotes compact` of the mirror table (process start → exit).
    pub compact: f64,
    /// ArrowWriter reading and writing the compacted rows.
    pub arrow_writer: f64,
    /// Rows of the compacted table (the source's rows).
    pub live_rows: u64,
}

/// Runs the mirror scenario in its own database.
pub async fn mirror(env: &Env, db: &mut Db, helper: &Path) -> anyhow::Result<MirrorFlush> {
    let name = db.db.name().to_string();
    workload::prepare(&db.client, &[TABLE], &[&procs::slot(&name)]).await?;
    let capture = PipelineFile::write(&db.dir(env)?, "capture", &name, &db.db.url(), &[TABLE], "bench_mirror_capture", None)?;
    procs::migrate(&capture)?;
    let work = workload::run_mixed(&mut db.client, env.rows).await?;
    fill_buffer(env, db, &capture, &work).await?;
    save_buffer(db).await?;
    let changelog = PipelineFile::write(&db.dir(env)?, "flush-changelog", &name, &db.db.url(), &[TABLE], "bench_changelog", Some(1))?;
    let changelog_seconds = drain(env, db, &[changelog]).await?;
    restore_buffer(db).await?;
    let mirror = PipelineFile::write(&db.dir(env)?, "flush-mirror", &name, &db.db.url(), &[TABLE], "bench_mirror", Some(1))?.mirror()?;
    let mirror_seconds = drain(env, db, std::slice::from_ref(&mirror)).await?;
    drop_saved_buffer(db).await?;

    db.checkpoint().await?;
    let compact = procs::compact(&mirror, TABLE)?;
    let table = iceberg_table(&db.client, "bench_mirror", TABLE).await?;
    let live_rows = workload::mixed_live_rows(env.rows);
    ensure!(table.records == live_rows, "the compacted mirror holds {} rows, the source {live_rows}", table.records);
    // The compacted file is the newest data file: the baseline reads and writes its rows.
    let newest = newest_parquet(&table.location.join("data"))?;
    let scratch = db.dir(env)?.join("compacted");
    std::fs::create_dir_all(&scratch)?;
    std::fs::copy(&newest, scratch.join("compacted.parquet"))?;
    let baseline = procs::arrow_writer(helper, &scratch, &db.dir(env)?)?;
    ensure!(baseline.rows == live_rows, "the ArrowWriter baseline read {} rows, expected {live_rows}", baseline.rows);
    Ok(MirrorFlush { changelog: changelog_seconds, mirror: mirror_seconds, compact, arrow_writer: baseline.seconds, live_rows })
}

/// A changelog flush of one buffer into an unpartitioned table and into a partitioned one.
pub struct PartitionFlush {
    /// The unpartitioned flush (process start → buffer empty).
    pub plain: f64,
    /// The flush of the same buffer into a table partitioned by [`PARTITION_SPEC`].
    pub partitioned: f64,
    /// Data files of each table.
    pub plain_files: u64,
    pub partitioned_files: u64,
}

/// The partition spec of the partition scenario: the bench rows are a second apart, so a million rows span
/// twelve days, each split into 16 buckets.
pub const PARTITION_SPEC: &str = "\"day(created_at)\", \"bucket(16, id)\"";

/// The mixed workload's buffer drained by one flusher (`flush.workers: 1`) as a changelog, then again into a
/// changelog partitioned by [`PARTITION_SPEC`] (fanout: one file per partition per flush).
pub async fn partition(env: &Env, db: &mut Db) -> anyhow::Result<PartitionFlush> {
    let name = db.db.name().to_string();
    workload::prepare(&db.client, &[TABLE], &[&procs::slot(&name)]).await?;
    let capture = PipelineFile::write(&db.dir(env)?, "capture", &name, &db.db.url(), &[TABLE], "bench_partition_capture", None)?;
    procs::migrate(&capture)?;
    let work = workload::run_mixed(&mut db.client, env.rows).await?;
    fill_buffer(env, db, &capture, &work).await?;
    save_buffer(db).await?;
    let plain = PipelineFile::write(&db.dir(env)?, "flush-plain", &name, &db.db.url(), &[TABLE], "bench_plain", Some(1))?;
    let plain_seconds = drain(env, db, &[plain]).await?;
    restore_buffer(db).await?;
    let partitioned = PipelineFile::write(&db.dir(env)?, "flush-partitioned", &name, &db.db.url(), &[TABLE], "bench_partitioned", Some(1))?
        .partition(TABLE, PARTITION_SPEC)?;
    let partitioned_seconds = drain(env, db, &[partitioned]).await?;
    drop_saved_buffer(db).await?;
    let plain_files = iceberg_table(&db.client, "bench_plain", TABLE).await?.data_files;
    let partitioned_files = iceberg_table(&db.client, "bench_partitioned", TABLE).await?.data_files;
    Ok(PartitionFlush { plain: plain_seconds, partitioned: partitioned_seconds, plain_files, partitioned_files })
}

/// The most recently written Parquet file under `dir`.
fn newest_parquet(dir: &Path) -> anyhow::Result<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<(std::time::SystemTime, PathBuf)>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, found)?;
            } else if path.extension().is_some_and(|e| e == "parquet") {
                found.push((std::fs::metadata(&path)?.modified()?, path));
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    walk(dir, &mut found)?;
    found.into_iter().max_by_key(|(modified, _)| *modified).map(|(_, p)| p).with_context(|| format!("no parquet file under {}", dir.display()))
}

/// Copies the pipeline's segments aside (`public.bench_saved_segments`), so the same buffer can be drained
/// again by [`restore_buffer`].
async fn save_buffer(db: &Db) -> anyhow::Result<()> {
    let name = db.db.name();
    db.client
        // `LIKE … INCLUDING STORAGE INCLUDING COMPRESSION`: the payloads stay stored as philotes stores them
        // (lz4); a plain `CREATE TABLE AS` would store them pglz-compressed, and the segments put back would stay
        // so, and every drain after the first would pay for pglz in Postgres.
        .batch_execute(&format!(
            "CREATE TABLE public.bench_saved_segments (LIKE philotes.segments INCLUDING STORAGE INCLUDING COMPRESSION);
             INSERT INTO public.bench_saved_segments SELECT * FROM philotes.segments WHERE pipeline = '{name}'"
        ))
        .await
        .context("saving the buffer for the next flush")
}

/// Puts the saved segments back into the drained buffer and clears the watermarks, so the next flusher starts
/// as the first did (every table due, nothing flushed yet); it writes into a new namespace.
async fn restore_buffer(db: &Db) -> anyhow::Result<()> {
    let name = db.db.name();
    db.client
        .batch_execute(&format!(
            "DELETE FROM philotes.table_watermarks WHERE pipeline = '{name}';
             INSERT INTO philotes.segments SELECT * FROM public.bench_saved_segments;"
        ))
        .await
        .context("putting the buffer back")
}

async fn drop_saved_buffer(db: &Db) -> anyhow::Result<()> {
    db.client.batch_execute("DROP TABLE public.bench_saved_segments").await?;
    Ok(())
}

/// Starts one `philotes --role flusher` per file (each file has its own metrics port; the log is named after
/// the file) and times them from the first start until no segment of the pipeline is left (a flush deletes its
/// segments only after its Iceberg commit); then stops them.
async fn drain(env: &Env, db: &Db, files: &[PipelineFile]) -> anyhow::Result<f64> {
    let name = db.db.name();
    db.checkpoint().await?;
    let started = Instant::now();
    let mut flushers = files
        .iter()
        .map(|f| Philotes::start(f, "flusher", &f.path.file_stem().unwrap_or_default().to_string_lossy()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let done = format!("SELECT NOT EXISTS (SELECT 1 FROM philotes.segments WHERE pipeline = '{name}')");
    let seconds = procs::wait_true(&db.client, &done, &mut flushers, started, env.timeout()).await?;
    for flusher in &mut flushers {
        flusher.stop()?;
    }
    Ok(seconds)
}

/// End to end: `philotes run` (all roles) streams while the workload runs; the time from the workload's first
/// statement until the last row is in Iceberg (capture checkpoint past the last commit, buffer empty). Then
/// `pg_recvlogical` drains the same WAL from a slot created before the workload.
#[derive(Debug, Clone, Copy)]
pub struct EndToEnd {
    /// The workload alone (it runs during the measurement; philotes cannot beat it).
    pub workload_seconds: f64,
    /// philotes seconds (workload start → in Iceberg).
    pub philotes: f64,
    /// `pg_recvlogical` seconds.
    pub recvlogical: f64,
}

/// Runs the end-to-end scenario in its own database.
pub async fn end_to_end(env: &Env, db: &mut Db) -> anyhow::Result<EndToEnd> {
    let name = db.db.name().to_string();
    let (recv_slot, philotes_slot) = (format!("{name}_recv"), procs::slot(&name));
    workload::prepare(&db.client, &[TABLE], &[&recv_slot, &philotes_slot]).await?;
    let namespace = "bench_e2e";
    let file = PipelineFile::write(&db.dir(env)?, "e2e", &name, &db.db.url(), &[TABLE], namespace, None)?;
    procs::migrate(&file)?;
    let mut philotes = [Philotes::start(&file, "all", "e2e")?];
    // Untimed: the process is up and streaming from its slot before the workload starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let active: bool = db
            .client
            .query_one("SELECT coalesce((SELECT active FROM pg_replication_slots WHERE slot_name = $1), false)", &[&philotes_slot])
            .await?
            .get(0);
        if active {
            break;
        }
        philotes[0].ensure_running()?;
        if Instant::now() > deadline {
            bail!("philotes did not start streaming within 60 s; its log ends with:\n{}", philotes[0].log_tail(40));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    db.checkpoint().await?;
    let started = Instant::now();
    let work = workload::run(&mut db.client, &[TABLE], env.rows).await?;
    let done = format!(
        "SELECT coalesce((SELECT commit_lsn >= '{floor}'::pg_lsn FROM philotes.checkpoints WHERE pipeline = '{name}'), false)
                AND NOT EXISTS (SELECT 1 FROM philotes.segments WHERE pipeline = '{name}')",
        floor = work.last_commit_floor
    );
    let seconds = procs::wait_true(&db.client, &done, &mut philotes, started, env.timeout()).await?;
    philotes[0].stop()?;
    let table = iceberg_table(&db.client, namespace, TABLE).await?;
    ensure!(table.records == env.rows, "Iceberg table {namespace}.{TABLE} holds {} rows, expected {}", table.records, env.rows);

    db.checkpoint().await?;
    let recvlogical = procs::recvlogical(&env.pg_bin, env.cluster.port(), db.db.name(), &recv_slot, &work.end_lsn, env.timeout()).await?;
    slot_passed(&db.client, &recv_slot, &work.last_commit_floor).await?;
    Ok(EndToEnd { workload_seconds: work.seconds, philotes: seconds, recvlogical })
}

/// `snapshot.chunk_rows` of the snapshot scenario (the default).
pub const SNAPSHOT_CHUNK_ROWS: usize = 50_000;
/// `snapshot.workers` of the snapshot scenario (the default; chunks read at once: the one table in two key ranges).
pub const SNAPSHOT_WORKERS: usize = 2;

/// Snapshot: a table filled before any pipeline exists, read by a new pipeline with `snapshot: initial`
/// (`philotes run`, all roles) into Iceberg, beside a binary `COPY … TO STDOUT` of the same table drained to
/// nowhere: the cheapest way out of Postgres for those rows.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// Size of the table (heap, TOAST, free space map; `pg_table_size`), for context.
    pub table_bytes: i64,
    /// `COPY public.bench_rows TO STDOUT (FORMAT binary)` seconds, the bytes drained and dropped by the bench.
    pub copy: f64,
    /// Bytes the COPY sent.
    pub copy_bytes: u64,
    /// philotes seconds (process start → snapshot `done` and every row in Iceberg).
    pub philotes: f64,
    /// philotes' peak resident set (`VmHWM`), read when the rows were in Iceberg, before it was stopped.
    pub peak_rss_bytes: u64,
    /// Chunks the snapshot enqueued.
    pub chunks: i64,
}

/// Runs the snapshot scenario in its own database: fills [`TABLE`] with `env.snapshot_rows` rows (no slot, no
/// pipeline yet), `VACUUM ANALYZE`, times the COPY baseline, then a fresh pipeline's initial snapshot.
pub async fn snapshot(env: &Env, db: &mut Db) -> anyhow::Result<Snapshot> {
    use futures::TryStreamExt;

    let name = db.db.name().to_string();
    let rows = env.snapshot_rows;
    // The publication only: the pipeline creates its slot itself, as a new pipeline does.
    workload::prepare(&db.client, &[TABLE], &[]).await?;
    workload::run(&mut db.client, &[TABLE], rows).await?;
    db.client.batch_execute(&format!("VACUUM ANALYZE public.{TABLE}")).await.context("VACUUM ANALYZE")?;
    let row = db.client.query_one(&format!("SELECT count(*), pg_table_size('public.{TABLE}') FROM public.{TABLE}"), &[]).await?;
    let (count, table_bytes): (i64, i64) = (row.get(0), row.get(1));
    ensure!(count == i64::try_from(rows)?, "public.{TABLE} holds {count} rows, expected {rows}");

    db.checkpoint().await?;
    let started = Instant::now();
    let stream = db.client.copy_out(&format!("COPY public.{TABLE} TO STDOUT (FORMAT binary)")).await?;
    futures::pin_mut!(stream);
    let mut copy_bytes = 0u64;
    while let Some(bytes) = stream.try_next().await.context("COPY TO STDOUT")? {
        copy_bytes += bytes.len() as u64;
    }
    let copy = started.elapsed().as_secs_f64();

    let namespace = "bench_snapshot";
    let file = PipelineFile::write(&db.dir(env)?, "snapshot", &name, &db.db.url(), &[TABLE], namespace, None)?
        .snapshot_initial(SNAPSHOT_CHUNK_ROWS, SNAPSHOT_WORKERS)?;
    procs::migrate(&file)?;
    db.checkpoint().await?;
    let started = Instant::now();
    let mut philotes = [Philotes::start(&file, "all", "snapshot")?];
    // Done: every table's snapshot `done` (every chunk durable: committed straight into Iceberg, or enqueued) and
    // no segment left (each flush deletes its segments only after its Iceberg commit). A failed snapshot ends the
    // wait too, and is reported below.
    let done = format!(
        "SELECT coalesce((SELECT (bool_and(state = 'done') AND NOT EXISTS (SELECT 1 FROM philotes.segments WHERE pipeline = '{name}'))
                                 OR bool_or(state = 'failed')
                          FROM philotes.snapshots WHERE pipeline = '{name}'), false)"
    );
    let seconds = procs::wait_true(&db.client, &done, &mut philotes, started, timeout(rows)).await?;
    let peak_rss_bytes = philotes[0].peak_rss_bytes()?;
    let log = philotes[0].log_tail(40);
    philotes[0].stop()?;

    let row = db
        .client
        .query_one(
            "SELECT state, rows_done, chunks, coalesce(error, '') FROM philotes.snapshots WHERE pipeline = $1 AND source_table = $2",
            &[&name, &TABLE],
        )
        .await?;
    let (state, rows_done, chunks, error): (String, i64, i64, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
    ensure!(state == "done", "the snapshot of public.{TABLE} is {state}: {error}; the log ends with:\n{log}");
    ensure!(rows_done == count, "the snapshot read {rows_done} rows of public.{TABLE}, expected {count}");
    let table = iceberg_table(&db.client, namespace, TABLE).await?;
    ensure!(table.records == rows, "Iceberg table {namespace}.{TABLE} holds {} rows, expected {rows}", table.records);
    Ok(Snapshot { table_bytes, copy, copy_bytes, philotes: seconds, peak_rss_bytes, chunks })
}

/// Checks that `pg_recvlogical` really read the whole workload: on reaching `--endpos` it confirms what it
/// wrote, so its slot must have confirmed past the last transaction.
async fn slot_passed(client: &Client, slot: &str, floor: &str) -> anyhow::Result<()> {
    let passed: bool = client
        .query_one(
            "SELECT coalesce((SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1), false)",
            &[&slot, &floor],
        )
        .await?
        .get(0);
    ensure!(passed, "pg_recvlogical exited but slot {slot} has not confirmed the workload's last transaction (past {floor})");
    Ok(())
}

/// An Iceberg table as its current metadata file describes it.
struct IcebergTable {
    /// `total-records` of the current snapshot.
    records: u64,
    /// `total-data-files` of the current snapshot.
    data_files: u64,
    /// The table directory (data files under it).
    location: PathBuf,
}

/// Reads the current metadata of `namespace.table` (SQL catalog `iceberg_tables` in the buffer database) without
/// the iceberg crate: an independent check of what the flusher committed.
async fn iceberg_table(client: &Client, namespace: &str, table: &str) -> anyhow::Result<IcebergTable> {
    let row = client
        .query_opt(
            "SELECT metadata_location FROM iceberg_tables WHERE table_namespace = $1 AND table_name = $2",
            &[&namespace, &table],
        )
        .await?
        .with_context(|| format!("no Iceberg table {namespace}.{table} in the catalog"))?;
    let location: String = row.get(0);
    let path = location.strip_prefix("file://").unwrap_or(&location);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {path}"))?)?;
    let current = meta["current-snapshot-id"].as_i64().context("no current snapshot")?;
    let snapshot = meta["snapshots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["snapshot-id"].as_i64() == Some(current)))
        .context("current snapshot not in the metadata")?;
    let records = snapshot["summary"]["total-records"].as_str().and_then(|s| s.parse().ok()).context("no total-records")?;
    let dir = meta["location"].as_str().context("no table location")?;
    let data_files = snapshot["summary"]["total-data-files"].as_str().and_then(|s| s.parse().ok()).context("no total-data-files")?;
    Ok(IcebergTable { records, data_files, location: PathBuf::from(dir.strip_prefix("file://").unwrap_or(dir)) })
}

fn parquet_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            total += parquet_bytes(&path)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            total += std::fs::metadata(&path)?.len();
        }
    }
    Ok(total)
}
