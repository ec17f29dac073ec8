-- Inline read models: written by rig-ingest in the same transaction as the append.

CREATE TABLE issue_state (
    stream_id          text        PRIMARY KEY,
    repo               text        NOT NULL,
    issue_number       bigint      NOT NULL,
    status             text,
    agent_id           text,
    version            integer     NOT NULL,
    stuck_count        integer     NOT NULL DEFAULT 0,
    last_ci            text,
    pr_number          bigint,
    branch             text,
    title              text,
    first_event_at     timestamptz NOT NULL,
    assigned_at        timestamptz,
    last_heartbeat_at  timestamptz,
    done_at            timestamptz,
    updated_at         timestamptz NOT NULL
);
CREATE INDEX issue_state_status_idx ON issue_state (status);
CREATE INDEX issue_state_agent_idx ON issue_state (agent_id) WHERE agent_id IS NOT NULL;
-- GitHub linking: "which issue did PR #n of this repo come from?"
CREATE INDEX issue_state_pr_idx ON issue_state (repo, pr_number) WHERE pr_number IS NOT NULL;

CREATE TABLE agent_status (
    agent_id           text        PRIMARY KEY,
    last_heartbeat_at  timestamptz,
    current_stream_id  text,
    status             text,
    updated_at         timestamptz NOT NULL
);

-- GitHub deliveries already taken, so that a redelivery appends nothing and answers 200.
CREATE TABLE github_deliveries (
    delivery_id   text        PRIMARY KEY,
    github_event  text        NOT NULL,
    action        text,
    outcome       text        NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now()
);
