-- Several gateway replicas on one PostgreSQL (issue 17). Each replica publishes
-- the internal address the others forward an account's requests to while it holds
-- the account's lease, and when it last said it was alive (Unix seconds).
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    seen BIGINT NOT NULL
);

-- The periodic reconcile reads what changed since its last pass: providers heard
-- from (registrations, verdicts and batched liveness write last_seen) and keys
-- revoked.
CREATE INDEX registry_providers_last_seen ON registry_providers (last_seen);
CREATE INDEX api_keys_revoked ON api_keys (revoked);
