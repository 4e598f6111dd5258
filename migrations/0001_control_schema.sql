-- 0001: the control schema of philotes and its registry of pipelines.
-- Applied by `philotes migrate` (and at start) inside one transaction, under an advisory lock.
-- Never edit a migration once it has landed: add the next number instead.

CREATE SCHEMA IF NOT EXISTS philotes;

-- One row per pipeline that ever ran against this buffer database: who it is, when it was first seen,
-- and the role of the last process that registered, for `philotes status`.
CREATE TABLE IF NOT EXISTS philotes.pipelines (
    name        text        PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
