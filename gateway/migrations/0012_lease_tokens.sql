-- A lease row names the process that holds it, not only the replica id (issue 17):
-- `token` is that process's claim token (`replicas.token`). The fence of a commit,
-- a renewal and a release match it, so a stalled process whose replica id was taken
-- over by a new process (the same data directory after its heartbeat expired) can
-- no longer write an account with a late commit (its shutdown commit, say) or
-- delete the new process's leases. Rows written before this migration hold '' and
-- are taken over as their owner's or once expired, as before.
ALTER TABLE leases ADD COLUMN token TEXT NOT NULL DEFAULT '';
