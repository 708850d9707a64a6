//! The book's bonds (see [`crate::money::bonds`] for the rules): under the book's
//! one lock, so moving money between a balance, a bond, the treasury and an
//! owner's earnings is one change, written by the same group commit.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{Book, BookError, Inner};
use crate::money::bonds::{self, Bond, BondError};
use crate::pricing::Asset;

/// A slash applied to a bond (once per slash id), for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedSlash {
    pub slash_id: String,
    pub provider_key: String,
    pub amount: u128,
    pub at: u64,
}

/// Bonds by provider key, with what changed since the last commit.
#[derive(Debug, Default)]
pub(super) struct BondBook {
    by_key: BTreeMap<String, Bond>,
    dirty: Vec<String>,
    /// Slash ids already applied (loaded from the store, then kept).
    applied: HashSet<String>,
    new_applied: Vec<AppliedSlash>,
}

impl BondBook {
    fn touch(&mut self, key: &str) {
        if !self.dirty.iter().any(|k| k == key) {
            self.dirty.push(key.to_owned());
        }
    }

    fn by_provider(&self, provider_id: &str) -> Option<&Bond> {
        self.by_key.values().find(|b| b.provider_id == provider_id)
    }

    /// Σ (bonded + unbonding + slashed) of `account`'s bonds in `asset`.
    pub(super) fn held_by(&self, account: &str, asset: Asset) -> u128 {
        self.by_key
            .values()
            .filter(|b| b.owner == account && b.asset == asset)
            .fold(0u128, |acc, b| acc.saturating_add(b.held()))
    }

    /// Takes the changed bonds and newly applied slashes, for one commit.
    pub(super) fn take_dirty(&mut self) -> (Vec<Bond>, Vec<AppliedSlash>) {
        let bonds = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|k| self.by_key.get(&k).cloned())
            .collect();
        (bonds, std::mem::take(&mut self.new_applied))
    }

    /// Puts a batch's bonds and slashes back after a failed commit.
    pub(super) fn requeue(&mut self, bonds: Vec<Bond>, mut applied: Vec<AppliedSlash>) {
        for b in bonds {
            self.touch(&b.provider_key);
        }
        applied.append(&mut self.new_applied);
        self.new_applied = applied;
    }
}

/// What one pass of [`Book::bond_tick`] did and what it could not do here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// Bonds whose amounts changed (for the registry's stake).
    pub changed: Vec<Bond>,
    /// Owner accounts not in this book with money due to them (matured unbonding
    /// or earnings): take their leases, then tick again.
    pub owners_needed: Vec<String>,
}

fn bond_error(e: BookError) -> BondError {
    match e {
        BookError::UnknownAccount(a) => BondError::UnknownAccount(a),
        BookError::Overflow => BondError::Overflow,
        _ => BondError::Poisoned,
    }
}

impl Book {
    /// Restores the stored bonds and the ids of slashes already applied to them.
    pub fn load_bonds(&self, stored: Vec<Bond>, applied: Vec<String>) -> Result<(), BookError> {
        let mut g = self.lock();
        for b in stored {
            g.bonds.by_key.insert(b.provider_key.clone(), b);
        }
        g.bonds.applied.extend(applied);
        Ok(())
    }

    /// The owner account of a provider key, if it has one.
    pub fn bond_owner(&self, provider_key: &str) -> Option<String> {
        let g = self.lock();
        g.bonds.by_key.get(provider_key).map(|b| b.owner.clone())
    }

    pub fn bond_of(&self, provider_key: &str) -> Option<Bond> {
        let g = self.lock();
        g.bonds.by_key.get(provider_key).cloned()
    }

    /// The bond of a registered provider id (its key's DID).
    pub fn bond_of_provider(&self, provider_id: &str) -> Option<Bond> {
        let g = self.lock();
        g.bonds.by_provider(provider_id).cloned()
    }

    /// Every bond, by provider key.
    pub fn bonds(&self) -> Vec<Bond> {
        self.lock().bonds.by_key.values().cloned().collect()
    }

    pub fn bonds_of(&self, owner: &str) -> Vec<Bond> {
        self.lock()
            .bonds
            .by_key
            .values()
            .filter(|b| b.owner == owner)
            .cloned()
            .collect()
    }

