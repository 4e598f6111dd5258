//! Two source tables must never write one Iceberg table: the check (`philotes_stages::source::clash`) over the
//! tables a pipeline file lists, with the file's Iceberg names.

use philotes_stages::source::clash;
pub use philotes_stages::source::clash::IcebergClash;

use super::model::{IcebergTarget, PipelineConfig, TableId};

/// Every pair of `tables` that the pipeline would write into one Iceberg table; see [`clash::iceberg_clashes`].
pub fn iceberg_clashes(config: &PipelineConfig, tables: &[TableId]) -> Vec<IcebergClash> {
    clashes(|t| config.iceberg_target(t), tables)
}

/// [`iceberg_clashes`] with targets from `resolve` (the file is checked before the whole config is built).
pub(crate) fn clashes(resolve: impl Fn(&TableId) -> IcebergTarget, tables: &[TableId]) -> Vec<IcebergClash> {
    clash::iceberg_clashes(tables, |t| {
        let target = resolve(t);
        (target.namespace, target.name)
    })
}
