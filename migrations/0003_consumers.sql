-- Consumer bookkeeping. Each tailing worker owns exactly one checkpoint row, written in the same
-- transaction as its projection's writes with a compare-and-set on (position, epoch).

CREATE TABLE checkpoints (
    consumer          text        PRIMARY KEY,
    position          bigint      NOT NULL DEFAULT 0,
    -- Bumped by every reset, so a batch read before a reset can never be committed after it.
    epoch             bigint      NOT NULL DEFAULT 0,
    paused_position   bigint,
    last_error        text,
    paused_at         timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Events an operator chose to skip (`rigctl skip`): never skipped silently.
CREATE TABLE dead_letters (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer    text        NOT NULL,
    position    bigint      NOT NULL,
    event_id    uuid,
    event_type  text,
    error       text,
    skipped_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer, position)
);
