//! The source side of every measurement: the 8-column table(s), their publication and slots, and the workload
//! that writes N rows in ten transactions (the shape of `shared/notes/replication.md`: numeric, jsonb and bytea
//! among the columns, ~270 bytes of WAL per row). The data is deterministic: every run writes the same rows.

use std::time::Instant;

use anyhow::Context;
use tokio_postgres::Client;

/// The captured table (schema `public`).
pub const TABLE: &str = "bench_rows";
/// The tables of the multi-table flush, each shaped like [`TABLE`]: a flusher leases one table at a time, so
/// only several tables let a second worker (or process) flush in parallel.
pub const TABLES: [&str; 4] = ["bench_rows_1", "bench_rows_2", "bench_rows_3", "bench_rows_4"];
/// The publication every reader uses (philotes and `pg_recvlogical` alike).
pub const PUBLICATION: &str = "bench_pub";
/// Transactions the workload is split into.
pub const TRANSACTIONS: u64 = 10;

/// `CREATE TABLE public.<table>`: the 8 columns every bench table has.
fn ddl(table: &str) -> String {
    format!(
        "CREATE TABLE public.{table} (
    id          bigint PRIMARY KEY,
    account     integer NOT NULL,
    amount      numeric(12,2) NOT NULL,
    ratio       double precision,
    label       text,
    created_at  timestamptz NOT NULL,
    attrs       jsonb,
    blob        bytea
)"
    )
}

/// Inserts the rows with ids `$1..=$2` into `public.<table>`.
pub fn insert(table: &str) -> String {
    format!(
        "INSERT INTO public.{table}
    SELECT g,
           (g % 1000)::integer,
           ((g * 7919) % 10000000)::numeric / 100,
           ((g * 104729) % 1000003)::float8 / 1000003,
           'customer-' || md5(g::text),
           timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
           jsonb_build_object('id', g, 'tag', substr(md5(g::text), 1, 12), 'bucket', g % 97, 'even', g % 2 = 0),
           decode(md5(g::text), 'hex')
    FROM generate_series($1::bigint, $2::bigint) AS g"
    )
}

/// Creates the tables and the publication of them all, then every slot in `slots` (pgoutput). Slots come after
/// the publication (pgoutput looks the publication up as of each decoded change) and before the workload, so
/// each slot sees the whole workload.
pub async fn prepare(client: &Client, tables: &[&str], slots: &[&str]) -> anyhow::Result<()> {
    for table in tables {
        client.batch_execute(&ddl(table)).await.with_context(|| format!("creating the source table {table}"))?;
    }
    let published = tables.iter().map(|t| format!("public.{t}")).collect::<Vec<_>>().join(", ");
    client
        .batch_execute(&format!("CREATE PUBLICATION {PUBLICATION} FOR TABLE {published}"))
        .await
        .context("creating the publication")?;
    for slot in slots {
        // One statement per call: the slot function refuses to run inside a multi-statement batch.
        client
            .execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[slot])
            .await
            .with_context(|| format!("creating slot {slot}"))?;
    }
    Ok(())
}

/// What one workload did.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Wall time of the ten transactions.
    pub seconds: f64,
    /// The WAL insert position read inside the last transaction, just before its COMMIT: the last commit LSN is
    /// above it and every earlier one below, so "a checkpoint's commit LSN ≥ this" means "the last transaction
    /// is in".
    pub last_commit_floor: String,
    /// `pg_current_wal_lsn()` right after the last commit: `pg_recvlogical --endpos`.
    pub end_lsn: String,
    /// WAL bytes written between the start and `end_lsn`.
    pub wal_bytes: i64,
}

/// Inserts `rows` rows in [`TRANSACTIONS`] transactions of equal size, spread evenly over `tables` (each gets
/// `rows / tables.len()`, ids from 1; the last tables take the remainder). Every transaction writes its share
/// of each table, one table after the other, so one transaction spans every table, as a real one may.
pub async fn run(client: &mut Client, tables: &[&str], rows: u64) -> anyhow::Result<Workload> {
    let start_lsn: String = client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
    let transactions = TRANSACTIONS.min(rows).max(1);
    let started = Instant::now();
    let inserts: Vec<String> = tables.iter().map(|t| insert(t)).collect();
    let mut last_commit_floor = String::new();
    for t in 0..transactions {
        let tx = client.transaction().await?;
        for (i, sql) in inserts.iter().enumerate() {
            let table_rows = table_rows(rows, tables.len(), i);
            let lo = i64::try_from(table_rows * t / transactions + 1)?;
            let hi = i64::try_from(table_rows * (t + 1) / transactions)?;
            if lo <= hi {
                tx.execute(sql.as_str(), &[&lo, &hi]).await.context("workload insert")?;
            }
        }
        if t + 1 == transactions {
            last_commit_floor = tx.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await?.get(0);
        }
        tx.commit().await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let row = client
        .query_one("SELECT pg_current_wal_lsn()::text, pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint", &[&start_lsn])
        .await?;
    Ok(Workload { seconds, last_commit_floor, end_lsn: row.get(0), wal_bytes: row.get(1) })
}

/// The rows the workload writes into the `index`-th of `tables` tables when it writes `rows` in all.
pub fn table_rows(rows: u64, tables: usize, index: usize) -> u64 {
    let (n, i) = (tables as u64, index as u64);
    rows * (i + 1) / n - rows * i / n
}

/// The mirror scenario's changes on [`TABLE`]: `rows` changes in all, 70% inserts (ids 1..=I, in
/// [`TRANSACTIONS`] transactions), 20% updates (ids 1..=U, rows flushed by an earlier flush, in five
/// transactions) and 10% deletes (the last D inserted ids, in one transaction).
pub async fn run_mixed(client: &mut Client, rows: u64) -> anyhow::Result<Workload> {
    let (inserts, updates) = (rows * 7 / 10, rows * 2 / 10);
    let deletes = rows - inserts - updates;
    let mut work = run(client, &[TABLE], inserts).await?;
    let started = Instant::now();
    let parts = 5u64.min(updates.max(1));
    for p in 0..parts {
        let (lo, hi) = (i64::try_from(updates * p / parts + 1)?, i64::try_from(updates * (p + 1) / parts)?);
        client
            .execute(
                &format!("UPDATE public.{TABLE} SET amount = amount + 1, label = label || '+' WHERE id BETWEEN $1 AND $2"),
                &[&lo, &hi],
            )
            .await
            .context("workload update")?;
    }
    let tx = client.transaction().await?;
    let first_deleted = i64::try_from(inserts - deletes + 1)?;
    tx.execute(&format!("DELETE FROM public.{TABLE} WHERE id >= $1"), &[&first_deleted]).await.context("workload delete")?;
    work.last_commit_floor = tx.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await?.get(0);
    tx.commit().await?;
    work.seconds += started.elapsed().as_secs_f64();
    work.end_lsn = client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
    Ok(work)
}

/// The rows [`run_mixed`] leaves in the table.
pub fn mixed_live_rows(rows: u64) -> u64 {
    let (inserts, updates) = (rows * 7 / 10, rows * 2 / 10);
    inserts - (rows - inserts - updates)
}
