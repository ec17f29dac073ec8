-- Least privilege: what each process's role may do in this database. The roles themselves belong
-- to the server and are created by `rigctl migrate` before the migrations run (rig_log::roles).
-- The role running the migrations owns every table and keeps all of its rights; no other role owns
-- anything, so none can ALTER a table or disable the append-only triggers of `events`.
--
-- A migration that adds a table grants it, as this one does, to the roles that need it: a role
-- that was not granted a table cannot touch it.

-- Functions are executable by everyone unless said otherwise. The append transaction's first
-- statement is ingest's alone.
REVOKE EXECUTE ON FUNCTION rig_append_begin(bigint, jsonb) FROM PUBLIC;

-- Every process checks at start that the schema is current.
GRANT SELECT ON _sqlx_migrations
    TO rig_ingest, rig_token_projector, rig_cost_projector, rig_stale_heartbeat, rig_notifier;

-- rig-ingest: the only writer of the log. It appends (never updates or deletes), keeps the inline
-- read models and the GitHub delivery record in the same transactions, and reads what its API and
-- dashboard serve, the projectors' tables and the consumers' checkpoints included.
GRANT EXECUTE ON FUNCTION rig_append_begin(bigint, jsonb) TO rig_ingest;
GRANT SELECT, INSERT ON events TO rig_ingest;
GRANT SELECT, INSERT, UPDATE ON issue_state, agent_status, github_deliveries TO rig_ingest;
GRANT SELECT ON token_usage, daily_cost, checkpoints TO rig_ingest;

-- The tailing workers: each reads the log and writes its own table.
GRANT SELECT ON events TO rig_token_projector, rig_cost_projector, rig_stale_heartbeat, rig_notifier;
GRANT SELECT, INSERT, UPDATE ON token_usage TO rig_token_projector;
GRANT SELECT, INSERT, UPDATE ON daily_cost TO rig_cost_projector;
GRANT SELECT, INSERT, UPDATE, DELETE ON stale_heartbeat_issues TO rig_stale_heartbeat;
GRANT SELECT, INSERT, UPDATE ON notifier_outbox TO rig_notifier;
-- The notifier's messages name the issue's title and agent.
GRANT SELECT ON issue_state TO rig_notifier;

-- Checkpoints: one table, one row per consumer, and each worker may read and write its own row
-- only. Row-level security binds every role but the table's owner (migrations, and `rigctl reset`
-- and `rigctl skip`, which run as the owner); a row another policy does not allow is invisible to
-- an UPDATE, so a worker's write to another consumer's checkpoint changes nothing.
GRANT SELECT, INSERT, UPDATE ON checkpoints
    TO rig_token_projector, rig_cost_projector, rig_stale_heartbeat, rig_notifier;
ALTER TABLE checkpoints ENABLE ROW LEVEL SECURITY;
CREATE POLICY checkpoints_token_projector ON checkpoints TO rig_token_projector
    USING (consumer = 'token-projector') WITH CHECK (consumer = 'token-projector');
CREATE POLICY checkpoints_cost_projector ON checkpoints TO rig_cost_projector
    USING (consumer = 'cost-projector') WITH CHECK (consumer = 'cost-projector');
CREATE POLICY checkpoints_stale_heartbeat ON checkpoints TO rig_stale_heartbeat
    USING (consumer = 'stale-heartbeat') WITH CHECK (consumer = 'stale-heartbeat');
CREATE POLICY checkpoints_notifier ON checkpoints TO rig_notifier
    USING (consumer = 'notifier') WITH CHECK (consumer = 'notifier');
-- Ingest shows every consumer's position and lag on the dashboard; it writes none.
CREATE POLICY checkpoints_ingest_reads ON checkpoints FOR SELECT TO rig_ingest USING (true);

-- dead_letters is written by `rigctl skip` (the owner) alone: no grant.
