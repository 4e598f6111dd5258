//! Throughput benchmarks of philotes, each beside its baseline on the same data in the same run
//! (benches/README.md): capture vs `pg_recvlogical`, a COPY into a buffer-like table, flush vs a plain Parquet
//! `ArrowWriter`, the flush of four tables with 1 and 2 flushers, end to end vs `pg_recvlogical`, and the initial
//! snapshot of a filled table vs a binary `COPY … TO STDOUT` of it.
//!
//! `cargo bench --bench pipeline` (or `scripts/bench`). It starts its own PostgreSQL (philotes-testkit, fsync
//! off), runs the release `philotes` binary as child processes, prints every run, the medians and a Markdown
//! summary. `BENCH_ROWS` (default 1,000,000), `BENCH_RUNS` (default 3), `BENCH_ONLY` (comma list of `capture`,
//! `copy`, `flush`, `flush-tables`, `e2e`, `snapshot`, `mirror`, `partition`, `latency`; default all), `BENCH_SNAPSHOT_ROWS`
//! (default 2,000,000, or `BENCH_ROWS` when that is set smaller) and `BENCH_LATENCY_SECONDS` (default 60: how long
//! the latency scenario streams 10k changes/s at each `flush.interval`) choose what runs.

mod latency;
mod procs;
mod report;
mod scenarios;
mod workload;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use philotes_testkit::{Cluster, ClusterOptions};

use report::{human_rate, median, megabytes, rate, ratios, Line, Memory, Series};
use scenarios::{Db, Env};

const SCENARIOS: [&str; 9] = ["capture", "copy", "flush", "flush-tables", "e2e", "snapshot", "mirror", "partition", "latency"];
/// The latency scenario's `flush.interval`s, and its target: p99 of source commit → Iceberg at most the
/// interval plus this many seconds (issue 12).
const LATENCY_INTERVALS: [(&str, f64); 2] = [("1s", 1.0), ("200ms", 0.2)];
const LATENCY_TARGET_OVERHEAD: f64 = 0.1;
/// How long the latency scenario streams unless `BENCH_LATENCY_SECONDS` says otherwise.
const DEFAULT_LATENCY_SECONDS: u64 = 60;
/// The mirror flush's target (issue 11): at least this share of the changelog flush's rows/s, same buffer.
const MIRROR_TARGET_RATIO: f64 = 0.6;

/// Rows of the snapshot scenario's table unless `BENCH_SNAPSHOT_ROWS` (or a smaller `BENCH_ROWS`) says otherwise.
const DEFAULT_SNAPSHOT_ROWS: u64 = 2_000_000;
/// The snapshot's targets (issue 10): at least this share of the COPY baseline's rows/s…
const SNAPSHOT_TARGET_RATIO: f64 = 0.5;
/// …and a peak RSS below this many bytes (512 MB).
const SNAPSHOT_RSS_LIMIT: u64 = 512_000_000;

/// What to run, from the environment.
struct Settings {
    rows: u64,
    /// Rows of the snapshot scenario's table.
    snapshot_rows: u64,
    /// Seconds the latency scenario streams.
    latency_seconds: u64,
    runs: usize,
    only: BTreeSet<String>,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let number = |key: &str, default: u64| -> anyhow::Result<u64> {
            match std::env::var(key) {
                Ok(v) => v.replace(['_', ','], "").parse().with_context(|| format!("{key}={v} is not a number")),
                Err(_) => Ok(default),
            }
        };
        let rows = number("BENCH_ROWS", 1_000_000)?;
        let runs = usize::try_from(number("BENCH_RUNS", 3)?)?;
        // A smoke run (`BENCH_ROWS` set small) keeps the snapshot small too, unless it is named on its own.
        let small = std::env::var_os("BENCH_ROWS").is_some() && rows < DEFAULT_SNAPSHOT_ROWS;
        let snapshot_rows = number("BENCH_SNAPSHOT_ROWS", if small { rows } else { DEFAULT_SNAPSHOT_ROWS })?;
        if rows == 0 || runs == 0 || snapshot_rows == 0 {
            bail!("BENCH_ROWS, BENCH_RUNS and BENCH_SNAPSHOT_ROWS must be at least 1");
        }
        let only: BTreeSet<String> = match std::env::var("BENCH_ONLY") {
            Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
            _ => SCENARIOS.iter().map(|s| s.to_string()).collect(),
        };
        if let Some(bad) = only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
            bail!("BENCH_ONLY: unknown measurement {bad:?} (known: {})", SCENARIOS.join(", "));
        }
        let latency_seconds = number("BENCH_LATENCY_SECONDS", DEFAULT_LATENCY_SECONDS)?.max(1);
        Ok(Self { rows, snapshot_rows, latency_seconds, runs, only })
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only.contains(scenario)
    }
}

