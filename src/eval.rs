//! Measuring a model's quality on a text: perplexity, the number users compare models,
//! dtypes and quantizations by.

use anyhow::bail;

use crate::engine::Engine;

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
