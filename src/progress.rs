//! Snapshot progress while `philotes run` runs, and the figures `philotes status` prints for it.
//!
//! [`watch`] is a task of its own, started by `run` for the roles that include the capture: every second it reads
//! `philotes.snapshots` on its own buffer connection, records `philotes_snapshot_tables_pending` and shows each
//! running table's progress — `indicatif` bars when stderr is a terminal, otherwise (CI, logs) an info line per
//! running table every 10 s. Either way a finished snapshot is logged once with its rows, time and rate, and a
//! failed one as a warning. It only reads: a buffer it cannot read is a warning and the next poll tries again,
//! never a failure of the pipeline; it ends with the run's cancellation.
//!
//! Bars and logs share stderr: logs written through [`log_writer`] take the bars off the screen while they print,
//! so no line is drawn over.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use philotes_stages::report;
use philotes_stages::store::snapshots::{self, SnapshotRow, SnapshotState};
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::{PipelineConfig, TableId};

/// How often the task reads the snapshots' progress.
const POLL: Duration = Duration::from_secs(1);
/// How often, without a terminal, each running table's progress is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long a connection attempt to the buffer may take before the poll counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The bars of this process, once the task drew any (stderr is a terminal): [`log_writer`] suspends them.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Reports snapshot progress until `cancel` fires (see the module doc). Never returns an error: a buffer that
/// cannot be read is logged (once per outage) and read again at the next poll.
pub async fn watch(config: PipelineConfig, cancel: CancellationToken) {
    let terminal = std::io::stderr().is_terminal();
    let mut tracker = Tracker::default();
    let mut bars = terminal.then(Bars::new);
    let mut client: Option<Client> = None;
    let mut failing = false;
    loop {
        let read = tokio::select! {
            () = cancel.cancelled() => break,
            read = read(&mut client, &config) => read,
        };
        match read {
            Ok(rows) => {
                if failing {
                    tracing::info!("snapshot progress can be read again");
                    failing = false;
                }
                let update = tracker.update(&rows, Instant::now());
                philotes_stages::telemetry::metrics().snapshot_tables_pending.record(update.open as i64, &[]);
                match &mut bars {
                    Some(bars) => bars.show(&update.running),
                    None => {
                        for row in &update.due {
                            tracing::info!(table = %row.table, run = row.run, rows = row.rows_done, "snapshot of {}: {}", row.table, row_line(row));
                        }
                    }
                }
                for row in &update.finished {
                    log_finished(row);
                }
            }
            Err(e) => {
                client = None;
                if !failing {
                    tracing::warn!("cannot read snapshot progress from the buffer (the pipeline goes on; retrying every {}s): {e}", POLL.as_secs());
                    failing = true;
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(POLL) => {}
        }
    }
    if let Some(bars) = bars {
        bars.clear();
    }
}

/// The pipeline's snapshot rows, on `client` (connected first when there is none).
async fn read(client: &mut Option<Client>, config: &PipelineConfig) -> Result<Vec<SnapshotRow>, String> {
    let connected = match client.take() {
        Some(c) if !c.is_closed() => c,
        _ => {
            let url = config.buffer.url.config();
            match tokio::time::timeout(CONNECT_TIMEOUT, philotes_stages::store::connect(url)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(format!("{}: {}", philotes_stages::store::describe(url), report::chain(&e))),
                Err(_) => return Err(format!("{}: no answer within {CONNECT_TIMEOUT:?}", philotes_stages::store::describe(url))),
            }
        }
    };
    let rows = snapshots::list(&connected, &config.pipeline).await.map_err(|e| report::chain(&e))?;
    *client = Some(connected);
    Ok(rows)
}

fn log_finished(row: &SnapshotRow) {
    let seconds = row.running_seconds.unwrap_or(0.0);
    let rate = row.rate().unwrap_or(0.0);
    match row.state {
        SnapshotState::Done => tracing::info!(
            table = %row.table,
            run = row.run,
            rows = row.rows_done,
            seconds,
            rows_per_second = rate.round(),
            "snapshot of {} done: {} rows in {} ({} rows/s)",
            row.table,
            count(row.rows_done),
            duration(seconds),
            count(rate.round() as i64),
        ),
        SnapshotState::Failed => tracing::warn!(
            table = %row.table,
            run = row.run,
            rows = row.rows_done,
            "snapshot of {} failed after {} rows (its changes still stream; `philotes snapshot` asks again): {}",
            row.table,
            count(row.rows_done),
            row.error.as_deref().unwrap_or("no reason recorded"),
        ),
        state => tracing::info!(table = %row.table, run = row.run, "snapshot of {} {state}", row.table),
    }
}

/// What one poll found, for the display.
#[derive(Debug, Default)]
struct Update<'a> {
    /// Tables pending or running (the gauge).
    open: usize,
    /// Tables being read now.
    running: Vec<&'a SnapshotRow>,
    /// Running tables whose progress line is due (without a terminal: every [`LOG_EVERY`]).
    due: Vec<&'a SnapshotRow>,
    /// Snapshots this task saw open that have ended since (done, failed or skipped).
    finished: Vec<&'a SnapshotRow>,
}

/// What the previous polls saw: which runs were open (so their end is reported once) and when progress was
/// last logged.
#[derive(Debug, Default)]
struct Tracker {
    /// Open (pending or running) tables at the last poll, with their run.
    open: HashMap<TableId, i32>,
    /// When the running tables' progress is next logged; `None`: at the first poll that finds one running.
    next_log: Option<Instant>,
}

impl Tracker {
    fn update<'a>(&mut self, rows: &'a [SnapshotRow], now: Instant) -> Update<'a> {
        let mut update = Update::default();
        let mut open = HashMap::new();
        for row in rows {
            match row.state {
                SnapshotState::Pending | SnapshotState::Running => {
                    open.insert(row.table.clone(), row.run);
                    if row.state == SnapshotState::Running {
                        update.running.push(row);
                    }
                }
                // A run this task saw open (or a later one of the same table) has ended: reported once, since the
                // table leaves `open`. Rows that were already over when the task started are not reported.
                _ if self.open.get(&row.table).is_some_and(|run| *run <= row.run) => update.finished.push(row),
                _ => {}
            }
        }
        update.open = open.len();
        self.open = open;
        if !update.running.is_empty() && self.next_log.is_none_or(|at| now >= at) {
            update.due = update.running.clone();
            self.next_log = Some(now + LOG_EVERY);
        }
        update
    }
}

