//! Picking the next token from the logits, with ChatRWKV's semantics: penalties on the
//! logits, then softmax, top-p and top-k cuts, then temperature. Seeded, so a run can be
//! reproduced exactly.

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// Sampling settings; every field has the default a Raven chat uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy); higher flattens the distribution.
    pub temperature: f32,
    /// Keep the most likely tokens whose probabilities add up to this (1 keeps all).
    pub top_p: f32,
    /// Keep at most this many tokens (0 keeps all).
    pub top_k: usize,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit per (decayed) occurrence.
    pub frequency_penalty: f32,
    /// Occurrence counts are multiplied by this after each token, so old repeats fade.
    pub penalty_decay: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 0.85,
            top_k: 0,
            presence_penalty: 0.2,
            frequency_penalty: 0.2,
            penalty_decay: 0.996,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_decay: 1.0,
        }
    }

    /// Checks the ranges; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        let finite = [
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
            ("penalty_decay", self.penalty_decay),
        ];
        if let Some((name, _)) = finite.iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!("{name} must be a finite number"));
        }
        if !(0.0..=5.0).contains(&self.temperature) {
            return Err(format!(
                "temperature must be between 0 and 5, not {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!(
                "top_p must be above 0 and at most 1, not {}",
                self.top_p
            ));
        }
        if !(0.0..=1.0).contains(&self.penalty_decay) {
            return Err(format!(
                "penalty_decay must be between 0 and 1, not {}",
                self.penalty_decay
            ));
        }
        Ok(())
    }
}

