//! The source side of every measurement: the 8-column table, its publication and slots, and the workload that
//! writes N rows in ten transactions (the shape of `shared/notes/replication.md`: numeric, jsonb and bytea
//! among the columns, ~270 bytes of WAL per row). The data is deterministic: every run writes the same rows.

use std::time::Instant;

use anyhow::Context;
use tokio_postgres::Client;

/// The captured table (schema `public`).
pub const TABLE: &str = "bench_rows";
/// The publication every reader uses (philotes and `pg_recvlogical` alike).
pub const PUBLICATION: &str = "bench_pub";
/// Transactions the workload is split into.
pub const TRANSACTIONS: u64 = 10;

const DDL: &str = "CREATE TABLE public.bench_rows (
    id          bigint PRIMARY KEY,
    account     integer NOT NULL,
    amount      numeric(12,2) NOT NULL,
    ratio       double precision,
    label       text,
    created_at  timestamptz NOT NULL,
    attrs       jsonb,
    blob        bytea
)";

const INSERT: &str = "INSERT INTO public.bench_rows
    SELECT g,
           (g % 1000)::integer,
           ((g * 7919) % 10000000)::numeric / 100,
           ((g * 104729) % 1000003)::float8 / 1000003,
           'customer-' || md5(g::text),
           timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
           jsonb_build_object('id', g, 'tag', substr(md5(g::text), 1, 12), 'bucket', g % 97, 'even', g % 2 = 0),
           decode(md5(g::text), 'hex')
    FROM generate_series($1::bigint, $2::bigint) AS g";

/// Creates the table and the publication, then every slot in `slots` (pgoutput). Slots come after the
/// publication (pgoutput looks the publication up as of each decoded change) and before the workload, so each
/// slot sees the whole workload.
pub async fn prepare(client: &Client, slots: &[&str]) -> anyhow::Result<()> {
    client.batch_execute(DDL).await.context("creating the source table")?;
    client
        .batch_execute(&format!("CREATE PUBLICATION {PUBLICATION} FOR TABLE public.{TABLE}"))
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

/// Inserts `rows` rows in [`TRANSACTIONS`] transactions of equal size.
pub async fn run(client: &mut Client, rows: u64) -> anyhow::Result<Workload> {
    let start_lsn: String = client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
    let transactions = TRANSACTIONS.min(rows).max(1);
    let started = Instant::now();
    let mut last_commit_floor = String::new();
    for t in 0..transactions {
        let lo = i64::try_from(rows * t / transactions + 1)?;
        let hi = i64::try_from(rows * (t + 1) / transactions)?;
        let tx = client.transaction().await?;
        tx.execute(INSERT, &[&lo, &hi]).await.context("workload insert")?;
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
