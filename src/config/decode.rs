//! Walks the positioned YAML tree into [`PipelineConfig`], applying defaults and cross-key rules.
//!
//! Every section is decoded even when an earlier one had problems, so one run reports them all.
//! A section returns `None` only when a value it cannot default is missing or wrong (and reported).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use super::clash;
use super::model::*;
use super::secret::{PostgresUrl, RedactedUrl, Secret};
use super::validate;
use super::walk::{Field, Section, Walker};
use super::yaml::{Node, Pos, Value};

const ROOT_KEYS: &[&str] = &[
    "pipeline",
    "source",
    "buffer",
    "sink",
    "flush",
    "snapshot",
    "stages",
    "telemetry",
];
const POSTGRES_KEYS: &[&str] = &[
    "url",
    "publication",
    "slot",
    "tables",
    "snapshot",
    "unmapped_types",
    "status_interval",
    "max_retained_wal",
    "heartbeat",
    "tls",
];
const ICEBERG_KEYS: &[&str] = &[
    "catalog",
    "warehouse",
    "s3",
    "namespace",
    "mode",
    "target_file_size",
    "compaction",
    "retention",
    "tables",
];
const CATALOG_KEYS: &[&str] = &[
    "type",
    "name",
    "url",
    "uri",
    "warehouse",
    "token",
    "credential",
];
const S3_KEYS: &[&str] = &[
    "region",
    "endpoint",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "path_style",
];
const TABLE_KEYS: &[&str] = &["name", "namespace", "partition", "mode"];

/// Decodes the whole file; `None` when something required is missing or invalid (reported).
pub(crate) fn decode(root: &Node, w: &mut Walker<'_, '_>) -> Option<PipelineConfig> {
    let top = w.root(root, ROOT_KEYS);
    let pipeline = w.required(&top, "pipeline").and_then(|f| {
        let name = w.word(&f)?;
        w.check(&f, validate::pipeline_name(&name).map(|()| name))
    });
    let (postgres, source_url, tables) = source(w, &top, pipeline.as_deref());
    let (mut buffer, max_age_written) = buffer(w, &top, source_url);
    let iceberg = sink(w, &top, buffer.as_ref().map(|b| &b.url), tables.as_ref());
    let (flush, flush_workers) = flush(w, &top);
    if let Some(buffer) = buffer.as_mut().filter(|_| !max_age_written) {
        // A change waits up to max_age in the capture before it is in the buffer: a quarter of the flush
        // interval at most, so a short interval is not spent waiting for the capture.
        buffer.segment.max_age = buffer.segment.max_age.min(flush.interval / 4);
    }
    let stages = stages(w, &top, flush_workers);
    let snapshot = snapshot(w, &top);
    let telemetry = telemetry(w, &top);
    Some(PipelineConfig {
        pipeline: pipeline?,
        source: SourceConfig {
            postgres: postgres?,
        },
        buffer: buffer?,
        sink: SinkConfig { iceberg: iceberg? },
        flush,
        snapshot,
        stages,
        telemetry,
    })
}

/// A PostgreSQL connection string at `field`.
fn postgres_url(w: &mut Walker<'_, '_>, field: &Field<'_>) -> Option<PostgresUrl> {
    let text = w.word(field)?;
    w.check(field, PostgresUrl::parse(&text))
}

/// A table named in the file, with where it is named (a `source.postgres.tables` item or a
/// `sink.iceberg.tables` key).
type Place = (TableId, Pos, String);

/// What `source.postgres` gives the rest of the file: the whole section, and the url and tables
/// alone (other sections are checked against those even when the section as a whole failed), the
/// listed tables with their places.
type Source = (
    Option<PostgresSourceConfig>,
    Option<PostgresUrl>,
    Option<(PublishedTables, Vec<Place>)>,
);

