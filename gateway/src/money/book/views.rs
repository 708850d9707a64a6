//! Read-only views: pools, earnings, and the conservation audit of an account.

use super::*;

impl Book {
    pub fn pools(&self) -> BTreeMap<Asset, Pools> {
        self.lock().pools.clone()
    }

    pub fn earnings(&self, provider: &str) -> BTreeMap<Asset, u128> {
        let g = self.lock();
        g.earnings
            .iter()
            .filter(|((p, _), _)| p == provider)
            .map(|((_, a), v)| (*a, *v))
            .collect()
    }

    /// Checks conservation for one account and asset:
    /// `funded = balance + Σ deposit(not closed) + Σ spent(closed) + Σ bonds` (each
    /// bond's bonded + unbonding + slashed, see `money::bonds`) and `held <= balance`.
    pub fn audit(&self, account: &str, asset: Asset) -> Result<(), String> {
        let g = self.lock();
        let f = g
            .accounts
            .get(account)
            .map(|a| a.funds[slot(asset)])
            .ok_or("unknown account")?;
        let mut in_channels = 0u128;
        for e in g
            .channels
            .values()
            .filter(|e| e.ch.payer == account && e.ch.asset == asset)
        {
            if e.ch.spent > e.ch.deposit {
                return Err(format!(
                    "channel {} spent {} > deposit {}",
                    e.ch.id, e.ch.spent, e.ch.deposit
                ));
            }
            in_channels += match e.ch.state {
                State::Closed { .. } => e.ch.spent,
                _ => e.ch.deposit,
            };
        }
        if f.held > f.balance {
            return Err(format!("held {} > balance {}", f.held, f.balance));
        }
        let bonds = g.bonds_held(account, asset);
        if f.funded != f.balance + in_channels + bonds {
            return Err(format!(
                "funded {} != balance {} + channels {} + bonds {}",
                f.funded, f.balance, in_channels, bonds
            ));
        }
        Ok(())
    }
}
