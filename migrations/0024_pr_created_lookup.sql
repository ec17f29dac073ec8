-- GitHub deliveries for a PR (CI, reviews, merge) are linked to an issue by an earlier
-- PR_CREATED for that PR number in the same repository (bins/ingest/src/github.rs). issue_state keeps only an
-- issue's latest PR, so a delivery for an earlier PR of the same issue (a first attempt whose CI
-- finishes after the second PR was opened) could not be linked through it. Ingest now looks the
-- PR up in the log itself; this index keeps that a probe, and costs the append path one index
-- entry per PR_CREATED (the predicate is checked per row, nothing more, for every other type).
CREATE INDEX events_pr_created_idx ON events ((data ->> 'pr_number')) WHERE event_type = 'PR_CREATED';
