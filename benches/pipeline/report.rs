//! Figures: rows/s per run, medians, ratios, and the Markdown summary table.

/// One measured series: seconds per run of a fixed number of rows.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Seconds of each run.
    pub seconds: Vec<f64>,
}

impl Series {
    /// Adds one run.
    pub fn push(&mut self, seconds: f64) {
        self.seconds.push(seconds);
    }

    /// Rows/s of each run.
    pub fn rates(&self, rows: u64) -> Vec<f64> {
        self.seconds.iter().map(|s| rate(rows, *s)).collect()
    }

    /// Median rows/s over the runs.
    pub fn median_rate(&self, rows: u64) -> Option<f64> {
        median(self.rates(rows))
    }
}

/// rows / seconds.
pub fn rate(rows: u64, seconds: f64) -> f64 {
    rows as f64 / seconds.max(1e-9)
}

/// The median (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 })
}

/// Per-run ratios of two series of the same runs (philotes rows/s ÷ baseline rows/s = baseline s ÷ philotes s).
pub fn ratios(philotes: &Series, baseline: &Series) -> Vec<f64> {
    philotes.seconds.iter().zip(&baseline.seconds).map(|(p, b)| b / p.max(1e-9)).collect()
}

/// `123.4k` / `1.23M` rows/s.
pub fn human_rate(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}

/// One row of the summary: a philotes figure beside its baseline.
pub struct Line {
    /// What is measured.
    pub what: String,
    /// philotes' series (`None` for a baseline-only line).
    pub philotes: Option<Series>,
    /// The baseline's name.
    pub baseline_name: String,
    /// The baseline's series.
    pub baseline: Series,
    /// The target, as text (`≥ 0.8×`).
    pub target: String,
    /// The target as a number, when there is one.
    pub target_ratio: Option<f64>,
    /// Rows per run of both series.
    pub rows: u64,
    /// philotes' peak resident set, when the measurement has a bound on it.
    pub memory: Option<Memory>,
}

/// Peak resident set per run beside a bound.
#[derive(Debug, Clone)]
pub struct Memory {
    /// `VmHWM` of each run, bytes.
    pub peak_bytes: Vec<u64>,
    /// The target: below this many bytes.
    pub limit_bytes: u64,
}

impl Memory {
    /// The highest peak of the runs (a bound holds only if every run stays under it).
    pub fn highest(&self) -> Option<u64> {
        self.peak_bytes.iter().copied().max()
    }
}

/// Bytes as MB (10^6), as the summary prints them.
pub fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// The Markdown summary table (median of the runs; ratio = median of the per-run ratios; peak RSS = the highest
/// of the runs). `rows_note` says how many rows a run measures.
pub fn summary(lines: &[Line], runs: usize, rows_note: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Median of {runs} run(s), {rows_note}; ratio = median of the per-run ratios (same data, same run); peak RSS = the highest of the runs.\n\n"
    ));
    out.push_str("| measurement | philotes rows/s | baseline | baseline rows/s | ratio | peak RSS | target |\n");
    out.push_str("| --- | ---: | --- | ---: | ---: | ---: | --- |\n");
    for line in lines {
        let rows = line.rows;
        let base = line.baseline.median_rate(rows).map_or("—".into(), human_rate);
        let (phil, ratio) = match &line.philotes {
            Some(p) => {
                let r = median(ratios(p, &line.baseline));
                let verdict = match (r, line.target_ratio) {
                    (Some(r), Some(t)) if r >= t => " ✓",
                    (Some(_), Some(_)) => " ✗",
                    _ => "",
                };
                (
                    p.median_rate(rows).map_or("—".into(), human_rate),
                    r.map_or("—".into(), |r| format!("{r:.2}×{verdict}")),
                )
            }
            None => ("—".into(), "—".into()),
        };
        let memory = match &line.memory {
            Some(m) => m.highest().map_or("—".into(), |peak| {
                format!("{:.0} MB {}", megabytes(peak), if peak < m.limit_bytes { "✓" } else { "✗" })
            }),
            None => "—".into(),
        };
        out.push_str(&format!(
            "| {} | {phil} | {} | {base} | {ratio} | {memory} | {} |\n",
            line.what, line.baseline_name, line.target
        ));
    }
    out
}
