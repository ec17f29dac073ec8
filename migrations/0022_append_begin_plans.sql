-- rig_append_begin (0021) again, with the same contract, made cheap and plan-stable.
--
-- Profiled under 64 clients of single-event appends, 0021 was over a third of the append
-- lock holder's CPU, and most of that was planning: eight statements, re-planned at every call
-- (custom plans for their array arguments). Worse, with a few thousand issue_state rows the
-- planner chose a sequential scan of issue_state for `stream_id = ANY (streams)` (3.7 ms at
-- 14k rows, growing with the table), inside the lock, on every batch.
--
-- Now: one statement takes the lock, one does every read; their generic plans are made once
-- per connection (the writer keeps its connection), and every lookup is a per-key index probe
-- whatever the statistics say: a LATERAL subquery behind OFFSET 0 (a fence the planner does not
-- flatten into a join it might hash) for each stream, id and agent of the batch.
CREATE OR REPLACE FUNCTION rig_append_begin(lock_key bigint, request jsonb)
RETURNS json
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    result json;
BEGIN
    -- The commit then releases the lock without waiting for its fsync; the writer answers no
    -- one before the WAL is flushed (its flusher; docs/invariants.md).
    PERFORM set_config('synchronous_commit', 'off', true), pg_advisory_xact_lock(lock_key);
    -- A new statement, so a new snapshot: it sees every append committed before the lock was
    -- granted.
    WITH streams AS (
        SELECT q.stream_id FROM jsonb_array_elements_text(request -> 'streams') AS q(stream_id)
    ), issues AS (
        SELECT i.* FROM streams s
        CROSS JOIN LATERAL (SELECT * FROM issue_state x WHERE x.stream_id = s.stream_id OFFSET 0) i
    )
    SELECT json_build_object(
        'now', clock_timestamp(),
        'issues', (SELECT coalesce(json_agg(i), '[]') FROM issues i),
        -- Client-given ids already stored: [event_id, stream_id, version, position].
        'stored', (SELECT coalesce(json_agg(json_build_array(e.event_id, e.stream_id, e.version, e.position)), '[]')
                   FROM jsonb_array_elements_text(request -> 'ids') AS q(id)
                   CROSS JOIN LATERAL (SELECT x.event_id, x.stream_id, x.version, x.position
                                       FROM events x WHERE x.event_id = q.id::uuid OFFSET 0) e),
        -- An issue stream's version is in its issue_state row, written with every append to it;
        -- only the other streams (agent streams, new issues) need a look at the log.
        'versions', (SELECT coalesce(json_object_agg(s.stream_id, m.version), '{}')
                     FROM streams s
                     CROSS JOIN LATERAL (SELECT max(x.version) AS version FROM events x
                                         WHERE x.stream_id = s.stream_id) m
                     WHERE m.version IS NOT NULL
                       AND NOT EXISTS (SELECT 1 FROM issues i WHERE i.stream_id = s.stream_id)),
        -- The agents the batch may touch: those named by the caller, and whoever holds one of
        -- the batch's issues now.
        'agents', (SELECT coalesce(json_agg(a), '[]')
                   FROM (SELECT q.agent_id FROM jsonb_array_elements_text(request -> 'agents') AS q(agent_id)
                         UNION
                         SELECT i.agent_id FROM issues i WHERE i.agent_id IS NOT NULL) n
                   CROSS JOIN LATERAL (SELECT * FROM agent_status x WHERE x.agent_id = n.agent_id OFFSET 0) a)
    ) INTO result;
    RETURN result;
END
$$;
