//! Picking the next token from one row of logits, on the host.
//!
//! * `temperature == 0`: greedy, `argmax(logits)` (the first index on ties, as `torch.argmax`).
//! * otherwise, as transformers' logits warpers in that order: divide by the temperature, keep
//!   the `top_k` largest (0 = all), keep the smallest set of most likely tokens whose probability
//!   sums to at least `top_p` (1 = all; the most likely token always stays), renormalize and draw
//!   with a seeded RNG, so a seed reproduces a run.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingOptions {
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: no limit).
    pub top_k: usize,
    /// Nucleus threshold in (0, 1] (1: no limit).
    pub top_p: f32,
}

impl Default for SamplingOptions {
    /// Greedy.
    fn default() -> Self {
        SamplingOptions {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

/// Draws next tokens according to [`SamplingOptions`].
#[derive(Debug)]
pub struct Sampler {
    options: SamplingOptions,
    rng: StdRng,
}

impl Sampler {
    /// A sampler whose random draws are fixed by `seed`.
    pub fn new(options: SamplingOptions, seed: u64) -> Self {
        Sampler {
            options,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The next token id given the logits `[v]` of the last position.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let o = self.options;
        if o.temperature <= 0.0 || o.top_k == 1 {
            return argmax(logits);
        }
        // (id, logit / T), most likely first.
        let mut ranked: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l / o.temperature))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if o.top_k > 0 {
            ranked.truncate(o.top_k);
        }
        let max = ranked.first().map_or(0.0, |r| r.1);
        let mut probs: Vec<f64> = ranked.iter().map(|r| f64::from(r.1 - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if o.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cumulative += p;
                    cumulative >= f64::from(o.top_p)
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut draw = self.rng.random::<f64>() * total;
        for (p, r) in probs.iter().zip(&ranked) {
            if draw < *p {
                return r.0;
            }
            draw -= p;
        }
        // Rounding left `draw` past the last kept probability: that token.
        ranked[probs.len().saturating_sub(1)].0
    }
}

/// Index of the largest value (the first on ties; NaN never wins).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] || values[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max() {
        assert_eq!(argmax(&[0.0, 3.0, 1.0, 3.0]), 1);
        let mut s = Sampler::new(SamplingOptions::default(), 0);
        assert_eq!(s.sample(&[0.0, -1.0, 2.5]), 2);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_keeps_the_nucleus() {
        let logits = [1.0, 4.0, 3.9, -2.0];
        let mut s = Sampler::new(
            SamplingOptions {
                temperature: 1.0,
                top_k: 1,
                top_p: 1.0,
            },
            7,
        );
        assert_eq!(s.sample(&logits), 1);
        // p ≈ [0.03, 0.50, 0.46, 0.001]: top_p 0.9 keeps ids 1 and 2 only.
        let mut s = Sampler::new(
            SamplingOptions {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.9,
            },
            7,
        );
        let draws: Vec<u32> = (0..200).map(|_| s.sample(&logits)).collect();
        assert!(draws.iter().all(|&id| id == 1 || id == 2), "{draws:?}");
        assert!(draws.contains(&1) && draws.contains(&2));
    }

    #[test]
    fn a_seed_reproduces_the_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let opts = SamplingOptions {
            temperature: 0.8,
            top_k: 20,
            top_p: 0.95,
        };
        let run = |seed| {
            let mut s = Sampler::new(opts, seed);
            (0..32).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
