//! Building blocks of the plain-f32 reference engines of the World generations
//! ([`super::v7`], [`super::finch`]): matrices, layer norms and named-tensor access. Slow and
//! simple on purpose; the fast paths are held to them.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::Fingerprint;
pub use super::Generation;

/// The shapes of a World model, read off its tensors; `generation` is V5, V6 or V7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorldConfig {
    pub generation: Generation,
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub head_size: usize,
    pub ffn: usize,
}

/// What a World model carries from one token to the next, per layer. The same three parts in
/// every generation; only the order of `att_kv`'s last two axes differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldLayerState {
    /// `ln1(x)` of the previous token: the time mix's token shift.
    pub att_x: Vec<f32>,
    /// The WKV matrices, `[heads, head_size, head_size]`: `[h, k, v]` for v5/v6, `[h, v, k]`
    /// for v7 (rwkv pip's own orders).
    pub att_kv: Vec<f32>,
    /// `ln2(x)` of the previous token: the channel mix's token shift.
    pub ffn_x: Vec<f32>,
}

/// Everything a World model carries between tokens: `layers x (2 x hidden + hidden x head
/// size)` floats (13 MB for a 1.5B v7), whatever the length of the text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldState {
    /// The generation whose math reads `att_kv`: v5/v6 and v7 states of one width have one
    /// shape but not one meaning.
    pub generation: Generation,
    pub layers: Vec<WorldLayerState>,
}

impl WorldState {
    /// The state before any token: all zeros.
    pub fn new(cfg: &WorldConfig) -> Self {
        let layer = WorldLayerState {
            att_x: vec![0.0; cfg.hidden],
            att_kv: vec![0.0; cfg.heads * cfg.head_size * cfg.head_size],
            ffn_x: vec![0.0; cfg.hidden],
        };
        Self {
            generation: cfg.generation,
            layers: vec![layer; cfg.layers],
        }
    }

    /// True when every vector has the length the model with `fingerprint` uses.
    pub fn fits(&self, fingerprint: &Fingerprint) -> bool {
        let hidden = fingerprint.hidden as usize;
        let kv = fingerprint.attention as usize * fingerprint.head_size as usize;
        self.generation == fingerprint.generation
            && self.layers.len() == fingerprint.layers as usize
            && self
                .layers
                .iter()
                .all(|l| l.att_x.len() == hidden && l.ffn_x.len() == hidden && l.att_kv.len() == kv)
    }

    /// Bytes the state takes in memory or on disk (before any header).
    pub fn size_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| 4 * (l.att_x.len() + l.att_kv.len() + l.ffn_x.len()))
            .sum()
    }
}

/// A matrix stored `[rows, cols]` row-major.
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    data: Vec<f32>,
}

impl Matrix {
    /// `W · x` for `W` stored `[out, in]` (the projections).
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        self.data
            .chunks_exact(self.cols)
            .map(|row| row.iter().zip(x).map(|(w, x)| w * x).sum())
            .collect()
    }

    /// `x · W` for `W` stored `[in, out]` (the LoRA factors).
    pub fn apply_left(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; self.cols];
        for (xi, row) in x.iter().zip(self.data.chunks_exact(self.cols)) {
            for (o, w) in out.iter_mut().zip(row) {
                *o += xi * w;
            }
        }
        out
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

pub struct Norm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Norm {
    /// LayerNorm of `x` with the parameters from `offset` (a GroupNorm group is a LayerNorm
    /// over its slice with its slice of the parameters).
    pub fn apply_at(&self, x: &[f32], offset: usize, eps: f32) -> Vec<f32> {
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + eps).sqrt();
        x.iter()
            .zip(&self.weight[offset..])
            .zip(&self.bias[offset..])
            .map(|((v, w), b)| (v - mean) * inv * w + b)
            .collect()
    }

    pub fn apply(&self, x: &[f32], eps: f32) -> Vec<f32> {
        self.apply_at(x, 0, eps)
    }

    /// GroupNorm of `x` in groups of `size`.
    pub fn apply_groups(&self, x: &[f32], size: usize, eps: f32) -> Vec<f32> {
        x.chunks_exact(size)
            .enumerate()
            .flat_map(|(g, group)| self.apply_at(group, g * size, eps))
            .collect()
    }
}