/// Refuses two tables that would write one Iceberg table, at the later one's place.
fn report_clashes(
    w: &mut Walker<'_, '_>,
    resolve: impl Fn(&TableId) -> IcebergTarget,
    places: &[Place],
) {
    let tables: Vec<TableId> = places.iter().map(|(t, _, _)| t.clone()).collect();
    for clash in clash::clashes(resolve, &tables) {
        if let Some((_, pos, path)) = places.iter().find(|(t, _, _)| *t == clash.second) {
            w.problem(*pos, path, clash.to_string());
        }
    }
}

/// `source.postgres`.
fn source(w: &mut Walker<'_, '_>, top: &Section<'_>, pipeline: Option<&str>) -> Source {
    let Some(source_field) = w.required(top, "source") else {
        return (None, None, None);
    };
    let source = w.open(&source_field, &["postgres"]);
    let Some(pg_field) = w.required(&source, "postgres") else {
        return (None, None, None);
    };
    let pg = w.open(&pg_field, POSTGRES_KEYS);
    let url = w.required(&pg, "url").and_then(|f| postgres_url(w, &f));
    let url = source_tls(w, &pg, url);
    let default_name = pipeline.map(|p| format!("philotes_{p}"));
    let publication = match w.optional(&pg, "publication") {
        Some((f, name)) => w.check(&f, validate::publication_name(&name).map(|()| name)),
        None => default_name.clone(),
    };
    let slot = match w.optional(&pg, "slot") {
        Some((f, name)) => w.check(&f, validate::slot_name(&name).map(|()| name)),
        None => default_name,
    };
    let tables = w
        .required(&pg, "tables")
        .and_then(|f| table_selection(w, &f));
    let snapshot = w.opt_keyword(&pg, "snapshot", SnapshotMode::Initial);
    let unmapped_types = w.opt_keyword(&pg, "unmapped_types", UnmappedTypes::Error);
    let status_interval = w.duration(&pg, "status_interval", DEFAULT_STATUS_INTERVAL);
    let max_retained_wal = w.bytes(&pg, "max_retained_wal", 0);
    // `0s` or `off` turns the heartbeat off (a duration key elsewhere must be longer than 0).
    let heartbeat = match w.optional(&pg, "heartbeat") {
        Some((_, text)) if text == "off" => None,
        Some((field, text)) => w.check(&field, super::units::parse_duration(&text)).map_or(Some(DEFAULT_HEARTBEAT), |d| (!d.is_zero()).then_some(d)),
        None => Some(DEFAULT_HEARTBEAT),
    };
    let config = match (&url, publication, slot, &tables) {
        (Some(url), Some(publication), Some(slot), Some((tables, _))) => {
            Some(PostgresSourceConfig {
                url: url.clone(),
                publication,
                slot,
                tables: tables.clone(),
                snapshot,
                unmapped_types,
                status_interval,
                max_retained_wal: (max_retained_wal > 0).then_some(max_retained_wal),
                heartbeat,
            })
        }
        _ => None,
    };
    (config, url, tables)
}

/// `source.postgres.tls: { mode, root_cert }`: libpq's `sslmode` and `sslrootcert` for a source URL that does
/// not set them itself (the URL's own keys win). They are written into the URL, so the buffer and the SQL
/// catalog, which default to the source URL, get them too.
fn source_tls(w: &mut Walker<'_, '_>, pg: &Section<'_>, url: Option<PostgresUrl>) -> Option<PostgresUrl> {
    let tls = w.section(pg, "tls", &["mode", "root_cert"]);
    let mode = w.optional(&tls, "mode").and_then(|(f, mode)| {
        let checked = mode.parse::<philotes_stages::store::tls::SslMode>().map(|_| mode);
        w.check(&f, checked)
    });
    let root_cert = w.opt_word(&tls, "root_cert");
    let url = url?;
    if mode.is_none() && root_cert.is_none() {
        return Some(url);
    }
    let field = tls.field("mode").or_else(|| tls.field("root_cert"))?;
    w.check(&field, url.with_defaults(&[("sslmode", mode), ("sslrootcert", root_cert)]))
}

