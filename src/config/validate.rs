//! Checks of single values: names that become PostgreSQL identifiers, partition expressions,
//! warehouse locations, addresses. Each returns a user-facing message; `decode` adds where.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::model::{
    PartitionField, PartitionTransform, StageName, Warehouse, MAX_PIPELINE_NAME_LEN,
};

/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
const MAX_PG_IDENTIFIER_LEN: usize = 63;

/// A pipeline name: it becomes part of slot and publication names, so lowercase letters, digits and
/// `_`, starting with a letter, at most 50 characters.
pub(crate) fn pipeline_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_PIPELINE_NAME_LEN {
        return Err(format!(
            "{name:?} is {} characters long; at most {MAX_PIPELINE_NAME_LEN} (it becomes philotes_<pipeline>)",
            name.len()
        ));
    }
    lower_identifier(name, "pipeline name")
}

/// A replication slot name: PostgreSQL allows lowercase letters, digits and `_`, up to 63.
pub(crate) fn slot_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_PG_IDENTIFIER_LEN {
        return Err(format!(
            "{name:?} is longer than {MAX_PG_IDENTIFIER_LEN} characters"
        ));
    }
    lower_identifier(name, "slot name")
}

/// A publication name: any identifier PostgreSQL keeps whole (philotes always quotes it).
pub(crate) fn publication_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_PG_IDENTIFIER_LEN {
        return Err(format!(
            "{name:?} is longer than {MAX_PG_IDENTIFIER_LEN} bytes"
        ));
    }
    if name.contains('\0') {
        return Err("must not contain NUL characters".into());
    }
    Ok(())
}

fn lower_identifier(name: &str, what: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_well = matches!(chars.next(), Some(c) if c.is_ascii_lowercase());
    if starts_well && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid {what}: use lowercase letters, digits and _, starting with a letter"
        ))
    }
}

/// `stages.<stage>.workers`: whether that many workers can ever have work. The capture stages follow the
/// replication stream's order and `claim` is the flusher's single source, so each runs one worker; a flush
/// holds one lease from claim to checkpoint, so `iceberg_commit` and `checkpoint` never have more flushes to
/// work on than `flush.workers` (`flush_workers`, `None` when that key is itself wrong).
pub(crate) fn stage_workers(
    stage: StageName,
    workers: usize,
    flush_workers: Option<usize>,
) -> Result<(), String> {
    match stage {
        StageName::Decode | StageName::SchemaResolve | StageName::Enqueue if workers > 1 => Err(format!(
            "must be 1, found {workers}: {stage} follows the replication stream's order, so it runs one worker"
        )),
        StageName::Claim if workers > 1 => Err(format!(
            "must be 1, found {workers}: claim is the flusher's source, one task taking table leases; \
             flush.workers sets how many flushes run at once"
        )),
        StageName::IcebergCommit | StageName::Checkpoint => match flush_workers {
            Some(leases) if workers > leases => Err(format!(
                "{workers} is more than flush.workers ({leases}): a flush holds one lease from claim to \
                 checkpoint, so at most {leases} {stage} workers would ever have work; lower \
                 stages.{stage}.workers or raise flush.workers"
            )),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// `stages.<stage>.queue`: `claim` is the flusher's source and has no input queue.
pub(crate) fn stage_queue(stage: StageName) -> Result<(), String> {
    match stage {
        StageName::Claim => Err(
            "claim has no input queue: it is the flusher's source (the queue after it is \
             stages.arrow_batch.queue)"
                .to_owned(),
        ),
        _ => Ok(()),
    }
}

/// An Iceberg table name (one level, so no `.`).
pub(crate) fn iceberg_table_name(name: &str) -> Result<(), String> {
    if name.contains('.') || name.contains('/') {
        Err(format!(
            "{name:?} is not a valid Iceberg table name (no . or /)"
        ))
    } else {
        Ok(())
    }
}

/// An Iceberg namespace: `a` or nested `a.b`, no empty level.
pub(crate) fn iceberg_namespace(name: &str) -> Result<(), String> {
    if name.split('.').any(|level| level.trim().is_empty()) || name.contains('/') {
        Err(format!(
            "{name:?} is not a valid namespace (levels separated by ., none empty, no /)"
        ))
    } else {
        Ok(())
    }
}

/// `file:///abs/dir`, `file://./rel/dir` or `s3://bucket/prefix`.
pub(crate) fn warehouse(text: &str) -> Result<Warehouse, String> {
    if let Some(path) = text.strip_prefix("file://") {
        if path.is_empty() {
            return Err(
                "file:// warehouse needs a path, e.g. file:///var/lib/philotes/warehouse".into(),
            );
        }
        Ok(Warehouse::File {
            path: PathBuf::from(path),
        })
    } else if let Some(rest) = text.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!(
                "{text:?} names no bucket (expected s3://bucket/prefix)"
            ));
        }
        Ok(Warehouse::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        })
    } else {
        Err(format!(
            "expected a file://… or s3://… location, found {text:?}"
        ))
    }
}

/// An `http://` or `https://` URL with a host (REST catalog URI, S3 endpoint).
pub(crate) fn http_url(text: &str) -> Result<(), String> {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or_else(|| "expected an http:// or https:// URL".to_owned())?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() {
        Err("the URL names no host".into())
    } else {
        Ok(())
    }
}

