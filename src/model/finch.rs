//! RWKV-5.2 "Eagle" and RWKV-6 "Finch", the World generations before v7, in plain f32 loops:
//! the reference the fast engine ([`super::world`]) is held to.
//!
//! Both are BlinkDL's `rwkv` package (0.8.32, `rwkv/model.py`, `RWKV_x052`/`RWKV_x060` for one
//! token). The WKV state per head is `S[k, v]` (rwkv pip's `[h, k, v]` order):
//! `out_j = Σ_i r_i (u_i k_i v_j + S_ij)`, then `S_ij ← k_i v_j + w_i S_ij`, GroupNorm per head
//! with eps 64e-5, gated by `silu(g)`. v5.2 has one learned decay per channel,
//! `w = exp(−exp(time_decay))`, and fixed token-shift mixes; v6 makes both depend on the
//! input through LoRA (`time_maa_*`, `time_decay_w1/w2`).

use std::collections::HashMap;

use candle_core::Tensor;

use super::reference::{
    Ends, Generation, LN_EPS, LN_X_EPS, Matrix, Norm, Weights, WorldConfig, WorldLayerState,
    WorldState, shift, sigmoid,
};

/// How the time mix's inputs are shifted and its decay made.
enum Mixing {
    /// v5.2: `x·mix + prev·(1 − mix)` with fixed mixes for k, v, r, g; a fixed decay.
    Fixed {
        k: Vec<f32>,
        v: Vec<f32>,
        r: Vec<f32>,
        g: Vec<f32>,
        decay: Vec<f32>,
    },
    /// v6: the mixes `maa_{w,k,v,r,g}` are corrected by a LoRA of `x + (prev − x)·maa_x`, and
    /// the decay by a LoRA of the w-mixed input.
    Data {
        maa_x: Vec<f32>,
        /// w, k, v, r, g.
        maa: [Vec<f32>; 5],
        maa_w1: Matrix,
        maa_w2: Vec<Matrix>,
        decay: Vec<f32>,
        decay_w1: Matrix,
        decay_w2: Matrix,
    },
}

struct Layer {
    ln1: Norm,
    ln2: Norm,
    mixing: Mixing,
    /// The bonus of the current token (`time_faaaa`).
    u: Vec<f32>,
    receptance: Matrix,
    key: Matrix,
    value: Matrix,
    gate: Matrix,
    output: Matrix,
    ln_x: Norm,
    ffn_mix_k: Vec<f32>,
    ffn_mix_r: Vec<f32>,
    ffn_key: Matrix,
    ffn_receptance: Matrix,
    ffn_value: Matrix,
}

pub struct Finch {
    pub cfg: WorldConfig,
    ends: Ends,
    layers: Vec<Layer>,
}

fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// v5.2's form of the token shift: `mix` weighs the current token.
fn blend(x: &[f32], prev: &[f32], mix: &[f32]) -> Vec<f32> {
    x.iter()
        .zip(prev)
        .zip(mix)
        .map(|((x, prev), m)| x * m + prev * (1.0 - m))
        .collect()
}

