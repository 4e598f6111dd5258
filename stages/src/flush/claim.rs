//! Claim: the flusher's source. Takes one due table's lease and its oldest complete segments.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use philotes_engine::{Source, StageError};
use philotes_schemas::TableSchema;
use tokio_postgres::{Config, NoTls};

use super::{FlushError, FlushSettings, LeaseHandle};
use crate::capture::connection_lost;
use crate::store::schemas as schema_store;
use crate::store::watermarks::{self, ClaimedSegment};

/// The name of the claim step in logs (the engine names the source stage `source`).
pub const NAME: &str = "claim";

/// A connection pool of `size` for leases; a connection handed back rolls back whatever it still has open, so
/// a lease abandoned mid-way (shutdown) is released.
pub fn pool(config: &Config, size: usize) -> Result<Pool, FlushError> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig { recycling_method: RecyclingMethod::Custom("ROLLBACK".into()) },
    );
    Pool::builder(manager).max_size(size.max(1)).build().map_err(|e| FlushError::Pool(e.to_string()))
}

/// One claimed flush: the lease, the segments and the schema versions their rows were written with.
#[derive(Debug)]
pub struct Claim {
    /// The lease.
    pub lease: Arc<LeaseHandle>,
    /// The claimed segments, oldest first.
    pub segments: Vec<ClaimedSegment>,
    /// Every schema version of the table (the segments use some of them).
    pub versions: HashMap<i32, Arc<TableSchema>>,
}

/// Why a claim failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The buffer database failed.
    #[error("claim: buffer database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// No connection could be had.
    #[error("claim: buffer connection pool: {0}")]
    Pool(String),
    /// A stored schema version cannot be read.
    #[error("claim: schema version {version} of {table} cannot be read: {reason}")]
    Version {
        /// The table.
        table: String,
        /// The version.
        version: i32,
        /// Why.
        reason: String,
    },
}

impl ClaimError {
    /// Whether the buffer connection was lost (the flusher restarts).
    pub fn is_connection(&self) -> bool {
        match self {
            ClaimError::Sql(e) => connection_lost(e),
            ClaimError::Pool(_) => true,
            ClaimError::Version { .. } => false,
        }
    }
}

/// The Claim source.
pub struct ClaimSource {
    pipeline: String,
    pool: Pool,
    interval: Duration,
    max_events: i64,
    poll: Duration,
    last_registration: Option<Instant>,
}

impl ClaimSource {
    /// A claimer over `pool` with the flush limits of `settings`.
    pub fn new(settings: &FlushSettings, pool: Pool) -> Self {
        Self {
            pipeline: settings.pipeline.clone(),
            pool,
            interval: settings.interval,
            max_events: settings.max_events.max(1),
            poll: (settings.interval / 10).clamp(Duration::from_millis(20), Duration::from_millis(200)),
            last_registration: None,
        }
    }

    /// One attempt: a lease and its segments, or `None` when no table is due.
    async fn try_claim(&mut self) -> Result<Option<Claim>, ClaimError> {
        let client = self.pool.get().await.map_err(|e| ClaimError::Pool(e.to_string()))?;
        // New tables get their lease row now and then (cheap, and only when nothing was due).
        if self.last_registration.is_none_or(|t| t.elapsed() >= self.interval) {
            watermarks::register_tables(&**client, &self.pipeline).await?;
            self.last_registration = Some(Instant::now());
        }
        client.batch_execute("BEGIN").await?;
        let Some(lease) = watermarks::claim(&**client, &self.pipeline, self.interval, self.max_events).await? else {
            client.batch_execute("ROLLBACK").await?;
            return Ok(None);
        };
        let segments = watermarks::segments(&**client, &self.pipeline, &lease, self.max_events).await?;
        let mut versions = HashMap::new();
        for row in schema_store::versions(&**client, &self.pipeline, &lease.source_schema, &lease.source_table).await? {
            let schema: TableSchema = rmp_serde::from_slice(&row.columns).map_err(|e| ClaimError::Version {
                table: format!("{}.{}", row.source_schema, row.source_table),
                version: row.version,
                reason: e.to_string(),
            })?;
            versions.insert(row.version, Arc::new(schema));
        }
        tracing::debug!(table = %format!("{}.{}", lease.source_schema, lease.source_table),
            segments = segments.len(), "claimed");
        Ok(Some(Claim { lease: Arc::new(LeaseHandle { client, lease }), segments, versions }))
    }
}

impl Source for ClaimSource {
    type Item = Claim;

    async fn next(&mut self) -> Result<Option<Claim>, StageError> {
        loop {
            match self.try_claim().await {
                Ok(Some(claim)) => return Ok(Some(claim)),
                Ok(None) => tokio::time::sleep(self.poll).await,
                // Fatal either way: a lost connection restarts the flusher (FlushError::is_restartable).
                Err(e) => return Err(StageError::fatal(e)),
            }
        }
    }
}