/// `ip:port`, e.g. `127.0.0.1:9464` or `[::]:9464`.
pub(crate) fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!("expected an IP address and port such as 127.0.0.1:9464 or 0.0.0.0:9464, found {text:?}")
    })
}

/// `col`, `year(col)`, `month(col)`, `day(col)`, `hour(col)`, `bucket(N, col)`, `truncate(W, col)`
/// (Iceberg's plural spellings `years(col)` etc. and `identity(col)` are accepted too).
pub(crate) fn partition(text: &str) -> Result<PartitionField, String> {
    let expr = text.trim();
    let Some(open) = expr.find('(') else {
        return Ok(PartitionField {
            transform: PartitionTransform::Identity,
            column: column(expr, text)?,
        });
    };
    let inner = expr[open + 1..]
        .strip_suffix(')')
        .ok_or_else(|| format!("{text:?} lacks its closing parenthesis"))?;
    let args: Vec<&str> = inner.split(',').map(str::trim).collect();
    let name = expr[..open].trim().to_ascii_lowercase();
    let time = |transform| match args.as_slice() {
        [col] => Ok(PartitionField {
            transform,
            column: column(col, text)?,
        }),
        _ => Err(format!("{name}(…) takes one column, found {text:?}")),
    };
    let sized = |make: fn(u32) -> PartitionTransform| match args.as_slice() {
        [n, col] => {
            let n: u32 = n.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                format!("{name}(N, column) needs a whole number N ≥ 1, found {n:?}")
            })?;
            Ok(PartitionField {
                transform: make(n),
                column: column(col, text)?,
            })
        }
        _ => Err(format!("expected {name}(N, column), found {text:?}")),
    };
    match name.as_str() {
        "identity" => time(PartitionTransform::Identity),
        "year" | "years" => time(PartitionTransform::Year),
        "month" | "months" => time(PartitionTransform::Month),
        "day" | "days" => time(PartitionTransform::Day),
        "hour" | "hours" => time(PartitionTransform::Hour),
        "bucket" => sized(PartitionTransform::Bucket),
        "truncate" => sized(PartitionTransform::Truncate),
        _ => Err(format!(
            "unknown partition transform {name:?} in {text:?} (use year, month, day, hour, bucket or truncate)"
        )),
    }
}

/// A column name inside a partition expression.
fn column(name: &str, expr: &str) -> Result<String, String> {
    let name = name.trim();
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$');
    if plain {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "expected a column name in partition expression {expr:?}, found {name:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_names_must_be_short_lowercase_identifiers() {
        assert!(pipeline_name("orders_2").is_ok());
        assert!(pipeline_name("Orders").is_err());
        assert!(pipeline_name("2orders").is_err());
        assert!(pipeline_name("my-orders").is_err());
        assert!(pipeline_name(&"a".repeat(50)).is_ok());
        assert!(pipeline_name(&"a".repeat(51))
            .unwrap_err()
            .contains("at most 50"));
    }

    #[test]
    fn every_partition_transform_parses() {
        let cases = [
            ("id", PartitionTransform::Identity, "id"),
            ("year(ts)", PartitionTransform::Year, "year(ts)"),
            ("months(ts)", PartitionTransform::Month, "month(ts)"),
            (
                "day(created_at)",
                PartitionTransform::Day,
                "day(created_at)",
            ),
            ("hour( ts )", PartitionTransform::Hour, "hour(ts)"),
            (
                "bucket(16, id)",
                PartitionTransform::Bucket(16),
                "bucket(16, id)",
            ),
            (
                "truncate(4,name)",
                PartitionTransform::Truncate(4),
                "truncate(4, name)",
            ),
        ];
        for (text, transform, shown) in cases {
            let field = partition(text).unwrap();
            assert_eq!(field.transform, transform, "{text}");
            assert_eq!(field.to_string(), shown);
        }
    }

    #[test]
    fn malformed_partition_expressions_are_refused() {
        assert!(partition("week(ts)")
            .unwrap_err()
            .contains("unknown partition transform"));
        assert!(partition("bucket(0, id)").unwrap_err().contains("N ≥ 1"));
        assert!(partition("bucket(id)").is_err());
        assert!(partition("day(ts").unwrap_err().contains("closing"));
        assert!(partition("day(a, b)").is_err());
        assert!(partition("a b").is_err());
        assert!(partition("").is_err());
    }

    #[test]
    fn warehouses_are_file_or_s3_locations() {
        assert_eq!(
            warehouse("file:///var/lib/w").unwrap(),
            Warehouse::File {
                path: "/var/lib/w".into()
            }
        );
        assert_eq!(
            warehouse("s3://bucket/a/b/").unwrap(),
            Warehouse::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert!(warehouse("s3:///x").is_err());
        assert!(warehouse("/var/lib/w").is_err());
        assert!(warehouse("gs://b").is_err());
    }

    #[test]
    fn addresses_and_urls_are_checked() {
        assert!(socket_addr("0.0.0.0:9464").is_ok());
        assert!(socket_addr("[::1]:9464").is_ok());
        assert!(socket_addr("localhost").is_err());
        assert!(http_url("https://catalog.example.com/api").is_ok());
        assert!(http_url("catalog:8181").is_err());
        assert!(http_url("http:///x").is_err());
    }
}
