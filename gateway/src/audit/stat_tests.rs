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

/// A vocabulary's log-probabilities at T = 1 (softmax of `logits`).
fn log_softmax(logits: &[f64]) -> Vec<f64> {
    let hi = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = logits.iter().map(|l| (l - hi).exp()).sum();
    logits.iter().map(|l| l - hi - z.ln()).collect()
}

/// Draws an index from log-probabilities `lp` tempered by `t`.
fn draw(rng: &mut Rng, lp: &[f64], t: f64) -> usize {
    let w: Vec<f64> = lp.iter().map(|l| (l / t).exp()).collect();
    let mut u = rng.next() * w.iter().sum::<f64>();
    for (i, x) in w.iter().enumerate() {
        if u < *x {
            return i;
        }
        u -= x;
    }
    w.len() - 1
}

fn gauss(rng: &mut Rng) -> f64 {
    let (u, v) = (rng.next().max(1e-12), rng.next());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// One answer of `n` tokens at temperature `t`, scored by the registered model
/// (top 5): drawn from it (`noise` 0) or from its logits plus Gaussian noise of
/// that size (a perturbed model). Positions mix confident and open ones.
fn sampled_answer(rng: &mut Rng, n: usize, t: f64, noise: f64) -> Vec<ScoredToken> {
    (0..n)
        .map(|_| {
            let spread = 0.3 + 3.0 * rng.next();
            let logits: Vec<f64> = (0..64)
                .map(|i| -spread * (i as f64).sqrt() * 2.0 + gauss(rng))
                .collect();
            let lp = log_softmax(&logits);
            let served = if noise > 0.0 {
                let other: Vec<f64> = logits.iter().map(|l| l + noise * gauss(rng)).collect();
                draw(rng, &log_softmax(&other), t)
            } else {
                draw(rng, &lp, t)
            };
            let mut order: Vec<usize> = (0..lp.len()).collect();
            order.sort_by(|a, b| lp[*b].total_cmp(&lp[*a]));
            let top: Vec<usize> = order.into_iter().take(5).collect();
            ScoredToken {
                logprob: lp[served],
                in_top_k: top.contains(&served),
                top_logprobs: top.iter().map(|i| lp[*i]).collect(),
            }
        })
        .collect()
}

#[test]
fn honest_sampled_scores_sit_below_the_bound_and_never_cross() {
    use crate::audit::seq::{Scored, SeqRule, Sequence, answer_score};
    let rule = SeqRule::default();
    let mut rng = Rng(11);
    for t in [0.5, 0.8, 1.0] {
        let mut seq = Sequence::default();
        let mut sum = 0.0;
        for i in 0..400 {
            let answer = sampled_answer(&mut rng, 48, t, 0.0);
            let z = answer_score(&answer, t, rule.cap, 16).unwrap_or(f64::NAN);
            assert!(z.is_finite(), "{z}");
            sum += z;
            let s = Scored {
                request_id: format!("r{i}"),
                z,
                auditor: "reference".into(),
                owner: "reference".into(),
            };
            assert!(
                !seq.add(&rule, s, 0),
                "T {t}: an honest sequence crossed at {i}: {seq:?}"
            );
        }
        // The bound is conservative below T = 1 (honest scores average below 0)
        // and exact at T = 1 with cap 0 (every tail token scores the cap): 0 up to
        // the noise of 400 draws (standard error 0.05).
        let limit = if t < 1.0 { 0.0 } else { 0.15 };
        assert!(sum / 400.0 < limit, "T {t}: mean score {}", sum / 400.0);
        assert!(seq.peak < rule.threshold * 0.7, "T {t}: peak {}", seq.peak);
    }
    // Greedy answers and temperatures above 1 have no score; short answers neither.
    let answer = sampled_answer(&mut rng, 48, 0.8, 0.0);
    assert_eq!(answer_score(&answer, 0.0, 0.0, 16), None);
    assert_eq!(answer_score(&answer, 1.5, 0.0, 16), None);
    assert_eq!(answer_score(&answer[..8], 0.8, 0.0, 16), None);
}

#[test]
fn a_perturbed_sampler_crosses_within_a_few_dozen_audits_and_once() {
    use crate::audit::seq::{Scored, SeqRule, Sequence, answer_score};
    let rule = SeqRule::default();
    let mut rng = Rng(5);
    let mut seq = Sequence::default();
    let mut crossed_at = None;
    for i in 0..60 {
        let answer = sampled_answer(&mut rng, 48, 0.8, 1.5);
        let z = answer_score(&answer, 0.8, rule.cap, 16).unwrap_or(0.0);
        let s = Scored {
            request_id: format!("r{i}"),
            z,
            auditor: "reference".into(),
            owner: "reference".into(),
        };
        if seq.add(&rule, s, 0) {
            assert!(crossed_at.is_none(), "crossed twice");
            crossed_at = Some(i + 1);
        }
    }
    let at = crossed_at.unwrap_or(0);
    assert!((2..=40).contains(&at), "crossed at {at}: {seq:?}");
    // The evidence names the audits that made it, and no one answer slashes alone.
    assert!(!seq.evidence.is_empty() && seq.describe(&rule).contains("r0"));
    let mut one = Sequence::default();
    let big = Scored {
        request_id: "x".into(),
        z: 1e9,
        auditor: "reference".into(),
        owner: "reference".into(),
    };
    assert!(!one.add(&rule, big, 0));
    assert_eq!(one.value, rule.clamp - rule.drift);
    // A threshold of 0 turns it off; a NaN score counts nothing.
    let off = SeqRule {
        threshold: 0.0,
        ..rule
    };
    let s = Scored {
        request_id: "y".into(),
        z: 1e9,
        auditor: "reference".into(),
        owner: "reference".into(),
    };
    assert!(!Sequence::default().add(&off, s.clone(), 0));
    let nan = Scored { z: f64::NAN, ..s };
    let mut n = Sequence::default();
    assert!(!n.add(&rule, nan, 0) && n.value == 0.0);
}

#[test]
fn one_answer_moves_the_statistic_by_at_most_the_clamp_either_way() {
    use crate::audit::seq::{Scored, SeqRule, Sequence};
    let rule = SeqRule::default();
    let at = |z: f64| Scored {
        request_id: "r".into(),
        z,
        auditor: "reference".into(),
        owner: "reference".into(),
    };
    let mut seq = Sequence::default();
    for _ in 0..2 {
        seq.add(&rule, at(5.0), 0);
    }
    let before = seq.value;
    assert!(before > rule.clamp + rule.drift, "{before}");
    // A near-greedy answer mixed in (Z far below 0) lowers C by clamp + drift,
    // not to 0, and the evidence stays.
    seq.add(&rule, at(-1e9), 0);
    assert!(
        (seq.value - (before - rule.clamp - rule.drift)).abs() < 1e-9,
        "{}",
        seq.value
    );
    assert_eq!(seq.evidence.len(), 3);
}

#[test]
fn peers_of_one_owner_are_one_voice() {
    use crate::audit::seq::{Scored, SeqRule, Sequence};
    let rule = SeqRule {
        threshold: 100.0,
        ..SeqRule::default()
    };
    let mut seq = Sequence::default();
    for (i, (peer, owner)) in [("p1", "owner a"), ("p2", "owner a"), ("p1", "owner a")]
        .into_iter()
        .enumerate()
    {
        seq.add(
            &rule,
            Scored {
                request_id: format!("r{i}"),
                z: 5.0,
                auditor: peer.into(),
                owner: owner.into(),
            },
            0,
        );
    }
    assert_eq!(seq.auditors(), 1);
    seq.add(
        &rule,
        Scored {
            request_id: "r3".into(),
            z: 5.0,
            auditor: "p3".into(),
            owner: "owner b".into(),
        },
        0,
    );
    assert_eq!(seq.auditors(), 2);
}
