-- Bonded stake (money::bonds): one row per provider key, kept for good once an
-- owner claimed the key (the owner column is never updated). Amounts are decimal
-- TEXT base units; `earned` is a JSON object of what was credited to the owner
-- per asset.
CREATE TABLE bonds (
    provider_key TEXT PRIMARY KEY,
    provider_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    asset TEXT NOT NULL,
    bonded TEXT NOT NULL,
    unbonding TEXT NOT NULL,
    unbonding_until BIGINT NOT NULL,
    slashed TEXT NOT NULL,
    earned TEXT NOT NULL
);
CREATE INDEX bonds_owner ON bonds (owner);

-- Each slash record applied to a bond, once (written with the bond's new amounts
-- and the treasury in one transaction).
CREATE TABLE bond_slashes (
    slash_id TEXT PRIMARY KEY,
    provider_key TEXT NOT NULL,
    amount TEXT NOT NULL,
    at BIGINT NOT NULL
);
