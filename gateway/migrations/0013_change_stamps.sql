-- When a provider's row last changed (a registration, a verdict, batched liveness),
-- on the database's clock (issue 17): the periodic reconcile of every replica reads
-- the rows changed since its last pass on that clock, so a row written by a replica
-- whose clock runs slow, and whose NOTIFY was lost, is still found. (`last_seen`
-- keeps the writer's liveness; key revocations are stamped no earlier than the
-- database's clock by the statement that writes them.)
ALTER TABLE registry_providers ADD COLUMN changed BIGINT NOT NULL DEFAULT 0;
UPDATE registry_providers SET changed = last_seen;
CREATE INDEX registry_providers_changed ON registry_providers (changed);
