-- 0006: snapshot progress, one row per (pipeline, source table) (DESIGN.md, "Snapshots").
-- A row is written `pending` when a table needs its existing rows (a new pipeline with `snapshot: initial`, a
-- table that joined later, `philotes snapshot FILE --table T`); the capture reads it chunk by chunk, and the
-- transaction that enqueues a chunk moves `last_key`, `rows_done` and `chunks` forward with the checkpoint: a
-- killed capture resumes at the next chunk. `run` grows with each request, so a chunk of an older run never
-- moves a newer one. `reads` counts chunk reads (a read that a kill lost is read again: reads - chunks).
CREATE TABLE IF NOT EXISTS philotes.snapshots (
    pipeline       text        NOT NULL,
    source_schema  text        NOT NULL,
    source_table   text        NOT NULL,
    state          text        NOT NULL DEFAULT 'pending'
                               CHECK (state IN ('pending', 'running', 'done', 'failed', 'skipped')),
    run            integer     NOT NULL DEFAULT 1,
    key_columns    text[],                              -- the chunk key: primary key columns, or {ctid}
    last_key       text[],                              -- the upper key of the last enqueued chunk (text form)
    rows_done      bigint      NOT NULL DEFAULT 0,      -- rows read by enqueued chunks
    rows_estimate  bigint,                              -- pg_class.reltuples when the run started
    chunks         bigint      NOT NULL DEFAULT 0,      -- chunks enqueued
    reads          bigint      NOT NULL DEFAULT 0,      -- chunks read (more than chunks after a kill)
    snapshot_lsn   pg_lsn,                              -- the high watermark of the last enqueued chunk
    error          text,                                -- why the table's snapshot failed (state failed)
    requested_at   timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    PRIMARY KEY (pipeline, source_schema, source_table)
);

-- Pipelines that captured before snapshots existed streamed their tables from their slot's start: their tables
-- are not copied again on upgrade (`philotes snapshot FILE --table T` copies one on request).
INSERT INTO philotes.snapshots (pipeline, source_schema, source_table, state, finished_at)
SELECT t.pipeline, t.source_schema, t.source_table, 'skipped', now()
FROM philotes.source_tables t
JOIN philotes.checkpoints c ON c.pipeline = t.pipeline
ON CONFLICT DO NOTHING;
