//! Money: balances, delegation-scope spend limits, payment channels, bonds and
//! settlement, in memory. No I/O here: the SQL store is [`crate::store`], the
//! background tasks that make the book durable and pay it out are [`crate::tasks`].
//!
//! - [`settlement`]: the closing split (0.5% commission, 40/30/30), exact to the unit;
//! - [`scope`]: delegation-scope spend limits and the rolling 24 h spend window
//!   (what a scope may be delegated is [`crate::accounts::delegation`]);
//! - [`channel`]: one payment channel's state machine (charge, dispute, close);
//! - [`book`]: all balances, holds and channels in memory behind one lock, with the
//!   admission check (balance and scope together) and the dirty set that
//!   [`crate::store`] writes by group commit;
//! - [`bonds`], [`slashing`], [`dispute_auth`]: provider bonds, slash records and
//!   the payer's signed dispute.
//!
//! The four money invariants (docs/DESIGN.md, "Money") are tested here and in
//! `tests/tests/e2e/gateway_money.rs`, `gateway/tests/storage/store.rs` and
//! `tests/python/test_gateway_crash.py`.

pub mod bonds;
pub mod book;
pub mod channel;
pub mod dispute_auth;
pub mod scope;
pub mod settlement;
pub mod slashing;

/// Serde helpers: `u128` amounts as decimal strings (JSON numbers lose them).
pub mod decimal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    /// A non-negative decimal integer of at most 39 digits.
    pub fn parse(text: &str) -> Result<u128, String> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "`{text}` is not a base-unit amount (a decimal integer string)"
            ));
        }
        text.parse::<u128>()
            .map_err(|_| format!("`{text}` does not fit in 128 bits"))
    }

    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &Option<u128>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.collect_str(v),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u128>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(t) => super::parse(&t).map(Some).map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}
