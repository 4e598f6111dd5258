//! Latency (issue 12): a steady stream of small transactions into one table for a while, as a busy OLTP primary
//! writes, while one `philotes run` (every role, as the quick start runs it) flushes every `flush.interval`.
//! Measured two ways, which must agree: the p50/p99 of `philotes_cdc_commit_to_iceberg_seconds` from the
//! process's `/metrics`, and per row from the lake itself: the timestamp of the Iceberg snapshot that added the
//! row's file minus the row's `_commit_ts`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use arrow::array::AsArray;
use arrow::datatypes::TimestampMicrosecondType;
use futures::TryStreamExt;
use iceberg::spec::ManifestStatus;
use philotes_stages::catalog::{self, CatalogSettings};

use crate::procs::{self, Philotes, PipelineFile};
use crate::scenarios::{Db, Env};
use crate::workload::{self, TABLE};

/// Changes per second of the stream.
pub const RATE: u64 = 10_000;
/// Transactions per second it is cut into (a commit every 10 ms).
const TRANSACTIONS_PER_SECOND: u64 = 100;

/// One run at one interval: quantiles in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// p50 and p99 from the histogram (interpolated inside its buckets, as PromQL's `histogram_quantile`).
    pub histogram: (f64, f64),
    /// p50 and p99 over every row of the lake.
    pub lake: (f64, f64),
    /// Rows in the lake (every change of the stream).
    pub rows: u64,
    /// Changes per second the stream really wrote.
    pub rate: f64,
}

/// Streams [`RATE`] changes/s for `seconds` into a fresh table while philotes flushes with `flush.interval:
/// interval`, waits until all is in Iceberg and measures the latency of every change.
pub async fn run(env: &Env, db: &mut Db, interval: &str, seconds: u64) -> anyhow::Result<Latency> {
    let name = db.db.name().to_string();
    workload::prepare(&db.client, &[TABLE], &[&procs::slot(&name)]).await?;
    let namespace = "bench_latency";
    let file = PipelineFile::write(&db.dir(env)?, "latency", &name, &db.db.url(), &[TABLE], namespace, None)?
        .flush_interval(interval)?;
    procs::migrate(&file)?;
    let mut process = [Philotes::start(&file, "all", "latency")?];
    let streaming =
        format!("SELECT coalesce((SELECT active FROM pg_replication_slots WHERE slot_name = '{}'), false)", procs::slot(&name));
    procs::wait_true(&db.client, &streaming, &mut process, Instant::now(), Duration::from_secs(60)).await?;

    let per_transaction = RATE / TRANSACTIONS_PER_SECOND;
    let insert = workload::insert(TABLE);
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / TRANSACTIONS_PER_SECOND as u32);
    let mut next_id = 1i64;
    let transactions = seconds * TRANSACTIONS_PER_SECOND;
    let mut floor = String::new();
    for t in 0..transactions {
        ticks.tick().await;
        let last = next_id + i64::try_from(per_transaction)? - 1;
        if t + 1 == transactions {
            // The last transaction commits above this position, every other one below it.
            floor = db.client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await?.get(0);
        }
        db.client.execute(insert.as_str(), &[&next_id, &last]).await.context("latency stream insert")?;
        next_id = last + 1;
    }
    let rate = (next_id - 1) as f64 / started.elapsed().as_secs_f64();
    let rows = u64::try_from(next_id - 1)?;
    let drained = format!(
        "SELECT coalesce((SELECT commit_lsn >= '{floor}'::pg_lsn FROM philotes.checkpoints WHERE pipeline = '{name}'), false)
                AND NOT EXISTS (SELECT 1 FROM philotes.segments WHERE pipeline = '{name}')"
    );
    procs::wait_true(&db.client, &drained, &mut process, Instant::now(), env.timeout()).await?;
    let metrics = http_get(&file.metrics_addr()?, "/metrics").await?;
    process[0].stop()?;

    let histogram = histogram_quantiles(&metrics, &format!("public.{TABLE}"))?;
    let mut lake = lake_latencies(&db.db.url(), &file, namespace).await?;
    ensure!(lake.len() as u64 == rows, "the lake holds {} rows, the stream wrote {rows}", lake.len());
    lake.sort_by(f64::total_cmp);
    Ok(Latency { histogram, lake: (quantile(&lake, 0.5), quantile(&lake, 0.99)), rows, rate })
}

