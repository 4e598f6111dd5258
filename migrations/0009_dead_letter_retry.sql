-- 0009: dead letters that can be retried (`philotes dead-letters FILE retry`), exactly once.
--
-- A dead letter now keeps the change itself, so it can be enqueued again once its cause is fixed: `event` is the
-- MessagePack of one change exactly as a segment holds it (crate::segment, a one-event segment), `schema_version`
-- the philotes.schemas version it was decoded with. `event_raw` says the values are still as pgoutput sent them
-- (text values as strings, binary ones as bytes): a change SchemaResolve could not convert, converted again at
-- retry. Dead letters stored before this migration have no event and cannot be retried.
ALTER TABLE philotes.dead_letters
    ADD COLUMN IF NOT EXISTS schema_version integer,
    ADD COLUMN IF NOT EXISTS event          bytea,
    ADD COLUMN IF NOT EXISTS event_raw      boolean NOT NULL DEFAULT false;

-- A retried change waits in the queue as a segment like any other, marked with its retry: a token made by the
-- retry (one per retry and table). Its position is behind the table's watermark, so the flush does not filter it
-- by position; instead the snapshot that writes it carries `philotes.retry = <token>` in its summary, and a flush
-- that finds the token in the table's history after a crash only deletes the segments (the same two atomic steps
-- as positions: the Iceberg commit, then the buffer checkpoint). NULL: a normal segment.
ALTER TABLE philotes.segments ADD COLUMN IF NOT EXISTS retry text;
CREATE INDEX IF NOT EXISTS segments_retries ON philotes.segments (pipeline, source_schema, source_table, id)
    WHERE retry IS NOT NULL;
