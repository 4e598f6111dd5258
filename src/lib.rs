//! philotes: streams PostgreSQL row changes into Apache Iceberg tables, exactly once.
//!
//! This library holds what the binary is made of: the YAML pipeline model (`config`), the migrator
//! (`migrate`), the assembly of pipelines from stages, `status`, the snapshot verb's checks and progress, and
//! `compact` (table maintenance).

pub mod compact;
pub mod config;
pub mod migrate;
pub mod postgres;
pub mod pipeline;
pub mod progress;
pub mod snapshot;
pub mod status;
pub mod telemetry;
