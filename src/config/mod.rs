//! The pipeline file: its YAML model, defaults and validation (DESIGN.md, "The pipeline file").
//!
//! [`load`] and [`parse`] turn a file into a [`PipelineConfig`] — every default applied, every
//! value checked — or into a [`ConfigError`] listing *every* problem found, each with its line,
//! column and key path (`pipeline.yaml:7:5: sink.iceberg.mode: expected one of …`).
//!
//! How: `yaml` reads the text into a positioned node tree (no serde, so nothing stops at the first
//! error), `decode` walks it into the typed `model`, expanding `${VAR}` (`interpolate`) and human
//! units (`units`) on the way, and `validate` holds the value checks; `clash` refuses two source tables that
//! would write one Iceberg table. Secrets are wrapped in
//! redacting types (`secret`) so a `{:?}` of the config is safe to log.

mod clash;
mod decode;
mod interpolate;
mod model;
mod secret;
pub mod units;
mod validate;
mod walk;
mod yaml;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

pub use clash::{iceberg_clashes, IcebergClash};
pub use model::*;
pub use secret::{redact_connection_string, PostgresUrl, RedactedUrl, Secret, REDACTED};

use yaml::Pos;

/// Reads and validates the pipeline file at `path`, with `${VAR}` taken from the process environment.
pub fn load(path: &Path) -> Result<PipelineConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string(), &|name| {
        std::env::var(name).ok()
    })
}

/// Parses and validates pipeline YAML `text`.
///
/// `origin` names the text in problems (usually the file path); `env` looks up `${VAR}`s, so tests
/// and embedders can supply their own environment.
pub fn parse(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PipelineConfig, ConfigError> {
    let mut report = Report::new(origin);
    let config = yaml::parse_tree(text, &mut report)
        .and_then(|root| decode::decode(&root, &mut walk::Walker::new(&mut report, env)));
    match config {
        Some(config) if report.is_empty() => Ok(config),
        _ => Err(ConfigError::Invalid(report.into_sorted())),
    }
}

/// Why a pipeline file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid pipeline: every problem found, in file order.
    #[error("{}", ProblemList(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The problems found, empty for an I/O error.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Io { .. } => &[],
            ConfigError::Invalid(problems) => problems,
        }
    }
}

/// Displays problems one per line.
struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// One thing wrong with a pipeline file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or other origin) the problem is in, as given to [`parse`].
    pub origin: String,
    /// 1-based line of the offending key or value (for a missing key: of its parent).
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted key path (`sink.iceberg.mode`, `source.postgres.tables[2]`); empty for syntax errors.
    pub path: String,
    /// What is wrong, and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.origin, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Collects problems while a file is read, so all of them can be reported at once.
pub(crate) struct Report {
    origin: String,
    problems: Vec<Problem>,
}

impl Report {
    pub(crate) fn new(origin: &str) -> Self {
        Self {
            origin: origin.to_owned(),
            problems: Vec::new(),
        }
    }

    /// Records a problem at `pos` under key path `path`.
    pub(crate) fn push(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            origin: self.origin.clone(),
            line: pos.line,
            column: pos.column,
            path: path.to_owned(),
            message: message.into(),
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The problems in file order (stable, so same-place problems keep the order found).
    fn into_sorted(mut self) -> Vec<Problem> {
        self.problems.sort_by_key(|p| (p.line, p.column));
        self.problems
    }
}
