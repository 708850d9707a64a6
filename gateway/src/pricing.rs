//! Prices in integers (whitepaper §6).
//!
//! `cost = base price × tokens × complexity × congestion × TEE`, in `u128` base units
//! of 18 decimals. Multipliers are fixed point in parts per million (ppm): 1.0 is
//! `1_000_000`. No float ever touches an amount.
//!
//! **Rounding rule.** A request's cost is a function of its *cumulative* token count:
//! `cost(n) = floor(floor(base × n × M / 10^18) × rate / 10^18)` where `M` is the
//! product of the three multipliers scaled to 10^18 (exact: three ppm factors) and
//! `rate` is the asset's price of one TNZO scaled to 10^18. Each step rounds down, in
//! the payer's favour. A chunk is charged `cost(n_after) - cost(n_before)`, so the
//! per-chunk charges of a stream add up to the whole request's cost to the unit, and
//! no chunk is ever charged a negative amount (`cost` is monotonic in `n`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// 10^18: base units per whole token, and the scale of fixed-point rates.
pub const ONE: u128 = 1_000_000_000_000_000_000;
/// 1.0 in parts per million.
pub const PPM: u64 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    #[error("amount overflows 128 bits")]
    Overflow,
    #[error("`{0}` is not a decimal amount with at most 18 fractional digits")]
    BadDecimal(String),
    #[error("no exchange rate configured for {0}")]
    NoRate(Asset),
}

/// The assets an account can pay in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Asset {
    #[serde(rename = "TNZO")]
    Tnzo,
    #[serde(rename = "USDC")]
    Usdc,
    #[serde(rename = "USDT")]
    Usdt,
}

impl Asset {
    pub fn as_str(self) -> &'static str {
        match self {
            Asset::Tnzo => "TNZO",
            Asset::Usdc => "USDC",
            Asset::Usdt => "USDT",
        }
    }
}

impl fmt::Display for Asset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Asset {
    type Err = PricingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TNZO" => Ok(Asset::Tnzo),
            "USDC" => Ok(Asset::Usdc),
            "USDT" => Ok(Asset::Usdt),
            _ => Err(PricingError::BadDecimal(s.to_owned())),
        }
    }
}

/// Parses a decimal amount of whole tokens (`"1.5"`, `"100000"`) into base units.
pub fn parse_tokens(s: &str) -> Result<u128, PricingError> {
    let bad = || PricingError::BadDecimal(s.to_owned());
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    if frac.len() > 18 || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let int_v: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let mut frac_v: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    for _ in frac.len()..18 {
        frac_v *= 10;
    }
    int_v
        .checked_mul(ONE)
        .and_then(|v| v.checked_add(frac_v))
        .ok_or(PricingError::Overflow)
}

/// Parses a decimal string of base units (`"1500000000000"`).
pub fn parse_units(s: &str) -> Result<u128, PricingError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PricingError::BadDecimal(s.to_owned()));
    }
    s.parse().map_err(|_| PricingError::Overflow)
}

/// `floor(a × b / d)` without overflowing in the intermediate product when the
/// result fits; `None` when it does not (or `d` is zero).
pub fn mul_div_floor(a: u128, b: u128, d: u128) -> Option<u128> {
    if d == 0 {
        return None;
    }
    if let Some(p) = a.checked_mul(b) {
        return Some(p / d);
    }
    // a = q·d + r, so a·b/d = q·b + r·b/d, with r < d.
    let (q, r) = (a / d, a % d);
    let high = q.checked_mul(b)?;
    let low = match r.checked_mul(b) {
        Some(p) => p / d,
        None => mul_div_floor(b, r, d)?,
    };
    high.checked_add(low)
}

/// The complexity multiplier: `1 + 0.3 · log10(parameters in billions)`, clamped to
/// 1.0–3.0, in ppm. Unknown size counts as 1.0.
pub fn complexity_ppm(parameters: Option<u64>) -> u64 {
    let Some(p) = parameters.filter(|p| *p > 0) else {
        return PPM;
    };
    // log10(p / 10^9) = log10(p) - 9, with log10 in 10^18 fixed point.
    let log10_p = log10_fixed(p);
    let nine = 9 * ONE;
    if log10_p <= nine {
        return PPM;
    }
    let excess = log10_p - nine; // log10(billions) × 10^18.
    let add = excess * 3 / 10 / (ONE / u128::from(PPM));
    let v = u128::from(PPM) + add;
    u64::try_from(v.min(3 * u128::from(PPM))).unwrap_or(3 * PPM)
}

/// log10(x) in 10^18 fixed point, by the binary-digit method on log2 (exact to
/// about 1e-15, deterministic, integer only).
fn log10_fixed(x: u64) -> u128 {
    const LOG10_2: u128 = 301_029_995_663_981_195; // log10(2) × 10^18.
    let int = u128::from(63 - x.leading_zeros());
    // y = x / 2^int in [1, 2), fixed point 10^18.
    let mut y = (u128::from(x) * ONE) >> int;
    let mut frac: u128 = 0;
    let mut bit = ONE / 2;
    for _ in 0..50 {
        y = y * y / ONE;
        if y >= 2 * ONE {
            y /= 2;
            frac += bit;
        }
        bit /= 2;
    }
    (int * ONE + frac) * LOG10_2 / ONE
}

