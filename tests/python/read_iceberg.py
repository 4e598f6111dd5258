"""Reads one Iceberg table with pyiceberg (an independent reader) and prints its rows as JSON lines.

Usage: read_iceberg.py CATALOG_URI CATALOG_NAME NAMESPACE.TABLE [KEY=VALUE ...]
  CATALOG_URI: the SQL catalog's Postgres URL (postgres://user@host:port/db).
  KEY=VALUE: catalog properties, e.g. s3.endpoint=http://127.0.0.1:9000 for a warehouse in S3.
Rows come out ordered by (_lsn, _seq); every value is rendered as text the way the Rust tests render
Iceberg values, so the two readers can be compared line by line.
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


def main():
    uri, name, ident = sys.argv[1], sys.argv[2], sys.argv[3]
    properties = dict(arg.split("=", 1) for arg in sys.argv[4:])
    if uri.startswith("postgres://"):
        uri = "postgresql+psycopg2://" + uri[len("postgres://"):]
    catalog = SqlCatalog(name, uri=uri, **properties)
    # The namespace is one level: split at the first dot only, so a table name may hold dots ("lake.t.dot").
    table = catalog.load_table(tuple(ident.split(".", 1)))
    rows = table.scan().to_arrow().to_pylist()
    rows.sort(key=lambda r: (r["_lsn"], r["_seq"]))
    for row in rows:
        print(json.dumps({k: render(v) for k, v in row.items()}, sort_keys=True))


if __name__ == "__main__":
    main()
