//! RWKV-7 "Goose" (x070), the generation of the current World and G1 models, in plain f32
//! loops: the reference the fast engine ([`super::world`]) is held to.
//!
//! The math is BlinkDL's `rwkv` package (0.8.32, `rwkv/model.py`, `RWKV_x070`) for one token:
//! `x = ln0(emb[t])`; per layer `x += TMix(ln1(x))`, `x += CMix(ln2(x))`; logits
//! `head · ln_out(x)`. TMix keeps a per-head matrix `S` (`[h, v, k]` order, as rwkv pip's
//! state): `S ← S·diag(w) − (S·κ̂)(κ̂∘a)ᵀ + v kᵀ`, `out = S r`, GroupNorm per head with eps
//! 64e-5, plus the bonus `(Σ r∘k∘r_k) v`, gated by `g`. Layer 0's value is kept for every other
//! layer's value residual (`v_first`), recomputed every token, so it is not state.

use std::collections::HashMap;

use candle_core::Tensor;

use super::checkpoint::fla_names;

use super::reference::{
    Ends, Generation, LN_EPS, LN_X_EPS, Matrix, Norm, Weights, WorldConfig, WorldLayerState,
    WorldState, shift, sigmoid,
};

struct Layer {
    ln1: Norm,
    ln2: Norm,
    /// `x_r, x_w, x_k, x_v, x_a, x_g`.
    mix: [Vec<f32>; 6],
    w0: Vec<f32>,
    w1: Matrix,
    w2: Matrix,
    a0: Vec<f32>,
    a1: Matrix,
    a2: Matrix,
    /// Layer 0 has none: its value is `v_first`.
    v_lora: Option<(Vec<f32>, Matrix, Matrix)>,
    g1: Matrix,
    g2: Matrix,
    k_k: Vec<f32>,
    k_a: Vec<f32>,
    r_k: Vec<f32>,
    receptance: Matrix,
    key: Matrix,
    value: Matrix,
    output: Matrix,
    ln_x: Norm,
    ffn_x_k: Vec<f32>,
    ffn_key: Matrix,
    ffn_value: Matrix,
}

pub struct V7 {
    pub cfg: WorldConfig,
    ends: Ends,
    layers: Vec<Layer>,
}

/// `exp(-0.5)` as rwkv pip writes it: decay is `exp(-0.606531 · sigmoid(w0 + lora))`.
const DECAY_SCALE: f32 = 0.606531;