/// The terminal's bars, one per running table.
struct Bars {
    multi: &'static MultiProgress,
    bars: HashMap<TableId, (i32, ProgressBar)>,
}

impl Bars {
    fn new() -> Self {
        let multi = BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self { multi, bars: HashMap::new() }
    }

    /// Shows `running` (a bar when the table's size is estimated, a spinner otherwise) and takes away the bars
    /// of tables no longer running (their end is logged).
    fn show(&mut self, running: &[&SnapshotRow]) {
        self.bars.retain(|table, (run, bar)| {
            let keep = running.iter().any(|r| &r.table == table && r.run == *run);
            if !keep {
                bar.finish_and_clear();
                self.multi.remove(bar);
            }
            keep
        });
        for row in running {
            let (_, bar) = self.bars.entry(row.table.clone()).or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::no_length().with_prefix(row.table.to_string()));
                (row.run, bar)
            });
            match row.rows_estimate.filter(|e| *e > 0) {
                Some(estimate) => {
                    bar.set_style(bar_style());
                    bar.set_length(estimate.max(row.rows_done) as u64);
                    bar.set_position(row.rows_done.max(0) as u64);
                }
                None => {
                    bar.set_style(spinner_style());
                    bar.tick();
                }
            }
            bar.set_message(bar_message(row));
        }
    }

    fn clear(self) {
        for (_, bar) in self.bars.values() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} [{bar:30}] {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} {spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// `120,000/300,000 rows 45,000/s ETA 4s` (without an estimate: `120,000 rows 45,000/s`).
fn bar_message(row: &SnapshotRow) -> String {
    let figures = Figures::of(row);
    let mut text = match row.rows_estimate.filter(|e| *e > 0) {
        Some(estimate) => format!("{}/{} rows", count(row.rows_done), count(estimate)),
        None => format!("{} rows", count(row.rows_done)),
    };
    if let Some(rate) = figures.rate {
        text.push_str(&format!(" {}/s", count(rate.round() as i64)));
    }
    if let Some(eta) = figures.eta_seconds {
        text.push_str(&format!(" ETA {}", eta_text(eta)));
    }
    text
}

/// A writer for the process's log lines: stderr, with this process's progress bars (if any are drawn) taken
/// off the screen while a line is written and drawn again below it. Give it to the log subscriber
/// (`with_writer(philotes::progress::log_writer)`).
pub fn log_writer() -> LogWriter {
    LogWriter
}

/// See [`log_writer`].
#[derive(Debug, Clone, Copy)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match BARS.get() {
            Some(bars) => bars.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A snapshot's figures, derived from its row: what status and the progress lines show.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// Rows done of the estimate, in percent (capped at 100: the estimate is `reltuples`, not a count);
    /// `None` without an estimate above 0.
    pub percent: Option<f64>,
    /// Rows per second over the run so far (from its start to its end once it ended).
    pub rate: Option<f64>,
    /// Seconds until the estimate is reached at that rate; only while running, with an estimate and a rate.
    pub eta_seconds: Option<f64>,
}