/// Every series, filled run by run.
#[derive(Default)]
struct Results {
    workload: Series,
    capture_recvlogical: Series,
    capture_philotes: Series,
    copy: Series,
    flush_one: Series,
    flush_two: Series,
    arrow_writer: Series,
    tables_one: Series,
    tables_two: Series,
    tables_processes: Series,
    e2e_workload: Series,
    e2e_philotes: Series,
    e2e_recvlogical: Series,
    snapshot_copy: Series,
    snapshot_philotes: Series,
    /// philotes' peak RSS of each snapshot run, bytes.
    snapshot_rss: Vec<u64>,
    mirror_changelog: Series,
    mirror_flush: Series,
    mirror_compact: Series,
    mirror_arrow_writer: Series,
    /// Rows of the compacted mirror table (the same every run).
    mirror_live_rows: u64,
    /// Per entry of [`LATENCY_INTERVALS`]: every run's quantiles.
    latency: [Vec<latency::Latency>; 2],
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; nothing else is understood.
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("cargo bench --bench pipeline   (env: BENCH_ROWS, BENCH_RUNS, BENCH_ONLY=capture,copy,flush,flush-tables,e2e,snapshot,mirror,partition, BENCH_SNAPSHOT_ROWS); see benches/README.md");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let arrow_writer = if settings.wants("flush") || settings.wants("mirror") { Some(procs::build_arrow_writer()?) } else { None };

    let base = PathBuf::from(format!("/tmp/philotes-bench-{}", std::process::id()));
    // The testkit's guardian stops the server and deletes `base` once this process exits, even after a panic.
    let cluster = Cluster::start(&ClusterOptions {
        base: base.clone(),
        port: None,
        owner_pid: Some(std::process::id()),
        extra_settings: Vec::new(),
    })?;
    let work = base.join("work");
    std::fs::create_dir_all(&work)?;
    let env = Env {
        cluster: cluster.clone(),
        pg_bin: philotes_testkit::find_bin()?,
        work,
        rows: settings.rows,
        snapshot_rows: settings.snapshot_rows,
        arrow_writer,
    };
    let result = measure(&env, &settings).await;
    if let Err(e) = cluster.stop() {
        eprintln!("warning: stopping the bench cluster: {e}");
    }
    result
}

