-- The provider registry (issue 10). A registered provider's id is the DID of its
-- key, so a row binds the id to the key for good; `registration` is the validated
-- registration as JSON (prices in base units), `attestation` the gateway's latest
-- verdict on its evidence (JSON), `last_seen` the Unix second it was last heard
-- from (rows older than the stale time are not loaded into memory).
CREATE TABLE registry_providers (
    id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    registration TEXT NOT NULL,
    attestation TEXT,
    last_seen BIGINT NOT NULL
);

-- Banned provider ids (DIDs of their keys). A ban slashes 100% once (see the
-- slashes table); lifting it deletes the row and restores nothing.
CREATE TABLE registry_bans (
    id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    at BIGINT NOT NULL
);
