-- 0004: the source tables a pipeline follows, by relation OID (DESIGN.md, "Nothing is skipped silently").
-- A table keeps the name it had when the pipeline first saw it (`source_schema`, `source_table`: its identity,
-- which names its segments, schema versions, watermark and Iceberg table); a rename only changes
-- `schema_now`/`table_now`, so its changes keep flowing to the same Iceberg table. `problem` says why
-- the capture does not follow the table (a keyless table it refused to publish, an identity taken by another
-- table), for `philotes status`.
CREATE TABLE IF NOT EXISTS philotes.source_tables (
    pipeline       text        NOT NULL,
    relid          oid         NOT NULL,
    source_schema  text        NOT NULL,
    source_table   text        NOT NULL,
    schema_now text        NOT NULL,
    table_now  text        NOT NULL,
    problem        text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, relid)
);
CREATE UNIQUE INDEX IF NOT EXISTS source_tables_by_identity
    ON philotes.source_tables (pipeline, source_schema, source_table);
