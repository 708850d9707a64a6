-- Each gateway process claims its replica id (DATA_DIR/replica-id) with a token of
-- its own, made at start (issue 17): a second live process with the same id (a
-- copied data directory) finds the row held by another token with a fresh
-- heartbeat and refuses to start, so two processes never pass one lease fence.
-- `seen` is the database's clock from here on (replicas compare it, not their own).
ALTER TABLE replicas ADD COLUMN token TEXT NOT NULL DEFAULT '';
