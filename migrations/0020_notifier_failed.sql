-- notifier: a message Discord refused for its own content (400, 413: a payload it will never
-- accept) is set aside instead of blocking the messages after it. It is kept, not deleted, for
-- an operator to read; `sent_at` stays NULL.
ALTER TABLE notifier_outbox ADD COLUMN failed_at timestamptz;