impl Figures {
    /// The figures of `row`.
    pub fn of(row: &SnapshotRow) -> Self {
        let rate = row.rate();
        let estimate = row.rows_estimate.filter(|e| *e > 0);
        let eta_seconds = match (row.state, estimate, rate) {
            (SnapshotState::Running, Some(estimate), Some(rate)) => eta(row.rows_done, estimate, rate),
            _ => None,
        };
        Self { percent: estimate.map(|e| percent(row.rows_done, e)), rate, eta_seconds }
    }
}

/// `done` of `estimate` in percent, between 0 and 100.
pub fn percent(done: i64, estimate: i64) -> f64 {
    (done as f64 * 100.0 / estimate as f64).clamp(0.0, 100.0)
}

/// Seconds to read what is left of `estimate` at `rate` rows/s (0 once the estimate is passed); `None` without
/// a rate.
pub fn eta(done: i64, estimate: i64, rate: f64) -> Option<f64> {
    (rate > 0.0 && rate.is_finite()).then(|| (estimate - done).max(0) as f64 / rate)
}

/// A count with thousands separators: `120,000`.
pub fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A percentage as a person reads it: `40%`, `7.5%` (one decimal below 10), never rounded up to `100%` before
/// it is there.
pub fn percent_text(percent: f64) -> String {
    if percent < 10.0 {
        format!("{:.1}%", (percent * 10.0).floor() / 10.0)
    } else {
        format!("{}%", percent.floor())
    }
}

/// An elapsed time: `6.7s` below 10 s, then `42s`, `2m05s`, `1h02m`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".to_string();
    }
    if seconds < 10.0 {
        return format!("{seconds:.1}s");
    }
    whole_seconds(seconds.round() as u64)
}

/// A time left, rounded up to the second: `4s`, `2m05s`, `1h02m`.
pub fn eta_text(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".to_string();
    }
    whole_seconds(seconds.ceil() as u64)
}

