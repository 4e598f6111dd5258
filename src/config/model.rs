//! The typed pipeline model: what a pipeline file means once parsed, defaulted and validated.
//!
//! Field names follow the YAML keys (DESIGN.md, "The pipeline file"): that file format is a public
//! contract, so keys are added, never renamed. Every default is applied here, so the rest of
//! philotes never looks at an `Option` to learn a default; the `DEFAULT_*` constants document them.
//! The one exception is `stages:` ([`StageConfig`]): a stage's defaults follow other keys (`flush.workers`),
//! so the model keeps what the file set and `crate::pipeline` fills in the rest.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::secret::{PostgresUrl, RedactedUrl, Secret};

/// Default `buffer.segment.max_events`: events per buffer segment.
pub const DEFAULT_SEGMENT_MAX_EVENTS: u64 = 10_000;
/// Default `buffer.segment.max_bytes`: 8 MiB of encoded events per segment.
pub const DEFAULT_SEGMENT_MAX_BYTES: u64 = 8 << 20;
/// Default `buffer.segment.max_age`: a segment is closed at most this long after its first event (and at most a
/// quarter of `flush.interval` when the file does not set it).
pub const DEFAULT_SEGMENT_MAX_AGE: Duration = Duration::from_millis(200);
/// Default `flush.workers`.
pub const DEFAULT_FLUSH_WORKERS: usize = 2;
/// Default `flush.max_events`: events per Iceberg commit, at most.
pub const DEFAULT_FLUSH_MAX_EVENTS: u64 = 500_000;
/// Default `flush.interval`: a table with fewer than `flush.max_events` changes waiting is flushed once its
/// last flush is this old.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Default `sink.iceberg.catalog.name`.
pub const DEFAULT_CATALOG_NAME: &str = "philotes";
/// Default `sink.iceberg.target_file_size` (the Iceberg `write.target-file-size-bytes` default).
pub const DEFAULT_TARGET_FILE_SIZE: u64 = 512 << 20;
/// Default `sink.iceberg.compaction.interval`: how often the flusher role compacts its tables.
pub const DEFAULT_COMPACTION_INTERVAL: Duration = Duration::from_secs(3600);
/// Default `sink.iceberg.compaction.min_files`: a table whose current snapshot reads fewer data + delete files
/// is not compacted.
pub const DEFAULT_COMPACTION_MIN_FILES: usize = 10;
/// Default `sink.iceberg.retention`: snapshots older than this are expired by compaction (a week of time travel;
/// Java's default is 5 days). The current snapshot, and every one back to the snapshot carrying the pipeline's
/// position, is always kept.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 86_400);
/// Default `source.postgres.heartbeat`.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// Default `source.postgres.status_interval`: standby status updates to the server, at least this often.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Default `telemetry.metrics`: the Prometheus `/metrics` listen address.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
/// Longest pipeline name: `philotes_<pipeline>` must fit PostgreSQL's 63-byte identifiers.
pub const MAX_PIPELINE_NAME_LEN: usize = 50;

/// A whole pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// The pipeline's name: default slot/publication are `philotes_<pipeline>`, and it keys the
    /// pipeline's rows in the buffer and the `philotes.pipeline` property of Iceberg snapshots.
    pub pipeline: String,
    /// Where changes come from (`source:`).
    pub source: SourceConfig,
    /// The durable Postgres buffer between capture and flushers (`buffer:`).
    pub buffer: BufferConfig,
    /// Where changes go (`sink:`).
    pub sink: SinkConfig,
    /// How flushers batch buffer segments into Iceberg commits (`flush:`).
    pub flush: FlushConfig,
    /// How existing rows are read (`snapshot:`).
    pub snapshot: SnapshotConfig,
    /// Worker pools and queue sizes per engine stage (`stages:`).
    pub stages: StagesConfig,
    /// Metrics and logs (`telemetry:`).
    pub telemetry: TelemetryConfig,
}

impl PipelineConfig {
    /// The Iceberg table, mode and partition spec for a source table, all defaults resolved:
    /// namespace = per-table `namespace`, else `sink.iceberg.namespace`, else the source schema;
    /// name = per-table `name`, else the source table name; mode = per-table, else the sink's.
    pub fn iceberg_target(&self, table: &TableId) -> IcebergTarget {
        self.sink.iceberg.target(table)
    }
}