/// `source.postgres.tables`: `all`, a list of `schema.table`, or (handy from an environment
/// variable) one string of comma-separated names; with the places of the listed tables.
fn table_selection(
    w: &mut Walker<'_, '_>,
    field: &Field<'_>,
) -> Option<(PublishedTables, Vec<Place>)> {
    let mut names: Vec<(Field<'_>, String)> = Vec::new();
    if matches!(field.node.value, Value::Scalar(_)) {
        let text = w.text(field)?;
        if text.trim() == "all" {
            return Some((PublishedTables::All, Vec::new()));
        }
        let parts = split_outside_quotes(&text, ',')
            .into_iter()
            .map(|name| (field.clone(), name.trim().to_owned()));
        names.extend(parts.filter(|(_, name)| !name.is_empty()));
    } else {
        for item in w.list(field) {
            if let Some(text) = w.text(&item) {
                names.push((item, text.trim().to_owned()));
            }
        }
    }
    if names.is_empty() {
        w.problem(
            field.pos,
            &field.path,
            "lists no tables (write `all` for every table)",
        );
        return None;
    }
    let mut tables: Vec<TableId> = Vec::with_capacity(names.len());
    let mut places = Vec::with_capacity(names.len());
    let mut ok = true;
    for (item, text) in &names {
        let parsed = if text == "all" {
            Err("`all` cannot be mixed with table names".to_owned())
        } else {
            TableId::parse(text)
        };
        match w.check(item, parsed) {
            Some(table) if tables.contains(&table) => {
                w.problem(item.pos, &item.path, format!("{table} is listed twice"));
            }
            Some(table) => {
                places.push((table.clone(), item.pos, item.path.clone()));
                tables.push(table);
            }
            None => ok = false,
        }
    }
    ok.then_some((PublishedTables::Listed(tables), places))
}

/// `text` split at each `separator` that is not inside a double-quoted name (`"a,b".t, c`).
fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(&text[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

/// `buffer`, and whether `buffer.segment.max_age` is written (absent, it follows `flush.interval`).
fn buffer(
    w: &mut Walker<'_, '_>,
    top: &Section<'_>,
    source_url: Option<PostgresUrl>,
) -> (Option<BufferConfig>, bool) {
    let buffer = w.section(top, "buffer", &["url", "segment"]);
    let url = match w.optional(&buffer, "url") {
        Some((f, text)) => w.check(&f, PostgresUrl::parse(&text)),
        None => source_url,
    };
    let segment = w.section(&buffer, "segment", &["max_events", "max_bytes", "max_age"]);
    let max_age_written = segment.field("max_age").is_some();
    let segment = SegmentConfig {
        max_events: w.number(&segment, "max_events", DEFAULT_SEGMENT_MAX_EVENTS),
        max_bytes: w.bytes(&segment, "max_bytes", DEFAULT_SEGMENT_MAX_BYTES),
        max_age: w.duration(&segment, "max_age", DEFAULT_SEGMENT_MAX_AGE),
    };
    (url.map(|url| BufferConfig { url, segment }), max_age_written)
}

/// `sink.iceberg`; refuses source tables that would share an Iceberg table.
fn sink(
    w: &mut Walker<'_, '_>,
    top: &Section<'_>,
    buffer_url: Option<&PostgresUrl>,
    source: Option<&(PublishedTables, Vec<Place>)>,
) -> Option<IcebergSinkConfig> {
    let source_tables = source.map(|(selection, _)| selection);
    let sink_field = w.required(top, "sink")?;
    let sink = w.open(&sink_field, &["iceberg"]);
    let iceberg_field = w.required(&sink, "iceberg")?;
    let iceberg = w.open(&iceberg_field, ICEBERG_KEYS);
    let catalog = catalog(w, &iceberg, buffer_url);
    let warehouse_field = w.required(&iceberg, "warehouse");
    let warehouse = warehouse_field.as_ref().and_then(|f| {
        let text = w.word(f)?;
        w.check(f, validate::warehouse(&text))
    });
    let s3 = match (&warehouse, iceberg.field("s3")) {
        (Some(Warehouse::S3 { .. }), None) => {
            let pos = warehouse_field.as_ref().map_or(iceberg.pos, |f| f.pos);
            let path = format!("{}.s3", iceberg.path);
            w.problem(
                pos,
                &path,
                "an s3:// warehouse needs an s3: block (at least region)",
            );
            None
        }
        (Some(Warehouse::File { .. }), Some(f)) => {
            w.problem(
                f.pos,
                &f.path,
                "s3 settings are only used with an s3:// warehouse",
            );
            s3_config(w, &f)
        }
        (_, Some(f)) => s3_config(w, &f),
        (_, None) => None,
    };
    let namespace = w.opt_checked(&iceberg, "namespace", validate::iceberg_namespace);
    let mode = w.opt_keyword(&iceberg, "mode", TableMode::Changelog);
    let target_file_size = w.bytes(&iceberg, "target_file_size", DEFAULT_TARGET_FILE_SIZE);
    let compaction = iceberg.field("compaction").map(|_| {
        let compaction = w.section(&iceberg, "compaction", &["interval", "min_files"]);
        CompactionConfig {
            interval: w.duration(&compaction, "interval", DEFAULT_COMPACTION_INTERVAL),
            min_files: w.opt_count(&compaction, "min_files").unwrap_or(DEFAULT_COMPACTION_MIN_FILES),
        }
    });
    let retention = w.duration(&iceberg, "retention", DEFAULT_RETENTION);
    let (tables, overridden) = table_overrides(w, &iceberg, source_tables);
    if let Some((selection, listed)) = source {
        // With `all` the tables are only known at run time (checked there); the overridden ones are known now.
        let places = match selection {
            PublishedTables::Listed(_) => listed,
            PublishedTables::All => &overridden,
        };
        let resolve = |t: &TableId| resolve_target(namespace.as_deref(), mode, &tables, t);
        report_clashes(w, resolve, places);
    }
    let warehouse = warehouse?;
    let s3 = match warehouse {
        Warehouse::S3 { .. } => Some(s3?),
        Warehouse::File { .. } => None,
    };
    Some(IcebergSinkConfig {
        catalog: catalog?,
        warehouse,
        s3,
        namespace,
        mode,
        target_file_size,
        compaction,
        retention,
        tables,
    })
}

/// The catalog types, as written in `sink.iceberg.catalog.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CatalogType {
    Sql,
    Rest,
}

impl Keyword for CatalogType {
    const ALL: &'static [Self] = &[CatalogType::Sql, CatalogType::Rest];
    fn keyword(self) -> &'static str {
        match self {
            CatalogType::Sql => "sql",
            CatalogType::Rest => "rest",
        }
    }
}

/// `sink.iceberg.catalog`.
fn catalog(
    w: &mut Walker<'_, '_>,
    iceberg: &Section<'_>,
    buffer_url: Option<&PostgresUrl>,
) -> Option<CatalogConfig> {
    let catalog = w.section(iceberg, "catalog", CATALOG_KEYS);
    let kind = catalog
        .field("type")
        .map_or(Some(CatalogType::Sql), |f| w.keyword(&f));
    let name = w
        .opt_word(&catalog, "name")
        .unwrap_or_else(|| DEFAULT_CATALOG_NAME.to_owned());
    let kind = kind?;
    let (own, others): (&[&str], &[&str]) = match kind {
        CatalogType::Sql => (&["url"], &["uri", "warehouse", "token", "credential"]),
        CatalogType::Rest => (&["uri", "warehouse", "token", "credential"], &["url"]),
    };
    for key in others {
        if let Some(f) = catalog.field(key) {
            let message = format!(
                "not used by a {} catalog (it takes {})",
                kind.keyword(),
                own.join(", ")
            );
            w.problem(f.pos, &f.path, message);
        }
    }
    let kind = match kind {
        CatalogType::Sql => {
            let url = match w.optional(&catalog, "url") {
                Some((f, text)) => {
                    let url = w.check(&f, PostgresUrl::parse(&text))?;
                    if !url.is_url() {
                        w.problem(
                            f.pos,
                            &f.path,
                            "the SQL catalog needs a postgres:// URL, not the key=value form",
                        );
                    }
                    url
                }
                None => {
                    let url = buffer_url?.clone();
                    if !url.is_url() {
                        let path = format!("{}.url", catalog.path);
                        w.problem(
                            catalog.pos,
                            &path,
                            "the SQL catalog needs a postgres:// URL; the buffer url is in key=value form, so set this",
                        );
                    }
                    url
                }
            };
            CatalogKind::Sql { url }
        }
        CatalogType::Rest => {
            let uri = match catalog.field("uri") {
                Some(f) => w.word(&f).and_then(|uri| {
                    let checked = validate::http_url(&uri).map(|()| RedactedUrl::new(uri));
                    w.check(&f, checked)
                }),
                None => {
                    let path = format!("{}.uri", catalog.path);
                    w.problem(
                        catalog.pos,
                        &path,
                        "missing required key (a rest catalog needs uri)",
                    );
                    None
                }
            };
            let warehouse = w.opt_word(&catalog, "warehouse");
            let token = w.opt_word(&catalog, "token").map(Secret::new);
            let credential = w.opt_word(&catalog, "credential").map(Secret::new);
            CatalogKind::Rest {
                uri: uri?,
                warehouse,
                token,
                credential,
            }
        }
    };
    Some(CatalogConfig { name, kind })
}

/// `sink.iceberg.s3`.
fn s3_config(w: &mut Walker<'_, '_>, field: &Field<'_>) -> Option<S3Config> {
    let s3 = w.open(field, S3_KEYS);
    let region = w.required(&s3, "region").and_then(|f| w.word(&f));
    let endpoint = w.opt_checked(&s3, "endpoint", validate::http_url);
    let access_key_id = w.opt_word(&s3, "access_key_id").map(Secret::new);
    let secret_access_key = w.opt_word(&s3, "secret_access_key").map(Secret::new);
    let session_token = w.opt_word(&s3, "session_token").map(Secret::new);
    let given = [
        ("access_key_id", access_key_id.is_some()),
        ("secret_access_key", secret_access_key.is_some()),
    ];
    for ((present, has_present), (absent, has_absent)) in
        [(given[0], given[1]), (given[1], given[0])]
    {
        if has_present && !has_absent {
            let pos = s3.field(present).map_or(s3.pos, |f| f.pos);
            let path = format!("{}.{absent}", s3.path);
            w.problem(pos, &path, format!("required together with {present}"));
        }
    }
    let path_style = w.boolean(&s3, "path_style", false);
    Some(S3Config {
        region: region?,
        endpoint,
        access_key_id,
        secret_access_key,
        session_token,
        path_style,
    })
}

/// `sink.iceberg.tables`: per-source-table overrides, and where each is written.
fn table_overrides(
    w: &mut Walker<'_, '_>,
    iceberg: &Section<'_>,
    source_tables: Option<&PublishedTables>,
) -> (BTreeMap<TableId, TableOverride>, Vec<Place>) {
    let tables = w.section(iceberg, "tables", &[]);
    let mut out = BTreeMap::new();
    let mut places = Vec::new();
    for (key, field) in tables.entries() {
        let Some(table) = w.check(&field, TableId::parse(key)) else {
            continue;
        };
        if source_tables.is_some_and(|s| !s.includes(&table)) {
            let message = format!("{table} is not in source.postgres.tables");
            w.problem(field.pos, &field.path, message);
        }
        if out.contains_key(&table) {
            w.problem(
                field.pos,
                &field.path,
                format!("{table} is configured twice"),
            );
            continue;
        }
        let section = w.open(&field, TABLE_KEYS);
        let name = w.opt_checked(&section, "name", validate::iceberg_table_name);
        let namespace = w.opt_checked(&section, "namespace", validate::iceberg_namespace);
        let mut partition = Vec::new();
        if let Some(f) = section.field("partition") {
            for item in w.list(&f) {
                if let Some(text) = w.text(&item) {
                    if let Some(p) = w.check(&item, validate::partition(&text)) {
                        partition.push(p);
                    }
                }
            }
        }
        let mode = section.field("mode").and_then(|f| w.keyword(&f));
        let table_override = TableOverride {
            name,
            namespace,
            partition,
            mode,
        };
        places.push((table.clone(), field.pos, field.path.clone()));
        out.insert(table, table_override);
    }
    (out, places)
}

/// `flush`, and `flush.workers` as written when it is valid or absent (`None`: wrong, and reported), so the
/// stage pools are not compared with a default the file did not choose.
fn flush(w: &mut Walker<'_, '_>, top: &Section<'_>) -> (FlushConfig, Option<usize>) {
    let flush = w.section(top, "flush", &["workers", "max_events", "interval"]);
    let written = flush.field("workers").is_some();
    let workers = w.opt_count(&flush, "workers");
    let checked = if written {
        workers
    } else {
        Some(DEFAULT_FLUSH_WORKERS)
    };
    let config = FlushConfig {
        workers: workers.unwrap_or(DEFAULT_FLUSH_WORKERS),
        max_events: w.number(&flush, "max_events", DEFAULT_FLUSH_MAX_EVENTS),
        interval: w.duration(&flush, "interval", DEFAULT_FLUSH_INTERVAL),
    };
    (config, checked)
}

/// `snapshot`: how existing rows are read (`source.postgres.snapshot` says whether).
fn snapshot(w: &mut Walker<'_, '_>, top: &Section<'_>) -> SnapshotConfig {
    let snapshot = w.section(top, "snapshot", &["chunk_rows", "workers", "direct"]);
    SnapshotConfig {
        direct: w.boolean(&snapshot, "direct", true),
        chunk_rows: usize::try_from(w.number(&snapshot, "chunk_rows", DEFAULT_SNAPSHOT_CHUNK_ROWS as u64))
            .unwrap_or(DEFAULT_SNAPSHOT_CHUNK_ROWS),
        workers: w.opt_count(&snapshot, "workers").unwrap_or(DEFAULT_SNAPSHOT_WORKERS),
    }
}

/// `stages`: what the file sets for each stage's pool (defaults are `crate::pipeline`'s), refusing keys that
/// cannot apply to their stage. `flush_workers` is `flush.workers` when known to be valid.
fn stages(w: &mut Walker<'_, '_>, top: &Section<'_>, flush_workers: Option<usize>) -> StagesConfig {
    let names: Vec<&str> = StageName::ALL.iter().map(|s| s.as_str()).collect();
    let stages = w.section(top, "stages", &names);
    let mut config = StagesConfig::default();
    for stage in StageName::ALL {
        if stages.field(stage.as_str()).is_none() {
            continue;
        }
        let pool = w.section(&stages, stage.as_str(), &["workers", "queue"]);
        let set = StageConfig {
            workers: w.opt_count(&pool, "workers"),
            queue: w.opt_count(&pool, "queue"),
        };
        if let (Some(workers), Some(f)) = (set.workers, pool.field("workers")) {
            w.check(&f, validate::stage_workers(stage, workers, flush_workers));
        }
        if let (Some(_), Some(f)) = (set.queue, pool.field("queue")) {
            w.check(&f, validate::stage_queue(stage));
        }
        config.pools.insert(stage, set);
    }
    config
}

/// `telemetry`.
fn telemetry(w: &mut Walker<'_, '_>, top: &Section<'_>) -> TelemetryConfig {
    let telemetry = w.section(top, "telemetry", &["metrics", "log_format"]);
    let default_metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, 9464));
    let metrics = telemetry
        .field("metrics")
        .and_then(|f| {
            let text = w.text(&f)?;
            w.check(&f, validate::socket_addr(&text))
        })
        .unwrap_or(default_metrics);
    TelemetryConfig {
        metrics,
        log_format: w.opt_keyword(&telemetry, "log_format", LogFormat::Human),
    }
}
