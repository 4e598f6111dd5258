//! Whole-file tests of [`parse`]: the shipped examples, defaults, interpolation, redaction and
//! the every-problem-at-once reporting. No services, no process environment.

use std::path::Path;
use std::time::Duration;

use super::*;

/// An environment with nothing set, so every `${VAR:-default}` takes its default.
fn no_env(_: &str) -> Option<String> {
    None
}

fn parse_ok(text: &str) -> PipelineConfig {
    parse(text, "pipeline.yaml", &no_env).unwrap_or_else(|e| panic!("{e}"))
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text, "pipeline.yaml", &no_env) {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(e) => e.problems().to_vec(),
    }
}

/// The problem at `path`, or a panic listing what was found.
fn problem_at<'p>(problems: &'p [Problem], path: &str) -> &'p Problem {
    problems
        .iter()
        .find(|p| p.path == path)
        .unwrap_or_else(|| panic!("no problem at {path}; found:\n{}", ProblemList(problems)))
}

const MINIMAL: &str = "\
pipeline: orders
source:
  postgres:
    url: postgres://app:hunter2@db.internal:5432/shop
    tables: [orders, sales.invoices]
sink:
  iceberg:
    warehouse: file:///var/lib/philotes/warehouse
";

#[test]
fn every_example_pipeline_parses_and_validates_as_it_is() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let text = std::fs::read_to_string(&path).expect("readable example");
            let origin = path.display().to_string();
            if let Err(e) = parse(&text, &origin, &no_env) {
                panic!("{origin} does not validate:\n{e}");
            }
            seen += 1;
        }
    }
    assert!(
        seen >= 4,
        "expected the four shipped examples, found {seen}"
    );
}

#[test]
fn examples_mean_what_their_comments_say() {
    let mirror = parse_ok(include_str!("../../examples/mirror.yaml"));
    assert_eq!(mirror.iceberg_target(&TableId::parse("orders").unwrap()).mode, TableMode::Mirror);
    let customers = mirror.iceberg_target(&TableId::parse("customers").unwrap());
    assert_eq!((customers.name.as_str(), customers.mode), ("customers_changelog", TableMode::Changelog));

    let partitions = parse_ok(include_str!("../../examples/partitions.yaml"));
    let orders = partitions.iceberg_target(&TableId::parse("orders").unwrap());
    assert_eq!((orders.namespace.as_str(), orders.name.as_str(), orders.mode), ("partitioned", "orders", TableMode::Mirror));
    let spec: Vec<String> = orders.partition.iter().map(ToString::to_string).collect();
    assert_eq!(spec, ["day(created_at)", "bucket(16, id)"]);
    let customers = partitions.iceberg_target(&TableId::parse("customers").unwrap());
    assert_eq!((customers.name.as_str(), customers.mode), ("customers_changes", TableMode::Changelog));
    assert_eq!(customers.partition.iter().map(ToString::to_string).collect::<Vec<_>>(), ["hour(_commit_ts)"]);

    let rest = parse_ok(include_str!("../../examples/rest-s3.yaml"));
    let CatalogKind::Rest { token, .. } = &rest.sink.iceberg.catalog.kind else {
        panic!("rest-s3.yaml uses a REST catalog")
    };
    assert!(
        token.is_none(),
        "an empty ${{CATALOG_TOKEN:-}} means no token"
    );
    assert!(rest
        .sink
        .iceberg
        .s3
        .as_ref()
        .is_some_and(|s3| s3.path_style));

    let scale = parse_ok(include_str!("../../examples/scale-out.yaml"));
    assert_eq!(scale.stages.get(StageName::ArrowBatch).workers, Some(8));
    assert_eq!(scale.flush.workers, 8);
    let capture = crate::pipeline::capture_settings(&scale);
    assert_eq!(
        (capture.schema_resolve.workers, capture.schema_resolve.queue),
        (1, 4096)
    );
    assert_eq!(capture.enqueue.queue, 2048);
    let flush = crate::pipeline::flush_settings(&scale);
    assert_eq!(
        (flush.arrow_batch.workers, flush.arrow_batch.queue),
        (8, 32)
    );
    assert_eq!((flush.checkpoint.workers, flush.checkpoint.queue), (2, 8));
}

