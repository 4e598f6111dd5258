//! The `philotes` command line, run as a user would run it: the real binary, real files, a real database.

use std::path::PathBuf;
use std::process::Output;

use crate::support::philotes;

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("philotes-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write temp file");
    path
}

#[test]
fn validate_accepts_every_example() {
    let examples: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(examples.len() >= 4, "expected the examples, found {examples:?}");
    let args: Vec<&str> = std::iter::once("validate").chain(examples.iter().map(String::as_str)).collect();
    let out = philotes(&args, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches(": ok").count(), examples.len(), "{}", text(&out));
}

#[test]
fn validate_reports_every_problem_with_its_line_and_fails() {
    let file = temp_file(
        "three-mistakes.yaml",
        "pipeline: orders\n\
         source:\n\
         \x20 postgres:\n\
         \x20   tables: [public.orders]\n\
         \x20   snapshott: initial\n\
         flush:\n\
         \x20 workers: many\n",
    );
    let out = philotes(&["validate", file.to_str().expect("utf-8 path")], &[]);
    let printed = text(&out);
    assert!(!out.status.success(), "{printed}");
    // Unknown key on line 5, wrong type on line 7, missing `url` under source.postgres (line 3).
    assert!(printed.contains(":5:") && printed.contains("snapshott"), "{printed}");
    assert!(printed.contains(":7:") && printed.contains("flush.workers"), "{printed}");
    assert!(printed.contains("source.postgres") && printed.contains("url"), "{printed}");
    assert!(printed.lines().filter(|l| l.contains("three-mistakes.yaml:")).count() >= 3, "{printed}");
}

#[test]
fn validate_names_a_missing_environment_variable() {
    let file = temp_file("missing-var.yaml", "pipeline: orders\nsource:\n  postgres:\n    url: ${PHILOTES_TEST_NO_SUCH_VAR}\n");
    let out = philotes(&["validate", file.to_str().expect("utf-8 path")], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("PHILOTES_TEST_NO_SUCH_VAR"), "{}", text(&out));
}

#[test]
fn migrate_applies_the_control_schema_and_a_second_run_changes_nothing() {
    let db = philotes_testkit::shared().database("cli_migrate").expect("database");
    let file = temp_file("migrate.yaml", "pipeline: cli_migrate\nsource:\n  postgres:\n    url: ${SOURCE_URL}\n    tables: all\nsink:\n  iceberg:\n    warehouse: file:///tmp/philotes-cli-warehouse\n");
    let url = db.url();
    let first = philotes(&["migrate", file.to_str().expect("utf-8 path")], &[("SOURCE_URL", &url)]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("applied 0001_control_schema.sql"), "{}", text(&first));
    let second = philotes(&["migrate", file.to_str().expect("utf-8 path")], &[("SOURCE_URL", &url)]);
    assert!(second.status.success(), "{}", text(&second));
    assert!(!text(&second).contains("applied"), "{}", text(&second));
    assert_eq!(db.psql("SELECT count(*) FROM philotes.schema_migrations").expect("query"), philotes::migrate::MIGRATIONS.len().to_string());
}

#[test]
fn validate_accepts_partition_specs_and_names_the_key_of_a_bad_one() {
    let yaml = |spec: &str| {
        format!(
            "pipeline: parts\nsource:\n  postgres:\n    url: postgres://postgres@127.0.0.1:1/none\n    tables: [orders]\n\
             sink:\n  iceberg:\n    warehouse: file:///tmp/philotes-cli-warehouse\n    mode: mirror\n\
             \x20   tables:\n      public.orders: {{ partition: [ {spec} ] }}\n"
        )
    };
    let good = temp_file("parts.yaml", &yaml("\"day(created_at)\", \"bucket(16, id)\""));
    let validate = philotes(&["validate", good.to_str().expect("utf-8 path")], &[]);
    assert!(validate.status.success(), "{}", text(&validate));
    let bad = temp_file("bad-parts.yaml", &yaml("\"week(created_at)\""));
    let validate = philotes(&["validate", bad.to_str().expect("utf-8 path")], &[]);
    assert!(!validate.status.success(), "{}", text(&validate));
    assert!(text(&validate).contains("sink.iceberg.tables[public.orders].partition[0]"), "{}", text(&validate));
}

#[test]
fn a_password_in_the_url_never_reaches_the_output() {
    let file = temp_file("secret.yaml", "pipeline: secret\nsource:\n  postgres:\n    url: postgres://u:hunter2secret@127.0.0.1:1/db\n    tables: all\nsink:\n  iceberg:\n    warehouse: file:///tmp/philotes-cli-warehouse\n");
    let out = philotes(&["migrate", file.to_str().expect("utf-8 path")], &[]);
    assert!(!out.status.success(), "nothing listens on port 1");
    assert!(!text(&out).contains("hunter2secret"), "{}", text(&out));
}

#[test]
fn two_source_tables_on_one_iceberg_table_are_refused_by_validate_and_by_run() {
    let file = temp_file(
        "clash.yaml",
        "pipeline: clash\nsource:\n  postgres:\n    url: postgres://postgres@127.0.0.1:1/none\n\
         \x20   tables: [public.orders, s2.orders]\n\
         sink:\n  iceberg:\n    warehouse: file:///tmp/philotes-cli-warehouse\n    namespace: cdc\n",
    );
    let path = file.to_str().expect("utf-8 path");
    for args in [vec!["validate", path], vec!["run", path]] {
        let out = philotes(&args, &[]);
        let printed = text(&out);
        assert!(!out.status.success(), "{args:?}: {printed}");
        assert!(printed.contains("clash.yaml:5:"), "{args:?} names the line: {printed}");
        assert!(printed.contains("s2.orders and public.orders both resolve to Iceberg table cdc.orders"), "{args:?}: {printed}");
        assert!(printed.contains("sink.iceberg.tables.<table>.name"), "{args:?}: {printed}");
        // Refused from the file alone: nothing listens on port 1, and no connection was tried.
        assert!(!printed.contains("connecting"), "{args:?}: {printed}");
    }
}

#[test]
fn quoted_table_names_validate_and_an_unbalanced_quote_is_named_with_its_key_and_line() {
    let file = temp_file(
        "quoted.yaml",
        "pipeline: quoted\nsource:\n  postgres:\n    url: postgres://postgres@127.0.0.1:1/none\n\
         \x20   tables: ['\"public\".\"t.dot\"', 'public.\"T\"', '\"my schema\".orders']\n\
         sink:\n  iceberg:\n    warehouse: file:///tmp/philotes-cli-warehouse\n",
    );
    let out = philotes(&["validate", file.to_str().expect("utf-8 path")], &[]);
    assert!(out.status.success(), "{}", text(&out));

    let file = temp_file(
        "unbalanced.yaml",
        "pipeline: quoted\nsource:\n  postgres:\n    url: postgres://postgres@127.0.0.1:1/none\n\
         \x20   tables: ['\"public.t']\n\
         sink:\n  iceberg:\n    warehouse: file:///tmp/philotes-cli-warehouse\n",
    );
    let out = philotes(&["validate", file.to_str().expect("utf-8 path")], &[]);
    let printed = text(&out);
    assert!(!out.status.success(), "{printed}");
    assert!(printed.contains("unbalanced.yaml:5:"), "{printed}");
    assert!(printed.contains("source.postgres.tables[0]: unbalanced quote"), "{printed}");
}