/// A sampler for one generation: its settings, RNG and occurrence counts.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    banned: Vec<u32>,
    /// Decayed count of each generated token, for the penalties.
    occurrences: Vec<(u32, f32)>,
    probs: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64, banned: Vec<u32>) -> Self {
        Self {
            params,
            rng: StdRng::seed_from_u64(seed),
            banned,
            occurrences: Vec::new(),
            probs: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks a token from `logits` (modified in place by the penalties and bans) and counts it.
    /// Never returns NaN-driven or out-of-range ids: with no finite logit left it returns the
    /// lowest id that is not banned.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        for &(id, count) in &self.occurrences {
            if let Some(l) = logits.get_mut(id as usize) {
                *l -= self.params.presence_penalty + count * self.params.frequency_penalty;
            }
        }
        for &id in &self.banned {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        let id = self.pick(logits);
        self.record(id);
        id
    }

    fn record(&mut self, id: u32) {
        let decay = self.params.penalty_decay;
        for (_, count) in &mut self.occurrences {
            *count *= decay;
        }
        match self.occurrences.iter_mut().find(|(t, _)| *t == id) {
            Some((_, count)) => *count += 1.0,
            None => self.occurrences.push((id, 1.0)),
        }
    }

    fn fallback(&self, len: usize) -> u32 {
        (0..len as u32)
            .find(|id| !self.banned.contains(id))
            .unwrap_or(0)
    }

    fn pick(&mut self, logits: &[f32]) -> u32 {
        let best = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, &l)| (i as u32, l));
        let Some((best_id, max)) = best else {
            return self.fallback(logits.len());
        };
        if self.params.temperature == 0.0 {
            return best_id;
        }
        // Softmax over the finite logits, most likely first.
        self.probs.clear();
        self.probs.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, (l - max).exp())),
        );
        let total: f32 = self.probs.iter().map(|p| p.1).sum();
        for p in &mut self.probs {
            p.1 /= total;
        }
        self.probs
            .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        // top-p keeps every token at least as likely as the one where the running sum
        // reaches top_p (ties stay in, as in ChatRWKV).
        let mut cumulative = 0.0;
        let mut cutoff = 0.0;
        for &(_, p) in &self.probs {
            cumulative += p;
            if cumulative >= self.params.top_p {
                cutoff = p;
                break;
            }
        }
        let mut keep = self
            .probs
            .iter()
            .take_while(|p| p.1 >= cutoff)
            .count()
            .max(1);
        if self.params.top_k > 0 {
            keep = keep.min(self.params.top_k);
        }
        self.probs.truncate(keep);
        let inv_t = 1.0 / self.params.temperature;
        if inv_t != 1.0 {
            for p in &mut self.probs {
                p.1 = p.1.powf(inv_t);
            }
        }
        let total: f32 = self.probs.iter().map(|p| p.1).sum();
        if !(total.is_finite() && total > 0.0) {
            return best_id;
        }
        let mut target = self.rng.random::<f32>() * total;
        for &(id, p) in &self.probs {
            if target < p {
                return id;
            }
            target -= p;
        }
        self.probs.last().map_or(best_id, |p| p.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(params: SamplingParams, logits: &[f32], draws: usize) -> Vec<usize> {
        let mut sampler = Sampler::new(params, 7, vec![]);
        let mut hits = vec![0; logits.len()];
        for _ in 0..draws {
            sampler.occurrences.clear();
            hits[sampler.sample(&mut logits.to_vec()) as usize] += 1;
        }
        hits
    }

    fn plain(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            ..SamplingParams::default()
        }
    }

    /// log of probabilities 0.5, 0.25, 0.15, 0.1
    fn known() -> Vec<f32> {
        [0.5f32, 0.25, 0.15, 0.1].iter().map(|p| p.ln()).collect()
    }

    #[test]
    fn temperature_zero_is_argmax() {
        let mut s = Sampler::new(plain(0.0), 1, vec![]);
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0]), 1);
    }

    #[test]
    fn temperature_one_follows_the_distribution() {
        let hits = counts(plain(1.0), &known(), 20000);
        for (h, p) in hits.iter().zip([0.5, 0.25, 0.15, 0.1]) {
            let freq = *h as f64 / 20000.0;
            assert!((freq - p).abs() < 0.015, "{hits:?}");
        }
    }

    #[test]
    fn low_temperature_sharpens() {
        let hits = counts(plain(0.25), &known(), 5000);
        // p^4 normalised: 0.0625/(0.0625+0.0039+0.0005+0.0001) ≈ 0.93
        assert!(hits[0] as f64 / 5000.0 > 0.9, "{hits:?}");
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // Cumulative 0.5, 0.75: top_p 0.7 keeps the first two only.
        let params = SamplingParams {
            top_p: 0.7,
            ..plain(1.0)
        };
        let hits = counts(params, &known(), 5000);
        assert_eq!(hits[2] + hits[3], 0, "{hits:?}");
        assert!(hits[1] > 1300, "{hits:?}");
    }

    #[test]
    fn top_k_keeps_k() {
        let params = SamplingParams {
            top_k: 1,
            ..plain(1.0)
        };
        assert_eq!(counts(params, &known(), 500)[0], 500);
    }

    #[test]
    fn penalties_push_repeats_down_and_decay() {
        let params = SamplingParams {
            presence_penalty: 1.0,
            frequency_penalty: 0.5,
            penalty_decay: 0.5,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(params, 1, vec![]);
        let logits = [2.0, 1.0, 0.0];
        assert_eq!(s.sample(&mut logits.to_vec()), 0);
        // Token 0 now costs 1 + 1 * 0.5: 0.5 < 1.0.
        let mut l = logits.to_vec();
        assert_eq!(s.sample(&mut l), 1);
        assert_eq!(l[0], 0.5);
        // Counts decay: token 0 is at 0.5 after one more step, token 1 at 1.
        let mut l = logits.to_vec();
        s.sample(&mut l);
        assert_eq!(l[0], 2.0 - (1.0 + 0.5 * 0.5));
    }

    #[test]
    fn banned_tokens_are_never_picked() {
        let mut s = Sampler::new(plain(1.0), 3, vec![0]);
        for _ in 0..200 {
            assert_ne!(s.sample(&mut known()), 0);
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams::default(), seed, vec![]);
            (0..50).map(|_| s.sample(&mut known())).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn nan_and_infinite_logits_never_pick_garbage() {
        let mut s = Sampler::new(SamplingParams::default(), 1, vec![0]);
        assert_eq!(s.sample(&mut [f32::NAN, f32::NAN, f32::NAN]), 1);
        let id = s.sample(&mut [f32::NAN, 1.0, f32::INFINITY, f32::NEG_INFINITY]);
        assert_eq!(id, 1);
        assert_eq!(s.sample(&mut []), 0);
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let bad = SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        };
        assert!(bad.validate().unwrap_err().contains("top_p"));
        let bad = SamplingParams {
            temperature: f32::NAN,
            ..SamplingParams::default()
        };
        assert!(bad.validate().unwrap_err().contains("temperature"));
        assert!(SamplingParams::default().validate().is_ok());
    }
}
