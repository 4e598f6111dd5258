//! Two source tables must never write one Iceberg table.
//!
//! The flusher guards each Iceberg table with the last position committed into it (`philotes.last-lsn` /
//! `last-seq` of the snapshot summary). Were `public.orders` and `s2.orders` both written to `cdc.orders`, the
//! later position of one would make the other's changes look already written, and they would be dropped at
//! flush without a word. So a pipeline file where two listed tables resolve to one Iceberg identifier is refused
//! (`validate` and `run` both), and the capture checks the tables it follows (`tables: all`, known only at run
//! time) with the same [`iceberg_clashes`].
//!
//! Identifiers compare case-insensitively, as catalogs do (the SQL catalog on a case-insensitive collation, REST
//! catalogs, Hive, Glue), so `cdc.Orders` and `cdc.orders` are one table.

use std::collections::HashMap;
use std::fmt;

use crate::table_id::TableId;

/// An Iceberg table: its namespace and name.
pub type IcebergIdent = (String, String);

/// Two source tables whose changes would go to one Iceberg table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcebergClash {
    /// The table that claimed the Iceberg table first (in the order the tables were given).
    pub first: TableId,
    /// The table that resolves to the same Iceberg table.
    pub second: TableId,
    /// `first`'s Iceberg namespace and table name.
    pub first_target: IcebergIdent,
    /// `second`'s; equal to `first_target` but for letter case.
    pub second_target: IcebergIdent,
}

impl fmt::Display for IcebergClash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (namespace, name) = &self.first_target;
        write!(
            f,
            "{} and {} both resolve to Iceberg table {namespace}.{name}",
            self.second, self.first
        )?;
        if self.first_target != self.second_target {
            let (namespace, name) = &self.second_target;
            write!(
                f,
                " (as {namespace}.{name}; catalogs compare names case-insensitively)"
            )?;
        }
        write!(
            f,
            ": the changes of one would be lost at flush; give one of them its own table with \
             sink.iceberg.tables.<table>.name or .namespace (e.g. sink.iceberg.tables: {{ {}: {{ name: … }} }})",
            self.second
        )
    }
}

/// Every pair of `tables` that resolve (through `target`) to one Iceberg table, each later table paired with the
/// first table that resolves to its identifier (three tables on one identifier give two clashes). Empty when
/// every table has its own Iceberg table; a table given twice is one table.
pub fn iceberg_clashes<'t>(
    tables: impl IntoIterator<Item = &'t TableId>,
    target: impl Fn(&TableId) -> IcebergIdent,
) -> Vec<IcebergClash> {
    // The first table on each identifier (compared in lower case), and the identifier as it resolved for it.
    let mut claimed: HashMap<IcebergIdent, (&TableId, IcebergIdent)> = HashMap::new();
    let mut found = Vec::new();
    for table in tables {
        let resolved = target(table);
        let key = (resolved.0.to_lowercase(), resolved.1.to_lowercase());
        match claimed.get(&key) {
            Some((first, _)) if *first == table => {}
            Some((first, first_target)) => found.push(IcebergClash {
                first: (*first).clone(),
                second: table.clone(),
                first_target: first_target.clone(),
                second_target: resolved,
            }),
            None => {
                claimed.insert(key, (table, resolved));
            }
        }
    }
    found
}