#[test]
fn three_mistakes_are_all_reported_with_their_lines() {
    let text = "\
pipeline: orders
source:
  postgres:
    url: postgres://db/shop
    tables: all
    slto: my_slot
sink:
  iceberg:
    mode: changelog
flush:
  workers: many
";
    let found = problems(text);
    assert_eq!(found.len(), 3, "{}", ProblemList(&found));

    let unknown = problem_at(&found, "source.postgres.slto");
    assert_eq!((unknown.line, unknown.column), (6, 5));
    assert!(
        unknown.message.contains("did you mean \"slot\""),
        "{}",
        unknown.message
    );

    let missing = problem_at(&found, "sink.iceberg.warehouse");
    assert_eq!(missing.line, 8);
    assert!(missing.message.contains("missing required key"));

    let wrong_type = problem_at(&found, "flush.workers");
    assert_eq!(wrong_type.line, 11);
    assert!(wrong_type
        .message
        .contains("expected a whole number, found \"many\""));

    let lines: Vec<usize> = found.iter().map(|p| p.line).collect();
    assert_eq!(lines, [6, 8, 11], "problems come in file order");
}

#[test]
fn problems_display_as_origin_line_column_path_message_one_per_line() {
    let text = MINIMAL.replace("file:///var/lib/philotes/warehouse", "x\n    mode: mirrror");
    let err = parse(&text, "pipeline.yaml", &no_env).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pipeline.yaml:8:5: sink.iceberg.warehouse: expected a file://… or s3://… location, found \"x\"\n\
         pipeline.yaml:9:5: sink.iceberg.mode: expected one of changelog, mirror, found \"mirrror\""
    );
}

#[test]
fn a_missing_environment_variable_is_named_with_its_position() {
    let text = MINIMAL.replace(
        "postgres://app:hunter2@db.internal:5432/shop",
        "${SOURCE_URL}",
    );
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{}", ProblemList(&found));
    let p = problem_at(&found, "source.postgres.url");
    assert_eq!((p.line, p.column), (4, 5));
    assert!(p.message.contains("SOURCE_URL"), "{}", p.message);
}

#[test]
fn environment_values_and_defaults_are_interpolated() {
    let text = MINIMAL
        .replace(
            "postgres://app:hunter2@db.internal:5432/shop",
            "${SOURCE_URL}",
        )
        .replace(
            "file:///var/lib/philotes/warehouse",
            "${WAREHOUSE:-file:///tmp/wh}",
        )
        + "flush: { workers: \"${FLUSH_WORKERS:-3}\" }\n";
    let env = |name: &str| (name == "SOURCE_URL").then(|| "postgres://u@src/db".to_owned());
    let config = parse(&text, "p.yaml", &env).unwrap();
    assert_eq!(config.source.postgres.url.expose(), "postgres://u@src/db");
    assert_eq!(
        config.sink.iceberg.warehouse,
        Warehouse::File {
            path: "/tmp/wh".into()
        }
    );
    assert_eq!(config.flush.workers, 3);
}

#[test]
fn defaults_are_applied_for_everything_left_out() {
    let config = parse_ok(MINIMAL);
    let pg = &config.source.postgres;
    assert_eq!(pg.slot, "philotes_orders");
    assert_eq!(pg.publication, "philotes_orders");
    assert_eq!(pg.snapshot, SnapshotMode::Initial);
    assert_eq!(pg.unmapped_types, UnmappedTypes::Error);
    assert_eq!(config.buffer.url, pg.url);
    let CatalogKind::Sql { url } = &config.sink.iceberg.catalog.kind else {
        panic!("the default catalog is sql")
    };
    assert_eq!(url, &config.buffer.url);
    assert_eq!(config.sink.iceberg.catalog.name, "philotes");
    assert_eq!(config.sink.iceberg.mode, TableMode::Changelog);
    assert_eq!(config.buffer.segment.max_events, 10_000);
    assert_eq!(config.buffer.segment.max_bytes, 8 * 1024 * 1024);
    assert_eq!(config.buffer.segment.max_age, Duration::from_millis(200));
    assert_eq!(config.flush.workers, 2);
    assert_eq!(config.flush.max_events, 500_000);
    assert_eq!(config.flush.interval, Duration::from_secs(1));
    assert_eq!(config.telemetry.metrics.to_string(), DEFAULT_METRICS_ADDR);
    assert_eq!(config.telemetry.log_format, LogFormat::Human);
    assert_eq!(config.sink.iceberg.compaction, None, "no periodic compaction unless asked for");
    assert_eq!(config.sink.iceberg.retention, Duration::from_secs(7 * 86_400));
    for stage in StageName::ALL {
        assert_eq!(config.stages.get(stage), StageConfig::default());
    }
}