    /// Moves `amount` from `owner`'s available balance into the bond of
    /// `provider_key`. A key with no bond yet is claimed for `owner` only with the
    /// provider's verified consent (`consent`); a key bonded by another account is
    /// refused. The owner's account must be in the book (its lease taken).
    pub fn bond(
        &self,
        owner: &str,
        provider_key: &str,
        provider_id: &str,
        amount: u128,
        consent: bool,
    ) -> Result<Bond, BondError> {
        let mut g = self.lock();
        let g = &mut *g;
        match g.bonds.by_key.get(provider_key) {
            Some(b) if b.owner != owner => {
                return Err(BondError::NotOwner {
                    key: provider_key.to_owned(),
                });
            }
            None if !consent => {
                return Err(BondError::ConsentMissing {
                    key: provider_key.to_owned(),
                });
            }
            _ => {}
        }
        let mut bond = g
            .bonds
            .by_key
            .get(provider_key)
            .cloned()
            .unwrap_or_else(|| Bond::new(provider_key, provider_id, owner));
        bond.add(amount)?;
        let asset = bond.asset;
        let funds = g.funds(owner, asset).map_err(bond_error)?;
        if funds.available() < amount {
            return Err(BondError::Insufficient {
                asset,
                needed: amount,
                available: funds.available(),
            });
        }
        funds.balance -= amount;
        g.bonds.by_key.insert(provider_key.to_owned(), bond.clone());
        g.bonds.touch(provider_key);
        Ok(bond)
    }

    /// Starts unbonding `amount` of `owner`'s bond on `provider_key`.
    pub fn unbond(
        &self,
        owner: &str,
        provider_key: &str,
        amount: u128,
        now: u64,
        period: u64,
    ) -> Result<Bond, BondError> {
        let mut g = self.lock();
        let b = g
            .bonds
            .by_key
            .get_mut(provider_key)
            .ok_or_else(|| BondError::NoBond(provider_key.to_owned()))?;
        if b.owner != owner {
            return Err(BondError::NotOwner {
                key: provider_key.to_owned(),
            });
        }
        b.unbond(amount, now, period)?;
        let b = b.clone();
        g.bonds.touch(provider_key);
        Ok(b)
    }

    /// Applies one slash record to the bond of `provider_id` (a share of `ppm`)
    /// and moves the amount into the treasury pool. Once per `slash_id`: a second
    /// call (after a restart too) does nothing and returns `None`.
    pub fn apply_slash(
        &self,
        slash_id: &str,
        provider_id: &str,
        ppm: u128,
        at: u64,
    ) -> Result<Option<(Option<Bond>, u128)>, BookError> {
        let mut g = self.lock();
        let g = &mut *g;
        if !g.bonds.applied.insert(slash_id.to_owned()) {
            return Ok(None);
        }
        let key = g
            .bonds
            .by_provider(provider_id)
            .map(|b| b.provider_key.clone());
        let (bond, taken) = match key.and_then(|k| g.bonds.by_key.get_mut(&k)) {
            Some(b) => {
                let taken = b.slash(ppm);
                (Some(b.clone()), taken)
            }
            None => (None, 0),
        };
        if let Some(b) = &bond {
            g.bonds.touch(&b.provider_key);
            let p = g.pools.entry(b.asset).or_default();
            p.treasury = p.treasury.checked_add(taken).ok_or(BookError::Overflow)?;
            g.pools_dirty = true;
        }
        g.bonds.new_applied.push(AppliedSlash {
            slash_id: slash_id.to_owned(),
            provider_key: bond
                .as_ref()
                .map(|b| b.provider_key.clone())
                .unwrap_or_default(),
            amount: taken,
            at,
        });
        Ok(Some((bond, taken)))
    }

