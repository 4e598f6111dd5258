-- 0008: each segment keeps the source commit time of its oldest change, so the true lag
-- (`philotes_cdc_lag_seconds`: now minus the commit time of the oldest change not yet in Iceberg) is one
-- index-free aggregate over the waiting segments. NULL for segments written before this migration.
ALTER TABLE philotes.segments ADD COLUMN IF NOT EXISTS oldest_commit_ts timestamptz;
