//! The money tables: `[channels]`, `[bonds]`, `[faucet]`, `[pricing]`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::pricing::Asset;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsSection {
    /// Whole tokens moved into a new channel as a standing float ("0": the deposit
    /// grows only as requests need it).
    pub initial_deposit: String,
    pub ttl_days: u64,
    pub challenge_window_s: u64,
    /// Vouchers for ended requests are sent this often.
    pub voucher_interval_ms: u64,
    /// Every changed channel is vouched for this often, even mid-stream.
    pub checkpoint_interval_ms: u64,
    /// The store is searched this often for accounts no replica holds whose
    /// disputes' windows ended or whose open channels expired; this replica takes
    /// them and settles them.
    pub settle_sweep_s: u64,
}

impl Default for ChannelsSection {
    fn default() -> Self {
        ChannelsSection {
            initial_deposit: "0".into(),
            ttl_days: 30,
            challenge_window_s: 86_400,
            voucher_interval_ms: 200,
            checkpoint_interval_ms: 5_000,
            settle_sweep_s: 30,
        }
    }
}

/// Bonded stake (`money::bonds`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BondsSection {
    /// Unbonding waits this long before the amount returns to the owner (7 days).
    pub unbonding_s: u64,
    /// The stakers' pool is paid out to bonds pro rata this often (1 day).
    pub payout_interval_s: u64,
}

impl Default for BondsSection {
    fn default() -> Self {
        BondsSection {
            unbonding_s: crate::money::bonds::DEFAULT_UNBONDING_S,
            payout_interval_s: 86_400,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaucetSection {
    /// Development only: `POST /v1/faucet` funds the caller's account.
    pub enabled: bool,
    /// Whole tokens per grant.
    pub amount: String,
    /// Grants per account per hour.
    pub per_hour: u32,
}

impl Default for FaucetSection {
    fn default() -> Self {
        FaucetSection {
            enabled: false,
            amount: "10".into(),
            per_hour: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingSection {
    /// How many of each asset one TNZO buys (decimal strings). TNZO is always 1.
    pub rates: BTreeMap<Asset, String>,
}

impl Default for PricingSection {
    fn default() -> Self {
        PricingSection {
            rates: BTreeMap::from([(Asset::Usdc, "1".into()), (Asset::Usdt, "1".into())]),
        }
    }
}
