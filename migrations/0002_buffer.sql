-- 0002: the durable buffer between capture and flushers (DESIGN.md, "The data path").
-- LSNs are pg_lsn; a position is (lsn, seq): one source transaction shares one commit LSN and may span
-- several segments, so a bare LSN cannot say whether half of a transaction is somewhere.

-- The source checkpoint of each pipeline: the last source transaction fully enqueued. Written in the same
-- transaction as that transaction's last segments; only then is end_lsn confirmed to the replication slot.
CREATE TABLE IF NOT EXISTS philotes.checkpoints (
    pipeline    text        PRIMARY KEY,
    commit_lsn  pg_lsn      NOT NULL,          -- commit LSN of the last fully enqueued transaction
    end_lsn     pg_lsn      NOT NULL,          -- its end LSN: what the slot may release
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Schema versions per source table, as SchemaResolve saw them (a new Relation message with different
-- columns makes a new version). `columns` is the MessagePack of philotes_schemas::TableSchema.
CREATE TABLE IF NOT EXISTS philotes.schemas (
    pipeline      text        NOT NULL,
    source_schema text        NOT NULL,
    source_table  text        NOT NULL,
    version       integer     NOT NULL,
    columns       bytea       NOT NULL,
    description   text        NOT NULL,          -- human-readable column list, for status and debugging
    first_lsn     pg_lsn      NOT NULL,          -- first commit LSN that uses this version
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, source_schema, source_table, version)
);

-- The queue: each row is one segment of consecutive changes of one table, MessagePack-encoded.
-- Segments of a transaction that is not fully enqueued yet sit above the pipeline's checkpoint; flushers
-- claim only segments whose last_lsn is at or below it.
CREATE TABLE IF NOT EXISTS philotes.segments (
    id             bigserial   PRIMARY KEY,
    pipeline       text        NOT NULL,
    source_schema  text        NOT NULL,
    source_table   text        NOT NULL,
    schema_version integer     NOT NULL,
    first_lsn      pg_lsn      NOT NULL,
    first_seq      bigint      NOT NULL,
    last_lsn       pg_lsn      NOT NULL,
    last_seq       bigint      NOT NULL,
    events         integer     NOT NULL,
    bytes          integer     NOT NULL,
    payload        bytea       NOT NULL,
    trace_context  text,                        -- W3C traceparent of the span that enqueued it
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- Payloads are MB-sized MessagePack: stored out of line but not pglz-compressed, which would cost CPU on both
-- sides of the buffer (compressing at enqueue, decompressing at every claim) for little gain.
ALTER TABLE philotes.segments ALTER COLUMN payload SET STORAGE EXTERNAL;
CREATE INDEX IF NOT EXISTS segments_by_table_position
    ON philotes.segments (pipeline, source_schema, source_table, first_lsn, first_seq);
CREATE INDEX IF NOT EXISTS segments_by_position ON philotes.segments (pipeline, last_lsn);

-- Per table: the lease row flushers lock (FOR UPDATE SKIP LOCKED) and the last position committed to Iceberg.
CREATE TABLE IF NOT EXISTS philotes.table_watermarks (
    pipeline      text        NOT NULL,
    source_schema text        NOT NULL,
    source_table  text        NOT NULL,
    last_lsn      pg_lsn,
    last_seq      bigint,
    error         text,                          -- set when the table stopped (incompatible schema change); clear to resume
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, source_schema, source_table)
);

-- Values that could not be converted, with the reason; the pipeline goes on without them.
CREATE TABLE IF NOT EXISTS philotes.dead_letters (
    id            bigserial   PRIMARY KEY,
    pipeline      text        NOT NULL,
    stage         text        NOT NULL,
    source_schema text,
    source_table  text,
    commit_lsn    pg_lsn,
    seq           bigint,
    reason        text        NOT NULL,
    payload       text,                          -- the offending change, rendered for a person
    created_at    timestamptz NOT NULL DEFAULT now()
);