/// `source:` — the change source. Only PostgreSQL today; a key per kind leaves room for more.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// `source.postgres`: logical replication from a PostgreSQL database.
    pub postgres: PostgresSourceConfig,
}

/// `source.postgres:` — what to replicate and how.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresSourceConfig {
    /// Connection to the source database (needs the REPLICATION attribute). Required.
    pub url: PostgresUrl,
    /// Publication to stream (created when missing); default `philotes_<pipeline>`.
    pub publication: String,
    /// Logical replication slot (created when missing); default `philotes_<pipeline>`.
    pub slot: String,
    /// Tables to capture: `all`, or a list of `schema.table` (unqualified means `public`; a part may be an
    /// SQL-style quoted identifier, `public."t.dot"`). Required.
    pub tables: PublishedTables,
    /// Whether existing rows are copied before streaming starts; default `initial`.
    pub snapshot: SnapshotMode,
    /// What to do with a column whose type has no Iceberg mapping; default `error`.
    /// (Added key: Debezium/PeerDB users expect unknown types to be carried as text.)
    pub unmapped_types: UnmappedTypes,
    /// Longest time between standby status updates sent to the server (keeps the connection alive
    /// past `wal_sender_timeout` when idle); default 10s. (Added key.)
    pub status_interval: Duration,
    /// WAL the slot may hold back before philotes warns (`source.postgres.max_retained_wal`, e.g. `8GiB`);
    /// `None`: 80% of the server's `max_slot_wal_keep_size` when it sets one, else no warning. (Added key.)
    pub max_retained_wal: Option<u64>,
    /// How often the capture writes a heartbeat into the source's WAL so the slot advances while the published
    /// tables are idle (`source.postgres.heartbeat`, default 30s; `0s`: never). (Added key.)
    pub heartbeat: Option<Duration>,
}

/// `source.postgres.tables`: [`PublishedTables`] (`all`, or the tables listed, in the order written).
pub use philotes_stages::source::setup::PublishedTables;
/// A schema-qualified source table name (`public` when the file wrote an unqualified name).
pub use philotes_stages::table_id::TableId;

/// `source.postgres.snapshot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Copy the existing rows first (as `_op = r`), then stream from the snapshot's LSN.
    Initial,
    /// Stream changes only, from the slot's position.
    Never,
}

/// `source.postgres.unmapped_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmappedTypes {
    /// Stop that table with an error naming the column and its type.
    Error,
    /// Carry the value as a string column holding PostgreSQL's text output.
    Text,
}

/// `buffer:` — the durable queue between capture and flushers.
#[derive(Debug, Clone, PartialEq)]
pub struct BufferConfig {
    /// Database holding the `philotes` schema; default: `source.postgres.url`.
    pub url: PostgresUrl,
    /// When the capture closes a segment.
    pub segment: SegmentConfig,
}

/// `buffer.segment:` — a segment is closed at whichever limit comes first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentConfig {
    /// Events per segment; default 10000.
    pub max_events: u64,
    /// Encoded bytes per segment; default 8MiB.
    pub max_bytes: u64,
    /// Age of the segment's first event; default 200ms (the latency floor of the buffer).
    pub max_age: Duration,
}

/// `sink:` — the destination. Only Iceberg today.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    /// `sink.iceberg`.
    pub iceberg: IcebergSinkConfig,
}

/// `sink.iceberg:` — catalog, storage and table layout.
#[derive(Debug, Clone, PartialEq)]
pub struct IcebergSinkConfig {
    /// The catalog tables are registered in.
    pub catalog: CatalogConfig,
    /// Where data and metadata files are written. Required.
    pub warehouse: Warehouse,
    /// S3 connection settings; present exactly when the warehouse is `s3://`.
    pub s3: Option<S3Config>,
    /// Namespace of every table; `None` means each table's source schema.
    pub namespace: Option<String>,
    /// Table mode for every table without its own; default `changelog`.
    pub mode: TableMode,
    /// Target size of written Parquet data files; default 512MiB. (Added key.)
    pub target_file_size: u64,
    /// When set, the flusher role compacts the pipeline's tables periodically (`philotes compact` does it on
    /// request either way). (Added key.)
    pub compaction: Option<CompactionConfig>,
    /// Snapshots older than this are expired by every compaction run; default 7d. (Added key.)
    pub retention: Duration,
    /// Per-source-table overrides, keyed by source table.
    pub tables: BTreeMap<TableId, TableOverride>,
}