/// The congestion multiplier `0.5 + 1.5 × utilisation`, in ppm, where utilisation is
/// `in_flight / capacity` clamped to 1.
pub fn congestion_ppm(in_flight: u32, capacity: u32) -> u64 {
    let cap = u64::from(capacity.max(1));
    let used = u64::from(in_flight).min(cap);
    PPM / 2 + 3 * PPM / 2 * used / cap
}

/// +20% when the request runs in a TEE.
pub fn tee_ppm(tee: bool) -> u64 {
    if tee { PPM + PPM / 5 } else { PPM }
}

/// Whether the TEE premium is charged: only when the request asks for a TEE (or the
/// model requires one) *and* the serving provider's verdict is trusted and fresh. A
/// provider that declares a TEE without such a verdict is priced as non-TEE, and one
/// with a verdict serving a request that did not ask for a TEE charges no premium.
pub fn tee_applies(asked: bool, verified_fresh: bool) -> bool {
    asked && verified_fresh
}

/// Exchange rates: how many of an asset one TNZO buys, fixed point 10^18.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rates(BTreeMap<Asset, u128>);

impl Rates {
    /// TNZO is always 1:1; others as given (whole-token decimals such as `"0.25"`).
    pub fn new(others: &BTreeMap<Asset, String>) -> Result<Self, PricingError> {
        let mut map = BTreeMap::new();
        map.insert(Asset::Tnzo, ONE);
        for (asset, rate) in others {
            if *asset != Asset::Tnzo {
                map.insert(*asset, parse_tokens(rate)?);
            }
        }
        Ok(Rates(map))
    }

    pub fn get(&self, asset: Asset) -> Result<u128, PricingError> {
        self.0
            .get(&asset)
            .copied()
            .ok_or(PricingError::NoRate(asset))
    }
}

impl Default for Rates {
    fn default() -> Self {
        Rates(BTreeMap::from([(Asset::Tnzo, ONE)]))
    }
}

/// A fixed price for one request on one provider: everything but the token count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote {
    /// TNZO base units per token before multipliers.
    pub base_price: u128,
    /// complexity × congestion × TEE, fixed point 10^18.
    pub multiplier: u128,
    /// Asset per TNZO, fixed point 10^18.
    pub rate: u128,
    pub asset: Asset,
}

impl Quote {
    pub fn new(
        base_price: u128,
        complexity: u64,
        congestion: u64,
        tee: u64,
        asset: Asset,
        rate: u128,
    ) -> Self {
        let multiplier = u128::from(complexity) * u128::from(congestion) * u128::from(tee);
        Quote {
            base_price,
            multiplier,
            rate,
            asset,
        }
    }