async fn measure(env: &Env, settings: &Settings) -> anyhow::Result<()> {
    header(env, settings)?;
    let rows = settings.rows;
    let mut r = Results::default();
    for run in 1..=settings.runs {
        println!("\nrun {run}/{} (load average {})", settings.runs, load_average());
        if settings.wants("capture") || settings.wants("flush") || settings.wants("copy") {
            let mut db = Db::create(env, "bench").await?;
            if settings.wants("capture") || settings.wants("flush") {
                let c = scenarios::capture(env, &mut db).await?;
                r.workload.push(c.workload_seconds);
                r.capture_recvlogical.push(c.recvlogical);
                r.capture_philotes.push(c.philotes);
                println!(
                    "  workload    {rows} rows in {} transactions, {:.1} MB of WAL: {}",
                    workload::TRANSACTIONS.min(rows),
                    c.wal_bytes as f64 / 1e6,
                    timing(rows, c.workload_seconds)
                );
                println!("  capture     pg_recvlogical (pgoutput, proto 1)            {}", timing(rows, c.recvlogical));
                println!(
                    "  capture     philotes run --role capture                   {}   {:.2}× pg_recvlogical",
                    timing(rows, c.philotes),
                    c.recvlogical / c.philotes
                );
            }
            if settings.wants("flush") {
                let helper = env.arrow_writer.as_deref().context("the ArrowWriter baseline was not built")?;
                let f = scenarios::flush(env, &mut db, helper).await?;
                r.flush_one.push(f.one_worker);
                r.flush_two.push(f.two_workers);
                r.arrow_writer.push(f.arrow_writer);
                println!(
                    "  flush       parquet ArrowWriter, zstd 1 ({:.1} MB)         {}",
                    f.arrow_writer_bytes as f64 / 1e6,
                    timing(rows, f.arrow_writer)
                );
                println!(
                    "  flush       philotes --role flusher, workers: 1 ({:.1} MB) {}   {:.2}× ArrowWriter",
                    f.philotes_bytes as f64 / 1e6,
                    timing(rows, f.one_worker),
                    f.arrow_writer / f.one_worker
                );
                println!(
                    "  flush       philotes --role flusher, workers: 2            {}   {:.2}× ArrowWriter, {:.2}× workers: 1",
                    timing(rows, f.two_workers),
                    f.arrow_writer / f.two_workers,
                    f.one_worker / f.two_workers
                );
            }
            if settings.wants("copy") {
                let seconds = scenarios::copy(env, &mut db).await?;
                r.copy.push(seconds);
                println!("  buffer      COPY binary, 200-byte rows, segments-like table {}", timing(rows, seconds));
            }
        }
        if settings.wants("flush-tables") {
            let mut db = Db::create(env, "bench_tables").await?;
            let f = scenarios::flush_tables(env, &mut db).await?;
            r.tables_one.push(f.one_worker);
            r.tables_two.push(f.two_workers);
            r.tables_processes.push(f.two_processes);
            let tables = workload::TABLES.len();
            println!(
                "  4 tables    philotes --role flusher, workers: 1            {}   ({tables} tables, {} rows each)",
                timing(rows, f.one_worker),
                rows / tables as u64
            );
            println!(
                "  4 tables    philotes --role flusher, workers: 2            {}   {:.2}× workers: 1",
                timing(rows, f.two_workers),
                f.one_worker / f.two_workers
            );
            println!(
                "  4 tables    2 × philotes --role flusher, workers: 1        {}   {:.2}× workers: 1",
                timing(rows, f.two_processes),
                f.one_worker / f.two_processes
            );
        }
        if settings.wants("e2e") {
            let mut db = Db::create(env, "bench_e2e").await?;
            let e = scenarios::end_to_end(env, &mut db).await?;
            r.e2e_workload.push(e.workload_seconds);
            r.e2e_philotes.push(e.philotes);
            r.e2e_recvlogical.push(e.recvlogical);
            println!("  end to end  workload while philotes streams               {}", timing(rows, e.workload_seconds));
            println!(
                "  end to end  philotes run (all roles): insert → Iceberg     {}   {:.2}× pg_recvlogical (last row in Iceberg {:.2} s after the last commit)",
                timing(rows, e.philotes),
                e.recvlogical / e.philotes,
                e.philotes - e.workload_seconds
            );
            println!("  end to end  pg_recvlogical, same WAL                      {}", timing(rows, e.recvlogical));
        }
        if settings.wants("snapshot") {
            let mut db = Db::create(env, "bench_snapshot").await?;
            let s = scenarios::snapshot(env, &mut db).await?;
            let snapshot_rows = settings.snapshot_rows;
            r.snapshot_copy.push(s.copy);
            r.snapshot_philotes.push(s.philotes);
            r.snapshot_rss.push(s.peak_rss_bytes);
            println!(
                "  snapshot    {snapshot_rows} rows in public.{} ({:.1} MB), filled before any pipeline, VACUUM ANALYZE",
                workload::TABLE,
                s.table_bytes as f64 / 1e6
            );
            println!(
                "  snapshot    COPY TO STDOUT (FORMAT binary), drained ({:.1} MB)  {}",
                s.copy_bytes as f64 / 1e6,
                timing(snapshot_rows, s.copy)
            );
            println!(
                "  snapshot    philotes run, snapshot: initial, {} workers       {}   {:.2}× COPY binary (target ≥ {SNAPSHOT_TARGET_RATIO}×), peak RSS {:.0} MB (target < {:.0} MB), {} chunks of {}",
                scenarios::SNAPSHOT_WORKERS,
                timing(snapshot_rows, s.philotes),
                s.copy / s.philotes,
                megabytes(s.peak_rss_bytes),
                megabytes(SNAPSHOT_RSS_LIMIT),
                s.chunks,
                scenarios::SNAPSHOT_CHUNK_ROWS
            );
        }
        if settings.wants("mirror") {
            let mut db = Db::create(env, "bench_mirror").await?;
            let helper = env.arrow_writer.as_deref().context("the ArrowWriter baseline was not built")?;
            let m = scenarios::mirror(env, &mut db, helper).await?;
            r.mirror_changelog.push(m.changelog);
            r.mirror_flush.push(m.mirror);
            r.mirror_compact.push(m.compact);
            r.mirror_arrow_writer.push(m.arrow_writer);
            r.mirror_live_rows = m.live_rows;
            println!("  mirror      {rows} changes: 70% inserts, 20% updates, 10% deletes; {} rows left", m.live_rows);
            println!("  mirror      changelog flush of the buffer, workers: 1          {}", timing(rows, m.changelog));
            println!(
                "  mirror      mirror flush of the same buffer, workers: 1        {}   {:.2}× changelog (target ≥ {MIRROR_TARGET_RATIO}×)",
                timing(rows, m.mirror),
                m.changelog / m.mirror
            );
            println!("  mirror      ArrowWriter read + write of the compacted rows       {}", timing(m.live_rows, m.arrow_writer));
            println!(
                "  mirror      philotes compact of the mirror table                {}   {:.2}× ArrowWriter",
                timing(m.live_rows, m.compact),
                m.arrow_writer / m.compact
            );
        }
        if settings.wants("partition") {
            let mut db = Db::create(env, "bench_partition").await?;
            let p = scenarios::partition(env, &mut db).await?;
            println!(
                "  partition   changelog flush of the buffer, workers: 1          {}   {} data files",
                timing(rows, p.plain),
                p.plain_files
            );
            println!(
                "  partition   the same buffer partitioned [{}]  {}   {:.2}× unpartitioned, {} data files",
                scenarios::PARTITION_SPEC.replace('"', ""),
                timing(rows, p.partitioned),
                p.plain / p.partitioned,
                p.partitioned_files
            );
        }
        if settings.wants("latency") {
            for (i, (interval, _)) in LATENCY_INTERVALS.iter().enumerate() {
                let mut db = Db::create(env, "bench_latency").await?;
                let l = latency::run(env, &mut db, interval, settings.latency_seconds).await?;
                println!(
                    "  latency     flush.interval {interval:<5} {:.0} changes/s for {} s: commit → Iceberg p50 {:.3} s, p99 {:.3} s (histogram); p50 {:.3} s, p99 {:.3} s (lake, {} rows)",
                    l.rate, settings.latency_seconds, l.histogram.0, l.histogram.1, l.lake.0, l.lake.1, l.rows
                );
                r.latency[i].push(l);
            }
        }
    }
    print_latency(&r);
    print_summary(&r, settings);
    if procs::otlp_sink()?.is_some() {
        let (requests, bytes) = procs::otlp_received();
        println!("\nOTLP sink: {requests} exports, {:.1} MB received", megabytes(bytes));
    }
    println!("\nload average at the end: {}", load_average());
    Ok(())
}

