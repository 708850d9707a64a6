//! Heartbeats from provider ids this replica does not know. A provider may have
//! registered with another replica a moment ago, so an unknown id is looked up in
//! the store; but heartbeats are unsigned until the key is known, so a hostile
//! caller could make every heartbeat a store read. Only a well-formed provider id
//! (a key's DID: `did:tenzro:machine:` and a UUID) is looked up, an id found
//! missing is not looked up again for [`MISS_TTL`], and lookups of new ids are
//! capped per second: a flood of unknown ids costs no store read beyond the
//! first of each id, and at most [`LOOKUPS_PER_S`] a second in all. A provider
//! that is refused meanwhile reaches this replica through the hint or the
//! reconcile anyway (`sync`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long an id found missing is answered from memory.
pub const MISS_TTL: Duration = Duration::from_secs(10);
/// Most ids remembered as missing.
pub const MAX_MISSES: usize = 10_000;
/// Most store lookups of unknown ids per second.
pub const LOOKUPS_PER_S: u32 = 50;

/// The DID prefix of a provider key's id (`tenzro_attest`'s `PublicKey::did`).
const DID_PREFIX: &str = "did:tenzro:machine:";

/// Whether `id` has the shape of a provider key's DID.
pub fn well_formed(id: &str) -> bool {
    id.strip_prefix(DID_PREFIX)
        .is_some_and(|u| u.len() == 36 && uuid::Uuid::try_parse(u).is_ok())
}

/// Ids found missing recently, and the lookups made this second.
#[derive(Debug, Default)]
pub struct Misses {
    missing: HashMap<String, Instant>,
    second: Option<Instant>,
    lookups: u32,
}

impl Misses {
    /// Whether the store may be asked about `id` at `now`; counts the lookup.
    pub fn may_look_up(&mut self, id: &str, now: Instant) -> bool {
        if !well_formed(id) {
            return false;
        }
        if let Some(at) = self.missing.get(id) {
            if now.duration_since(*at) < MISS_TTL {
                return false;
            }
            self.missing.remove(id);
        }
        match self.second {
            Some(s) if now.duration_since(s) < Duration::from_secs(1) => {}
            _ => {
                self.second = Some(now);
                self.lookups = 0;
            }
        }
        if self.lookups >= LOOKUPS_PER_S {
            return false;
        }
        self.lookups += 1;
        true
    }

    /// Remembers that the store does not know `id` (as of `now`).
    pub fn missed(&mut self, id: &str, now: Instant) {
        if self.missing.len() >= MAX_MISSES {
            self.missing
                .retain(|_, at| now.duration_since(*at) < MISS_TTL);
        }
        if self.missing.len() < MAX_MISSES {
            self.missing.insert(id.to_owned(), now);
        }
    }

    /// Forgets `id` (it registered here).
    pub fn found(&mut self, id: &str) {
        self.missing.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "did:tenzro:machine:0b5e3c1e-6a8e-4f4e-9b53-2c9a4f8b1d20";

    #[test]
    fn only_a_keys_did_is_looked_up() {
        for (id, ok) in [
            (ID, true),
            ("did:tenzro:machine:not-a-uuid", false),
            ("did:tenzro:machine:", false),
            ("p0", false),
            ("", false),
            ("did:tenzro:machine:0b5e3c1e6a8e4f4e9b532c9a4f8b1d20", false),
        ] {
            assert_eq!(well_formed(id), ok, "{id}");
            assert_eq!(
                Misses::default().may_look_up(id, Instant::now()),
                ok,
                "{id}"
            );
        }
    }

    #[test]
    fn a_miss_is_remembered_for_a_while() {
        let mut m = Misses::default();
        let t0 = Instant::now();
        assert!(m.may_look_up(ID, t0));
        m.missed(ID, t0);
        for s in 1..10 {
            assert!(!m.may_look_up(ID, t0 + Duration::from_secs(s)), "{s} s");
        }
        assert!(m.may_look_up(ID, t0 + MISS_TTL));
        m.missed(ID, t0 + MISS_TTL);
        m.found(ID);
        assert!(m.may_look_up(ID, t0 + MISS_TTL + Duration::from_secs(1)));
    }

    #[test]
    fn lookups_are_capped_per_second_and_the_cache_is_bounded() {
        let mut m = Misses::default();
        let t0 = Instant::now();
        let ids: Vec<String> = (0..MAX_MISSES + 100)
            .map(|i| format!("did:tenzro:machine:{}", uuid::Uuid::from_u128(i as u128)))
            .collect();
        let allowed = ids.iter().filter(|id| m.may_look_up(id, t0)).count();
        assert_eq!(allowed, LOOKUPS_PER_S as usize);
        for (i, id) in ids.iter().enumerate() {
            m.missed(id, t0 + Duration::from_millis(i as u64 % 1000));
        }
        assert_eq!(m.missing.len(), MAX_MISSES, "bounded");
        assert!(m.may_look_up(&ids[MAX_MISSES + 50], t0 + Duration::from_secs(2)));
        // Expired entries make room again.
        m.missed("x", t0 + MISS_TTL + Duration::from_secs(2));
        assert_eq!(m.missing.len(), 1);
    }
}
