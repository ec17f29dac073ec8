-- stale-heartbeat keeps a row for every issue an agent holds, from ISSUE_ASSIGNED until
-- ISSUE_UNASSIGNED, with the issue's status as the shared fold computes it. Until now
-- a row was also deleted when the issue went to review, was merged or done, so an issue that
-- came back to `in_progress` after a disputed review (WORK_STARTED, BRANCH_CREATED or
-- PR_CREATED on the same holder) was never watched again and its silent agent never caught.
--
-- Rows of merged and done issues now stay (one per issue at most, like issue_state), so the
-- checker's query and its `rig_stale_heartbeat_tracked` count look only at the watched
-- statuses through this partial index; its predicate is spelled as in checker.rs so the planner
-- can prove it.
CREATE INDEX stale_heartbeat_issues_watched_idx ON stale_heartbeat_issues (last_seen_at)
    WHERE status IN ('assigned', 'in_progress');

-- A heartbeat that names its issue by number loads the rows of that agent with that number,
-- not every issue the agent ever held. The new index also serves lookups by agent alone.
CREATE INDEX stale_heartbeat_issues_agent_issue_idx ON stale_heartbeat_issues (agent_id, issue_number);
DROP INDEX stale_heartbeat_issues_agent_idx;

-- Existing rows are left as they are: under the old rule every stored row was an issue held in
-- `assigned` or `in_progress` (except a held issue that got ISSUE_APPROVED, which the old rule
-- left `assigned` and the fold calls `approved`; the next status-setting event corrects it).
-- Rows the old rule deleted (issues held in review, merged, done, or reworked after a dispute)
-- stay absent until the issue's next ISSUE_ASSIGNED, so a reworked issue already in flight is
-- not watched yet; `rigctl reset stale-heartbeat` rebuilds the table from the log under the new
-- rule.
