//! Choosing the next token: greedy (temperature 0), or sampling with temperature, top-k and
//! top-p from a seeded ChaCha generator (the same seed gives the same text).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How to pick tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = no limit.
    pub top_k: usize,
    /// 1.0 = no limit.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

/// A sampler with its random state.
#[derive(Debug)]
pub struct Sampler {
    config: Sampling,
    rng: ChaCha8Rng,
}

/// The index of the largest value (the first one on ties).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(config: Sampling) -> Self {
        Self { config, rng: ChaCha8Rng::seed_from_u64(config.seed) }
    }

    pub fn is_greedy(&self) -> bool {
        self.config.temperature <= 0.0
    }

    /// The next token from a row of logits.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() {
            return argmax(logits);
        }
        let t = self.config.temperature;
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.config.top_k > 0 {
            order.truncate(self.config.top_k);
        }
        let max = logits[order[0]];
        let weights: Vec<f64> = order.iter().map(|&i| f64::from((logits[i] - max) / t).exp()).collect();
        let total: f64 = weights.iter().sum();
        // Top-p: the smallest prefix (by probability) whose mass reaches p.
        let mut keep = order.len();
        if self.config.top_p < 1.0 {
            let mut mass = 0.0;
            for (n, w) in weights.iter().enumerate() {
                mass += w / total;
                if mass >= f64::from(self.config.top_p) {
                    keep = n + 1;
                    break;
                }
            }
        }
        let kept_total: f64 = weights[..keep].iter().sum();
        let mut draw = self.rng.random::<f64>() * kept_total;
        for (n, w) in weights[..keep].iter().enumerate() {
            draw -= w;
            if draw <= 0.0 {
                return order[n] as u32;
            }
        }
        order[keep - 1] as u32
    }
}

/// Log-probabilities of a generated token under the model (softmax of the raw logits, at
/// temperature 1, as OpenAI reports them).
#[derive(Debug, Clone, PartialEq)]
pub struct Logprobs {
    pub logprob: f32,
    /// The `top` most likely tokens and theirs, most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

/// The log-probability of `token` in `logits`, with the `top` most likely tokens.
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> Logprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_total = (logits.iter().map(|&v| f64::from(v - max).exp()).sum::<f64>()).ln();
    let logprob_of = |i: usize| (f64::from(logits[i] - max) - log_total) as f32;
    let mut best: Vec<usize> = Vec::with_capacity(top + 1);
    if top > 0 {
        for i in 0..logits.len() {
            // Insertion into a short sorted list: top is at most a few dozen.
            let at = best.partition_point(|&b| logits[b] >= logits[i]);
            if at < top {
                best.insert(at, i);
                best.truncate(top);
            }
        }
    }
    let index = (token as usize).min(logits.len().saturating_sub(1));
    Logprobs { logprob: logprob_of(index), top: best.into_iter().map(|i| (i as u32, logprob_of(i))).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_and_the_top_list_is_ordered() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -5.0];
        let lp = logprobs(&logits, 2, 3);
        let total: f64 = logits.iter().map(|&v| f64::from(v).exp()).sum();
        assert!((f64::from(lp.logprob) - (2.0f64.exp() / total).ln()).abs() < 1e-6, "{lp:?}");
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 2], "ties: lower id first");
        let mass: f64 = (0..5).map(|i| f64::from(logprobs(&logits, i, 0).logprob).exp()).sum();
        assert!((mass - 1.0).abs() < 1e-6, "probabilities sum to 1: {mass}");
        assert!(logprobs(&logits, 0, 0).top.is_empty());
        assert_eq!(logprobs(&logits, 0, 99).top.len(), 5);
    }

    #[test]
    fn greedy_takes_the_largest_and_sampling_is_seeded() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        assert_eq!(Sampler::new(Sampling::default()).pick(&logits), 1);
        let warm = Sampling { temperature: 1.0, seed: 42, ..Default::default() };
        let a: Vec<u32> = (0..20).scan(Sampler::new(warm), |s, _| Some(s.pick(&logits))).collect();
        let b: Vec<u32> = (0..20).scan(Sampler::new(warm), |s, _| Some(s.pick(&logits))).collect();
        assert_eq!(a, b, "same seed, same choices");
        assert!(a.contains(&1) && a.contains(&2), "both likely tokens are drawn: {a:?}");
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [5.0, 4.9, -10.0, -10.0];
        let k1 = Sampling { temperature: 2.0, top_k: 1, seed: 1, ..Default::default() };
        let mut s = Sampler::new(k1);
        assert!((0..50).all(|_| s.pick(&logits) == 0));
        let p = Sampling { temperature: 1.0, top_p: 0.9, seed: 3, ..Default::default() };
        let mut s = Sampler::new(p);
        assert!((0..200).all(|_| s.pick(&logits) < 2), "the two improbable tokens are never drawn");
    }
}
