//! The seed's `philotes_cdc_*` metrics, read from a running `philotes run` on `/metrics`: every change counted
//! where it is (read, in Iceberg, dead-lettered), labelled with the pipeline and the table, and a true lag that is
//! the age of the oldest change not in Iceberg (0 once all is in, and still 0 while the source is idle).

use std::time::Duration;

use philotes_testkit::TestDatabase;

use crate::flush::Pipeline;
use crate::support::{free_port, http_get};

/// The value of the sample `name{…}` whose labels include every pair of `labels` (Prometheus text format).
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        let matches = metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().ok()).flatten()
    })
}

async fn metrics(addr: &str) -> String {
    http_get(addr, "/metrics").await
}

fn pipeline(db: &TestDatabase) -> Pipeline {
    db.psql("CREATE TABLE t (id bigint PRIMARY KEY, amount numeric(10,2))").expect("table");
    Pipeline::new(db, &["public.t"], "{ workers: 1, max_events: 1000, interval: 200ms }")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cdc_metrics_count_every_change_per_pipeline_and_table_and_the_true_lag_is_zero_once_all_is_in() {
    let db = crate::support::database("cdc_metrics");
    let pipeline = pipeline(&db);
    let addr = format!("127.0.0.1:{}", free_port());
    let run = pipeline.start_streaming(&db, &["--metrics", &addr], &[], "run.log").await;
    let after = crate::flush::last_commit(&db, "INSERT INTO t SELECT g, g FROM generate_series(1, 10) g; INSERT INTO t VALUES (11, 'NaN')");
    let name = db.name().to_string();
    let table = [("pipeline", name.as_str()), ("table", "public.t")];
    // The rows are counted at the Iceberg commit, the dead letter at the buffer checkpoint just after it.
    let body = run
        .wait_until("every change counted in Iceberg and the dead letters", Duration::from_secs(60), || async {
            let body = metrics(&addr).await;
            (sample(&body, "philotes_cdc_events_processed_total", &table) == Some(10.0)
                && sample(&body, "philotes_cdc_events_error_total", &table).is_some())
            .then_some(body)
        })
        .await;
    assert_eq!(sample(&body, "philotes_cdc_events_read_total", &table), Some(11.0), "{body}");
    assert_eq!(sample(&body, "philotes_cdc_events_error_total", &table), Some(1.0), "the NaN is a dead letter:\n{body}");
    assert!(sample(&body, "philotes_cdc_batches_written_total", &table).is_some_and(|n| n >= 1.0), "{body}");
    let checkpoint = sample(&body, "philotes_cdc_last_checkpoint_lsn", &[("pipeline", &name)]).expect("checkpoint LSN");
    let after: u64 = {
        let (hi, lo) = after.split_once('/').expect("an LSN");
        (u64::from_str_radix(hi, 16).expect("hex") << 32) | u64::from_str_radix(lo, 16).expect("hex")
    };
    assert!(checkpoint >= after as f64, "checkpoint {checkpoint} is not past the inserts' {after}");
    // One observation per change in Iceberg, each the seconds from its source commit to its Iceberg commit.
    let count = sample(&body, "philotes_cdc_commit_to_iceberg_seconds_count", &table).expect("histogram count");
    let sum = sample(&body, "philotes_cdc_commit_to_iceberg_seconds_sum", &table).expect("histogram sum");
    assert_eq!(count, 10.0, "{body}");
    assert!(sum > 0.0 && sum / count < 30.0, "mean {} s from source commit to Iceberg:\n{body}", sum / count);
    // The engine's and the stages' metrics carry the pipeline label too.
    assert!(sample(&body, "philotes_flush_rows_total", &table) == Some(10.0), "{body}");

    // All in: depth 0 and lag 0, and the lag stays 0 while nothing happens at the source (two status polls).
    run.wait_until("the buffer empty and the lag 0", Duration::from_secs(30), || async {
        let body = metrics(&addr).await;
        let pipeline = [("pipeline", name.as_str())];
        (sample(&body, "philotes_cdc_buffer_depth", &pipeline) == Some(0.0) && sample(&body, "philotes_cdc_lag_seconds", &pipeline) == Some(0.0))
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let idle = metrics(&addr).await;
    assert_eq!(sample(&idle, "philotes_cdc_lag_seconds", &[("pipeline", &name)]), Some(0.0), "idle source:\n{idle}");
    assert_eq!(sample(&idle, "philotes_table_stopped", &table), Some(0.0), "a flowing table:\n{idle}");
    run.stop_cleanly().await;
}

/// With no flusher running, changes wait in the buffer: the true lag is their age since the source commit (it
/// grows, since they are not in Iceberg) and the depth counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_waiting_in_the_buffer_are_the_depth_and_their_age_is_the_true_lag() {
    let db = crate::support::database("cdc_lag");
    let pipeline = pipeline(&db);
    let addr = format!("127.0.0.1:{}", free_port());
    let capture = pipeline.start_streaming(&db, &["--role", "capture", "--metrics", &addr], &[], "capture.log").await;
    let committed = std::time::Instant::now();
    db.psql("INSERT INTO t SELECT g, g FROM generate_series(1, 7) g").expect("rows");
    let name = db.name().to_string();
    let labels = [("pipeline", name.as_str())];
    let lag = capture
        .wait_until("a lag of at least 6 s with 7 changes waiting", Duration::from_secs(60), || async {
            let body = metrics(&addr).await;
            let waiting = sample(&body, "philotes_cdc_buffer_depth", &labels) == Some(7.0);
            sample(&body, "philotes_cdc_lag_seconds", &labels).filter(|lag| waiting && *lag >= 6.0)
        })
        .await;
    assert!(lag <= committed.elapsed().as_secs_f64() + 1.0, "lag {lag} s, but the rows were committed {:?} ago", committed.elapsed());
    capture.stop_cleanly().await;
}