/// F.layer_norm's default eps.
pub const LN_EPS: f32 = 1e-5;
/// rwkv pip's GroupNorm eps for `ln_x` in v5, v6 and v7, whatever the head size.
pub const LN_X_EPS: f32 = 64e-5;

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `x + (prev - x) * mix`: token shift with a learned mix, as v6 and v7 write it.
pub fn shift(x: &[f32], prev: &[f32], mix: &[f32]) -> Vec<f32> {
    x.iter()
        .zip(prev)
        .zip(mix)
        .map(|((x, prev), m)| x + (prev - x) * m)
        .collect()
}

/// Tensors by BlinkDL name, read as f32 with their shapes checked.
pub struct Weights<'a>(pub &'a HashMap<String, Tensor>);

impl Weights<'_> {
    pub fn get(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), String> {
        let t = self
            .0
            .get(name)
            .ok_or_else(|| format!("no tensor `{name}`"))?;
        let data = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| format!("`{name}`: {e}"))?;
        Ok((t.dims().to_vec(), data))
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, String> {
        let (_, data) = self.get(name)?;
        if data.len() != len {
            return Err(format!("`{name}` has {} values, not {len}", data.len()));
        }
        Ok(data)
    }

    pub fn matrix(&self, name: &str) -> Result<Matrix, String> {
        let (dims, data) = self.get(name)?;
        match dims[..] {
            [rows, cols] => Ok(Matrix { rows, cols, data }),
            _ => Err(format!("`{name}` is not a matrix ({dims:?})")),
        }
    }

    /// A 3-D tensor `[n, rows, cols]` as `n` matrices.
    pub fn matrices(&self, name: &str) -> Result<Vec<Matrix>, String> {
        let (dims, data) = self.get(name)?;
        let [n, rows, cols] = dims[..] else {
            return Err(format!("`{name}` is not 3-D ({dims:?})"));
        };
        Ok((0..n)
            .map(|i| Matrix {
                rows,
                cols,
                data: data[i * rows * cols..(i + 1) * rows * cols].to_vec(),
            })
            .collect())
    }

    pub fn norm(&self, prefix: &str, len: usize) -> Result<Norm, String> {
        Ok(Norm {
            weight: self.vector(&format!("{prefix}.weight"), len)?,
            bias: self.vector(&format!("{prefix}.bias"), len)?,
        })
    }

    /// The number of `blocks.N` with an `ln1`.
    pub fn layers(&self) -> usize {
        (0..)
            .take_while(|i| self.has(&format!("blocks.{i}.ln1.weight")))
            .count()
    }

    /// `ln0(emb)`, as every generation feeds it.
    pub fn embedding(&self) -> Result<Matrix, String> {
        let emb = self.matrix("emb.weight")?;
        let ln0 = self.norm("blocks.0.ln0", emb.cols)?;
        let data = emb
            .data
            .chunks_exact(emb.cols)
            .flat_map(|row| ln0.apply(row, LN_EPS))
            .collect();
        Ok(Matrix { data, ..emb })
    }
}

/// What every generation has around its layers: `ln0(emb)` in, `head · ln_out(x)` out.
pub struct Ends {
    emb: Matrix,
    ln_out: Norm,
    head: Matrix,
}

impl Ends {
    pub fn load(w: &Weights) -> Result<Self, String> {
        let emb = w.embedding()?;
        Ok(Self {
            ln_out: w.norm("ln_out", emb.cols)?,
            head: w.matrix("head.weight")?,
            emb,
        })
    }

    pub fn vocab(&self) -> usize {
        self.emb.rows
    }

    pub fn hidden(&self) -> usize {
        self.emb.cols
    }

    /// The residual stream's start for `token`.
    pub fn embed(&self, token: u32) -> Result<Vec<f32>, String> {
        let row = token as usize;
        if row >= self.emb.rows {
            return Err(format!(
                "token {token} is beyond the vocab of {}",
                self.emb.rows
            ));
        }
        Ok(self.emb.row(row).to_vec())
    }

    pub fn logits(&self, x: &[f32]) -> Vec<f32> {
        self.head.apply(&self.ln_out.apply(x, LN_EPS))
    }
}
