-- The event log: one append-only table. Only rig-ingest inserts into it, and every append
-- transaction first takes one transaction-scoped advisory lock (key `APPEND_LOCK_KEY` of rig-log,
-- taken by `rig_append_begin`), so commit order equals position order and readers may use a
-- plain `position > checkpoint` (the argument: docs/invariants.md, "No skip").

CREATE TABLE events (
    position        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id       text        NOT NULL,
    version         integer     NOT NULL CHECK (version >= 1),
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL CHECK (event_type ~ '^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$'),
    schema_version  integer     NOT NULL DEFAULT 1,
    data            jsonb       NOT NULL DEFAULT '{}',
    metadata        jsonb       NOT NULL DEFAULT '{}',
    occurred_at     timestamptz,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);

-- Append-only is a property of the table, not a convention: statement-level triggers fire even
-- when no row matches, and they bind the owner too (REVOKE alone would not).
CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'P0001', HINT = 'to rebuild a projection, reset its checkpoint (rigctl reset)';
END
$$;

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
