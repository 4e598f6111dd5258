"""Reads one Iceberg table with pyiceberg (an independent reader) and prints its rows as JSON lines.

Usage: read_iceberg.py [--duckdb] CATALOG_URI CATALOG_NAME NAMESPACE.TABLE [KEY=VALUE ...]
  --duckdb: read the rows with DuckDB's iceberg_scan instead (pyiceberg only finds the table's metadata file);
            a local warehouse only. The extensions are loaded from the pinned PyPI packages, never downloaded.
  CATALOG_URI: the SQL catalog's Postgres URL (postgres://user@host:port/db).
  NAMESPACE.TABLE: split at the first dot, so a table name may hold dots (lake.t.dot).
  KEY=VALUE: catalog properties, e.g. s3.endpoint=http://127.0.0.1:9000 for a warehouse in S3.
Rows come out ordered by (_lsn, _seq) (a mirror table's, which has neither, in the reader's order); every value is converted to Python objects (pyarrow's to_pylist(), or
DuckDB's fetchall()) and rendered as text the way the Rust tests render Iceberg values, so the readers can be
compared line by line. A value a reader cannot hold fails the read: it is never skipped.
"""
import base64
import datetime
import decimal
import json
import sys
import uuid

from pyiceberg.catalog.sql import SqlCatalog


def render(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
            return value.isoformat(sep=" ", timespec="microseconds") + "+00"
        return value.isoformat(sep=" ", timespec="microseconds")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return [render(v) for v in value]
    if isinstance(value, dict):
        return {k: render(v) for k, v in value.items()}
    return str(value)


def read_with_duckdb(table):
    import pathlib

    import duckdb
    import duckdb_extension_avro
    import duckdb_extension_iceberg

    def extension(module, name):
        folder = pathlib.Path(module.__file__).parent / "extensions" / f"v{duckdb.__version__}"
        return folder / f"{name}.duckdb_extension"

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute(f"LOAD '{extension(duckdb_extension_avro, 'avro')}'")
    con.execute(f"LOAD '{extension(duckdb_extension_iceberg, 'iceberg')}'")
    # timestamptz values come back in the session's zone: UTC, as the other readers give them (in a zone east
    # of UTC, 9999-12-31 23:59:59.999999+00 is past the end of Python's datetime).
    con.execute("SET TimeZone = 'UTC'")
    location = table.metadata_location.replace("'", "''")
    cursor = con.execute(f"SELECT * FROM iceberg_scan('{location}')")
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def main():
    args = sys.argv[1:]
    duckdb = "--duckdb" in args
    args = [arg for arg in args if arg != "--duckdb"]
    uri, name, ident = args[0], args[1], args[2]
    properties = dict(arg.split("=", 1) for arg in args[3:])
    if uri.startswith("postgres://"):
        uri = "postgresql+psycopg2://" + uri[len("postgres://"):]
    catalog = SqlCatalog(name, uri=uri, **properties)
    # The namespace is one level: split at the first dot only, so a table name may hold dots ("lake.t.dot").
    table = catalog.load_table(tuple(ident.split(".", 1)))
    rows = read_with_duckdb(table) if duckdb else table.scan().to_arrow().to_pylist()
    # A changelog table in position order; a mirror table (no _lsn) in the reader's order.
    rows.sort(key=lambda r: (r.get("_lsn") or 0, r.get("_seq") or 0))
    for row in rows:
        print(json.dumps({k: render(v) for k, v in row.items()}, sort_keys=True))


if __name__ == "__main__":
    main()
