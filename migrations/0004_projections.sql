-- Tables owned by the tailing workers. Each is written only by its consumer, in the same
-- transaction as that consumer's checkpoint.

-- token-projector
CREATE TABLE token_usage (
    stream_id           text    NOT NULL,
    agent_id            text    NOT NULL,
    model               text    NOT NULL,
    input_tokens        bigint  NOT NULL DEFAULT 0,
    output_tokens       bigint  NOT NULL DEFAULT 0,
    cache_read_tokens   bigint  NOT NULL DEFAULT 0,
    cache_write_tokens  bigint  NOT NULL DEFAULT 0,
    cost_usd            numeric NOT NULL DEFAULT 0,
    events              bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (stream_id, agent_id, model)
);
CREATE INDEX token_usage_agent_idx ON token_usage (agent_id);

-- cost-projector
CREATE TABLE daily_cost (
    day                 date    NOT NULL,
    repo                text    NOT NULL,
    agent_id            text    NOT NULL,
    model               text    NOT NULL,
    input_tokens        bigint  NOT NULL DEFAULT 0,
    output_tokens       bigint  NOT NULL DEFAULT 0,
    cache_read_tokens   bigint  NOT NULL DEFAULT 0,
    cache_write_tokens  bigint  NOT NULL DEFAULT 0,
    cost_usd            numeric NOT NULL DEFAULT 0,
    events              bigint  NOT NULL DEFAULT 0,
    -- events that had neither cost_usd nor a price row for their day (counted as 0 USD)
    unpriced_events     bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (day, repo, agent_id, model)
);

-- stale-heartbeat: issues an agent holds, with their last sign of life (server time).
CREATE TABLE stale_heartbeat_issues (
    stream_id     text        PRIMARY KEY,
    agent_id      text        NOT NULL,
    issue_number  bigint      NOT NULL,
    status        text        NOT NULL,
    version       integer     NOT NULL,
    assigned_at   timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL
);
CREATE INDEX stale_heartbeat_issues_agent_idx ON stale_heartbeat_issues (agent_id);

-- notifier: the outbox, one row per (event, channel), written with the checkpoint, sent after.
CREATE TABLE notifier_outbox (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    position      bigint      NOT NULL,
    event_id      uuid        NOT NULL,
    channel       text        NOT NULL,
    event_type    text        NOT NULL,
    payload       jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text,
    sent_at       timestamptz,
    message_id    text,
    UNIQUE (event_id, channel)
);
CREATE INDEX notifier_outbox_pending_idx ON notifier_outbox (id) WHERE sent_at IS NULL;