fn timing(rows: u64, seconds: f64) -> String {
    format!("{seconds:7.2} s {:>9} rows/s", human_rate(rate(rows, seconds)))
}

fn header(env: &Env, settings: &Settings) -> anyhow::Result<()> {
    let show = |name: &str| env.cluster.psql("postgres", &format!("SHOW {name}")).unwrap_or_else(|e| format!("? ({e})"));
    println!("# philotes throughput benchmark");
    println!("commit        {}", git_commit());
    println!("philotes      {} (bench profile = release)", procs::philotes_bin());
    println!("rows          {} per measurement, {} run(s), median reported; measurements: {}", settings.rows, settings.runs,
        settings.only.iter().cloned().collect::<Vec<_>>().join(", "));
    if settings.wants("snapshot") {
        println!(
            "snapshot      {} rows in the table (BENCH_SNAPSHOT_ROWS), snapshot: {{ chunk_rows: {}, workers: {} }}",
            settings.snapshot_rows,
            scenarios::SNAPSHOT_CHUNK_ROWS,
            scenarios::SNAPSHOT_WORKERS
        );
    }
    println!("machine       {} CPU(s), load average {}", std::thread::available_parallelism().map_or(0, |n| n.get()), load_average());
    println!("postgres      {} on 127.0.0.1:{} (philotes-testkit; the same server for philotes and every baseline)", show("server_version"), env.cluster.port());
    println!(
        "settings      fsync={} (OFF: the harness turns it off), full_page_writes={}, synchronous_commit={}, wal_level={}, shared_buffers={}, max_wal_size={}",
        show("fsync"), show("full_page_writes"), show("synchronous_commit"), show("wal_level"), show("shared_buffers"), show("max_wal_size")
    );
    println!("pipeline      buffer and SQL catalog in the source database, local warehouse; segment/flush/stage settings at their defaults (flush.workers set where named)");
    println!("timing        each timed step starts after CHECKPOINT; philotes steps include process start (the buffer is migrated before)");
    if procs::otlp_sink()?.is_some() {
        println!("traces        BENCH_OTLP: every philotes process exports every span (always_on) over OTLP/HTTP to a sink in the bench that discards them");
    }
    Ok(())
}

