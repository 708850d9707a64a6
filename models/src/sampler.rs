//! Choosing the next token from the logits: penalties, logit bias, temperature,
//! top-k, top-p.
//!
//! Same seed, same logits, same choices: the random source is a seeded `StdRng`
//! owned by each sequence.
//!
//! Logprobs, when asked for, are reported from the distribution after the
//! penalties and the bias and before temperature, top-k and top-p (as OpenAI's
//! are): what the model and the request's own adjustments make of each token.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::logprobs::{self, Scored};

/// Validated sampling settings (the provider's validation maps the wire request
/// onto these; see its error messages for the ranges).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Keep only the k most likely tokens; `None` disables it.
    pub top_k: Option<usize>,
    /// OpenAI semantics: subtracted once from every token already generated.
    pub presence_penalty: f32,
    /// OpenAI semantics: subtracted per occurrence of a token already generated.
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
    /// OpenAI's `logit_bias`: added to a token's logit before sampling
    /// (-100..=100; -100 all but bans a token, +100 all but forces it).
    pub logit_bias: Vec<(u32, f32)>,
    /// Report each chosen token's logprob and this many alternatives (0..=20);
    /// `None` computes nothing.
    pub logprobs: Option<usize>,
    /// Also score the prompt's tokens (legacy `echo` with `logprobs`): each one's
    /// logprob given the ones before it, the first without one.
    pub prompt_logprobs: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logit_bias: Vec::new(),
            logprobs: None,
            prompt_logprobs: false,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 1e-5
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Occurrences of each generated token, for the penalties.
    counts: HashMap<u32, u32>,
    /// The last pick's score, when logprobs are asked for.
    scored: Option<Scored>,
}

impl Sampler {
    /// `stream` separates the random streams of the `n` choices of one request.
    pub fn new(params: SamplingParams, stream: u64) -> Self {
        let rng = match params.seed {
            Some(seed) => {
                StdRng::seed_from_u64(seed.wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            }
            None => StdRng::from_os_rng(),
        };
        Sampler {
            params,
            rng,
            counts: HashMap::new(),
            scored: None,
        }
    }

    /// Pick the next token and remember it for the penalties (and, when the
    /// params ask for logprobs, its score, for [`Sampler::take_scored`]).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let (id, scored) = self.sample_scored(logits);
        self.scored = scored;
        id
    }

    /// The score of the token [`Sampler::sample`] picked last, once.
    pub fn take_scored(&mut self) -> Option<Scored> {
        self.scored.take()
    }

    /// Pick the next token; when the params ask for logprobs, also its score and
    /// the top alternatives (from the logits after penalties and bias).
    pub fn sample_scored(&mut self, logits: &mut [f32]) -> (u32, Option<Scored>) {
        self.apply_penalties(logits);
        self.apply_bias(logits);
        let id = if self.params.is_greedy() {
            argmax(logits)
        } else {
            self.sample_soft(logits)
        };
        *self.counts.entry(id).or_default() += 1;
        let scored = self.params.logprobs.map(|k| logprobs::score(logits, id, k));
        (id, scored)
    }

