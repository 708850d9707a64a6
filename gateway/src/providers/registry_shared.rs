//! The registry shared between gateway replicas (issue 17): what another replica
//! stored (a provider's registration and verdict, bans, when a provider was last
//! heard from) applied to this replica's memory. Nothing here slashes: the replica that
//! decided a ban or a slash recorded it. A child module of `registry`.

use std::collections::BTreeSet;
use std::time::Duration;

use tenzro_models::api::RegisterRequest;

use super::{ProviderInfo, Registry, RegistryError};
use crate::providers::verdict::AttestationVerdict;

/// What applying a stored provider did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It was not in memory: added, not reached yet.
    Added,
    /// Its registration changed (endpoint, models, prices...).
    Replaced,
    /// Same registration: its verdict and liveness were brought up to date.
    Refreshed,
    /// Banned here, a configured provider's id, or changed here and not saved
    /// yet: left alone.
    Skipped,
}

impl Registry {
    /// Applies a provider row another replica stored: adds or replaces it, takes
    /// the stored verdict when it is newer than ours, and raises its liveness to
    /// `last_seen` (Unix seconds). The row passes the registration checks again.
    pub fn apply_stored(
        &self,
        req: RegisterRequest,
        attestation: Option<AttestationVerdict>,
        last_seen: u64,
    ) -> Result<Applied, RegistryError> {
        let id = req.provider_id.clone();
        // Banned, configured, or changed here and not saved yet (this replica's
        // change wins; its save hints the others).
        if self.is_banned(&id) || self.is_config(&id) || self.dirty.lock().contains(&id) {
            return Ok(Applied::Skipped);
        }
        let applied = match self.get(&id) {
            None => {
                self.restore(req, attestation.clone())?;
                Applied::Added
            }
            Some(e) if e.info.to_registration() == req => Applied::Refreshed,
            Some(_) => {
                // Keeps the live state (breaker, counters); a new endpoint must be
                // reached again, as for a registration here.
                self.upsert(ProviderInfo::from_registration(req, false)?)?;
                Applied::Replaced
            }
        };
        if let Some(e) = self.get(&id) {
            let unix_base = self.unix_base;
            e.with_state(|s| {
                let newer = match (&s.attestation, &attestation) {
                    (_, None) => false,
                    (None, Some(_)) => true,
                    (Some(ours), Some(theirs)) => theirs.verified_at > ours.verified_at,
                };
                if newer {
                    s.attestation = attestation;
                }
                // New here: heard from when the store says, not now.
                let seen = Duration::from_secs(last_seen.saturating_sub(unix_base));
                if seen > s.last_heartbeat || applied == Applied::Added {
                    s.last_heartbeat = seen;
                    s.downtime_slashed = false;
                }
            });
        }
        Ok(applied)
    }

    /// Raises provider `id`'s liveness to `last_seen` (Unix seconds) when another
    /// replica heard from it later than this one; never lowers it.
    pub fn seen_elsewhere(&self, id: &str, last_seen: u64) {
        if let Some(e) = self.get(id) {
            let seen = Duration::from_secs(last_seen.saturating_sub(self.unix_base));
            e.with_state(|s| {
                if seen > s.last_heartbeat {
                    s.last_heartbeat = seen;
                    s.downtime_slashed = false;
                }
            });
        }
    }

    /// Makes this replica's bans those of the store: bans another replica made
    /// are taken (without slashing again: that replica recorded the slash), lifted
    /// ones dropped, except ids whose own change is not saved yet. Returns the ids
    /// whose ban state changed.
    pub fn sync_bans(&self, stored: &BTreeSet<String>) -> Vec<String> {
        let pending: BTreeSet<String> = self.ban_changes.lock().iter().cloned().collect();
        let mut changed = Vec::new();
        {
            let mut banned = self.banned.write();
            for id in stored.difference(&banned.clone()) {
                if !pending.contains(id) {
                    banned.insert(id.clone());
                    changed.push(id.clone());
                }
            }
            let lifted: Vec<String> = banned
                .iter()
                .filter(|id| !stored.contains(*id) && !pending.contains(*id))
                .cloned()
                .collect();
            for id in lifted {
                banned.remove(&id);
                changed.push(id);
            }
        }
        for id in &changed {
            if let Some(e) = self.get(id) {
                let now_banned = self.is_banned(id);
                e.with_state(|s| s.banned = now_banned);
            }
        }
        changed
    }