    /// Returns matured unbonding amounts and providers' earnings to their owners'
    /// balances, for owners whose accounts are in this book.
    pub fn bond_tick(&self, now: u64) -> Result<Tick, BookError> {
        let mut g = self.lock();
        let g = &mut *g;
        let mut tick = Tick::default();
        // One pass over the bonds and one over the earnings: the keys with money
        // due, and what each earned.
        let by_provider: HashMap<&str, &str> = g
            .bonds
            .by_key
            .values()
            .map(|b| (b.provider_id.as_str(), b.provider_key.as_str()))
            .collect();
        let mut due: BTreeMap<String, Vec<(Asset, u128)>> = g
            .bonds
            .by_key
            .values()
            .filter(|b| b.unbonding > 0 && now >= b.unbonding_until)
            .map(|b| (b.provider_key.clone(), Vec::new()))
            .collect();
        for ((provider, asset), v) in &g.earnings {
            if *v > 0
                && let Some(key) = by_provider.get(provider.as_str())
            {
                due.entry((*key).to_owned()).or_default().push((*asset, *v));
            }
        }
        for (key, earned) in due {
            let Some(b) = g.bonds.by_key.get(&key) else {
                continue;
            };
            let owner = b.owner.clone();
            let here = g.accounts.contains_key(&owner);
            let matured = b.unbonding > 0 && now >= b.unbonding_until;
            if !here {
                if matured || !earned.is_empty() {
                    tick.owners_needed.push(owner);
                }
                continue;
            }
            let provider_id = b.provider_id.clone();
            let mut changed = false;
            if matured {
                let (asset, back) = match g.bonds.by_key.get_mut(&key) {
                    Some(b) => (b.asset, b.mature(now)),
                    None => continue,
                };
                let f = g.funds(&owner, asset)?;
                f.balance = f.balance.checked_add(back).ok_or(BookError::Overflow)?;
                changed = true;
            }
            for (asset, amount) in earned {
                let f = g.funds(&owner, asset)?;
                f.balance = f.balance.checked_add(amount).ok_or(BookError::Overflow)?;
                f.funded = f.funded.checked_add(amount).ok_or(BookError::Overflow)?;
                let k = (provider_id.clone(), asset);
                g.earnings.insert(k.clone(), 0);
                g.dirty_earnings.push(k);
                if let Some(b) = g.bonds.by_key.get_mut(&key) {
                    b.earn(asset, amount);
                }
                g.bonds.touch(&key);
            }
            if changed {
                g.bonds.touch(&key);
                if let Some(b) = g.bonds.by_key.get(&key) {
                    tick.changed.push(b.clone());
                }
            }
        }
        tick.owners_needed.sort_unstable();
        tick.owners_needed.dedup();
        Ok(tick)
    }

    /// Pays each asset's stakers' pool to the bonds pro rata to `bonded` (into
    /// their providers' earnings, which [`Book::bond_tick`] credits to the
    /// owners); the remainder units stay in the pool. Only bonds whose provider
    /// id passes `eligible` (the bonds task asks the registry: registered, reached,
    /// not banned) take part. Returns what was paid.
    pub fn pay_stakers(
        &self,
        eligible: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, Asset, u128)>, BookError> {
        let mut g = self.lock();
        let g = &mut *g;
        let stakers: Vec<(String, u128)> = g
            .bonds
            .by_key
            .values()
            .filter(|b| b.bonded > 0 && eligible(&b.provider_id))
            .map(|b| (b.provider_id.clone(), b.bonded))
            .collect();
        let stakes: Vec<u128> = stakers.iter().map(|(_, s)| *s).collect();
        let mut out = Vec::new();
        let assets: Vec<Asset> = g.pools.keys().copied().collect();
        for asset in assets {
            let pool = g.pools.get(&asset).map(|p| p.stakers).unwrap_or(0);
            if pool == 0 {
                continue;
            }
            let Some((shares, rest)) = bonds::payout(pool, &stakes) else {
                return Err(BookError::Overflow);
            };
            if rest == pool {
                continue;
            }
            for ((provider, _), share) in stakers.iter().zip(shares) {
                if share == 0 {
                    continue;
                }
                let k = (provider.clone(), asset);
                let e = g.earnings.entry(k.clone()).or_default();
                *e = e.checked_add(share).ok_or(BookError::Overflow)?;
                g.dirty_earnings.push(k);
                out.push((provider.clone(), asset, share));
            }
            if let Some(p) = g.pools.get_mut(&asset) {
                p.stakers = rest;
            }
            g.pools_dirty = true;
        }
        Ok(out)
    }

    /// Earnings of `provider_id` not yet credited to an owner.
    pub fn pending_earnings(&self, provider_id: &str) -> BTreeMap<Asset, u128> {
        self.earnings(provider_id)
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect()
    }
}

impl Inner {
    pub(super) fn bonds_held(&self, account: &str, asset: Asset) -> u128 {
        self.bonds.held_by(account, asset)
    }
}