impl IcebergSinkConfig {
    /// See [`PipelineConfig::iceberg_target`].
    pub fn target(&self, table: &TableId) -> IcebergTarget {
        resolve_target(self.namespace.as_deref(), self.mode, &self.tables, table)
    }
}

/// The Iceberg target of `table` from the keys that decide it (the file is checked with these before the whole
/// sink section is known to be valid).
pub(crate) fn resolve_target(
    namespace: Option<&str>,
    mode: TableMode,
    overrides: &BTreeMap<TableId, TableOverride>,
    table: &TableId,
) -> IcebergTarget {
    let table_override = overrides.get(table);
    IcebergTarget {
        namespace: table_override
            .and_then(|t| t.namespace.clone())
            .or_else(|| namespace.map(str::to_owned))
            .unwrap_or_else(|| table.schema.clone()),
        name: table_override
            .and_then(|t| t.name.clone())
            .unwrap_or_else(|| table.name.clone()),
        mode: table_override.and_then(|t| t.mode).unwrap_or(mode),
        partition: table_override
            .map(|t| t.partition.clone())
            .unwrap_or_default(),
    }
}

/// `sink.iceberg.compaction:` — periodic compaction in the flusher role. (Added key.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionConfig {
    /// Time between two compaction rounds over every table of the pipeline; default 1h.
    pub interval: Duration,
    /// Tables whose current snapshot reads fewer data + delete files are left alone; default 10.
    pub min_files: usize,
}

/// `sink.iceberg.catalog:`.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogConfig {
    /// Catalog name; default `philotes`. Part of the catalog key: readers must use the same name.
    pub name: String,
    /// Which catalog, and its connection.
    pub kind: CatalogKind,
}

/// `sink.iceberg.catalog.type` and the keys that go with it.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogKind {
    /// `type: sql` (default): the catalog lives in PostgreSQL tables.
    Sql {
        /// `url`: the catalog database; default: `buffer.url`. Must be a `postgres://` URL.
        url: PostgresUrl,
    },
    /// `type: rest`: an Iceberg REST catalog.
    Rest {
        /// `uri`: the REST endpoint. Required.
        uri: RedactedUrl,
        /// `warehouse`: the warehouse identifier sent to the catalog; default: `sink.iceberg.warehouse`'s
        /// location. (Added key: Polaris/Lakekeeper name warehouses.)
        warehouse: Option<String>,
        /// `token`: bearer token. (Added key.)
        token: Option<Secret>,
        /// `credential`: OAuth2 `client_id:client_secret`. (Added key.)
        credential: Option<Secret>,
    },
}

/// `sink.iceberg.warehouse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warehouse {
    /// `file://…`: a local directory; a relative path (`file://./dir`) is relative to the working directory.
    File {
        /// The directory.
        path: PathBuf,
    },
    /// `s3://bucket/prefix`: S3-compatible storage, configured by `sink.iceberg.s3`.
    S3 {
        /// Bucket.
        bucket: String,
        /// Key prefix without leading or trailing `/`; may be empty.
        prefix: String,
    },
}

impl Warehouse {
    /// The warehouse as an absolute location URL for the Iceberg catalog (`file:///abs`, `s3://b/p`).
    pub fn location(&self) -> String {
        match self {
            Warehouse::File { path } => {
                let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                format!("file://{}", absolute.display())
            }
            Warehouse::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Warehouse::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

/// `sink.iceberg.s3:` — S3 or an S3-compatible store (MinIO, R2, Ceph).
#[derive(Debug, Clone, PartialEq)]
pub struct S3Config {
    /// `region`, e.g. `us-east-1`. Required (S3-compatible stores accept any value).
    pub region: String,
    /// `endpoint`: `http(s)://host:port` of an S3-compatible store; `None` means AWS.
    pub endpoint: Option<String>,
    /// `access_key_id`; with `secret_access_key`, or neither (then the default AWS credential chain).
    pub access_key_id: Option<Secret>,
    /// `secret_access_key`.
    pub secret_access_key: Option<Secret>,
    /// `session_token`, for temporary credentials.
    pub session_token: Option<Secret>,
    /// `path_style`: `http://host/bucket/key` addressing instead of `bucket.host`; MinIO needs `true`.
    /// Default `false`.
    pub path_style: bool,
}

/// `sink.iceberg.mode` (and per-table `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableMode {
    /// Append one row per change, with `_op`, `_lsn`, `_commit_ts`, `_xid`, `_seq`.
    Changelog,
    /// Keep the table equal to the source by primary key (equality deletes + new rows).
    Mirror,
}

/// `sink.iceberg.tables.<schema.table>:` — how one source table is written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableOverride {
    /// `name`: Iceberg table name; default: the source table name.
    pub name: Option<String>,
    /// `namespace`: Iceberg namespace of this table; default: `sink.iceberg.namespace`. (Added key.)
    pub namespace: Option<String>,
    /// `partition`: the partition spec, in order; default unpartitioned.
    pub partition: Vec<PartitionField>,
    /// `mode`: this table's mode; default `sink.iceberg.mode`. (Added key.)
    pub mode: Option<TableMode>,
}

/// A source table's Iceberg destination with every default resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcebergTarget {
    /// Namespace.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Table mode.
    pub mode: TableMode,
    /// Partition spec; empty = unpartitioned.
    pub partition: Vec<PartitionField>,
}

