-- Identities (TDIP) as one row each, so registering or changing one writes one row
-- (not the whole registry). `body` is the identity's JSON (tenzro_identity::Identity:
-- DID, key, role, lifecycle state with who suspended it, credentials); `controller`
-- is the controlling DID, NULL for people and autonomous agents. The registry that
-- older gateways kept as one document (documents kind 'identities') is moved here on
-- start when this table is empty.
CREATE TABLE identities (
    did TEXT PRIMARY KEY,
    controller TEXT,
    body TEXT NOT NULL,
    updated BIGINT NOT NULL
);

-- Issuers whose KYC credentials count.
CREATE TABLE identity_issuers (
    did TEXT PRIMARY KEY,
    public_key TEXT NOT NULL
);