fn whole_seconds(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// One table's progress as a line: `120,000/300,000 rows (40%), 45,000 rows/s, ETA 4s` (parts without a
/// figure left out).
pub fn line(rows_done: i64, rows_estimate: Option<i64>, figures: Figures) -> String {
    let mut parts = Vec::new();
    match (rows_estimate.filter(|e| *e > 0), figures.percent) {
        (Some(estimate), Some(percent)) => {
            parts.push(format!("{}/{} rows ({})", count(rows_done), count(estimate), percent_text(percent)));
        }
        _ => parts.push(format!("{} rows", count(rows_done))),
    }
    if let Some(rate) = figures.rate {
        parts.push(format!("{} rows/s", count(rate.round() as i64)));
    }
    if let Some(eta) = figures.eta_seconds {
        parts.push(format!("ETA {}", eta_text(eta)));
    }
    parts.join(", ")
}

/// [`line`] of a snapshot row.
fn row_line(row: &SnapshotRow) -> String {
    line(row.rows_done, row.rows_estimate, Figures::of(row))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: SnapshotState, done: i64, estimate: Option<i64>, seconds: Option<f64>) -> SnapshotRow {
        SnapshotRow {
            table: TableId::new("public", "t"),
            state,
            run: 1,
            key_columns: None,
            last_key: None,
            rows_done: done,
            rows_estimate: estimate,
            chunks: 0,
            reads: 0,
            snapshot_lsn: None,
            error: None,
            running_seconds: seconds,
        }
    }

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(120_000), "120,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(-45_000), "-45,000");
    }

    #[test]
    fn percent_is_capped_and_never_rounds_up_to_done() {
        assert_eq!(percent(120_000, 300_000), 40.0);
        assert_eq!(percent(400, 300), 100.0, "reltuples was low: capped");
        assert_eq!(percent_text(40.0), "40%");
        assert_eq!(percent_text(99.97), "99%");
        assert_eq!(percent_text(7.56), "7.5%");
        assert_eq!(percent_text(0.0), "0.0%");
    }

    #[test]
    fn eta_is_what_is_left_over_the_rate() {
        assert_eq!(eta(120_000, 300_000, 45_000.0), Some(4.0));
        assert_eq!(eta(400, 300, 10.0), Some(0.0), "past the estimate: nothing left, not negative");
        assert_eq!(eta(0, 300, 0.0), None, "no rate yet");
        assert_eq!(eta_text(4.0), "4s");
        assert_eq!(eta_text(3.2), "4s", "rounded up");
        assert_eq!(eta_text(125.0), "2m05s");
        assert_eq!(eta_text(3_720.0), "1h02m");
        assert_eq!(eta_text(f64::INFINITY), "?");
    }

    #[test]
    fn durations_read_as_a_person_writes_them() {
        assert_eq!(duration(6.66), "6.7s");
        assert_eq!(duration(42.4), "42s");
        assert_eq!(duration(125.0), "2m05s");
        assert_eq!(duration(7_200.0), "2h00m");
    }

    #[test]
    fn a_running_table_shows_rows_percent_rate_and_eta() {
        let running = row(SnapshotState::Running, 120_000, Some(300_000), Some(120_000.0 / 45_000.0));
        let figures = Figures::of(&running);
        assert_eq!(figures.percent, Some(40.0));
        assert!((figures.rate.expect("rate") - 45_000.0).abs() < 1e-6);
        assert!((figures.eta_seconds.expect("eta") - 4.0).abs() < 1e-6);
        assert_eq!(row_line(&running), "120,000/300,000 rows (40%), 45,000 rows/s, ETA 4s");
        assert_eq!(bar_message(&running), "120,000/300,000 rows 45,000/s ETA 4s");
    }

    #[test]
    fn without_an_estimate_only_rows_and_rate_are_shown() {
        let running = row(SnapshotState::Running, 5_000, None, Some(2.0));
        assert_eq!(Figures::of(&running).percent, None);
        assert_eq!(Figures::of(&running).eta_seconds, None);
        assert_eq!(row_line(&running), "5,000 rows, 2,500 rows/s");
        let zero = row(SnapshotState::Running, 5_000, Some(0), Some(2.0));
        assert_eq!(row_line(&zero), "5,000 rows, 2,500 rows/s", "an estimate of 0 (an empty table when analyzed) is no estimate");
    }

    #[test]
    fn a_finished_or_pending_table_has_no_eta() {
        let done = row(SnapshotState::Done, 300_000, Some(300_000), Some(6.0));
        assert_eq!(Figures::of(&done).eta_seconds, None);
        assert_eq!(Figures::of(&done).rate, Some(50_000.0));
        let pending = row(SnapshotState::Pending, 0, None, None);
        assert_eq!(Figures::of(&pending), Figures { percent: None, rate: None, eta_seconds: None });
    }

    #[tokio::test(start_paused = true)]
    async fn the_tracker_reports_an_end_once_and_logs_running_tables_every_ten_seconds() {
        let mut tracker = Tracker::default();
        let start = Instant::now();
        let already_done = row(SnapshotState::Done, 10, Some(10), Some(1.0));
        let update = tracker.update(std::slice::from_ref(&already_done), start);
        assert!(update.finished.is_empty(), "a run over before the task started is not reported");
        assert_eq!(update.open, 0);

        let running = SnapshotRow { run: 2, ..row(SnapshotState::Running, 5, Some(10), Some(1.0)) };
        let rows = [running.clone()];
        let update = tracker.update(&rows, start);
        assert_eq!((update.open, update.running.len(), update.due.len()), (1, 1, 1), "first sight is logged");
        let update = tracker.update(&rows, start + Duration::from_secs(5));
        assert_eq!(update.due.len(), 0, "not again within 10 s");
        let update = tracker.update(&rows, start + Duration::from_secs(10));
        assert_eq!(update.due.len(), 1, "again after 10 s");

        let done = [SnapshotRow { state: SnapshotState::Done, ..running }];
        let update = tracker.update(&done, start + Duration::from_secs(11));
        assert_eq!(update.finished.len(), 1, "the end is reported");
        assert_eq!(update.open, 0);
        let update = tracker.update(&done, start + Duration::from_secs(12));
        assert!(update.finished.is_empty(), "once");
    }
}
