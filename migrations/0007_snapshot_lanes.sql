-- 0007: a table's snapshot is read in key ranges ("lanes") at once, `snapshot.workers` chunks in flight across
-- the pipeline (DESIGN.md, "Snapshots"). The ranges are cut once per run, when it starts reading, and each lane
-- moves forward on its own in the transaction that enqueues its chunk, with the checkpoint and the table's
-- totals in `philotes.snapshots`; the run is `done` when its last lane is. A run started before this migration
-- resumes as one lane from its `last_key`.
CREATE TABLE IF NOT EXISTS philotes.snapshot_lanes (
    pipeline      text    NOT NULL,
    source_schema text    NOT NULL,
    source_table  text    NOT NULL,
    run           integer NOT NULL,
    lane          integer NOT NULL,
    lower_key     text,                         -- the lane starts after this value of the leading key column
                                                -- (ctid: at this heap block); NULL: the table's start
    upper_key     text,                         -- and ends at this value, inclusive (ctid: before this block);
                                                -- NULL: the table's end
    last_key      text[],                       -- the upper key of its last enqueued chunk; NULL: none yet
    rows_done     bigint  NOT NULL DEFAULT 0,
    done          boolean NOT NULL DEFAULT false,
    PRIMARY KEY (pipeline, source_schema, source_table, lane),
    FOREIGN KEY (pipeline, source_schema, source_table)
        REFERENCES philotes.snapshots (pipeline, source_schema, source_table) ON DELETE CASCADE
);
