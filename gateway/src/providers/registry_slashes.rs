//! The registry's slash records in memory: bounded (the newest
//! [`MAX_SLASHES_PER_PROVIDER`] per provider, [`MAX_SLASHES_KEPT`] in all; the store
//! keeps every record), a running total per provider (what a configured
//! provider's stake lost), and the queue of records the bonds module has not
//! applied yet, so it handles each new record once instead of scanning them all.
//! A child module of `registry`, so it sees the private state.

use super::Registry;
use crate::money::slashing::Slash;

/// Slash records kept in memory per provider (the newest).
pub const MAX_SLASHES_PER_PROVIDER: usize = 32;
/// Slash records kept in memory in all (the newest).
pub const MAX_SLASHES_KEPT: usize = 4096;

/// Keeps the newest records of `v` (oldest first) within the caps.
fn bound(v: &mut Vec<Slash>) {
    let mut per: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut keep = vec![false; v.len()];
    let mut kept = 0usize;
    for (i, s) in v.iter().enumerate().rev() {
        let n = per.entry(s.provider.as_str()).or_default();
        if *n < MAX_SLASHES_PER_PROVIDER && kept < MAX_SLASHES_KEPT {
            *n += 1;
            kept += 1;
            keep[i] = true;
        }
    }
    let mut keep = keep.into_iter();
    v.retain(|_| keep.next().unwrap_or(false));
}

impl Registry {
    /// Slashes from the store (oldest first): the totals count them all, memory
    /// keeps the newest, and all go to the bonds module (which applies each record
    /// id once, so already applied ones cost a lookup).
    pub fn restore_slashes(&self, slashes: Vec<Slash>) {
        {
            let mut ids = self.slash_ids.lock();
            ids.clear();
            ids.extend(slashes.iter().map(|s| s.id.clone()));
        }
        {
            let mut t = self.slashed_total.lock();
            t.clear();
            for s in &slashes {
                let e = t.entry(s.provider.clone()).or_default();
                *e = e.saturating_add(s.amount);
            }
        }
        {
            let mut q = self.unapplied.lock();
            q.extend(slashes.iter().cloned());
        }
        let mut slashes = slashes;
        bound(&mut slashes);
        {
            let mut v = self.slashes.lock();
            *v = slashes;
        }
    }

    /// Records a new slash in memory (the caller queues it for the store).
    pub(super) fn keep_slash(&self, s: &Slash) {
        self.slash_ids.lock().insert(s.id.clone());
        self.remember_slash(s);
        {
            let mut q = self.unapplied.lock();
            q.push(s.clone());
        }
    }

    /// How many slash records this replica knows of (made here, restored, or
    /// learnt from the store).
    pub fn slash_records_known(&self) -> usize {
        self.slash_ids.lock().len()
    }

    /// Takes the slash records another replica made (read from the store, any
    /// order): each one not known here is shown and counted in its provider's
    /// total as if made here. Its money moved once, on the replica that made it
    /// (its bonds module, against the bond in that replica's book), so it is not
    /// queued for this replica's bonds module, nor stored again. Returns how many
    /// were new.
    pub fn learn_slashes(&self, stored: Vec<Slash>) -> usize {
        let mut stored = stored;
        stored.sort_by_key(|s| s.at);
        let mut n = 0;
        for s in stored {
            if self.slash_ids.lock().insert(s.id.clone()) {
                self.remember_slash(&s);
                n += 1;
            }
        }
        n
    }

    /// Counts `s` in its provider's total and keeps it in the bounded list.
    fn remember_slash(&self, s: &Slash) {
        {
            let mut t = self.slashed_total.lock();
            let e = t.entry(s.provider.clone()).or_default();
            *e = e.saturating_add(s.amount);
        }
        {
            let mut v = self.slashes.lock();
            v.push(s.clone());
            let of_provider = v.iter().filter(|x| x.provider == s.provider).count();
            if of_provider > MAX_SLASHES_PER_PROVIDER
                && let Some(i) = v.iter().position(|x| x.provider == s.provider)
            {
                v.remove(i);
            }
            if v.len() > MAX_SLASHES_KEPT {
                v.remove(0);
            }
        }
    }

    /// Total slashed from provider `id`'s stake (every record, not only those kept).
    pub fn slashed(&self, id: &str) -> u128 {
        self.slashed_total.lock().get(id).copied().unwrap_or(0)
    }

    /// Slash records not yet applied to bonds, oldest first (the bonds module).
    pub fn take_unapplied_slashes(&self) -> Vec<Slash> {
        std::mem::take(&mut *self.unapplied.lock())
    }

    /// Puts records that failed to apply back at the front of the queue.
    pub fn requeue_unapplied_slashes(&self, mut failed: Vec<Slash>) {
        {
            let mut q = self.unapplied.lock();
            failed.append(&mut q);
            *q = failed;
        }
    }
}
