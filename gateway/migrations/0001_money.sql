-- Accounts, keys, balances, channels, vouchers and settlement records.
-- One schema for SQLite and PostgreSQL: amounts are u128 base units stored as
-- decimal TEXT (neither database has a 128-bit integer), times are Unix seconds.

CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    asset TEXT NOT NULL,
    identity TEXT,
    created BIGINT NOT NULL
);

CREATE TABLE balances (
    account TEXT NOT NULL,
    asset TEXT NOT NULL,
    balance TEXT NOT NULL,
    funded TEXT NOT NULL,
    PRIMARY KEY (account, asset)
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    account TEXT NOT NULL,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    -- The agent identity (DID) this key acts for, if any.
    identity TEXT,
    created BIGINT NOT NULL,
    revoked BIGINT
);

CREATE TABLE channels (
    id TEXT PRIMARY KEY,
    payer TEXT NOT NULL,
    provider TEXT NOT NULL,
    asset TEXT NOT NULL,
    deposit TEXT NOT NULL,
    spent TEXT NOT NULL,
    nonce BIGINT NOT NULL,
    opened BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX channels_payer ON channels (payer);

-- The latest voucher per channel (countersigned when the provider answered).
CREATE TABLE vouchers (
    channel TEXT PRIMARY KEY,
    nonce BIGINT NOT NULL,
    voucher TEXT NOT NULL
);

-- Requests that cost something, written in the same transaction as their charge.
CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    key_id TEXT,
    account TEXT NOT NULL,
    asset TEXT NOT NULL,
    channel TEXT,
    charged TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX requests_key_at ON requests (key_id, at);

CREATE TABLE pools (
    asset TEXT PRIMARY KEY,
    treasury TEXT NOT NULL,
    burned TEXT NOT NULL,
    stakers TEXT NOT NULL
);

CREATE TABLE earnings (
    provider TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount TEXT NOT NULL,
    PRIMARY KEY (provider, asset)
);

CREATE TABLE slashes (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    stake_before TEXT NOT NULL,
    amount TEXT NOT NULL,
    stake_after TEXT NOT NULL,
    at BIGINT NOT NULL
);

-- JSON documents by kind (identities).
CREATE TABLE documents (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
