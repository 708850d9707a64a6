use super::*;

/// A position where the model is confident: top-5 mass `mass`, the served token
/// in it or not.
fn tok(in_top: bool, mass: f64) -> ScoredToken {
    let each = (mass / 5.0).ln();
    ScoredToken {
        logprob: if in_top { each } else { -9.0 },
        in_top_k: in_top,
        top_logprobs: vec![each; 5],
    }
}

/// SplitMix64 in [0, 1), for sampled honest answers.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn greedy_honest_answers_pass_and_a_swapped_model_is_caught() {
    let rule = AuditRule::default();
    let honest: Vec<_> = (0..64).map(|_| tok(true, 0.99)).collect();
    let f = judge(&honest, &rule);
    assert!(!f.mismatch, "{f:?}");
    // Two near-ties are forgiven.
    let mut ties = honest.clone();
    ties[3] = tok(false, 0.99);
    ties[40] = tok(false, 0.99);
    assert!(!judge(&ties, &rule).mismatch);
    // A different model: a fifth of confident positions outside the top 5.
    let swapped: Vec<_> = (0..64).map(|i| tok(i % 5 != 0, 0.99)).collect();
    let f = judge(&swapped, &rule);
    assert!(f.mismatch, "{f:?}");
    assert_eq!(f.out_of_top_k, 13);
}

#[test]
fn sampled_honest_answers_rarely_flag_even_with_heavy_tails() {
    // Positions whose top-5 mass is 0.7: an honest sampler leaves the top 5 with
    // probability 0.3, and the bound expects exactly that.
    let rule = AuditRule::default();
    let mut rng = Rng(7);
    let mut flagged = 0;
    for _ in 0..2000 {
        let answer: Vec<_> = (0..128).map(|_| tok(rng.next() < 0.7, 0.7)).collect();
        if judge(&answer, &rule).mismatch {
            flagged += 1;
        }
    }
    assert!(flagged <= 2, "{flagged} false positives in 2000");
    // The same positions answered by a model whose tokens fall in the registered
    // model's top 5 only 30% of the time.
    let mut caught = 0;
    for _ in 0..200 {
        let answer: Vec<_> = (0..128).map(|_| tok(rng.next() < 0.3, 0.7)).collect();
        if judge(&answer, &rule).mismatch {
            caught += 1;
        }
    }
    assert!(caught >= 190, "{caught} of 200 caught");
}

#[test]
fn short_or_malformed_answers_are_not_judged_against_the_provider() {
    let rule = AuditRule::default();
    let short: Vec<_> = (0..5).map(|_| tok(false, 0.99)).collect();
    let f = judge(&short, &rule);
    assert!(!f.mismatch && f.detail.contains("fewer"), "{f:?}");
    assert!(!judge(&[], &rule).mismatch);
    let weird = vec![
        ScoredToken {
            logprob: f64::NAN,
            in_top_k: true,
            top_logprobs: vec![f64::INFINITY, f64::NAN, 0.5],
        };
        32
    ];
    let f = judge(&weird, &rule);
    assert!(!f.mismatch && f.mean_logprob.is_finite(), "{f:?}");
    assert!(serde_json::to_string(&f).is_ok());
    assert!(f.threshold.is_finite());
}
