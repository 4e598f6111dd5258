-- A table whose flush keeps failing while the flusher retries it (the catalog or the warehouse unusable: a
-- warehouse path below a regular file, a full disk, a catalog database down). `philotes status` shows it until the
-- table's next successful flush deletes the row. A failure that stops the table for good is
-- table_watermarks.error instead. Written on a session of its own: the lease holds the table_watermarks row.
CREATE TABLE IF NOT EXISTS philotes.table_failures (
    pipeline      text        NOT NULL,
    source_schema text        NOT NULL,
    source_table  text        NOT NULL,
    error         text        NOT NULL,                -- the last failure, with every cause
    since         timestamptz NOT NULL DEFAULT now(),  -- the first failure of this run of failures
    updated_at    timestamptz NOT NULL DEFAULT now(),  -- the last failure
    PRIMARY KEY (pipeline, source_schema, source_table)
);
