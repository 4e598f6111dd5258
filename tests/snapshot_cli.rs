//! `philotes snapshot FILE --table T` and the snapshot part of `philotes status`, run as a user would: the real
//! binary against a real database. No capture runs here: these tests are about the request and how it is shown
//! (the capture that reads a pending request has tests of its own).

use std::process::Output;

use crate::support::{database, philotes, pipeline_file, status_json, DEFAULT_SEGMENT};

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn snapshot(file: &std::path::Path, tables: &[&str]) -> Output {
    let mut args = vec!["snapshot", file.to_str().expect("utf-8 path")];
    for table in tables {
        args.extend(["--table", table]);
    }
    philotes(&args, &[])
}

#[test]
fn a_snapshot_request_is_recorded_pending_and_a_second_one_is_the_next_run() {
    let db = database("snap_request");
    db.psql("CREATE TABLE public.orders (id int PRIMARY KEY, note text)").expect("create");
    let file = pipeline_file(&db, &["public.orders"], &[], DEFAULT_SEGMENT);

    let first = snapshot(&file, &["public.orders"]);
    assert!(first.status.success(), "{}", text(&first));
    let expected = format!(
        "snapshot of public.orders requested (run 1); follow it with: philotes status {}",
        file.display()
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains(&expected), "{}", text(&first));
    let row = "SELECT state || ' ' || run FROM philotes.snapshots WHERE source_schema = 'public' AND source_table = 'orders'";
    assert_eq!(db.psql(row).expect("query"), "pending 1");

    // Unqualified, as the file may write it: the same table.
    let second = snapshot(&file, &["orders"]);
    assert!(second.status.success(), "{}", text(&second));
    assert!(text(&second).contains("snapshot of public.orders requested (run 2)"), "{}", text(&second));
    assert_eq!(db.psql(row).expect("query"), "pending 2");
}

#[test]
fn a_table_the_file_does_not_capture_is_refused_by_name_and_the_others_are_still_requested() {
    let db = database("snap_not_listed");
    db.psql("CREATE TABLE public.orders (id int PRIMARY KEY); CREATE TABLE public.items (id int PRIMARY KEY)")
        .expect("create");
    let file = pipeline_file(&db, &["public.orders"], &[], DEFAULT_SEGMENT);

    let out = snapshot(&file, &["public.items", "public.orders"]);
    let printed = text(&out);
    assert!(!out.status.success(), "a refused table fails the command: {printed}");
    assert!(printed.contains("public.items is not one of the pipeline's tables"), "{printed}");
    assert!(printed.contains("source.postgres.tables in"), "names the key: {printed}");
    assert!(printed.contains("1 of 2 tables refused"), "{printed}");
    assert!(printed.contains("snapshot of public.orders requested (run 1)"), "the other table is requested: {printed}");
    assert_eq!(
        db.psql("SELECT string_agg(source_table || ' ' || state, ',') FROM philotes.snapshots").expect("query"),
        "orders pending"
    );
}

#[test]
fn a_table_missing_on_the_source_is_refused_by_name() {
    let db = database("snap_missing");
    let file = pipeline_file(&db, &["public.ghost"], &[], DEFAULT_SEGMENT);

    let out = snapshot(&file, &["public.ghost"]);
    let printed = text(&out);
    assert!(!out.status.success(), "{printed}");
    assert!(printed.contains("public.ghost does not exist on the source database"), "{printed}");
    assert_eq!(db.psql("SELECT count(*) FROM philotes.snapshots").expect("query"), "0");
}

#[test]
fn a_table_the_source_role_cannot_read_is_refused_with_the_grant_that_fixes_it() {
    let db = database("snap_no_select");
    let role = format!("{}_reader", db.name());
    db.psql(&format!("CREATE TABLE public.secret (id int PRIMARY KEY); CREATE ROLE {role} LOGIN"))
        .expect("create");
    // The source as a role without SELECT; the buffer as the test's superuser.
    let file = pipeline_file(&db, &["public.secret"], &[], DEFAULT_SEGMENT);
    let yaml = std::fs::read_to_string(&file).expect("read file");
    let source_url = db.url().replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let yaml = yaml
        .replacen(&format!("url: {}", db.url()), &format!("url: {source_url}"), 1)
        .replacen("buffer:\n", &format!("buffer:\n  url: {}\n", db.url()), 1);
    std::fs::write(&file, yaml).expect("write file");

    let out = snapshot(&file, &["public.secret"]);
    let printed = text(&out);
    db.psql(&format!("DROP ROLE {role}")).expect("drop role");
    assert!(!out.status.success(), "{printed}");
    assert!(printed.contains(&format!("the source role {role} cannot SELECT public.secret")), "{printed}");
    assert!(printed.contains(&format!("GRANT SELECT ON public.secret TO {role}")), "{printed}");
}

#[test]
fn status_shows_a_requested_snapshot_in_json_and_in_text() {
    let db = database("snap_status");
    db.psql("CREATE TABLE public.orders (id int PRIMARY KEY)").expect("create");
    let file = pipeline_file(&db, &["public.orders"], &[], DEFAULT_SEGMENT);
    let out = snapshot(&file, &["public.orders"]);
    assert!(out.status.success(), "{}", text(&out));

    let status = status_json(&file);
    let snapshots = status["snapshots"].as_array().unwrap_or_else(|| panic!("a snapshots array: {status}"));
    assert_eq!(snapshots.len(), 1, "{status}");
    let orders = &snapshots[0];
    let fields = [
        "table",
        "state",
        "run",
        "rows_done",
        "rows_estimate",
        "percent",
        "rows_per_second",
        "eta_seconds",
        "elapsed_seconds",
        "chunks",
        "reads",
        "snapshot_lsn",
        "error",
    ];
    for field in fields {
        assert!(orders.get(field).is_some(), "{field} in {orders}");
    }
    assert_eq!(orders["table"], "public.orders");
    assert_eq!(orders["state"], "pending");
    assert_eq!(orders["run"], 1);
    assert_eq!(orders["rows_done"], 0);
    assert!(orders["percent"].is_null() && orders["eta_seconds"].is_null(), "nothing read yet: {orders}");

    let human = philotes(&["status", file.to_str().expect("utf-8 path")], &[]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("snapshot     public.orders  pending (run 1)"),
        "{}",
        text(&human)
    );
}