#[test]
fn unqualified_tables_are_public_and_the_namespace_defaults_to_the_source_schema() {
    let config = parse_ok(MINIMAL);
    let orders = TableId::parse("orders").unwrap();
    assert_eq!(orders.to_string(), "public.orders");
    assert!(config.source.postgres.tables.includes(&orders));
    let target = config.iceberg_target(&orders);
    assert_eq!(
        (target.namespace.as_str(), target.name.as_str()),
        ("public", "orders")
    );
    let invoices = config.iceberg_target(&TableId::parse("sales.invoices").unwrap());
    assert_eq!(invoices.namespace, "sales");

    let with_namespace = parse_ok(&format!("{MINIMAL}    namespace: cdc\n"));
    assert_eq!(with_namespace.iceberg_target(&orders).namespace, "cdc");
}

#[test]
fn debug_output_never_contains_passwords_or_s3_secrets() {
    let text = "\
pipeline: orders
source:
  postgres:
    url: postgres://app:hunter2@db/shop
    tables: all
buffer:
  url: host=buf user=philotes password='buffer pw'
sink:
  iceberg:
    catalog: { type: rest, uri: 'https://cat:catpw@catalog/api', token: tok3n, credential: id:cr3d }
    warehouse: s3://lake/cdc
    s3: { region: eu-west-1, access_key_id: AKIA1, secret_access_key: s3cr3tkey, session_token: sess1on }
";
    let config = parse_ok(text);
    let debug = format!("{config:?}");
    for secret in [
        "hunter2",
        "buffer pw",
        "catpw",
        "tok3n",
        "cr3d",
        "AKIA1",
        "s3cr3tkey",
        "sess1on",
    ] {
        assert!(!debug.contains(secret), "{secret} leaked into {debug}");
    }
    assert!(debug.contains("postgres://app:***@db/shop"));
}

#[test]
fn bad_units_are_reported_with_their_key_path() {
    let text = format!(
        "{MINIMAL}buffer:\n  segment: {{ max_bytes: 8MB_, max_age: 200 }}\nflush: {{ interval: 0s }}\n"
    );
    let found = problems(&text);
    assert_eq!(found.len(), 3, "{}", ProblemList(&found));
    assert!(problem_at(&found, "buffer.segment.max_bytes")
        .message
        .contains("unknown byte unit"));
    assert!(problem_at(&found, "buffer.segment.max_age")
        .message
        .contains("unit"));
    assert!(problem_at(&found, "flush.interval")
        .message
        .contains("longer than 0"));
}

#[test]
fn units_set_in_the_file_are_used() {
    let text = format!(
        "{MINIMAL}    target_file_size: 128MiB\nbuffer:\n  segment: {{ max_events: 20_000, max_bytes: 512KiB, max_age: 1s }}\n"
    );
    let config = parse_ok(&text);
    assert_eq!(config.buffer.segment.max_events, 20_000);
    assert_eq!(config.buffer.segment.max_bytes, 512 * 1024);
    assert_eq!(config.buffer.segment.max_age, Duration::from_secs(1));
    assert_eq!(config.sink.iceberg.target_file_size, 128 << 20);
}

#[test]
fn segment_max_age_left_out_follows_a_short_flush_interval_and_a_written_one_is_kept() {
    let short = parse_ok(&format!("{MINIMAL}flush: {{ interval: 200ms }}\n"));
    assert_eq!(short.buffer.segment.max_age, Duration::from_millis(50));
    let long = parse_ok(&format!("{MINIMAL}flush: {{ interval: 5s }}\n"));
    assert_eq!(long.buffer.segment.max_age, Duration::from_millis(200));
    let written = parse_ok(&format!("{MINIMAL}buffer:\n  segment: {{ max_age: 150ms }}\nflush: {{ interval: 200ms }}\n"));
    assert_eq!(written.buffer.segment.max_age, Duration::from_millis(150));
}