fn print_summary(r: &Results, settings: &Settings) {
    let (rows, snapshot_rows) = (settings.rows, settings.snapshot_rows);
    let live = r.mirror_live_rows;
    let series: [(&str, &Series, u64); 19] = [
        ("workload (10 transactions)", &r.workload, rows),
        ("capture: pg_recvlogical", &r.capture_recvlogical, rows),
        ("capture: philotes", &r.capture_philotes, rows),
        ("buffer: COPY binary 200-byte rows", &r.copy, rows),
        ("flush: ArrowWriter zstd 1", &r.arrow_writer, rows),
        ("flush: philotes workers 1", &r.flush_one, rows),
        ("flush: philotes workers 2", &r.flush_two, rows),
        ("flush 4 tables: workers 1", &r.tables_one, rows),
        ("flush 4 tables: workers 2", &r.tables_two, rows),
        ("flush 4 tables: 2 processes", &r.tables_processes, rows),
        ("e2e: workload", &r.e2e_workload, rows),
        ("e2e: philotes", &r.e2e_philotes, rows),
        ("e2e: pg_recvlogical", &r.e2e_recvlogical, rows),
        ("snapshot: COPY TO STDOUT binary", &r.snapshot_copy, snapshot_rows),
        ("snapshot: philotes", &r.snapshot_philotes, snapshot_rows),
        ("mirror: changelog flush", &r.mirror_changelog, rows),
        ("mirror: mirror flush", &r.mirror_flush, rows),
        ("mirror: ArrowWriter compacted rows", &r.mirror_arrow_writer, live),
        ("mirror: philotes compact", &r.mirror_compact, live),
    ];
    println!("\n## every run (rows/s) and the median");
    for (name, s, rows) in series {
        if s.seconds.is_empty() {
            continue;
        }
        let runs: Vec<String> = s.rates(rows).into_iter().map(human_rate).collect();
        println!("{name:<36} {:<40} median {}", runs.join("  "), s.median_rate(rows).map_or("—".into(), human_rate));
    }
    for (name, p, b) in [
        ("ratio capture / pg_recvlogical", &r.capture_philotes, &r.capture_recvlogical),
        ("ratio flush w1 / ArrowWriter", &r.flush_one, &r.arrow_writer),
        ("ratio flush w2 / ArrowWriter", &r.flush_two, &r.arrow_writer),
        ("ratio 4 tables w2 / w1", &r.tables_two, &r.tables_one),
        ("ratio 4 tables 2 processes / w1", &r.tables_processes, &r.tables_one),
        ("ratio e2e / pg_recvlogical", &r.e2e_philotes, &r.e2e_recvlogical),
        ("ratio snapshot / COPY binary", &r.snapshot_philotes, &r.snapshot_copy),
        ("ratio mirror / changelog flush", &r.mirror_flush, &r.mirror_changelog),
        ("ratio compact / ArrowWriter", &r.mirror_compact, &r.mirror_arrow_writer),
    ] {
        let rs = ratios(p, b);
        if rs.is_empty() {
            continue;
        }
        let runs: Vec<String> = rs.iter().map(|x| format!("{x:.2}×")).collect();
        println!("{name:<36} {:<40} median {}", runs.join("  "), median(rs).map_or("—".into(), |m| format!("{m:.2}×")));
    }
    if !r.snapshot_rss.is_empty() {
        let runs: Vec<String> = r.snapshot_rss.iter().map(|b| format!("{:.0} MB", megabytes(*b))).collect();
        let mb: Vec<f64> = r.snapshot_rss.iter().map(|b| megabytes(*b)).collect();
        println!("{:<36} {:<40} median {}", "snapshot: philotes peak RSS", runs.join("  "), median(mb).map_or("—".into(), |m| format!("{m:.0} MB")));
    }

    let mut lines = Vec::new();
    let line = |what: &str, philotes: Option<&Series>, baseline_name: &str, baseline: &Series, target: &str, target_ratio: Option<f64>| Line {
        what: what.into(),
        philotes: philotes.cloned(),
        baseline_name: baseline_name.into(),
        baseline: baseline.clone(),
        target: target.into(),
        target_ratio,
        rows,
        memory: None,
    };
    if !r.capture_philotes.seconds.is_empty() {
        lines.push(line("capture: WAL → buffer (`--role capture`)", Some(&r.capture_philotes), "`pg_recvlogical`, same WAL", &r.capture_recvlogical, "≥ 0.8×", Some(0.8)));
    }
    if !r.copy.seconds.is_empty() {
        lines.push(line("buffer ceiling: COPY binary, 200-byte rows", None, "COPY into a `philotes.segments`-like table", &r.copy, "(notes: ~420k)", None));
    }
    if !r.flush_one.seconds.is_empty() {
        lines.push(line("flush: buffer → Iceberg, `flush.workers: 1`", Some(&r.flush_one), "parquet `ArrowWriter`, zstd 1, same rows", &r.arrow_writer, "≥ 0.5×", Some(0.5)));
        lines.push(line("flush: buffer → Iceberg, `flush.workers: 2`", Some(&r.flush_two), "parquet `ArrowWriter`, zstd 1, same rows", &r.arrow_writer, "near-linear over 1 worker", None));
    }
    if !r.tables_one.seconds.is_empty() {
        let none = Series::default();
        lines.push(line("flush, 4 tables: `flush.workers: 1`", Some(&r.tables_one), "—", &none, "—", None));
        lines.push(line("flush, 4 tables: `flush.workers: 2`", Some(&r.tables_two), "the same, `flush.workers: 1`", &r.tables_one, "near-linear (→ 2×)", None));
        lines.push(line("flush, 4 tables: 2 flushers × `workers: 1`", Some(&r.tables_processes), "the same, `flush.workers: 1`", &r.tables_one, "near-linear (→ 2×)", None));
    }
    if !r.e2e_philotes.seconds.is_empty() {
        lines.push(line("end to end: insert → Iceberg (`philotes run`)", Some(&r.e2e_philotes), "`pg_recvlogical`, same WAL", &r.e2e_recvlogical, "≥ 0.5×", Some(0.5)));
    }
    let mut rows_note = format!("{rows} rows each");
    if !r.snapshot_philotes.seconds.is_empty() {
        let target = format!("≥ {SNAPSHOT_TARGET_RATIO}×, RSS < {:.0} MB", megabytes(SNAPSHOT_RSS_LIMIT));
        lines.push(Line {
            rows: snapshot_rows,
            memory: Some(Memory { peak_bytes: r.snapshot_rss.clone(), limit_bytes: SNAPSHOT_RSS_LIMIT }),
            ..line(
                &format!("snapshot (initial, {} workers)", scenarios::SNAPSHOT_WORKERS),
                Some(&r.snapshot_philotes),
                "`COPY … TO STDOUT (FORMAT binary)`, same table",
                &r.snapshot_copy,
                &target,
                Some(SNAPSHOT_TARGET_RATIO),
            )
        });
        rows_note = if lines.len() == 1 {
            format!("{snapshot_rows} rows each")
        } else {
            format!("{rows} rows each (snapshot: {snapshot_rows} rows)")
        };
    }
    if !r.mirror_flush.seconds.is_empty() {
        lines.push(line("mirror flush: buffer → mirror table, `workers: 1`", Some(&r.mirror_flush), "changelog flush of the same buffer", &r.mirror_changelog, "≥ 0.6×", Some(MIRROR_TARGET_RATIO)));
        lines.push(Line {
            rows: live,
            ..line("compaction of the mirror table (`philotes compact`)", Some(&r.mirror_compact), "ArrowWriter read + write of its rows", &r.mirror_arrow_writer, "—", None)
        });
    }
    println!("\n## summary (Markdown)\n");
    print!("{}", report::summary(&lines, settings.runs, &rows_note));
    println!(
        "\nPostgreSQL with fsync=off (test harness), {} CPU(s); commit {}.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        git_commit()
    );
}