/// One partition field: `col`, `day(col)`, `bucket(16, col)`, ….
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionField {
    /// The Iceberg transform.
    pub transform: PartitionTransform,
    /// The source column it applies to.
    pub column: String,
}

impl fmt::Display for PartitionField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let column = &self.column;
        match self.transform {
            PartitionTransform::Identity => write!(f, "{column}"),
            PartitionTransform::Year => write!(f, "year({column})"),
            PartitionTransform::Month => write!(f, "month({column})"),
            PartitionTransform::Day => write!(f, "day({column})"),
            PartitionTransform::Hour => write!(f, "hour({column})"),
            PartitionTransform::Bucket(n) => write!(f, "bucket({n}, {column})"),
            PartitionTransform::Truncate(w) => write!(f, "truncate({w}, {column})"),
        }
    }
}

/// Iceberg partition transforms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionTransform {
    /// The column's value.
    Identity,
    /// Years since 1970.
    Year,
    /// Months since 1970-01.
    Month,
    /// Days since 1970-01-01.
    Day,
    /// Hours since 1970-01-01 00:00.
    Hour,
    /// Hash bucket, of this many buckets (≥ 1).
    Bucket(u32),
    /// Truncation to this width (≥ 1).
    Truncate(u32),
}

/// `flush:` — how flushers turn buffer segments into Iceberg commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushConfig {
    /// Flushes run at once in this process: table leases held at once (tables flushed in parallel); default 2.
    pub workers: usize,
    /// Events per commit, at most; default 500000. A table with this many changes waiting is flushed at once.
    pub max_events: u64,
    /// How old a table's last flush must be before a table with fewer than `max_events` waiting changes is
    /// flushed (a table's first flush comes within `interval`); default 1s. The latency floor of the flush.
    pub interval: Duration,
}

/// `snapshot:` — how the existing rows of a table are read (whether: `source.postgres.snapshot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Rows per chunk (one key range, read between two watermarks); default 50000.
    pub chunk_rows: usize,
    /// Chunks read at once (tables side by side, and key ranges of a table); default 2.
    pub workers: usize,
    /// A changelog table's chunks are written straight into Iceberg, each in a commit of its own, rather than
    /// through the buffer and the flushers; default true (a mirror table's always go through the buffer).
    pub direct: bool,
}

/// Default `snapshot.chunk_rows`.
pub const DEFAULT_SNAPSHOT_CHUNK_ROWS: usize = 50_000;
/// Default `snapshot.workers`.
pub const DEFAULT_SNAPSHOT_WORKERS: usize = 2;

/// The engine stages a pipeline is made of, as named under `stages:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StageName {
    /// pgoutput frames → change events.
    Decode,
    /// Relation cache, typed values, schema versions.
    SchemaResolve,
    /// Segments into the buffer, with the source checkpoint.
    Enqueue,
    /// Table leases and segment batches from the buffer.
    Claim,
    /// Segments → Arrow record batches.
    ArrowBatch,
    /// Parquet files + Iceberg snapshot commit.
    IcebergCommit,
    /// Watermark advance and buffer cleanup.
    Checkpoint,
}

