//! Choosing the next token from logits: greedy, or temperature with top-k, top-p and min-p,
//! after repetition penalties.
//!
//! The order follows llama.cpp's common chain: the penalties on the logits of recent tokens
//! ([`apply_penalties`]), top-k on the logits, softmax with the temperature, top-p, min-p,
//! renormalise, then one draw from a seeded PRNG. The
//! filtering is a pure function ([`candidates`]) so tests can check exactly which tokens
//! each filter keeps; the draw uses our own SplitMix64 so a seed gives the same text on
//! every platform and every run.

use std::collections::{HashMap, VecDeque};

use crate::ops_common::argmax;

/// Sampling settings, filled by the CLI. Every filter has a value that switches it off.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerOptions {
    /// 0 (or below) = greedy: the argmax, ties to the lowest id.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probabilities add up to at least
    /// `top_p`; 1 = off.
    pub top_p: f32,
    /// Keep tokens whose probability is at least `min_p` times the largest; 0 = off.
    pub min_p: f32,
    pub seed: u64,
    /// The logit of a token among the last `penalty_last_n` is divided by this when positive
    /// and multiplied by it when not (llama.cpp's repeat penalty); 1 = off.
    pub repeat_penalty: f32,
    /// Subtracted from the logit of a token among the last `penalty_last_n`; 0 = off.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence among the last
    /// `penalty_last_n`; 0 = off.
    pub frequency_penalty: f32,
    /// How many of the most recent tokens (the prompt's included) the penalties look at.
    pub penalty_last_n: usize,
}

impl Default for SamplerOptions {
    /// GLM-4.7's suggested temperature and top-p, with llama.cpp's top-k and min-p.
    fn default() -> Self {
        SamplerOptions {
            temperature: 1.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            seed: 0,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
        }
    }
}

impl SamplerOptions {
    pub fn greedy() -> Self {
        SamplerOptions {
            temperature: 0.0,
            ..Default::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Some penalty changes the logits: the choice needs them all, even when greedy.
    pub fn penalizes(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }

    /// Values no filter can work with, reported before any work is done.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() {
            return Err(format!("temperature {} is not a number", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p {} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min-p {} must be in [0, 1]", self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(format!(
                "repeat penalty {} must be above 0 (1 = off)",
                self.repeat_penalty
            ));
        }
        for (name, v) in [
            ("presence", self.presence_penalty),
            ("frequency", self.frequency_penalty),
        ] {
            if !v.is_finite() {
                return Err(format!("{name} penalty {v} is not a number"));
            }
        }
        Ok(())
    }
}

/// Applies the repetition penalties of `opts` to `logits` for the tokens in `recent` (ids
/// outside the logits are ignored), as llama.cpp does: per token seen `count` times, the
/// repeat penalty divides a positive logit or multiplies a negative one, then
/// `count * frequency_penalty + presence_penalty` is subtracted.
pub fn apply_penalties(
    logits: &mut [f32],
    recent: impl IntoIterator<Item = u32>,
    opts: &SamplerOptions,
) {
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for id in recent {
        *counts.entry(id).or_default() += 1;
    }
    for (id, count) in counts {
        let Some(l) = logits.get_mut(id as usize) else {
            continue;
        };
        if *l > 0.0 {
            *l /= opts.repeat_penalty;
        } else {
            *l *= opts.repeat_penalty;
        }
        *l -= count as f32 * opts.frequency_penalty + opts.presence_penalty;
    }
}

/// A token that survived the filters, with its renormalised probability.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub id: u32,
    pub prob: f32,
}

/// Probabilities below this much under the top-p target still count as reaching it, so a
/// set whose probabilities add up to exactly `top_p` on paper is kept despite rounding.
const TOP_P_SLACK: f64 = 1e-6;

