//! Measuring a model's quality on a text: perplexity, the number users compare models,
//! dtypes and quantizations by.

use anyhow::bail;

use crate::engine::Engine;
use crate::model::Rwkv;

/// Mean negative log-likelihood over a text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// Tokens in the text; the first is only context, the other `tokens - 1` are scored.
    pub tokens: usize,
    /// Mean of `-ln p(token | tokens before it)`, natural log.
    pub nll: f64,
}

impl Perplexity {
    pub fn perplexity(&self) -> f64 {
        self.nll.exp()
    }
}

/// Scores tokens 2..n of `ids` given the ones before them, with nothing prepended.
pub fn measure(engine: &Engine, ids: &[u32]) -> anyhow::Result<Perplexity> {
    if ids.len() < 2 {
        bail!(
            "the text has {} token(s); perplexity needs at least 2",
            ids.len()
        );
    }
    let model = &engine.model;
    let mut state = model.new_state();
    let mut total = 0f64;
    let chunk = model.chunk_size.max(1);
    for (c, tokens) in ids.chunks(chunk).enumerate() {
        let start = c * chunk;
        let logits = model
            .forward_chunk(tokens, &mut state, true)?
            .to_vec2::<f32>()?;
        for (offset, row) in logits.iter().enumerate() {
            let Some(&next) = ids.get(start + offset + 1) else {
                break;
            };
            total += logsumexp(row) - f64::from(row[next as usize]);
        }
    }
    Ok(Perplexity {
        tokens: ids.len(),
        nll: total / (ids.len() - 1) as f64,
    })
}

fn logsumexp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + sum.ln()
}

/// How far a model's predictions move from a reference's (the same weights in f32) on a
/// text: the quality cost of a weight format, measured rather than guessed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// Positions scored: every token of the text, teacher-forced in both models.
    pub positions: usize,
    /// Share of positions where both models' most likely next token is the same.
    pub top1_agreement: f64,
    /// Largest absolute difference of any logit at any position.
    pub max_logit_diff: f32,
    /// The reference's perplexity on the text, to set beside the model's own.
    pub reference: Perplexity,
}

/// Feeds `ids` through both models in the same chunks and compares their logits everywhere.
pub fn compare(reference: &Rwkv, model: &Rwkv, ids: &[u32]) -> anyhow::Result<Comparison> {
    if ids.len() < 2 {
        bail!("comparing needs at least 2 tokens");
    }
    let (mut ref_state, mut state) = (reference.new_state(), model.new_state());
    let (mut agree, mut max_diff, mut total) = (0usize, 0f32, 0f64);
    let chunk = model.chunk_size.max(1);
    for (c, tokens) in ids.chunks(chunk).enumerate() {
        let want = reference
            .forward_chunk(tokens, &mut ref_state, true)?
            .to_vec2::<f32>()?;
        let got = model
            .forward_chunk(tokens, &mut state, true)?
            .to_vec2::<f32>()?;
        for (offset, (w, g)) in want.iter().zip(&got).enumerate() {
            agree += usize::from(argmax(w) == argmax(g));
            for (a, b) in w.iter().zip(g) {
                max_diff = max_diff.max((a - b).abs());
            }
            if let Some(&next) = ids.get(c * chunk + offset + 1) {
                total += logsumexp(w) - f64::from(w[next as usize]);
            }
        }
    }
    Ok(Comparison {
        positions: ids.len(),
        top1_agreement: agree as f64 / ids.len() as f64,
        max_logit_diff: max_diff,
        reference: Perplexity {
            tokens: ids.len(),
            nll: total / (ids.len() - 1) as f64,
        },
    })
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}
