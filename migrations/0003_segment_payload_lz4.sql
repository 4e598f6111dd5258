-- Segment payloads compressed with lz4 by Postgres: half the bytes in TOAST, so a flusher's read and a
-- checkpoint's delete touch half the chunks, and lz4 costs little CPU on either side (pglz cost a lot, which is
-- why 0002 stored them uncompressed). Measured: a 1M-change flush ~10 % faster (benches/README.md).
-- A server built without lz4 keeps the uncompressed storage of 0002. Dynamic SQL, so that the statement is
-- only parsed here, where its error can be caught.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE philotes.segments ALTER COLUMN payload SET COMPRESSION lz4, '
            'ALTER COLUMN payload SET STORAGE EXTENDED';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'segment payloads stay uncompressed: %', SQLERRM;
END
$$;
