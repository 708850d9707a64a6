-- Account ownership: a replica serves an account (its balance, holds and channels)
-- only while it holds the account's lease; every commit renews the leases of the
-- accounts it writes and fails if one was lost (the fence). Idle accounts are
-- released, so another replica can take them over.
CREATE TABLE leases (
    account TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until BIGINT NOT NULL
);