/// The tokens a non-greedy sampler may draw, most likely first (ties by lower id), with
/// probabilities renormalised to sum to 1. Never empty for a non-empty `logits`.
pub fn candidates(logits: &[f32], opts: &SamplerOptions) -> Vec<Candidate> {
    assert!(!logits.is_empty(), "no logits to sample from");
    let by_rank = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut ranked: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, if l.is_nan() { f32::NEG_INFINITY } else { l }))
        .collect();
    // top-k first: a partial selection keeps this cheap on a 150K vocabulary.
    if opts.top_k > 0 && opts.top_k < ranked.len() {
        ranked.select_nth_unstable_by(opts.top_k - 1, by_rank);
        ranked.truncate(opts.top_k);
    }
    ranked.sort_unstable_by(by_rank);

    // Softmax with the temperature, in f64 so long tails do not lose mass.
    let t = opts.temperature.max(f32::MIN_POSITIVE) as f64;
    let max = ranked[0].1 as f64;
    let mut probs: Vec<f64> = ranked
        .iter()
        .map(|&(_, l)| ((l as f64 - max) / t).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);

    // top-p: the shortest prefix whose mass reaches top_p (at least one token).
    let mut keep = probs.len();
    if opts.top_p < 1.0 {
        let mut cum = 0.0;
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= opts.top_p as f64 - TOP_P_SLACK {
                keep = i + 1;
                break;
            }
        }
    }
    // min-p: relative to the most likely token, which is always kept; and no token whose
    // probability is 0 (a logit of -inf: one the JSON output rules out, say).
    let floor = opts.min_p as f64 * probs[0];
    keep = probs[..keep]
        .iter()
        .take_while(|&&p| p >= floor && p > 0.0)
        .count()
        .max(1);

    let kept_mass: f64 = probs[..keep].iter().sum();
    ranked[..keep]
        .iter()
        .zip(&probs)
        .map(|(&(id, _), &p)| Candidate {
            id,
            prob: (p / kept_mass) as f32,
        })
        .collect()
}

/// The most alternatives [`logprobs`] reports per token (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A generated token's log-probability under the model, and the most likely tokens at its
/// place: the log-softmax of the raw logits, before penalties, temperature and filters (what
/// OpenAI's `logprobs` and llama-server report).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// The `top` most likely tokens, most likely first (ties by lower id).
    pub top: Vec<(u32, f32)>,
}

/// `id`'s log-probability in `logits`, with the `top` most likely tokens (at most
/// [`MAX_TOP_LOGPROBS`]). The sum runs in f64 from the largest logit, so no term overflows;
/// a NaN logit counts as impossible (-inf).
pub fn logprobs(logits: &[f32], id: u32, top: usize) -> TokenLogprob {
    assert!(!logits.is_empty(), "no logits");
    let finite = |l: f32| if l.is_nan() { f32::NEG_INFINITY } else { l };
    let max = logits
        .iter()
        .map(|&l| finite(l))
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (finite(l) as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    let logprob = |i: u32| (finite(logits[i as usize]) as f64 - log_z) as f32;
    // The best `top` by a running insertion: cheap for 20 of a 150K vocabulary.
    let top = top.min(MAX_TOP_LOGPROBS).min(logits.len());
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            let l = finite(l);
            if best.len() == top && l <= best[top - 1].1 {
                continue;
            }
            let at = best.partition_point(|&(_, b)| b >= l);
            best.insert(at, (i as u32, l));
            best.truncate(top);
        }
    }
    TokenLogprob {
        id,
        logprob: logprob(id),
        top: best.into_iter().map(|(i, _)| (i, logprob(i))).collect(),
    }
}

/// SplitMix64: tiny, fast, and the same sequence everywhere for a given seed.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

pub struct Sampler {
    opts: SamplerOptions,
    rng: SplitMix64,
    /// The last `penalty_last_n` tokens (prompt and choices), for the penalties.
    recent: VecDeque<u32>,
}

impl Sampler {
    pub fn new(opts: SamplerOptions) -> Self {
        let rng = SplitMix64(opts.seed);
        Sampler {
            opts,
            rng,
            recent: VecDeque::new(),
        }
    }

    pub fn options(&self) -> &SamplerOptions {
        &self.opts
    }

    /// Records tokens the penalties count (the prompt; [`Sampler::sample`] records its own
    /// choices).
    pub fn remember(&mut self, ids: &[u32]) {
        if !self.opts.penalizes() {
            return;
        }
        let keep = self.opts.penalty_last_n;
        self.recent.extend(&ids[ids.len().saturating_sub(keep)..]);
        let excess = self.recent.len().saturating_sub(keep);
        self.recent.drain(..excess);
    }