#[test]
fn compaction_and_retention_are_read_with_their_defaults() {
    let config = parse_ok(&format!("{MINIMAL}    compaction: {{ interval: 30m, min_files: 4 }}\n    retention: 2d\n"));
    let compaction = config.sink.iceberg.compaction.expect("compaction is set");
    assert_eq!(compaction, CompactionConfig { interval: Duration::from_secs(1800), min_files: 4 });
    assert_eq!(config.sink.iceberg.retention, Duration::from_secs(2 * 86_400));
    let config = parse_ok(&format!("{MINIMAL}    compaction: {{}}\n"));
    assert_eq!(
        config.sink.iceberg.compaction,
        Some(CompactionConfig { interval: DEFAULT_COMPACTION_INTERVAL, min_files: DEFAULT_COMPACTION_MIN_FILES })
    );
    assert_eq!((DEFAULT_COMPACTION_INTERVAL, DEFAULT_COMPACTION_MIN_FILES), (Duration::from_secs(3600), 10));
}

#[test]
fn bad_compaction_and_retention_values_are_named_with_their_key_and_line() {
    let text = format!("{MINIMAL}    compaction: {{ interval: 0s, min_files: none, every: 1h }}\n    retention: a week\n");
    let found = problems(&text);
    assert_eq!(found.len(), 4, "{}", ProblemList(&found));
    let interval = problem_at(&found, "sink.iceberg.compaction.interval");
    assert_eq!(interval.line, 9);
    assert!(interval.message.contains("longer than 0"), "{}", interval.message);
    let min_files = problem_at(&found, "sink.iceberg.compaction.min_files");
    assert!(min_files.message.contains("expected a whole number"), "{}", min_files.message);
    let unknown = problem_at(&found, "sink.iceberg.compaction.every");
    assert!(unknown.message.contains("unknown key \"every\""), "{}", unknown.message);
    let retention = problem_at(&found, "sink.iceberg.retention");
    assert_eq!(retention.line, 10);
}