    /// Applies one provider's stored ban state (a hint's re-read).
    pub fn sync_ban(&self, id: &str, banned_in_store: bool) -> bool {
        if self.ban_change_pending(id) || self.is_banned(id) == banned_in_store {
            return false;
        }
        {
            let mut banned = self.banned.write();
            if banned_in_store {
                banned.insert(id.to_owned());
            } else {
                banned.remove(id);
            }
        }
        if let Some(e) = self.get(id) {
            e.with_state(|s| s.banned = banned_in_store);
        }
        true
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::providers::registry::RegistryConfig;
    use tenzro_attest::ProviderKey;

    use crate::store::registry::tests::signed_at as signed;

    fn replica() -> (Registry, std::sync::Arc<ManualClock>) {
        let clock = ManualClock::new();
        (
            Registry::new(RegistryConfig::default(), clock.clone()),
            clock,
        )
    }

    /// A provider registered with replica A reaches replica B through its stored
    /// row: added unreached with A's liveness, refreshed, replaced on a new
    /// endpoint, and A's newer verdict taken.
    #[test]
    fn a_provider_registered_elsewhere_is_applied_here() {
        let (a, _) = replica();
        let (b, clock_b) = replica();
        let key = ProviderKey::generate().unwrap();
        let id = key.did();
        a.register(&signed(&key, "http://p:1", a.unix_now()), a.unix_now())
            .unwrap();
        let (req, verdict, seen) = a.stored(&id).unwrap();
        clock_b.advance(Duration::from_secs(100));
        assert_eq!(
            b.apply_stored(req.clone(), verdict.clone(), seen).unwrap(),
            Applied::Added
        );
        assert!(
            !b.is_reached(&id),
            "routed to only once this replica reached it"
        );
        let age = b.views()[0].last_heartbeat_s_ago.unwrap();
        assert!(age >= 99, "liveness is A's, not now: {age} s ago");
        assert_eq!(
            b.apply_stored(req.clone(), verdict, seen + 100).unwrap(),
            Applied::Refreshed
        );
        assert!(b.views()[0].last_heartbeat_s_ago.unwrap() <= 1);

        let v = AttestationVerdict::unverified("no document".into(), seen + 50);
        b.apply_stored(req.clone(), Some(v.clone()), seen).unwrap();
        assert_eq!(b.attestation(&id), Some(v.clone()));
        let older = AttestationVerdict::unverified("older".into(), seen);
        b.apply_stored(req.clone(), Some(older), seen).unwrap();
        assert_eq!(b.attestation(&id), Some(v), "an older verdict does not win");

        let mut moved = req;
        moved.endpoint = "http://p:2".into();
        assert_eq!(
            b.apply_stored(moved, None, seen).unwrap(),
            Applied::Replaced
        );
        assert_eq!(b.get(&id).unwrap().info.endpoint, "http://p:2");
        assert!(
            b.take_dirty().contains(&id),
            "the replaced row is saved back (idempotent)"
        );
    }

    /// A row whose id is not its key's DID is refused as a registration would be:
    /// whatever wrote the store, a hint cannot put it in routing.
    #[test]
    fn a_forged_row_is_refused() {
        let (b, _) = replica();
        let key = ProviderKey::generate().unwrap();
        let other = ProviderKey::generate().unwrap();
        let s = signed(&key, "http://p:1", b.unix_now());
        let mut req: RegisterRequest = serde_json::from_str(&s.payload).unwrap();
        req.provider_id = other.did();
        assert!(b.apply_stored(req, None, b.unix_now()).is_err());
        assert!(b.all().is_empty());
    }

    /// Bans made on another replica are taken without slashing again, lifted ones
    /// dropped; a ban made here and not saved yet is kept.
    #[test]
    fn bans_follow_the_store_without_a_second_slash() {
        let (b, _) = replica();
        let key = ProviderKey::generate().unwrap();
        let id = key.did();
        b.register(&signed(&key, "http://p:1", b.unix_now()), b.unix_now())
            .unwrap();
        b.take_dirty();
        let stored: BTreeSet<String> = [id.clone()].into();
        assert_eq!(b.sync_bans(&stored), vec![id.clone()]);
        assert!(b.is_banned(&id));
        assert_eq!(b.slashed(&id), 0, "the banning replica recorded the slash");
        assert!(b.take_unsaved_slashes().is_empty());
        assert!(!b.sync_ban(&id, true), "nothing new");
        assert_eq!(b.sync_bans(&BTreeSet::new()), vec![id.clone()]);
        assert!(!b.is_banned(&id));

        b.ban(&id, "here").unwrap();
        assert!(
            b.sync_bans(&BTreeSet::new()).is_empty(),
            "not saved yet: kept"
        );
        assert!(b.is_banned(&id));
        assert!(!b.sync_ban(&id, false));
    }

    /// A row waiting to be saved here for another reason (a heartbeat, a verdict)
    /// still takes another replica's ban, and its save does not write a ban state
    /// it did not change (it would lift the other replica's ban everywhere).
    #[test]
    fn a_pending_row_does_not_undo_another_replicas_ban() {
        let (b, _) = replica();
        let key = ProviderKey::generate().unwrap();
        let id = key.did();
        b.register(&signed(&key, "http://p:1", b.unix_now()), b.unix_now())
            .unwrap();
        assert!(b.take_dirty().contains(&id), "registered: to be saved");
        assert!(!b.take_ban_change(&id), "registering changes no ban");
        b.mark_dirty(&id);
        assert!(b.sync_ban(&id, true), "the stored ban is taken");
        assert!(b.is_banned(&id));
        assert!(
            !b.take_ban_change(&id),
            "the save writes the row, not a ban state"
        );
        b.unban(&id).unwrap();
        assert!(b.take_ban_change(&id), "an unban made here is written");
    }
}