/// Renames a flash-linear-attention checkpoint (`fla-hub/rwkv7-*`, `model.safetensors`) to
/// BlinkDL's names and forms (see [`fla_names`]).
pub fn from_fla(tensors: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>, String> {
    let mut out = HashMap::with_capacity(tensors.len());
    for (name, t) in tensors {
        for (renamed, transform) in fla_names(&name)? {
            let t = transform
                .apply(t.clone())
                .map_err(|e| format!("`{name}`: {e}"))?;
            out.insert(renamed, t);
        }
    }
    Ok(out)
}

impl V7 {
    /// Builds the model from tensors under BlinkDL's names (any float dtype; kept as f32).
    pub fn from_tensors(tensors: &HashMap<String, Tensor>) -> Result<Self, String> {
        let w = Weights(tensors);
        let ends = Ends::load(&w)?;
        let (vocab, hidden) = (ends.vocab(), ends.hidden());
        let (r_k_dims, _) = w.get("blocks.0.att.r_k")?;
        let [heads, head_size] = r_k_dims[..] else {
            return Err(format!(
                "`blocks.0.att.r_k` is {r_k_dims:?}, not [heads, head size]"
            ));
        };
        if heads * head_size != hidden {
            return Err(format!(
                "{heads} heads of {head_size} do not make the width {hidden}"
            ));
        }
        let layers = w.layers();
        let ffn = w.matrix("blocks.0.ffn.key.weight")?.rows;
        let cfg = WorldConfig {
            generation: Generation::V7,
            vocab,
            hidden,
            layers,
            heads,
            head_size,
            ffn,
        };
        let layers = (0..layers)
            .map(|i| -> Result<Layer, String> {
                let p = |leaf: &str| format!("blocks.{i}.{leaf}");
                let mix = |leaf: &str| w.vector(&p(&format!("att.x_{leaf}")), hidden);
                let v_lora = if i == 0 {
                    None
                } else {
                    Some((
                        w.vector(&p("att.v0"), hidden)?,
                        w.matrix(&p("att.v1"))?,
                        w.matrix(&p("att.v2"))?,
                    ))
                };
                Ok(Layer {
                    ln1: w.norm(&p("ln1"), hidden)?,
                    ln2: w.norm(&p("ln2"), hidden)?,
                    mix: [
                        mix("r")?,
                        mix("w")?,
                        mix("k")?,
                        mix("v")?,
                        mix("a")?,
                        mix("g")?,
                    ],
                    w0: w.vector(&p("att.w0"), hidden)?,
                    w1: w.matrix(&p("att.w1"))?,
                    w2: w.matrix(&p("att.w2"))?,
                    a0: w.vector(&p("att.a0"), hidden)?,
                    a1: w.matrix(&p("att.a1"))?,
                    a2: w.matrix(&p("att.a2"))?,
                    v_lora,
                    g1: w.matrix(&p("att.g1"))?,
                    g2: w.matrix(&p("att.g2"))?,
                    k_k: w.vector(&p("att.k_k"), hidden)?,
                    k_a: w.vector(&p("att.k_a"), hidden)?,
                    r_k: w.vector(&p("att.r_k"), hidden)?,
                    receptance: w.matrix(&p("att.receptance.weight"))?,
                    key: w.matrix(&p("att.key.weight"))?,
                    value: w.matrix(&p("att.value.weight"))?,
                    output: w.matrix(&p("att.output.weight"))?,
                    ln_x: w.norm(&p("att.ln_x"), hidden)?,
                    ffn_x_k: w.vector(&p("ffn.x_k"), hidden)?,
                    ffn_key: w.matrix(&p("ffn.key.weight"))?,
                    ffn_value: w.matrix(&p("ffn.value.weight"))?,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { cfg, ends, layers })
    }

    /// Feeds one token and returns the logits after it.
    pub fn forward_token(&self, token: u32, state: &mut WorldState) -> Result<Vec<f32>, String> {
        let n = self.cfg.head_size;
        let mut x = self.ends.embed(token)?;
        let mut v_first: Vec<f32> = Vec::new();
        for (layer, st) in self.layers.iter().zip(&mut state.layers) {
            let xx = layer.ln1.apply(&x, LN_EPS);
            let att = layer.time_mix(&xx, st, &mut v_first, n);
            st.att_x = xx;
            x.iter_mut().zip(&att).for_each(|(x, a)| *x += a);

            let xx = layer.ln2.apply(&x, LN_EPS);
            let mixed = shift(&xx, &st.ffn_x, &layer.ffn_x_k);
            let k: Vec<f32> = layer
                .ffn_key
                .apply(&mixed)
                .into_iter()
                .map(|v| v.max(0.0).powi(2))
                .collect();
            let ffn = layer.ffn_value.apply(&k);
            st.ffn_x = xx;
            x.iter_mut().zip(&ffn).for_each(|(x, f)| *x += f);
        }
        Ok(self.ends.logits(&x))
    }
}

impl Layer {
    fn time_mix(
        &self,
        x: &[f32],
        st: &mut WorldLayerState,
        v_first: &mut Vec<f32>,
        n: usize,
    ) -> Vec<f32> {
        let mixed: Vec<Vec<f32>> = self.mix.iter().map(|m| shift(x, &st.att_x, m)).collect();
        let [xr, xw, xk, xv, xa, xg] = &mixed[..] else {
            unreachable!("six mixes")
        };
        let r = self.receptance.apply(xr);
        let w_lora = self.w2.apply_left(
            &self
                .w1
                .apply_left(xw)
                .into_iter()
                .map(f32::tanh)
                .collect::<Vec<_>>(),
        );
        let mut k = self.key.apply(xk);
        let mut v = self.value.apply(xv);
        let a: Vec<f32> = self
            .a2
            .apply_left(&self.a1.apply_left(xa))
            .iter()
            .zip(&self.a0)
            .map(|(l, a0)| sigmoid(a0 + l))
            .collect();
        let g = self.g2.apply_left(
            &self
                .g1
                .apply_left(xg)
                .into_iter()
                .map(sigmoid)
                .collect::<Vec<_>>(),
        );
        // κ̂: the key scaled by k_k, L2-normalised per head (F.normalize, eps 1e-12).
        let mut kk: Vec<f32> = k.iter().zip(&self.k_k).map(|(k, s)| k * s).collect();
        for head in kk.chunks_exact_mut(n) {
            let norm = head.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            head.iter_mut().for_each(|v| *v /= norm);
        }
        for ((k, a), ka) in k.iter_mut().zip(&a).zip(&self.k_a) {
            *k *= 1.0 + (a - 1.0) * ka;
        }
        match &self.v_lora {
            None => *v_first = v.clone(),
            Some((v0, v1, v2)) => {
                let gate = v2.apply_left(&v1.apply_left(xv));
                for (((v, first), l), v0) in v.iter_mut().zip(v_first.iter()).zip(&gate).zip(v0) {
                    *v += (first - *v) * sigmoid(v0 + l);
                }
            }
        }
        let w: Vec<f32> = w_lora
            .iter()
            .zip(&self.w0)
            .map(|(l, w0)| (-DECAY_SCALE * sigmoid(w0 + l)).exp())
            .collect();

        let mut out = vec![0.0f32; x.len()];
        for h in 0..x.len() / n {
            let span = h * n..(h + 1) * n;
            let s = &mut st.att_kv[h * n * n..(h + 1) * n * n];
            let (r, k, v, w, kk, a) = (
                &r[span.clone()],
                &k[span.clone()],
                &v[span.clone()],
                &w[span.clone()],
                &kk[span.clone()],
                &a[span.clone()],
            );
            for i in 0..n {
                let row = &mut s[i * n..(i + 1) * n];
                // (S κ̂)_i over the state before this token.
                let sk: f32 = row.iter().zip(kk).map(|(s, kk)| s * kk).sum();
                let mut o = 0.0;
                for j in 0..n {
                    row[j] = row[j] * w[j] - sk * kk[j] * a[j] + v[i] * k[j];
                    o += row[j] * r[j];
                }
                out[h * n + i] = o;
            }
            let head = self.ln_x.apply_at(&out[span.clone()], h * n, LN_X_EPS);
            let bonus: f32 = (0..n).map(|j| r[j] * k[j] * self.r_k[h * n + j]).sum();
            for i in 0..n {
                out[h * n + i] = (head[i] + bonus * v[i]) * g[h * n + i];
            }
        }
        self.output.apply(&out)
    }
}