impl StageName {
    /// Every stage, in data-path order.
    pub const ALL: [StageName; 7] = [
        StageName::Decode,
        StageName::SchemaResolve,
        StageName::Enqueue,
        StageName::Claim,
        StageName::ArrowBatch,
        StageName::IcebergCommit,
        StageName::Checkpoint,
    ];

    /// The YAML key.
    pub fn as_str(self) -> &'static str {
        match self {
            StageName::Decode => "decode",
            StageName::SchemaResolve => "schema_resolve",
            StageName::Enqueue => "enqueue",
            StageName::Claim => "claim",
            StageName::ArrowBatch => "arrow_batch",
            StageName::IcebergCommit => "iceberg_commit",
            StageName::Checkpoint => "checkpoint",
        }
    }
}

impl fmt::Display for StageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Default `stages.<decode|schema_resolve|enqueue>.queue`: changes waiting before each capture stage.
pub const DEFAULT_CAPTURE_QUEUE: usize = 1024;
/// Default `stages.arrow_batch.workers`: Arrow building is the CPU-heavy step of a flush.
pub const DEFAULT_ARROW_BATCH_WORKERS: usize = 2;

/// `stages.<stage>:` — what the file set for one stage's pool; `None` where it set nothing.
///
/// The defaults depend on other keys (the flush stages' on `flush.workers`), so they are resolved where the
/// roles' settings are assembled (`crate::pipeline`): capture queues [`DEFAULT_CAPTURE_QUEUE`];
/// `arrow_batch` [`DEFAULT_ARROW_BATCH_WORKERS`] workers; `iceberg_commit` and `checkpoint` `flush.workers`
/// workers; `arrow_batch` and `iceberg_commit` queues the larger of `arrow_batch`'s workers and
/// `flush.workers`, `checkpoint`'s `flush.workers`. Keys that cannot apply are refused when the file is read:
/// `workers` above 1 on the capture stages and `claim`, `claim.queue`, and `iceberg_commit`/`checkpoint`
/// workers above `flush.workers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StageConfig {
    /// `workers`: concurrent workers (≥ 1).
    pub workers: Option<usize>,
    /// `queue`: capacity of the stage's bounded input channel, in items (≥ 1): the backpressure bound.
    pub queue: Option<usize>,
}

/// `stages:` — what the file set for each stage's pool.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StagesConfig {
    /// The stages the file mentions; a stage absent here keeps every default.
    pub pools: BTreeMap<StageName, StageConfig>,
}

impl StagesConfig {
    /// What the file set for `stage` (nothing, when it did not mention it).
    pub fn get(&self, stage: StageName) -> StageConfig {
        self.pools.get(&stage).copied().unwrap_or_default()
    }
}

/// `telemetry:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// `metrics`: listen address of the Prometheus `/metrics` endpoint; default 127.0.0.1:9464.
    pub metrics: SocketAddr,
    /// `log_format`: `human` (default) or `json`, for log shippers. (Added key.)
    pub log_format: LogFormat,
}

/// `telemetry.log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Readable lines for a terminal.
    Human,
    /// One JSON object per line.
    Json,
}

/// Gives the YAML spelling of a keyword enum, for parsing and messages.
pub(crate) trait Keyword: Copy + 'static {
    /// Every variant.
    const ALL: &'static [Self];
    /// The YAML spelling.
    fn keyword(self) -> &'static str;
}

impl Keyword for SnapshotMode {
    const ALL: &'static [Self] = &[SnapshotMode::Initial, SnapshotMode::Never];
    fn keyword(self) -> &'static str {
        match self {
            SnapshotMode::Initial => "initial",
            SnapshotMode::Never => "never",
        }
    }
}

impl Keyword for UnmappedTypes {
    const ALL: &'static [Self] = &[UnmappedTypes::Error, UnmappedTypes::Text];
    fn keyword(self) -> &'static str {
        match self {
            UnmappedTypes::Error => "error",
            UnmappedTypes::Text => "text",
        }
    }
}

impl Keyword for TableMode {
    const ALL: &'static [Self] = &[TableMode::Changelog, TableMode::Mirror];
    fn keyword(self) -> &'static str {
        match self {
            TableMode::Changelog => "changelog",
            TableMode::Mirror => "mirror",
        }
    }
}

impl Keyword for LogFormat {
    const ALL: &'static [Self] = &[LogFormat::Human, LogFormat::Json];
    fn keyword(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}