    /// The next token, after the penalties: the argmax when greedy (NaN never wins),
    /// otherwise one draw from [`candidates`].
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let id = if self.opts.penalizes() {
            let mut penalized = logits.to_vec();
            apply_penalties(&mut penalized, self.recent.iter().copied(), &self.opts);
            self.choose(&penalized)
        } else {
            self.choose(logits)
        };
        self.remember(&[id]);
        id
    }

    fn choose(&mut self, logits: &[f32]) -> u32 {
        if self.opts.is_greedy() {
            return argmax(logits);
        }
        let cands = candidates(logits, &self.opts);
        let mut u = self.rng.next_f64();
        for c in &cands {
            u -= c.prob as f64;
            if u < 0.0 {
                return c.id;
            }
        }
        // Rounding left a sliver of mass past the last candidate.
        cands.last().unwrap().id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits whose softmax at temperature 1 is exactly `probs` (on paper).
    fn logits_of(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    fn opts(top_k: usize, top_p: f32, min_p: f32) -> SamplerOptions {
        SamplerOptions {
            temperature: 1.0,
            top_k,
            top_p,
            min_p,
            seed: 1,
            ..Default::default()
        }
    }

    fn ids(c: &[Candidate]) -> Vec<u32> {
        c.iter().map(|c| c.id).collect()
    }

    #[test]
    fn greedy_is_argmax_with_ties_to_lowest_id() {
        let mut s = Sampler::new(SamplerOptions::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
        assert_eq!(s.sample(&[2.0, 2.0]), 0);
        assert_eq!(s.sample(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn no_filter_keeps_everything_most_likely_first() {
        // probs 0.1, 0.4, 0.2, 0.3 -> ranked ids 1, 3, 2, 0 with those probabilities.
        let c = candidates(&logits_of(&[0.1, 0.4, 0.2, 0.3]), &opts(0, 1.0, 0.0));
        assert_eq!(ids(&c), [1, 3, 2, 0]);
        for (c, want) in c.iter().zip([0.4, 0.3, 0.2, 0.1]) {
            assert!((c.prob - want).abs() < 1e-6, "{c:?} vs {want}");
        }
    }

    #[test]
    fn top_k_keeps_the_k_largest() {
        let l = logits_of(&[0.1, 0.4, 0.2, 0.3]);
        assert_eq!(ids(&candidates(&l, &opts(2, 1.0, 0.0))), [1, 3]);
        assert_eq!(ids(&candidates(&l, &opts(1, 1.0, 0.0))), [1]);
        // k larger than the vocabulary: no-op.
        assert_eq!(ids(&candidates(&l, &opts(10, 1.0, 0.0))).len(), 4);
    }

    #[test]
    fn top_k_ties_go_to_lower_ids() {
        let l = [1.0, 2.0, 2.0, 2.0];
        assert_eq!(ids(&candidates(&l, &opts(2, 1.0, 0.0))), [1, 2]);
    }

    #[test]
    fn top_p_keeps_smallest_prefix_reaching_p() {
        let l = logits_of(&[0.5, 0.3, 0.15, 0.05]);
        // 0.5 < 0.8 <= 0.5 + 0.3
        assert_eq!(ids(&candidates(&l, &opts(0, 0.8, 0.0))), [0, 1]);
        // 0.5 + 0.3 < 0.81 <= 0.95
        assert_eq!(ids(&candidates(&l, &opts(0, 0.81, 0.0))), [0, 1, 2]);
        // 0.4 <= 0.5: the top token alone
        assert_eq!(ids(&candidates(&l, &opts(0, 0.4, 0.0))), [0]);
        // a tiny p still keeps one token
        assert_eq!(ids(&candidates(&l, &opts(0, 1e-9, 0.0))), [0]);
        // renormalised over the kept set: 0.5/0.8 and 0.3/0.8
        let c = candidates(&l, &opts(0, 0.8, 0.0));
        assert!((c[0].prob - 0.625).abs() < 1e-6 && (c[1].prob - 0.375).abs() < 1e-6);
    }

    #[test]
    fn min_p_keeps_tokens_above_fraction_of_max() {
        let l = logits_of(&[0.5, 0.3, 0.15, 0.05]);
        // floor 0.2 * 0.5 = 0.1: keeps 0.5, 0.3, 0.15
        assert_eq!(ids(&candidates(&l, &opts(0, 1.0, 0.2))), [0, 1, 2]);
        // floor 0.5 * 0.5 = 0.25: keeps 0.5, 0.3
        assert_eq!(ids(&candidates(&l, &opts(0, 1.0, 0.5))), [0, 1]);
        // floor 1.0 * 0.5: only the max
        assert_eq!(ids(&candidates(&l, &opts(0, 1.0, 1.0))), [0]);
    }

    #[test]
    fn filters_compose_in_order() {
        // top-k 3 renormalises over 0.5, 0.3, 0.15 (mass 0.95): 0.526, 0.316, 0.158.
        // top-p 0.9: 0.526 + 0.316 = 0.842 < 0.9, so all three stay.
        let l = logits_of(&[0.5, 0.3, 0.15, 0.05]);
        assert_eq!(ids(&candidates(&l, &opts(3, 0.9, 0.0))), [0, 1, 2]);
        // then min-p 0.4: floor 0.4 * 0.526 = 0.21 drops 0.158.
        assert_eq!(ids(&candidates(&l, &opts(3, 0.9, 0.4))), [0, 1]);
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        // probs 0.8, 0.2: at temperature 0.5 they become 0.64 : 0.04 -> 0.941, 0.059;
        // at temperature 2 they become sqrt(0.8) : sqrt(0.2) = 2 : 1 -> 0.667, 0.333.
        let l = logits_of(&[0.8, 0.2]);
        let at = |t| {
            let o = SamplerOptions {
                temperature: t,
                ..opts(0, 1.0, 0.0)
            };
            candidates(&l, &o)[0].prob
        };
        assert!((at(0.5) - 0.64 / 0.68).abs() < 1e-6);
        assert!((at(2.0) - 2.0 / 3.0).abs() < 1e-6);
    }

    fn draws(seed: u64, n: usize) -> Vec<u32> {
        let l: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut s = Sampler::new(SamplerOptions {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed,
            ..Default::default()
        });
        (0..n).map(|_| s.sample(&l)).collect()
    }

    #[test]
    fn same_seed_same_draws_other_seed_other_draws() {
        assert_eq!(draws(42, 100), draws(42, 100));
        assert_ne!(draws(42, 100), draws(43, 100));
    }

    #[test]
    fn draws_follow_the_distribution() {
        // probs 0.7, 0.2, 0.1 over 20000 draws: each frequency within 0.02 of its prob.
        let l = logits_of(&[0.7, 0.2, 0.1]);
        let mut s = Sampler::new(opts(0, 1.0, 0.0));
        let mut counts = [0usize; 3];
        for _ in 0..20000 {
            counts[s.sample(&l) as usize] += 1;
        }
        for (c, p) in counts.iter().zip([0.7, 0.2, 0.1]) {
            assert!((*c as f64 / 20000.0 - p).abs() < 0.02, "{counts:?}");
        }
    }

    fn penalties(repeat: f32, presence: f32, frequency: f32, last_n: usize) -> SamplerOptions {
        SamplerOptions {
            repeat_penalty: repeat,
            presence_penalty: presence,
            frequency_penalty: frequency,
            penalty_last_n: last_n,
            ..SamplerOptions::greedy()
        }
    }

    #[test]
    fn penalties_match_a_hand_computed_reference() {
        // Token 0 seen once, 1 twice, 3 once, 9 (outside the logits) once; 2 never.
        // repeat 2, presence 0.25, frequency 0.5:
        //   0:  2.0 / 2 - (1 * 0.5 + 0.25) =  0.25
        //   1: -1.0 * 2 - (2 * 0.5 + 0.25) = -3.25
        //   2:  0.5 unchanged
        //   3:  3.0 / 2 - (1 * 0.5 + 0.25) =  0.75
        //   4:  0.0 * 2 - (1 * 0.5 + 0.25) = -0.75 (zero counts as not positive)
        let mut l = [2.0, -1.0, 0.5, 3.0, 0.0];
        apply_penalties(&mut l, [0, 1, 1, 3, 9, 4], &penalties(2.0, 0.25, 0.5, 64));
        assert_eq!(l, [0.25, -3.25, 0.5, 0.75, -0.75]);
        // Each alone: repeat 1.5 only; presence 1 only; frequency 1 only.
        let mut l = [3.0, -3.0, 1.0];
        apply_penalties(&mut l, [0, 1, 1], &penalties(1.5, 0.0, 0.0, 64));
        assert_eq!(l, [2.0, -4.5, 1.0]);
        let mut l = [3.0, -3.0, 1.0];
        apply_penalties(&mut l, [0, 1, 1], &penalties(1.0, 1.0, 0.0, 64));
        assert_eq!(l, [2.0, -4.0, 1.0]);
        let mut l = [3.0, -3.0, 1.0];
        apply_penalties(&mut l, [0, 1, 1], &penalties(1.0, 0.0, 1.0, 64));
        assert_eq!(l, [2.0, -5.0, 1.0]);
    }

    #[test]
    fn penalties_change_the_greedy_choice_over_the_last_n_tokens_only() {
        // Token 0 leads token 1 by 0.5. With a presence penalty of 2 over the last token
        // only, whichever was chosen last loses: 3 - 2 < 2.5 and 2.5 - 2 < 3.
        let logits = [3.0, 2.5, 0.0];
        let mut s = Sampler::new(penalties(1.0, 2.0, 0.0, 1));
        assert!(s.options().penalizes());
        s.remember(&[2, 0]); // the prompt's last token counts; the one before has left
        assert_eq!(s.sample(&logits), 1);
        assert_eq!(s.sample(&logits), 0);
        assert_eq!(s.sample(&logits), 1);
        // Over the last 2 tokens: after [0, 1] both are penalised (1.0, 0.5, 0.0).
        let mut s = Sampler::new(penalties(1.0, 2.0, 0.0, 2));
        s.remember(&[0, 1]);
        assert_eq!(s.sample(&logits), 0);
        // No penalty, or a window of 0 tokens: plain argmax.
        assert!(!penalties(1.0, 2.0, 0.0, 0).penalizes());
        assert!(!SamplerOptions::greedy().penalizes());
        let mut plain = Sampler::new(penalties(1.0, 2.0, 0.0, 0));
        plain.remember(&[0, 0, 0]);
        assert_eq!(plain.sample(&logits), 0);
    }

    #[test]
    fn invalid_penalties_are_refused() {
        assert!(penalties(0.0, 0.0, 0.0, 64)
            .validate()
            .unwrap_err()
            .contains("repeat penalty 0"));
        assert!(penalties(1.0, f32::NAN, 0.0, 64)
            .validate()
            .unwrap_err()
            .contains("presence"));
        assert!(penalties(1.0, 0.0, f32::INFINITY, 64)
            .validate()
            .unwrap_err()
            .contains("frequency"));
        assert!(penalties(1.1, -0.5, 0.5, 64).validate().is_ok());
    }

    #[test]
    fn logprobs_are_the_log_softmax_with_the_most_likely_first() {
        let probs = [0.1, 0.4, 0.05, 0.4, 0.05];
        // Shifted far past where exp overflows in f32: the log-softmax does not move.
        for shift in [0.0f32, 500.0] {
            let logits: Vec<f32> = logits_of(&probs).iter().map(|l| l + shift).collect();
            let lp = logprobs(&logits, 2, 3);
            let tol = if shift == 0.0 { 1e-6 } else { 1e-4 };
            assert!((lp.logprob - 0.05f32.ln()).abs() < tol, "{lp:?}");
            // Ties go to the lower id: 1 before 3, then 0.
            let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
            assert_eq!(ids, [1, 3, 0], "{lp:?}");
            for (&(id, l), p) in lp.top.iter().zip([0.4f32, 0.4, 0.1]) {
                assert!((l - p.ln()).abs() < tol, "token {id}: {l} against ln {p}");
            }
        }
        // A NaN logit is impossible, and never among the most likely; top is capped by the
        // vocabulary and by MAX_TOP_LOGPROBS; 0 asks for none.
        let lp = logprobs(&[0.0, f32::NAN, 0.0], 1, 50);
        assert_eq!(lp.logprob, f32::NEG_INFINITY);
        assert_eq!(lp.top.len(), 3);
        assert_eq!((lp.top[0].0, lp.top[1].0, lp.top[2].0), (0, 2, 1));
        assert!((lp.top[0].1 - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(logprobs(&[0.0; 100], 7, 50).top.len(), MAX_TOP_LOGPROBS);
        assert!(logprobs(&[1.0, 2.0], 0, 0).top.is_empty());
    }

    #[test]
    fn splitmix_matches_its_published_sequence() {
        // First outputs of SplitMix64 seeded with 0 (Vigna's reference implementation).
        let mut r = SplitMix64(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