    fn apply_bias(&self, logits: &mut [f32]) {
        for &(id, bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let (presence, frequency) = (self.params.presence_penalty, self.params.frequency_penalty);
        if presence == 0.0 && frequency == 0.0 {
            return;
        }
        for (&id, &count) in &self.counts {
            if let Some(l) = logits.get_mut(id as usize) {
                *l -= presence + frequency * count as f32;
            }
        }
    }

    fn sample_soft(&mut self, logits: &[f32]) -> u32 {
        let t = self.params.temperature;
        // Candidates sorted by logit, descending; ties by id so order is stable.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / t))
            .collect();
        if cand.is_empty() {
            return 0;
        }
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = self.params.top_k {
            cand.truncate(k.max(1));
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|(_, l)| (l - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.params.top_p < 1.0 {
            let mut mass = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                mass += p;
                if mass >= self.params.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            cand.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, p) in probs.iter().enumerate() {
            if r < *p {
                return cand[i].0;
            }
            r -= p;
        }
        cand[cand.len() - 1].0
    }
}

/// Index of the largest logit; the lowest index wins a tie.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn greedy_takes_the_largest_and_lowest_index_on_ties() {
        let mut s = Sampler::new(SamplingParams::greedy(), 0);
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn same_seed_same_choices_other_seed_differs() {
        let logits: Vec<f32> = (0..200).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let p = SamplingParams {
                seed: Some(seed),
                ..Default::default()
            };
            let mut s = Sampler::new(p, 0);
            (0..50)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let p = SamplingParams {
            top_k: Some(1),
            seed: Some(1),
            ..Default::default()
        };
        let mut s = Sampler::new(p, 0);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [1.0, 2.0, 5.0, 4.9]), 2);
        }
    }

    #[test]
    fn tiny_top_p_keeps_only_the_head() {
        let p = SamplingParams {
            top_p: 0.01,
            seed: Some(3),
            ..Default::default()
        };
        let mut s = Sampler::new(p, 0);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.0, 9.0, 1.0]), 1);
        }
    }

    #[test]
    fn frequency_penalty_moves_greedy_off_a_repeated_token() {
        let p = SamplingParams {
            temperature: 0.0,
            frequency_penalty: 2.0,
            ..Default::default()
        };
        let mut s = Sampler::new(p, 0);
        assert_eq!(s.sample(&mut [5.0, 4.0]), 0);
        // 5 - 2*1 = 3 < 4.
        assert_eq!(s.sample(&mut [5.0, 4.0]), 1);
    }

    #[test]
    fn presence_penalty_applies_once_per_token() {
        let p = SamplingParams {
            temperature: 0.0,
            presence_penalty: 0.5,
            ..Default::default()
        };
        let mut s = Sampler::new(p, 0);
        assert_eq!(s.sample(&mut [5.0, 4.8]), 0);
        // 5.0 - 0.5 = 4.5 < 4.8.
        assert_eq!(s.sample(&mut [5.0, 4.8]), 1);
        // Both seen: 4.5 > 4.3, and again, since presence does not grow with count.
        assert_eq!(s.sample(&mut [5.0, 4.8]), 0);
        assert_eq!(s.sample(&mut [5.0, 4.8]), 0);
    }

    fn biased(bias: Vec<(u32, f32)>, temperature: f32) -> Sampler {
        let p = SamplingParams {
            temperature,
            seed: Some(9),
            logit_bias: bias,
            logprobs: Some(2),
            ..Default::default()
        };
        Sampler::new(p, 0)
    }

    #[test]
    fn logit_bias_forces_and_forbids() {
        let logits = [5.0, 4.0, 1.0, 0.0];
        // +100 on a weak token wins greedy and sampling alike.
        assert_eq!(biased(vec![(3, 100.0)], 0.0).sample(&mut logits.clone()), 3);
        let mut s = biased(vec![(3, 100.0)], 1.0);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits.clone()), 3);
        }
        // -100 on the greedy token moves greedy to the next one.
        assert_eq!(
            biased(vec![(0, -100.0)], 0.0).sample(&mut logits.clone()),
            1
        );
        // Ids outside the logits are ignored.
        assert_eq!(
            biased(vec![(99, 100.0)], 0.0).sample(&mut logits.clone()),
            0
        );
    }

    #[test]
    fn logprobs_come_from_the_biased_logits_before_temperature() {
        let mut s = biased(vec![(1, 1.0)], 0.0);
        // After bias: [5, 5, 1, 0]; greedy takes 0, the lower id of the tie.
        let (id, scored) = s.sample_scored(&mut [5.0, 4.0, 1.0, 0.0]);
        assert_eq!(id, 0);
        let scored = scored.unwrap();
        let lse = logprobs::log_sum_exp(&[5.0, 5.0, 1.0, 0.0]);
        assert!((scored.logprob - (5.0 - lse)).abs() < 1e-5);
        assert_eq!(scored.top.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1]);
        // Temperature does not change the reported distribution.
        let hot = SamplingParams {
            temperature: 2.0,
            seed: Some(1),
            logprobs: Some(0),
            ..Default::default()
        };
        let (id, scored) = Sampler::new(hot, 0).sample_scored(&mut [5.0, 4.0]);
        let lse = logprobs::log_sum_exp(&[5.0, 4.0]);
        let want = [5.0, 4.0][id as usize] - lse;
        assert!((scored.unwrap().logprob - want).abs() < 1e-5);
        // Not asked: nothing computed.
        let mut plain = Sampler::new(SamplingParams::greedy(), 0);
        assert!(plain.sample_scored(&mut [1.0]).1.is_none());
        plain.sample(&mut [1.0]);
        assert!(plain.take_scored().is_none());
        // `sample` keeps the score for the engine, once.
        let mut s = biased(vec![], 0.0);
        assert_eq!(s.sample(&mut [1.0, 3.0]), 1);
        assert_eq!(s.take_scored().map(|x| x.top.len()), Some(2));
        assert!(s.take_scored().is_none());
    }

    #[test]
    fn non_finite_logits_are_never_chosen() {
        let p = SamplingParams {
            seed: Some(5),
            ..Default::default()
        };
        let mut s = Sampler::new(p, 0);
        for _ in 0..50 {
            let id = s.sample(&mut [f32::NAN, 0.0, f32::NEG_INFINITY, 0.0]);
            assert!(id == 1 || id == 3);
        }
    }
}
