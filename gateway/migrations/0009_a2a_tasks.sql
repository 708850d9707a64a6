-- A2A tasks (issue 15): one inference each, owned by the API key that asked
-- (`owner`, the key's id; another key never sees the row). `state` is the A2A
-- state in 0.3's lower-case names; `runner` the replica that runs it (a replica
-- that restarts fails the tasks it left unfinished); `body` the task's JSON
-- (history, answer, status message, metadata.tenzro: cost, provider, receipt),
-- bounded in size by the gateway. Times are Unix seconds from the gateway's clock.
-- Kept for `[a2a] retention_s` and at most `[a2a] max_tasks` rows (the oldest go
-- first), enforced by a sweep.
CREATE TABLE a2a_tasks (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    context_id TEXT NOT NULL,
    state TEXT NOT NULL,
    runner TEXT NOT NULL,
    body TEXT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL
);

CREATE INDEX a2a_tasks_context ON a2a_tasks (owner, context_id, created);
CREATE INDEX a2a_tasks_age ON a2a_tasks (created, id);