impl Finch {
    /// Builds a v5.2 or v6 model from tensors under BlinkDL's names (v6 has `time_maa_x`).
    pub fn from_tensors(tensors: &HashMap<String, Tensor>) -> Result<Self, String> {
        let w = Weights(tensors);
        let v6 = w.has("blocks.0.att.time_maa_x");
        if !v6 && !w.has("blocks.0.att.time_mix_k") {
            return Err(
                "neither an RWKV-5 nor an RWKV-6 checkpoint (no time_mix_k or time_maa_x)".into(),
            );
        }
        let generation = if v6 { Generation::V6 } else { Generation::V5 };
        let ends = Ends::load(&w)?;
        let (vocab, hidden) = (ends.vocab(), ends.hidden());
        let (u_dims, _) = w.get("blocks.0.att.time_faaaa")?;
        let (heads, head_size) = match u_dims[..] {
            [h, n] | [h, n, 1] => (h, n),
            _ => return Err(format!("`blocks.0.att.time_faaaa` is {u_dims:?}")),
        };
        if heads * head_size != hidden {
            return Err(format!(
                "{heads} heads of {head_size} do not make the width {hidden}"
            ));
        }
        let cfg = WorldConfig {
            generation,
            vocab,
            hidden,
            layers: w.layers(),
            heads,
            head_size,
            ffn: w.matrix("blocks.0.ffn.key.weight")?.rows,
        };
        let layers = (0..cfg.layers)
            .map(|i| -> Result<Layer, String> {
                let p = |leaf: &str| format!("blocks.{i}.{leaf}");
                let vector = |leaf: &str| w.vector(&p(leaf), hidden);
                let mixing = if !v6 {
                    Mixing::Fixed {
                        k: vector("att.time_mix_k")?,
                        v: vector("att.time_mix_v")?,
                        r: vector("att.time_mix_r")?,
                        g: vector("att.time_mix_g")?,
                        decay: vector("att.time_decay")?,
                    }
                } else {
                    Mixing::Data {
                        maa_x: vector("att.time_maa_x")?,
                        maa: [
                            vector("att.time_maa_w")?,
                            vector("att.time_maa_k")?,
                            vector("att.time_maa_v")?,
                            vector("att.time_maa_r")?,
                            vector("att.time_maa_g")?,
                        ],
                        maa_w1: w.matrix(&p("att.time_maa_w1"))?,
                        maa_w2: w.matrices(&p("att.time_maa_w2"))?,
                        decay: vector("att.time_decay")?,
                        decay_w1: w.matrix(&p("att.time_decay_w1"))?,
                        decay_w2: w.matrix(&p("att.time_decay_w2"))?,
                    }
                };
                let (ffn_mix_k, ffn_mix_r) = if v6 {
                    (vector("ffn.time_maa_k")?, vector("ffn.time_maa_r")?)
                } else {
                    (vector("ffn.time_mix_k")?, vector("ffn.time_mix_r")?)
                };
                Ok(Layer {
                    ln1: w.norm(&p("ln1"), hidden)?,
                    ln2: w.norm(&p("ln2"), hidden)?,
                    mixing,
                    u: vector("att.time_faaaa")?,
                    receptance: w.matrix(&p("att.receptance.weight"))?,
                    key: w.matrix(&p("att.key.weight"))?,
                    value: w.matrix(&p("att.value.weight"))?,
                    gate: w.matrix(&p("att.gate.weight"))?,
                    output: w.matrix(&p("att.output.weight"))?,
                    ln_x: w.norm(&p("att.ln_x"), hidden)?,
                    ffn_mix_k,
                    ffn_mix_r,
                    ffn_key: w.matrix(&p("ffn.key.weight"))?,
                    ffn_receptance: w.matrix(&p("ffn.receptance.weight"))?,
                    ffn_value: w.matrix(&p("ffn.value.weight"))?,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { cfg, ends, layers })
    }

    /// Feeds one token and returns the logits after it.
    pub fn forward_token(&self, token: u32, state: &mut WorldState) -> Result<Vec<f32>, String> {
        let mut x = self.ends.embed(token)?;
        for (layer, st) in self.layers.iter().zip(&mut state.layers) {
            let xx = layer.ln1.apply(&x, LN_EPS);
            let att = layer.time_mix(&xx, st, self.cfg.head_size);
            st.att_x = xx;
            x.iter_mut().zip(&att).for_each(|(x, a)| *x += a);

            let xx = layer.ln2.apply(&x, LN_EPS);
            let (xk, xr) = match layer.mixing {
                Mixing::Fixed { .. } => (
                    blend(&xx, &st.ffn_x, &layer.ffn_mix_k),
                    blend(&xx, &st.ffn_x, &layer.ffn_mix_r),
                ),
                Mixing::Data { .. } => (
                    shift(&xx, &st.ffn_x, &layer.ffn_mix_k),
                    shift(&xx, &st.ffn_x, &layer.ffn_mix_r),
                ),
            };
            let k: Vec<f32> = layer
                .ffn_key
                .apply(&xk)
                .into_iter()
                .map(|v| v.max(0.0).powi(2))
                .collect();
            let ffn = layer.ffn_value.apply(&k);
            let r = layer.ffn_receptance.apply(&xr);
            st.ffn_x = xx;
            for ((x, f), r) in x.iter_mut().zip(&ffn).zip(&r) {
                *x += sigmoid(*r) * f;
            }
        }
        Ok(self.ends.logits(&x))
    }
}

impl Layer {
    fn time_mix(&self, x: &[f32], st: &mut WorldLayerState, n: usize) -> Vec<f32> {
        let prev = &st.att_x;
        let (xk, xv, xr, xg, w) = match &self.mixing {
            Mixing::Fixed { k, v, r, g, decay } => (
                blend(x, prev, k),
                blend(x, prev, v),
                blend(x, prev, r),
                blend(x, prev, g),
                decay.iter().map(|d| (-d.exp()).exp()).collect::<Vec<_>>(),
            ),
            Mixing::Data {
                maa_x,
                maa,
                maa_w1,
                maa_w2,
                decay,
                decay_w1,
                decay_w2,
            } => {
                let lora_in = shift(x, prev, maa_x);
                let hidden: Vec<f32> = maa_w1
                    .apply_left(&lora_in)
                    .into_iter()
                    .map(f32::tanh)
                    .collect();
                let d = maa_w2.first().map_or(0, |m| m.rows);
                let mixed: Vec<Vec<f32>> = maa
                    .iter()
                    .zip(maa_w2)
                    .enumerate()
                    .map(|(i, (m, w2))| {
                        let correction = w2.apply_left(&hidden[i * d..(i + 1) * d]);
                        let mix: Vec<f32> = m.iter().zip(&correction).map(|(m, c)| m + c).collect();
                        shift(x, prev, &mix)
                    })
                    .collect();
                let [xw, xk, xv, xr, xg] = &mixed[..] else {
                    unreachable!("five mixes")
                };
                let lora = decay_w2.apply_left(
                    &decay_w1
                        .apply_left(xw)
                        .into_iter()
                        .map(f32::tanh)
                        .collect::<Vec<_>>(),
                );
                let w = decay
                    .iter()
                    .zip(&lora)
                    .map(|(d, l)| (-(d + l).exp()).exp())
                    .collect();
                (xk.clone(), xv.clone(), xr.clone(), xg.clone(), w)
            }
        };
        let r = self.receptance.apply(&xr);
        let k = self.key.apply(&xk);
        let v = self.value.apply(&xv);
        let g: Vec<f32> = self.gate.apply(&xg).into_iter().map(silu).collect();

        let mut out = vec![0.0f32; x.len()];
        for h in 0..x.len() / n {
            let base = h * n;
            let s = &mut st.att_kv[h * n * n..(h + 1) * n * n];
            for i in 0..n {
                let (ri, ki, ui, wi) = (r[base + i], k[base + i], self.u[base + i], w[base + i]);
                let row = &mut s[i * n..(i + 1) * n];
                for j in 0..n {
                    let kv = ki * v[base + j];
                    out[base + j] += ri * (ui * kv + row[j]);
                    row[j] = kv + wi * row[j];
                }
            }
        }
        let normed = self.ln_x.apply_groups(&out, n, LN_X_EPS);
        let gated: Vec<f32> = normed.iter().zip(&g).map(|(o, g)| o * g).collect();
        self.output.apply(&gated)
    }
}
