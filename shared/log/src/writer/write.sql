-- Everything one batch writes, in one statement (shared/log/src/writer/store.rs binds the
-- arrays): the events, the issue_state and agent_status rows the batch changed, and the NOTIFY
-- that wakes the consumers (delivered at commit). Returns the range of positions drawn.
--
-- Identity values are drawn in the order of the SELECT, i.e. the order of the arrays (the plan
-- is a function scan WITH ORDINALITY feeding the insert, no sort: the order that also keeps
-- each stream's positions in version order).
WITH ins AS (
    INSERT INTO events (stream_id, version, event_id, event_type, schema_version, data, metadata, occurred_at, recorded_at)
    SELECT s, v, id, t, sv, d::jsonb, m::jsonb, o, $9
    FROM unnest($1::text[], $2::int[], $3::uuid[], $4::text[], $5::int[], $6::text[], $7::text[], $8::timestamptz[])
         WITH ORDINALITY AS u(s, v, id, t, sv, d, m, o, n)
    ORDER BY n
    RETURNING event_id, position),
issues AS (
    INSERT INTO issue_state (stream_id, repo, issue_number, status, agent_id, version, stuck_count, last_ci,
        pr_number, branch, title, first_event_at, assigned_at, last_heartbeat_at, done_at, updated_at)
    SELECT * FROM unnest($10::text[], $11::text[], $12::bigint[], $13::text[], $14::text[], $15::int[],
        $16::int[], $17::text[], $18::bigint[], $19::text[], $20::text[], $21::timestamptz[],
        $22::timestamptz[], $23::timestamptz[], $24::timestamptz[], $25::timestamptz[])
    ON CONFLICT (stream_id) DO UPDATE SET status = excluded.status, agent_id = excluded.agent_id,
        version = excluded.version, stuck_count = excluded.stuck_count, last_ci = excluded.last_ci,
        pr_number = excluded.pr_number, branch = excluded.branch, title = excluded.title,
        assigned_at = excluded.assigned_at, last_heartbeat_at = excluded.last_heartbeat_at,
        done_at = excluded.done_at, updated_at = excluded.updated_at),
agents AS (
    INSERT INTO agent_status (agent_id, last_heartbeat_at, current_stream_id, status, updated_at)
    SELECT * FROM unnest($26::text[], $27::timestamptz[], $28::text[], $29::text[], $30::timestamptz[])
    ON CONFLICT (agent_id) DO UPDATE SET last_heartbeat_at = excluded.last_heartbeat_at,
        current_stream_id = excluded.current_stream_id, status = excluded.status,
        updated_at = excluded.updated_at),
wake AS (SELECT pg_notify($31, (SELECT max(position) FROM ins)::text))
SELECT min(ins.position), max(ins.position), count(*) FROM ins, wake
