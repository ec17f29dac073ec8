-- The start of every append transaction (the writer, in rig-log): take the append lock, THEN
-- read everything the batch is judged against, returned as one jsonb. The writer sends it in the
-- same round trip as BEGIN: under load every round trip costs a scheduling delay on each side,
-- and the append rate is bounded by how long the lock holder takes.
--
-- Why a function: the reads must see every append committed before the lock was granted. Under
-- READ COMMITTED a single statement's snapshot is taken when it starts, i.e. before it waits for
-- the lock, so "lock and read" in one plain statement could judge a batch against stale
-- versions. A VOLATILE function takes a fresh snapshot for each statement it runs, after the
-- PERFORM that waited.
--
-- request: {"ids": [client-given event ids], "streams": [stream ids], "agents": [agent ids]}
-- The answer is `json`, not `jsonb`: it is built to be sent once and parsed by the writer, and
-- json_agg of rows is plain text concatenation, several times cheaper than building jsonb.
CREATE FUNCTION rig_append_begin(lock_key bigint, request jsonb)
RETURNS json
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    ids uuid[] := ARRAY(SELECT jsonb_array_elements_text(request -> 'ids')::uuid);
    streams text[] := ARRAY(SELECT jsonb_array_elements_text(request -> 'streams'));
    agents text[] := ARRAY(SELECT jsonb_array_elements_text(request -> 'agents'));
    issues json;
    with_row text[];
    rowless text[];
    result json;
BEGIN
    -- The commit then releases the lock without waiting for its fsync; the writer waits for
    -- durability after the commit, before answering anyone (its flusher; docs/invariants.md).
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_advisory_xact_lock(lock_key);
    SELECT coalesce(json_agg(i), '[]'), coalesce(array_agg(i.stream_id), '{}')
      INTO issues, with_row
      FROM issue_state i WHERE i.stream_id = ANY (streams);
    -- An issue stream's version is in its issue_state row, written with every append to it;
    -- only the other streams (agent streams, new issues) need a look at the log.
    rowless := ARRAY(SELECT s FROM unnest(streams) AS s WHERE NOT s = ANY (with_row));
    SELECT json_build_object(
        'now', clock_timestamp(),
        'issues', issues,
        -- Client-given ids already stored: [event_id, stream_id, version, position].
        'stored', (SELECT coalesce(json_agg(json_build_array(e.event_id, e.stream_id, e.version, e.position)), '[]')
                   FROM events e WHERE e.event_id = ANY (ids)),
        'versions', (SELECT coalesce(json_object_agg(s.stream_id, s.version), '{}')
                     FROM (SELECT q.stream_id, (SELECT max(e.version) FROM events e WHERE e.stream_id = q.stream_id) AS version
                           FROM unnest(rowless) AS q(stream_id)) s
                     WHERE s.version IS NOT NULL),
        -- The agents the batch may touch: those named by the caller, and whoever holds one of
        -- the batch's issues now.
        'agents', (SELECT coalesce(json_agg(a), '[]') FROM agent_status a
                   WHERE a.agent_id = ANY (agents)
                      OR a.agent_id IN (SELECT i.agent_id FROM issue_state i
                                        WHERE i.stream_id = ANY (streams) AND i.agent_id IS NOT NULL))
    ) INTO result;
    RETURN result;
END
$$;