    /// The cost of `tokens` tokens, by the rounding rule at the top of this module.
    pub fn cost(&self, tokens: u64) -> Result<u128, PricingError> {
        let raw = self
            .base_price
            .checked_mul(u128::from(tokens))
            .ok_or(PricingError::Overflow)?;
        let tnzo = mul_div_floor(raw, self.multiplier, ONE).ok_or(PricingError::Overflow)?;
        mul_div_floor(tnzo, self.rate, ONE).ok_or(PricingError::Overflow)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_complexity(params: Option<u64>, expect_ppm: u64) {
        let got = complexity_ppm(params);
        assert!(
            got.abs_diff(expect_ppm) <= 1,
            "{params:?}: got {got}, expected {expect_ppm}"
        );
    }

    #[test]
    fn complexity_follows_the_formula() {
        check_complexity(None, 1_000_000);
        check_complexity(Some(135_000_000), 1_000_000);
        check_complexity(Some(1_000_000_000), 1_000_000);
        check_complexity(Some(10_000_000_000), 1_300_000);
        check_complexity(Some(7_000_000_000), 1_253_529);
        check_complexity(Some(70_000_000_000), 1_553_529);
        check_complexity(Some(1_000_000_000_000_000), 2_800_000);
        check_complexity(Some(u64::MAX), 3_000_000);
    }

    #[test]
    fn congestion_and_tee() {
        assert_eq!(congestion_ppm(0, 4), 500_000);
        assert_eq!(congestion_ppm(2, 4), 1_250_000);
        assert_eq!(congestion_ppm(9, 4), 2_000_000);
        assert_eq!(congestion_ppm(0, 0), 500_000);
        assert_eq!(tee_ppm(true), 1_200_000);
        assert_eq!(tee_ppm(false), 1_000_000);
    }

    #[test]
    fn decimals_parse_exactly() {
        assert_eq!(parse_tokens("1").unwrap(), ONE);
        assert_eq!(parse_tokens("0.25").unwrap(), ONE / 4);
        assert_eq!(parse_tokens("100000").unwrap(), 100_000 * ONE);
        assert_eq!(parse_tokens(".5").unwrap(), ONE / 2);
        assert_eq!(parse_tokens("0.000000000000000001").unwrap(), 1);
        for bad in [
            "",
            ".",
            "1.2.3",
            "-1",
            "1e5",
            "0.0000000000000000001",
            "abc",
        ] {
            assert!(parse_tokens(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_units("123").unwrap(), 123);
        assert!(parse_units("1.5").is_err());
        assert!(parse_units("999999999999999999999999999999999999999999").is_err());
    }

    #[test]
    fn quote_cost_examples() {
        // 1e12 per token, 10 tokens, TEE (1.2), idle (0.5), complexity 1.0 => 6e12.
        let q = Quote::new(
            1_000_000_000_000,
            PPM,
            congestion_ppm(0, 1),
            tee_ppm(true),
            Asset::Tnzo,
            ONE,
        );
        assert_eq!(q.cost(10).unwrap(), 6_000_000_000_000);
        // In USDC at 0.25 per TNZO.
        let q = Quote {
            rate: ONE / 4,
            asset: Asset::Usdc,
            ..q
        };
        assert_eq!(q.cost(10).unwrap(), 1_500_000_000_000);
        // Rounds down: 1 unit × 1 token × 0.5 = 0.
        let q = Quote::new(1, PPM, PPM / 2, PPM, Asset::Tnzo, ONE);
        assert_eq!(q.cost(1).unwrap(), 0);
        assert_eq!(q.cost(3).unwrap(), 1);
        assert_eq!(q.cost(0).unwrap(), 0);
    }

    #[test]
    fn huge_prices_overflow_cleanly() {
        let q = Quote::new(
            u128::MAX / 2,
            3 * PPM,
            2 * PPM,
            tee_ppm(true),
            Asset::Tnzo,
            ONE,
        );
        assert_eq!(q.cost(1_000_000), Err(PricingError::Overflow));
    }

    proptest! {
        #[test]
        fn mul_div_matches_wide_arithmetic(a in any::<u64>(), b in any::<u64>(), d in 1u64..) {
            let exact = u128::from(a) * u128::from(b) / u128::from(d);
            prop_assert_eq!(mul_div_floor(u128::from(a), u128::from(b), u128::from(d)), Some(exact));
        }

        #[test]
        fn mul_div_large_operands(a in any::<u128>(), b in 0u128..=8 * ONE) {
            // Compare with splitting a into 64-bit halves.
            let got = mul_div_floor(a, b, ONE);
            let (hi, lo) = (a >> 64, a & u128::from(u64::MAX));
            let lo_part = lo * b; // lo < 2^64, b < 2^66: fits.
            let hi_prod = hi.checked_mul(b);
            if let (Some(g), Some(h)) = (got, hi_prod) {
                // g = floor((h·2^64 + lo_part) / ONE); check g·ONE <= total < (g+1)·ONE via
                // the remainder route.
                let check = mul_div_floor(h, 1u128 << 64, ONE).unwrap_or(0) + lo_part / ONE;
                prop_assert!(g >= check && g - check <= 2);
            }
        }

        #[test]
        fn per_chunk_charges_telescope(
            base in 0u128..1_000_000_000_000_000,
            cx in PPM..=3 * PPM, busy in 0u32..8, cap in 1u32..8, tee in any::<bool>(),
            rate in 1u128..=4 * ONE,
            chunks in proptest::collection::vec(0u64..50, 0..40),
        ) {
            let q = Quote::new(base, cx, congestion_ppm(busy, cap), tee_ppm(tee), Asset::Usdt, rate);
            let mut n = 0u64;
            let mut charged = 0u128;
            let mut prev = 0u128;
            for c in chunks {
                n += c;
                let now = q.cost(n).unwrap();
                prop_assert!(now >= prev, "cost must be monotonic");
                charged += now - prev;
                prev = now;
            }
            prop_assert_eq!(charged, q.cost(n).unwrap());
        }

        #[test]
        fn cost_is_bounded_by_the_exact_product(
            base in 0u128..1_000_000_000_000, tokens in 0u64..1_000_000,
            cx in PPM..=3 * PPM, g in PPM / 2..=2 * PPM, tee in any::<bool>(),
        ) {
            let q = Quote::new(base, cx, g, tee_ppm(tee), Asset::Tnzo, ONE);
            let exact_num = base * u128::from(tokens) * q.multiplier;
            let c = q.cost(tokens).unwrap();
            prop_assert!(c * ONE <= exact_num);
            prop_assert!(exact_num < (c + 1) * ONE);
        }

        #[test]
        fn complexity_is_monotonic_and_clamped(a in any::<u64>(), b in any::<u64>()) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let (x, y) = (complexity_ppm(Some(lo)), complexity_ppm(Some(hi)));
            prop_assert!(x <= y);
            prop_assert!((PPM..=3 * PPM).contains(&x));
        }

        #[test]
        fn parse_tokens_round_trips(int in 0u64..1_000_000_000, frac in 0u64..1_000_000_000_000_000_000) {
            let s = format!("{int}.{frac:018}");
            prop_assert_eq!(parse_tokens(&s).unwrap(), u128::from(int) * ONE + u128::from(frac));
        }
    }
}