/// The latency scenario's medians beside its target (p99 ≤ interval + [`LATENCY_TARGET_OVERHEAD`]).
fn print_latency(r: &Results) {
    for ((interval, seconds), runs) in LATENCY_INTERVALS.iter().zip(&r.latency) {
        if runs.is_empty() {
            continue;
        }
        let med = |f: fn(&latency::Latency) -> f64| median(runs.iter().map(f).collect()).unwrap_or(f64::NAN);
        let p99 = med(|l| l.lake.1);
        let target = seconds + LATENCY_TARGET_OVERHEAD;
        println!(
            "\nlatency at flush.interval {interval}, {} changes/s (median of {} runs): p50 {:.3} s / p99 {:.3} s from the histogram, \
             p50 {:.3} s / p99 {:.3} s from the lake; target p99 ≤ {target:.2} s: {}",
            latency::RATE,
            runs.len(),
            med(|l| l.histogram.0),
            med(|l| l.histogram.1),
            med(|l| l.lake.0),
            p99,
            if p99 <= target { "met" } else { "NOT met" }
        );
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The commit the bench was built from, `+dirty` when tracked files differ from it.
fn git_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let head = Command::new("git").args(["-C", dir, "rev-parse", "--short", "HEAD"]).output();
    let dirty = Command::new("git").args(["-C", dir, "status", "--porcelain", "--untracked-files=no"]).output();
    match (head, dirty) {
        (Ok(h), Ok(d)) if h.status.success() => {
            let mut s = String::from_utf8_lossy(&h.stdout).trim().to_string();
            if !d.stdout.is_empty() {
                s.push_str("+dirty");
            }
            s
        }
        _ => "unknown".into(),
    }
}