/// The `q` quantile of sorted `values` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// p50 and p99 of `philotes_cdc_commit_to_iceberg_seconds{table}` in a Prometheus text body, interpolated
/// linearly inside the bucket holding the rank (what `histogram_quantile` does).
fn histogram_quantiles(body: &str, table: &str) -> anyhow::Result<(f64, f64)> {
    let label = format!("table=\"{table}\"");
    let mut buckets: Vec<(f64, f64)> = body
        .lines()
        .filter(|l| l.starts_with("philotes_cdc_commit_to_iceberg_seconds_bucket{") && l.contains(&label))
        .map(|l| {
            // `le` as a label of its own (`table="…"` ends in `le="` too).
            let le = l.split([',', '{']).find_map(|label| label.strip_prefix("le=\"")).and_then(|r| r.split('"').next());
            let le = le.with_context(|| format!("a bucket without le: {l}"))?;
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().with_context(|| format!("le in {l}"))? };
            let count: f64 = l.rsplit_once(' ').context("a bucket without a value")?.1.parse().with_context(|| format!("count in {l}"))?;
            Ok((bound, count))
        })
        .collect::<anyhow::Result<_>>()?;
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map(|b| b.1).filter(|n| *n > 0.0).context("no philotes_cdc_commit_to_iceberg_seconds observations")?;
    let at = |q: f64| {
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(bound, count) in &buckets {
            if count >= rank {
                if bound.is_infinite() {
                    return lower.0;
                }
                return lower.0 + (bound - lower.0) * (rank - lower.1) / (count - lower.1).max(f64::MIN_POSITIVE);
            }
            lower = (bound, count);
        }
        lower.0
    };
    Ok((at(0.5), at(0.99)))
}

/// Per row of the table: seconds from its `_commit_ts` to the timestamp of the snapshot that added its file.
async fn lake_latencies(url: &str, file: &PipelineFile, namespace: &str) -> anyhow::Result<Vec<f64>> {
    let settings = CatalogSettings::Sql { name: "philotes".into(), uri: url.to_string(), warehouse: file.warehouse()?, props: HashMap::new() };
    let catalog = catalog::connect(&settings).await.context("connecting to the catalog")?;
    let ident = iceberg::TableIdent::from_strs([namespace, TABLE])?;
    let table = catalog.load_table(&ident).await?;
    let metadata = table.metadata();
    let mut added_at: HashMap<String, i64> = HashMap::new();
    for snapshot in metadata.snapshots() {
        let list = table.manifest_list_reader(snapshot).load().await?;
        for manifest in list.entries().iter().filter(|m| m.added_snapshot_id == snapshot.snapshot_id()) {
            let manifest = manifest.load_manifest(table.file_io()).await?;
            for entry in manifest.entries().iter().filter(|e| e.status() == ManifestStatus::Added) {
                added_at.insert(entry.data_file().file_path().to_string(), snapshot.timestamp_ms());
            }
        }
    }
    let mut latencies = Vec::new();
    let tasks: Vec<_> = table.scan().select(["_commit_ts"]).build()?.plan_files().await?.try_collect().await?;
    for task in tasks {
        let snapshot_ms = *added_at.get(&task.data_file_path).with_context(|| format!("no snapshot added {}", task.data_file_path))?;
        let batches: Vec<_> = table
            .reader_builder()
            .build()
            .read(Box::pin(futures::stream::iter([Ok(task)])))?
            .stream()
            .try_collect()
            .await?;
        for batch in batches {
            let times = batch.column(0).as_primitive::<TimestampMicrosecondType>();
            for i in 0..times.len() {
                latencies.push((snapshot_ms * 1000 - times.value(i)) as f64 / 1e6);
            }
        }
    }
    Ok(latencies)
}

/// `GET path` on `addr`, the body.
async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => bail!("GET {path} on {addr}: {}", response.lines().next().unwrap_or("no answer")),
    }
}