#[test]
fn semantic_mistakes_are_each_reported_at_their_key() {
    let text = "\
pipeline: Orders-1
source:
  postgres:
    url: mysql://db
    tables: [orders, orders]
    snapshot: sometimes
sink:
  iceberg:
    catalog: { type: rest }
    warehouse: s3://lake
    tables:
      public.orders: { partition: [ \"week(ts)\" ] }
      public.other: { name: x }
stages:
  decode: { workers: 0 }
  enqeue: { workers: 2 }
telemetry: { metrics: localhost }
";
    let found = problems(text);
    for path in [
        "pipeline",
        "source.postgres.url",
        "source.postgres.tables[1]",
        "source.postgres.snapshot",
        "sink.iceberg.catalog.uri",
        "sink.iceberg.s3",
        "sink.iceberg.tables[public.orders].partition[0]",
        "sink.iceberg.tables[public.other]",
        "stages.decode.workers",
        "stages.enqeue",
        "telemetry.metrics",
    ] {
        problem_at(&found, path);
    }
    assert_eq!(found.len(), 11, "{}", ProblemList(&found));
    assert!(problem_at(&found, "stages.enqeue")
        .message
        .contains("did you mean \"enqueue\""));
}

#[test]
fn tables_may_come_from_one_comma_separated_environment_variable() {
    let text = MINIMAL.replace("[orders, sales.invoices]", "${TABLES:-all}");
    assert_eq!(parse_ok(&text).source.postgres.tables, PublishedTables::All);
    let env = |name: &str| (name == "TABLES").then(|| "orders, sales.invoices".to_owned());
    let config = parse(&text, "p.yaml", &env).unwrap();
    let expected = ["orders", "sales.invoices"].map(|t| TableId::parse(t).unwrap());
    assert_eq!(
        config.source.postgres.tables,
        PublishedTables::Listed(expected.to_vec())
    );
}

#[test]
fn catalog_keys_of_the_other_catalog_type_are_refused() {
    let text = format!("{MINIMAL}    catalog: {{ uri: http://catalog:8181 }}\n");
    let found = problems(&text);
    assert!(problem_at(&found, "sink.iceberg.catalog.uri")
        .message
        .contains("not used by a sql catalog"));
}

#[test]
fn a_key_value_buffer_url_needs_an_explicit_catalog_url() {
    let text = format!("{MINIMAL}buffer: {{ url: host=db dbname=buf }}\n");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{}", ProblemList(&found));
    assert!(problem_at(&found, "sink.iceberg.catalog.url")
        .message
        .contains("postgres:// URL"));
}

#[test]
fn an_empty_file_reports_the_required_keys() {
    let found = problems("");
    let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["pipeline", "source", "sink"]);
}

#[test]
fn loading_a_missing_file_is_an_io_error() {
    let err = load(Path::new("/nonexistent/pipeline.yaml")).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/pipeline.yaml"));
}

/// A file capturing `tables` into namespace `cdc`, with `overrides` (YAML lines under `sink.iceberg.tables`).
fn two_schemas(tables: &str, overrides: &[&str]) -> String {
    let mut text = format!(
        "pipeline: orders\nsource:\n  postgres:\n    url: postgres://db/shop\n    tables: {tables}\n\
         sink:\n  iceberg:\n    warehouse: file:///w\n    namespace: cdc\n"
    );
    if !overrides.is_empty() {
        text.push_str("    tables:\n");
        for line in overrides {
            text.push_str(&format!("      {line}\n"));
        }
    }
    text
}

#[test]
fn two_source_tables_on_one_iceberg_table_are_refused_naming_both_and_the_way_out() {
    let found = problems(&two_schemas("[public.orders, s2.orders]", &[]));
    assert_eq!(found.len(), 1, "{}", ProblemList(&found));
    let p = problem_at(&found, "source.postgres.tables[1]");
    assert_eq!(p.line, 5);
    for part in [
        "s2.orders",
        "public.orders",
        "cdc.orders",
        "sink.iceberg.tables.<table>.name",
        ".namespace",
    ] {
        assert!(p.message.contains(part), "{part} not in {}", p.message);
    }

    // The way out, either way, is accepted.
    parse_ok(&two_schemas(
        "[public.orders, s2.orders]",
        &["s2.orders: { name: s2_orders }"],
    ));
    parse_ok(&two_schemas(
        "[public.orders, s2.orders]",
        &["s2.orders: { namespace: cdc_s2 }"],
    ));
    // Without a common namespace each schema is its own namespace: no clash.
    parse_ok(&two_schemas("[public.orders, s2.orders]", &[]).replace("    namespace: cdc\n", ""));
}

#[test]
fn an_override_onto_another_tables_default_identifier_is_refused() {
    let found = problems(&two_schemas(
        "[public.orders, public.archive]",
        &["public.archive: { name: orders }"],
    ));
    assert_eq!(found.len(), 1, "{}", ProblemList(&found));
    let p = problem_at(&found, "source.postgres.tables[1]");
    assert!(
        p.message.contains("public.archive and public.orders") && p.message.contains("cdc.orders"),
        "{}",
        p.message
    );

    let found = problems(&two_schemas(
        "[public.orders, s2.orders]",
        &[
            "public.orders: { namespace: sales }",
            "s2.orders: { namespace: sales }",
        ],
    ));
    assert_eq!(found.len(), 1, "{}", ProblemList(&found));
    assert!(problem_at(&found, "source.postgres.tables[1]")
        .message
        .contains("sales.orders"));
}

#[test]
fn two_overrides_onto_one_identifier_are_refused_even_with_tables_all() {
    let overrides = ["public.a: { name: same }", "public.b: { name: same }"];
    let found = problems(&two_schemas("[public.a, public.b]", &overrides));
    assert_eq!(found.len(), 1, "{}", ProblemList(&found));
    problem_at(&found, "source.postgres.tables[1]");

    // With `all` the overrides are the tables known before run time; the later key is blamed.
    let found = problems(&two_schemas("all", &overrides));
    assert_eq!(found.len(), 1, "{}", ProblemList(&found));
    let p = problem_at(&found, "sink.iceberg.tables[public.b]");
    assert_eq!(p.line, 12);
    assert!(p.message.contains("cdc.same"), "{}", p.message);
}

#[test]
fn identifiers_differing_only_in_case_are_one_iceberg_table() {
    let found = problems(&two_schemas("[public.Orders, s2.orders]", &[]));
    assert_eq!(found.len(), 1, "{}", ProblemList(&found));
    let p = problem_at(&found, "source.postgres.tables[1]");
    assert!(
        p.message.contains("cdc.Orders") && p.message.contains("case-insensitively"),
        "{}",
        p.message
    );
    let found = problems(&two_schemas(
        "[public.a, public.b]",
        &[
            "public.a: { namespace: CDC, name: T }",
            "public.b: { name: t }",
        ],
    ));
    assert_eq!(found.len(), 1, "{}", ProblemList(&found));
}

#[test]
fn every_later_table_on_a_taken_identifier_is_reported() {
    let found = problems(&two_schemas("[a.t, b.t, c.t, d.u]", &[]));
    let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["source.postgres.tables[1]", "source.postgres.tables[2]"],
        "{}",
        ProblemList(&found)
    );
    assert!(
        found[1].message.contains("c.t and a.t"),
        "{}",
        found[1].message
    );
}

