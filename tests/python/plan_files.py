"""Plans a pyiceberg scan of one Iceberg table with and without a row filter and prints the two file counts.

Usage: plan_files.py CATALOG_URI CATALOG_NAME NAMESPACE.TABLE ROW_FILTER
  ROW_FILTER: a pyiceberg filter expression in its string syntax, e.g. "id = 5".
Prints "FILTERED ALL": the data files the filtered scan plans (after partition and metrics pruning) and the
data files a scan of the whole table plans.
"""
import sys

from pyiceberg.catalog.sql import SqlCatalog


def main():
    uri, name, ident, row_filter = sys.argv[1:5]
    if uri.startswith("postgres://"):
        uri = "postgresql+psycopg2://" + uri[len("postgres://"):]
    catalog = SqlCatalog(name, uri=uri)
    table = catalog.load_table(tuple(ident.split(".", 1)))
    filtered = len(list(table.scan(row_filter=row_filter).plan_files()))
    everything = len(list(table.scan().plan_files()))
    print(f"{filtered} {everything}")


if __name__ == "__main__":
    main()
