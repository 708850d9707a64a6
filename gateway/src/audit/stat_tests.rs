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
    let f = judge(&honest, 1.0, &rule);
    assert!(!f.mismatch, "{f:?}");
    // Two near-ties are forgiven.
    let mut ties = honest.clone();
    ties[3] = tok(false, 0.99);
    ties[40] = tok(false, 0.99);
    assert!(!judge(&ties, 1.0, &rule).mismatch);
    // A different model: a fifth of confident positions outside the top 5.
    let swapped: Vec<_> = (0..64).map(|i| tok(i % 5 != 0, 0.99)).collect();
    let f = judge(&swapped, 1.0, &rule);
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
        if judge(&answer, 1.0, &rule).mismatch {
            flagged += 1;
        }
    }
    // z = 3 and slack 2: about 10⁻³ per audit where the bound is exact, as here
    // (temperature 1, every position's tail exactly its bound); real answers sit
    // below it (0 of 189 honest answers failed in benches/audit).
    assert!(flagged <= 6, "{flagged} false positives in 2000");
    // The same positions answered by a model whose tokens fall in the registered
    // model's top 5 only 30% of the time.
    let mut caught = 0;
    for _ in 0..200 {
        let answer: Vec<_> = (0..128).map(|_| tok(rng.next() < 0.3, 0.7)).collect();
        if judge(&answer, 1.0, &rule).mismatch {
            caught += 1;
        }
    }
    assert!(caught >= 190, "{caught} of 200 caught");
}

#[test]
fn short_or_malformed_answers_are_not_judged_against_the_provider() {
    let rule = AuditRule::default();
    let short: Vec<_> = (0..5).map(|_| tok(false, 0.99)).collect();
    let f = judge(&short, 1.0, &rule);
    assert!(!f.mismatch && f.detail.contains("fewer"), "{f:?}");
    assert!(!judge(&[], 1.0, &rule).mismatch);
    let weird = vec![
        ScoredToken {
            logprob: f64::NAN,
            in_top_k: true,
            top_logprobs: vec![f64::INFINITY, f64::NAN, 0.5],
        };
        32
    ];
    let f = judge(&weird, 1.0, &rule);
    assert!(!f.mismatch && f.mean_logprob.is_finite(), "{f:?}");
    assert!(serde_json::to_string(&f).is_ok());
    assert!(f.threshold.is_finite());
}

#[test]
fn greedy_answers_must_follow_the_top_token_up_to_near_ties() {
    let rule = AuditRule::default();
    // Served token: top (logprob -0.1 of a top list [-0.1, -2.5, ...]).
    let top = |lp: f64| ScoredToken {
        logprob: lp,
        in_top_k: true,
        top_logprobs: vec![-0.1, -0.4, -2.5, -3.0, -4.0],
    };
    let honest: Vec<_> = (0..40).map(|_| top(-0.1)).collect();
    let f = judge(&honest, 0.0, &rule);
    assert!(
        !f.mismatch && f.out_of_top_k == 0 && f.expected == 0.0,
        "{f:?}"
    );
    // Near-ties (within the margin) are no misses; two real misses are forgiven.
    let mut ties = honest.clone();
    for t in ties.iter_mut().take(10) {
        *t = top(-0.4);
    }
    ties[20] = top(-2.5);
    ties[21] = top(-3.0);
    let f = judge(&ties, 0.0, &rule);
    assert!(!f.mismatch && f.out_of_top_k == 2, "{f:?}");
    // A model that picks the third token at a fifth of confident positions:
    // caught, though every token is in the top 5 (the sampled rule at temperature
    // 1 lets it pass).
    let rare: Vec<_> = (0..40)
        .map(|i| if i % 20 == 0 { top(-2.5) } else { top(-0.1) })
        .collect();
    let f = judge(&rare, 0.0, &rule);
    assert!(!f.mismatch, "2 misses: {f:?}");
    let swapped: Vec<_> = (0..40)
        .map(|i| if i % 5 == 0 { top(-2.5) } else { top(-0.1) })
        .collect();
    assert!(judge(&swapped, 0.0, &rule).mismatch);
    assert!(!judge(&swapped, 1.0, &rule).mismatch);
}

#[test]
fn the_tail_bound_shrinks_with_the_temperature() {
    let top = [-0.2f64, -2.5, -3.0, -4.0, -4.5];
    let q1 = tail_bound(&top, 1.0);
    let mass: f64 = top.iter().map(|l| l.exp()).sum();
    assert!((q1 - (1.0 - mass)).abs() < 1e-12);
    let q08 = tail_bound(&top, 0.8);
    let q05 = tail_bound(&top, 0.5);
    assert!(q05 < q08 && q08 < q1, "{q05} {q08} {q1}");
    // A brute-force check on a full distribution: the 5 top tokens above and the
    // tail spread evenly over 1,000 tokens no likelier than the 5th.
    let tail_each = (1.0 - mass) / 1000.0;
    assert!(tail_each <= (-4.5f64).exp());
    for t in [0.3, 0.5, 0.8, 0.95] {
        let a: f64 = top.iter().map(|l| (l / t).exp()).sum();
        let b = 1000.0 * (tail_each.ln() / t).exp();
        let exact = b / (a + b);
        let bound = tail_bound(&top, t);
        assert!(
            exact <= bound + 1e-12,
            "T {t}: exact {exact} above the bound {bound}"
        );
    }
    // Degenerate lists: no top list is all tail; logprobs a hair above 0 count as 0.
    assert_eq!(tail_bound(&[], 0.5), 1.0);
    assert!(tail_bound(&[1e-7], 0.5) <= 1e-9);
}