#[test]
fn clashes_of_a_table_list_known_only_at_run_time_are_found_by_the_public_check() {
    let config = parse_ok(&two_schemas("all", &["s3.orders: { name: orders_s3 }"]));
    let tables = [
        "public.orders",
        "s2.orders",
        "s3.orders",
        "public.items",
        "s2.ITEMS",
    ]
    .map(|t| TableId::parse(t).unwrap());
    let clashes = iceberg_clashes(&config, &tables);
    let pairs: Vec<(String, String)> = clashes
        .iter()
        .map(|c| (c.first.to_string(), c.second.to_string()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("public.orders".to_owned(), "s2.orders".to_owned()),
            ("public.items".to_owned(), "s2.ITEMS".to_owned())
        ]
    );
    assert_eq!(
        clashes[1].first_target,
        ("cdc".to_owned(), "items".to_owned())
    );
    assert_eq!(
        clashes[1].second_target,
        ("cdc".to_owned(), "ITEMS".to_owned())
    );
    assert!(clashes[0]
        .to_string()
        .contains("s2.orders and public.orders"));
    assert!(iceberg_clashes(&config, &tables[..1]).is_empty());
    // A table given twice is one table, not a clash.
    assert!(iceberg_clashes(&config, &[tables[0].clone(), tables[0].clone()]).is_empty());
}

#[test]
fn quoted_identifiers_name_tables_with_dots_quotes_spaces_and_capitals() {
    let text = MINIMAL.replace(
        "[orders, sales.invoices]",
        r#"['"public"."t.dot"', '"my schema"."T"', 'public."a""b"', Sales.Orders]"#,
    ) + "    tables:\n      public.\"t.dot\": { name: t_dot }\n      '\"my schema\".\"T\"': { namespace: spaced }\n";
    let config = parse_ok(&text);
    let PublishedTables::Listed(tables) = &config.source.postgres.tables else {
        panic!("listed")
    };
    let parts: Vec<(&str, &str)> = tables
        .iter()
        .map(|t| (t.schema.as_str(), t.name.as_str()))
        .collect();
    assert_eq!(
        parts,
        [
            ("public", "t.dot"),
            ("my schema", "T"),
            ("public", "a\"b"),
            ("Sales", "Orders")
        ],
        "quoted keeps everything; unquoted is taken as written"
    );
    let shown: Vec<String> = tables.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            r#"public."t.dot""#,
            "my schema.T",
            r#"public."a""b""#,
            "Sales.Orders"
        ]
    );
    for (table, text) in tables.iter().zip(&shown) {
        assert_eq!(&TableId::parse(text).unwrap(), table, "{text} reads back");
    }
    assert_eq!(config.iceberg_target(&tables[0]).name, "t_dot");
    assert_eq!(config.iceberg_target(&tables[1]).namespace, "spaced");
    assert_eq!(config.iceberg_target(&tables[2]).name, "a\"b");
}

#[test]
fn unbalanced_quotes_are_refused_naming_the_key_and_line() {
    let text = MINIMAL.replace("[orders, sales.invoices]", r#"[orders, '"public.t']"#)
        + "    tables:\n      public.\"x: { name: y }\n";
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{}", ProblemList(&found));
    let item = problem_at(&found, "source.postgres.tables[1]");
    assert_eq!(item.line, 5);
    assert!(
        item.message.contains("unbalanced quote"),
        "{}",
        item.message
    );
    let key = problem_at(&found, "sink.iceberg.tables[public.\"x]");
    assert_eq!(key.line, 10);
    assert!(key.message.contains("unbalanced quote"), "{}", key.message);
}

#[test]
fn a_comma_separated_table_list_keeps_commas_inside_quotes() {
    let text = MINIMAL.replace("[orders, sales.invoices]", "${TABLES}");
    let env = |name: &str| (name == "TABLES").then(|| r#"public."a,b", "x.y".z"#.to_owned());
    let config = parse(&text, "p.yaml", &env).unwrap();
    let expected = [("public", "a,b"), ("x.y", "z")].map(|(schema, name)| TableId {
        schema: schema.into(),
        name: name.into(),
    });
    assert_eq!(
        config.source.postgres.tables,
        PublishedTables::Listed(expected.to_vec())
    );
}

/// `(workers, queue)` of a stage's options.
fn pool(options: &philotes_engine::StageOptions) -> (usize, usize) {
    (options.workers, options.queue)
}

#[test]
fn stages_left_out_keep_the_pools_computed_from_flush_workers() {
    let config = parse_ok(&format!("{MINIMAL}flush: {{ workers: 3 }}\n"));
    let capture = crate::pipeline::capture_settings(&config);
    for options in [&capture.decode, &capture.schema_resolve, &capture.enqueue] {
        assert_eq!(pool(options), (1, 1024));
    }
    let flush = crate::pipeline::flush_settings(&config);
    assert_eq!(flush.workers, 3);
    assert_eq!(pool(&flush.arrow_batch), (2, 3));
    assert_eq!(pool(&flush.iceberg_commit), (3, 3));
    assert_eq!(pool(&flush.checkpoint), (3, 3));

    let defaults = crate::pipeline::flush_settings(&parse_ok(MINIMAL));
    assert_eq!(pool(&defaults.arrow_batch), (2, 2));
    assert_eq!(pool(&defaults.iceberg_commit), (2, 2));
    assert_eq!(pool(&defaults.checkpoint), (2, 2));
}

#[test]
fn each_stage_key_set_in_the_file_reaches_its_stage_and_only_its_stage() {
    let text = format!(
        "{MINIMAL}flush: {{ workers: 4 }}
stages:
  decode: {{ workers: 1, queue: 10 }}
  schema_resolve: {{ queue: 20 }}
  enqueue: {{ queue: 30 }}
  claim: {{ workers: 1 }}
  arrow_batch: {{ workers: 6 }}
  iceberg_commit: {{ workers: 3, queue: 50 }}
  checkpoint: {{ queue: 60 }}
"
    );
    let config = parse_ok(&text);
    assert_eq!(
        config.stages.get(StageName::SchemaResolve),
        StageConfig {
            workers: None,
            queue: Some(20)
        }
    );
    let capture = crate::pipeline::capture_settings(&config);
    assert_eq!(pool(&capture.decode), (1, 10));
    assert_eq!(pool(&capture.schema_resolve), (1, 20));
    assert_eq!(pool(&capture.enqueue), (1, 30));
    let flush = crate::pipeline::flush_settings(&config);
    assert_eq!(flush.workers, 4);
    // arrow_batch's queue is left out: the larger of its workers and flush.workers.
    assert_eq!(pool(&flush.arrow_batch), (6, 6));
    assert_eq!(pool(&flush.iceberg_commit), (3, 50));
    assert_eq!(pool(&flush.checkpoint), (4, 60));
}

#[test]
fn more_than_one_worker_on_a_capture_stage_or_claim_is_refused_at_its_line() {
    let text = format!(
        "{MINIMAL}stages:
  decode: {{ workers: 2 }}
  schema_resolve: {{ workers: 3 }}
  enqueue:
    workers: 4
  claim: {{ workers: 8, queue: 16 }}
"
    );
    let found = problems(&text);
    assert_eq!(found.len(), 5, "{}", ProblemList(&found));
    for (path, line, words) in [
        (
            "stages.decode.workers",
            10,
            "decode follows the replication stream's order",
        ),
        (
            "stages.schema_resolve.workers",
            11,
            "schema_resolve follows the replication stream's order",
        ),
        (
            "stages.enqueue.workers",
            13,
            "enqueue follows the replication stream's order",
        ),
        (
            "stages.claim.workers",
            14,
            "flush.workers sets how many flushes run at once",
        ),
        ("stages.claim.queue", 14, "stages.arrow_batch.queue"),
    ] {
        let problem = problem_at(&found, path);
        assert_eq!(problem.line, line, "{problem}");
        assert!(problem.message.contains(words), "{problem}");
    }
    assert!(problem_at(&found, "stages.decode.workers")
        .message
        .starts_with("must be 1, found 2"));
}

#[test]
fn commit_or_checkpoint_workers_beyond_flush_workers_are_refused_naming_both_keys() {
    let text = format!(
        "{MINIMAL}flush: {{ workers: 2 }}
stages:
  iceberg_commit: {{ workers: 3 }}
  checkpoint:
    workers: 4
  arrow_batch: {{ workers: 8 }}
"
    );
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{}", ProblemList(&found));
    let commit = problem_at(&found, "stages.iceberg_commit.workers");
    assert_eq!(commit.line, 11);
    assert!(
        commit.message.contains("more than flush.workers (2)")
            && commit
                .message
                .contains("lower stages.iceberg_commit.workers or raise flush.workers"),
        "{commit}"
    );
    let checkpoint = problem_at(&found, "stages.checkpoint.workers");
    assert_eq!(checkpoint.line, 13);
    assert!(
        checkpoint.message.contains("stages.checkpoint.workers"),
        "{checkpoint}"
    );

    // Measured against the default flush.workers (2) too, and not against a flush.workers that is itself wrong.
    let default = problems(&format!(
        "{MINIMAL}stages:\n  checkpoint: {{ workers: 3 }}\n"
    ));
    assert!(problem_at(&default, "stages.checkpoint.workers")
        .message
        .contains("(2)"));
    let wrong = problems(&format!(
        "{MINIMAL}flush: {{ workers: many }}\nstages:\n  checkpoint: {{ workers: 3 }}\n"
    ));
    assert_eq!(wrong.len(), 1, "{}", ProblemList(&wrong));
    problem_at(&wrong, "flush.workers");
}

#[test]
fn tls_keys_are_written_into_the_source_url_unless_it_sets_them_itself() {
    let yaml = MINIMAL.replace(
        "    tables: [orders, sales.invoices]\n",
        "    tables: [orders, sales.invoices]\n    tls: { mode: verify-full, root_cert: /etc/ssl/rds ca.pem }\n",
    );
    let config = parse_ok(&yaml);
    assert_eq!(
        config.source.postgres.url.expose(),
        "postgres://app:hunter2@db.internal:5432/shop?sslmode=verify-full&sslrootcert=/etc/ssl/rds%20ca.pem"
    );
    // The buffer defaults to the source URL, keys included.
    assert_eq!(config.buffer.url.expose(), config.source.postgres.url.expose());
    let yaml = MINIMAL
        .replace("/shop\n", "/shop?sslmode=disable\n")
        .replace("    tables: [orders, sales.invoices]\n", "    tables: [orders, sales.invoices]\n    tls: { mode: require }\n");
    assert!(parse_ok(&yaml).source.postgres.url.expose().ends_with("/shop?sslmode=disable"));
}

#[test]
fn a_bad_tls_mode_is_reported_at_its_key_and_line() {
    let yaml = MINIMAL.replace(
        "    tables: [orders, sales.invoices]\n",
        "    tables: [orders, sales.invoices]\n    tls:\n      mode: sometimes\n",
    );
    let found = problems(&yaml);
    let p = problem_at(&found, "source.postgres.tls.mode");
    assert_eq!(p.line, 7, "{p:?}");
    assert!(p.message.contains("sometimes") && p.message.contains("verify-full"), "{p:?}");
}
