//! The World generations (RWKV-5.2 Eagle, RWKV-6 Finch, RWKV-7 Goose) on the CPU: the engine
//! the chat runs, in every weight format of [`super::WeightDtype`].
//!
//! The math is the reference engines' ([`super::finch`], [`super::v7`]; BlinkDL's `rwkv`
//! 0.8.32), reorganised for speed: a chunk of `T` tokens goes through each layer at once, so
//! every projection is one matrix product over `T` rows ([`super::gemv`], in the chosen weight
//! format), and only the WKV recurrence steps through the tokens (head by head, in parallel:
//! [`super::heads`]). The small LoRA factors of v6 and v7 are never quantized: f32 in the f32
//! format, 16 bits in the others. The tests hold this engine to the reference engines and to
//! the goldens.

use std::sync::Mutex;

use rayon::prelude::*;

use candle_core::{Device, Tensor};

use super::checkpoint::{self, Checkpoint};
use super::linear::{Built, Linear};
use super::reference::{LN_EPS, WorldConfig, WorldState};
use super::{Fingerprint, Generation, LoadError, LoadOptions, WeightDtype, heads, ops, wkv};

struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Norm {
    fn rows(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        ops::layer_norm(x, &self.weight, &self.bias, LN_EPS, &mut out);
        out
    }
}

/// How the time mix shifts its inputs and makes its decay, per generation. Every mix is in the
/// form `x + (prev - x) * mix` (v5.2's `x * m + prev * (1 - m)` is converted at load).
enum Mixing {
    /// v5.2: fixed mixes for k, v, r, g and a fixed decay `exp(-exp(time_decay))`.
    V5 { mix: [Vec<f32>; 4], decay: Vec<f32> },
    /// v6: the mixes of w, k, v, r, g corrected by a LoRA, the decay by another.
    V6(Box<V6Mixing>),
    /// v7: six fixed mixes (r, w, k, v, a, g) and LoRAs for the decay, the in-context learning
    /// rate `a`, the value residual and the gate.
    V7(Box<V7Mixing>),
}

struct V6Mixing {
    maa_x: Vec<f32>,
    maa: [Vec<f32>; 5],
    maa_w1: Linear,
    maa_w2: [Linear; 5],
    decay: Vec<f32>,
    decay_w1: Linear,
    decay_w2: Linear,
}

impl V6Mixing {
    /// The mixed inputs `[k, v, r, g]` and `xw`, the input of [`V6Mixing::decay`]: each mix
    /// corrected by the LoRA of `x + (prev - x) * maa_x`.
    fn inputs(
        &self,
        p: Products,
        x: &[f32],
        prev: &[f32],
    ) -> candle_core::Result<([Vec<f32>; 4], Vec<f32>)> {
        let c = self.maa_x.len();
        let hidden: Vec<f32> = p
            .project(&self.maa_w1, &mix(x, prev, &self.maa_x))?
            .into_iter()
            .map(f32::tanh)
            .collect();
        let d = self.maa_w2[0].cols;
        let hidden = &hidden;
        let correction = |i: usize| {
            move || p.project(&self.maa_w2[i], &columns(hidden, 5 * d, i * d..(i + 1) * d))
        };
        let chains: [_; 5] = std::array::from_fn(correction);
        let corrections = p.all(chains.each_ref().map(|chain| chain as Chain))?;
        let mixed = |i: usize| -> Vec<f32> {
            let m = &self.maa[i];
            x.chunks_exact(c)
                .zip(prev.chunks_exact(c))
                .zip(corrections[i].chunks_exact(c))
                .flat_map(|((x, p), corr)| {
                    (0..c).map(move |j| x[j] + (p[j] - x[j]) * (m[j] + corr[j]))
                })
                .collect()
        };
        let [xw, xk, xv, xr, xg] = std::array::from_fn(mixed);
        Ok(([xk, xv, xr, xg], xw))
    }

    /// The per-token decay `exp(-exp(decay + lora(xw)))`.
    fn decay(&self, p: Products, xw: &[f32]) -> candle_core::Result<Vec<f32>> {
        let tanh: Vec<f32> = p
            .project(&self.decay_w1, xw)?
            .into_iter()
            .map(f32::tanh)
            .collect();
        let mut w = p.project(&self.decay_w2, &tanh)?;
        each_row(&mut w, &self.decay, |l, d| exp(-exp(d + l)));
        Ok(w)
    }
}

struct V7Mixing {
    mix: [Vec<f32>; 6],
    w0: Vec<f32>,
    w1: Linear,
    w2: Linear,
    a0: Vec<f32>,
    a1: Linear,
    a2: Linear,
    /// Layer 0 has none: its value is `v_first`.
    v: Option<(Vec<f32>, Linear, Linear)>,
    g1: Linear,
    g2: Linear,
    k_k: Vec<f32>,
    k_a: Vec<f32>,
    r_k: Vec<f32>,
}

struct Layer {
    ln1: Norm,
    ln2: Norm,
    mixing: Mixing,
    /// v5/v6's bonus of the current token (`time_faaaa`); empty for v7.
    u: Vec<f32>,
    receptance: Linear,
    key: Linear,
    value: Linear,
    /// v5/v6's gate projection (v7's gate is a LoRA).
    gate: Option<Linear>,
    output: Linear,
    ln_x: Norm,
    ffn_mix_k: Vec<f32>,
    /// v5/v6 gate the channel mix by `sigmoid(receptance)`; v7 does not.
    ffn_receptance: Option<(Vec<f32>, Linear)>,
    ffn_key: Linear,
    ffn_value: Linear,
}

/// A World model ready to run: what [`super::Rwkv`] holds for these generations.
pub(super) struct World {
    cfg: WorldConfig,
    fingerprint: Fingerprint,
    /// The embeddings as stored (in the weights' dtype); `ln0` is applied at lookup.
    embeddings: Tensor,
    ln0: Norm,
    layers: Vec<Layer>,
    ln_out: Norm,
    head: Linear,
    dtype: WeightDtype,
    /// Where the projections' weights are; the LoRA factors, the vectors and the state stay
    /// on the host.
    device: Device,
    from_cache: bool,
    /// Serialises calls, so two chats on one model take turns on the thread pool rather than
    /// splitting it (each call already keeps every thread busy). Nothing else depends on it.
    busy: Mutex<()>,
}

/// Reads tensors by normalised name with the shapes the generation expects.
struct Loader<'a> {
    ckpt: &'a Checkpoint,
    built: Built,
}

impl Loader<'_> {
    fn shape(&self, name: &str) -> Result<Vec<usize>, LoadError> {
        self.ckpt
            .info(name)
            .map(|i| i.shape.clone())
            .ok_or_else(|| LoadError::MissingTensor {
                path: self.ckpt.path_of(name).to_owned(),
                name: name.to_owned(),
            })
    }

    /// A vector of `len` values, stored in any shape of that many (`[n]`, `[1, 1, n]`,
    /// `[heads, head_size]`).
    fn flat(&self, name: &str, len: usize) -> Result<Vec<f32>, LoadError> {
        let shape = self.shape(name)?;
        if shape.iter().product::<usize>() != len {
            return Err(LoadError::BadShape {
                path: self.ckpt.path_of(name).to_owned(),
                name: name.to_owned(),
                expected: vec![len],
                found: shape,
            });
        }
        Ok(self
            .ckpt
            .tensor(name, &shape, &Device::Cpu)?
            .flatten_all()?
            .to_vec1()?)
    }

    fn norm(&self, prefix: &str, len: usize) -> Result<Norm, LoadError> {
        Ok(Norm {
            weight: self.flat(&format!("{prefix}.weight"), len)?,
            bias: self.flat(&format!("{prefix}.bias"), len)?,
        })
    }

    fn linear(&mut self, name: &str, rows: usize, cols: usize) -> Result<Linear, LoadError> {
        Linear::new(self.ckpt, name, (rows, cols), 1.0, &mut self.built)
    }

    /// A LoRA factor `[in, out]` with `in` checked.
    fn lora(&self, name: &str, input: usize) -> Result<Linear, LoadError> {
        let shape = self.shape(name)?;
        let [rows, cols] = shape[..] else {
            return Err(self.bad_rank(name, shape));
        };
        if rows != input {
            return Err(LoadError::BadShape {
                path: self.ckpt.path_of(name).to_owned(),
                name: name.to_owned(),
                expected: vec![input, cols],
                found: shape,
            });
        }
        if cols == 0 {
            return Err(LoadError::Tensor(format!(
                "{}: {name} is a LoRA factor of width 0",
                self.ckpt.path_of(name).display()
            )));
        }
        let weight = self.ckpt.tensor(name, &[rows, cols], &Device::Cpu)?;
        Linear::lora(name, &weight, self.built.dtype)
    }

    /// A LoRA pair `x -> [in, d] -> [d, out]` with the widths checked against each other.
    fn lora_pair(
        &self,
        first: &str,
        second: &str,
        width: usize,
    ) -> Result<(Linear, Linear), LoadError> {
        let a = self.lora(first, width)?;
        let b = self.lora(second, a.rows)?;
        Ok((a, b))
    }

    fn bad_rank(&self, name: &str, found: Vec<usize>) -> LoadError {
        LoadError::BadRank {
            path: self.ckpt.path_of(name).to_owned(),
            name: name.to_owned(),
            rank: 2,
            found,
        }
    }
}

impl World {
    pub fn new(ckpt: &Checkpoint, opts: LoadOptions) -> Result<Self, LoadError> {
        let generation = ckpt.generation();
        let mut l = Loader {
            ckpt,
            built: Built::new(ckpt, &opts)?,
        };
        let cfg = infer_config(&l, generation)?;
        check_config(ckpt, &cfg)?;
        let (c, n) = (cfg.hidden, cfg.head_size);
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("rwkv.blocks.{i}");
            let att = |leaf: &str| format!("{p}.attention.{leaf}");
            let ffn = |leaf: &str| format!("{p}.feed_forward.{leaf}");
            let mixing = match generation {
                Generation::V5 => {
                    // v5.2 weighs the current token by the mix; flipped to `x + (prev - x) * m`.
                    let mix = |leaf: &str| -> Result<Vec<f32>, LoadError> {
                        Ok(l.flat(&att(leaf), c)?.iter().map(|m| 1.0 - m).collect())
                    };
                    Mixing::V5 {
                        mix: [
                            mix("time_mix_key")?,
                            mix("time_mix_value")?,
                            mix("time_mix_receptance")?,
                            mix("time_mix_gate")?,
                        ],
                        decay: l
                            .flat(&att("time_decay"), c)?
                            .iter()
                            .map(|d| (-d.exp()).exp())
                            .collect(),
                    }
                }
                Generation::V6 => {
                    let maa_w1 = l.lora(&att("time_maa_w1"), c)?;
                    let w2 = l.ckpt.info(&att("time_maa_w2")).map(|i| i.shape.clone());
                    let w2_name = att("time_maa_w2");
                    let w2 = match w2.as_deref() {
                        Some(&[5, d, out]) if 5 * d == maa_w1.rows && out == c => {
                            l.ckpt.tensor(&w2_name, &[5, d, c], &Device::Cpu)?
                        }
                        _ => {
                            return Err(LoadError::BadShape {
                                path: l.ckpt.path_of(&w2_name).to_owned(),
                                name: w2_name,
                                expected: vec![5, maa_w1.rows / 5, c],
                                found: w2.unwrap_or_default(),
                            });
                        }
                    };
                    let part = |k: usize| {
                        Linear::lora(&format!("{w2_name}.{k}"), &w2.get(k)?, l.built.dtype)
                    };
                    let (decay_w1, decay_w2) =
                        l.lora_pair(&att("time_decay_w1"), &att("time_decay_w2"), c)?;
                    Mixing::V6(Box::new(V6Mixing {
                        maa_x: l.flat(&att("time_maa_x"), c)?,
                        maa: [
                            l.flat(&att("time_maa_w"), c)?,
                            l.flat(&att("time_maa_k"), c)?,
                            l.flat(&att("time_maa_v"), c)?,
                            l.flat(&att("time_maa_r"), c)?,
                            l.flat(&att("time_maa_g"), c)?,
                        ],
                        maa_w1,
                        maa_w2: [part(0)?, part(1)?, part(2)?, part(3)?, part(4)?],
                        decay: l.flat(&att("time_decay"), c)?,
                        decay_w1,
                        decay_w2,
                    }))
                }
                // RWKV-4 checkpoints never reach here (see `super::Rwkv::new`).
                Generation::V7 | Generation::Rwkv4 => {
                    let mix = |leaf: &str| l.flat(&att(&format!("x_{leaf}")), c);
                    let (w1, w2) = l.lora_pair(&att("w1"), &att("w2"), c)?;
                    let (a1, a2) = l.lora_pair(&att("a1"), &att("a2"), c)?;
                    let (g1, g2) = l.lora_pair(&att("g1"), &att("g2"), c)?;
                    let v = if i == 0 {
                        None
                    } else {
                        let (v1, v2) = l.lora_pair(&att("v1"), &att("v2"), c)?;
                        Some((l.flat(&att("v0"), c)?, v1, v2))
                    };
                    Mixing::V7(Box::new(V7Mixing {
                        mix: [
                            mix("r")?,
                            mix("w")?,
                            mix("k")?,
                            mix("v")?,
                            mix("a")?,
                            mix("g")?,
                        ],
                        w0: l.flat(&att("w0"), c)?,
                        w1,
                        w2,
                        a0: l.flat(&att("a0"), c)?,
                        a1,
                        a2,
                        v,
                        g1,
                        g2,
                        k_k: l.flat(&att("k_k"), c)?,
                        k_a: l.flat(&att("k_a"), c)?,
                        r_k: l.flat(&att("r_k"), c)?,
                    }))
                }
            };
            let v7 = generation == Generation::V7;
            let (u, gate) = if v7 {
                (Vec::new(), None)
            } else {
                (
                    l.flat(&att("time_faaaa"), c)?,
                    Some(l.linear(&att("gate.weight"), c, c)?),
                )
            };
            let ffn_mix = |leaf: &str| -> Result<Vec<f32>, LoadError> {
                match generation {
                    Generation::V5 => Ok(l
                        .flat(&ffn(&format!("time_mix_{leaf}")), c)?
                        .iter()
                        .map(|m| 1.0 - m)
                        .collect()),
                    Generation::V6 => l.flat(&ffn(&format!("time_maa_{}", &leaf[..1])), c),
                    _ => l.flat(&ffn(&format!("x_{}", &leaf[..1])), c),
                }
            };
            let ffn_mix_k = ffn_mix("key")?;
            let ffn_receptance = if v7 {
                None
            } else {
                let mix = ffn_mix("receptance")?;
                Some((mix, l.linear(&ffn("receptance.weight"), c, c)?))
            };
            layers.push(Layer {
                ln1: l.norm(&format!("{p}.ln1"), c)?,
                ln2: l.norm(&format!("{p}.ln2"), c)?,
                mixing,
                u,
                receptance: l.linear(&att("receptance.weight"), c, c)?,
                key: l.linear(&att("key.weight"), c, c)?,
                value: l.linear(&att("value.weight"), c, c)?,
                gate,
                output: l.linear(&att("output.weight"), c, c)?,
                ln_x: l.norm(&att("ln_x"), c)?,
                ffn_mix_k,
                ffn_receptance,
                ffn_key: l.linear(&ffn("key.weight"), cfg.ffn, c)?,
                ffn_value: l.linear(&ffn("value.weight"), c, cfg.ffn)?,
            });
        }
        let embeddings = ckpt
            .tensor(checkpoint::EMBEDDING, &[cfg.vocab, c], &Device::Cpu)?
            .to_dtype(opts.dtype.candle())?;
        let ln0 = l.norm("rwkv.blocks.0.pre_ln", c)?;
        let ln_out = l.norm("rwkv.ln_out", c)?;
        let head = l.linear("head.weight", cfg.vocab, c)?;
        let mut crc = crc32fast::Hasher::new();
        for layer in &layers {
            let decay = match &layer.mixing {
                Mixing::V5 { decay, .. } => decay,
                Mixing::V6(m) => &m.decay,
                Mixing::V7(m) => &m.w0,
            };
            for x in decay.iter().chain(&layer.u).chain(&layer.ln_x.weight) {
                crc.update(&x.to_le_bytes());
            }
        }
        for x in &ln_out.weight {
            crc.update(&x.to_le_bytes());
        }
        let fingerprint = Fingerprint {
            generation,
            layers: cfg.layers as u32,
            hidden: c as u32,
            attention: c as u32,
            head_size: n as u32,
            vocab: cfg.vocab as u32,
            weights: crc.finalize(),
        };
        let model = Self {
            cfg,
            fingerprint,
            embeddings,
            ln0,
            layers,
            ln_out,
            head,
            dtype: opts.dtype,
            device: l.built.device.clone(),
            from_cache: l.built.all_cached(),
            busy: Mutex::default(),
        };
        l.built.save_cache(model.projections());
        Ok(model)
    }

    /// The projections in the chosen weight format (not the LoRA factors, never quantized), in
    /// load order.
    fn projections(&self) -> impl Iterator<Item = &Linear> {
        self.layers
            .iter()
            .flat_map(|l| {
                let gate = l.gate.iter();
                let ffn_r = l.ffn_receptance.iter().map(|(_, r)| r);
                [&l.receptance, &l.key, &l.value]
                    .into_iter()
                    .chain(gate)
                    .chain([&l.output])
                    .chain(ffn_r)
                    .chain([&l.ffn_key, &l.ffn_value])
            })
            .chain([&self.head])
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub fn weights_from_cache(&self) -> bool {
        self.from_cache
    }

    pub fn dtype(&self) -> WeightDtype {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn new_state(&self) -> WorldState {
        WorldState::new(&self.cfg)
    }

    /// Feeds one chunk; logits `[T, vocab]` when `all_logits`, else `[1, vocab]`.
    pub fn forward_chunk(
        &self,
        tokens: &[u32],
        state: &mut WorldState,
        all_logits: bool,
    ) -> candle_core::Result<Tensor> {
        let products = if self.device.is_cpu() {
            Products::Host
        } else {
            Products::Candle
        };
        self.run(products, tokens, state, all_logits)
    }

    /// [`World::forward_chunk`] with the projections as candle tensor operations on the
    /// weights' device: what runs on a GPU. On the CPU the host products replace it, and the
    /// tests hold the two to the same goldens.
    pub fn forward_chunk_candle(
        &self,
        tokens: &[u32],
        state: &mut WorldState,
        all_logits: bool,
    ) -> candle_core::Result<Tensor> {
        self.run(Products::Candle, tokens, state, all_logits)
    }

    fn run(
        &self,
        p: Products,
        tokens: &[u32],
        state: &mut WorldState,
        all_logits: bool,
    ) -> candle_core::Result<Tensor> {
        // Taken here, on the caller's thread, then run on one of rayon's threads (see
        // `super::on_pool`). A call the lock turns away (see `super::lock_outside_pool`) runs
        // beside the one holding it: the lock only makes calls take turns.
        let _busy = super::lock_outside_pool(&self.busy);
        match p {
            Products::Host => super::on_pool(|| self.run_locked(p, tokens, state, all_logits)),
            Products::Candle => self.run_locked(p, tokens, state, all_logits),
        }
    }

    fn run_locked(
        &self,
        p: Products,
        tokens: &[u32],
        state: &mut WorldState,
        all_logits: bool,
    ) -> candle_core::Result<Tensor> {
        let (t, c) = (tokens.len(), self.cfg.hidden);
        let mut row = vec![0.0; c];
        let mut x = Vec::with_capacity(t * c);
        for &id in tokens {
            ops::embedding(&self.embeddings, id as usize, &mut row)?;
            x.extend(self.ln0.rows(&row));
        }
        let mut v_first = Vec::new();
        for (layer, st) in self.layers.iter().zip(state.layers.iter_mut()) {
            let xn = layer.ln1.rows(&x);
            let prev = shifted(&xn, &st.att_x);
            let att = layer.time_mix(
                p,
                &xn,
                &prev,
                &mut st.att_kv,
                &mut v_first,
                self.cfg.head_size,
            )?;
            st.att_x.copy_from_slice(&xn[(t - 1) * c..]);
            add(&mut x, &att);

            let xn = layer.ln2.rows(&x);
            let prev = shifted(&xn, &st.ffn_x);
            let ffn = layer.channel_mix(p, &xn, &prev)?;
            st.ffn_x.copy_from_slice(&xn[(t - 1) * c..]);
            add(&mut x, &ffn);
        }
        let rows = if all_logits { t } else { 1 };
        let normed = self.ln_out.rows(&x[(t - rows) * c..]);
        let logits = p.project(&self.head, &normed)?;
        Tensor::from_vec(logits, (rows, self.cfg.vocab), &Device::Cpu)
    }
}

/// Reads the shapes off the tensors.
fn infer_config(l: &Loader, generation: Generation) -> Result<WorldConfig, LoadError> {
    let emb = l.shape(checkpoint::EMBEDDING)?;
    let [vocab, hidden] = emb[..] else {
        return Err(l.bad_rank(checkpoint::EMBEDDING, emb));
    };
    let layers = (0..)
        .take_while(|i| {
            l.ckpt
                .info(&format!("rwkv.blocks.{i}.ln1.weight"))
                .is_some()
        })
        .count();
    if layers == 0 {
        return Err(LoadError::MissingTensor {
            path: l.ckpt.path_of("").to_owned(),
            name: "rwkv.blocks.0.ln1.weight".into(),
        });
    }
    let heads_name = match generation {
        Generation::V7 => "rwkv.blocks.0.attention.r_k",
        _ => "rwkv.blocks.0.attention.time_faaaa",
    };
    let heads_shape = l.shape(heads_name)?;
    let (heads, head_size) = match heads_shape[..] {
        [h, n] | [h, n, 1] if h * n == hidden => (h, n),
        _ => {
            return Err(LoadError::BadShape {
                path: l.ckpt.path_of(heads_name).to_owned(),
                name: heads_name.to_owned(),
                expected: vec![hidden / 64, 64],
                found: heads_shape,
            });
        }
    };
    let ffn_name = "rwkv.blocks.0.feed_forward.key.weight";
    let ffn = l.shape(ffn_name)?;
    let [ffn, _] = ffn[..] else {
        return Err(l.bad_rank(ffn_name, ffn));
    };
    Ok(WorldConfig {
        generation,
        vocab,
        hidden,
        layers,
        heads,
        head_size,
        ffn,
    })
}

/// Checks a `config.json` beside the weights (the HF and fla-hub layouts ship one) against
/// the shapes: a config for another model is refused rather than ignored.
fn check_config(ckpt: &Checkpoint, cfg: &WorldConfig) -> Result<(), LoadError> {
    let Some(path) = &ckpt.files.config else {
        return Ok(());
    };
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.clone(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| LoadError::BadConfig {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    checkpoint::check_config_generation(
        path,
        json.get("model_type").and_then(|v| v.as_str()),
        cfg.generation,
    )?;
    let checks = [
        ("vocab_size", cfg.vocab),
        ("hidden_size", cfg.hidden),
        ("num_hidden_layers", cfg.layers),
        ("head_size", cfg.head_size),
        ("head_dim", cfg.head_size),
    ];
    for (field, weights_value) in checks {
        let Some(value) = json.get(field).and_then(|v| v.as_u64()) else {
            continue;
        };
        if value as usize != weights_value {
            return Err(LoadError::ConfigMismatch {
                config: path.clone(),
                weights: ckpt.files.weights[0].clone(),
                field,
                config_value: value as usize,
                weights_value,
            });
        }
    }
    Ok(())
}

/// The previous token's row for each row of `x`: `first` then rows `0..T-1`.
fn shifted(x: &[f32], first: &[f32]) -> Vec<f32> {
    let c = first.len();
    let mut out = Vec::with_capacity(x.len());
    out.extend_from_slice(first);
    out.extend_from_slice(&x[..x.len() - c]);
    out
}

/// `x + (prev - x) * mix` row by row.
fn mix(x: &[f32], prev: &[f32], mix: &[f32]) -> Vec<f32> {
    let c = mix.len();
    x.chunks_exact(c)
        .zip(prev.chunks_exact(c))
        .flat_map(|(x, p)| x.iter().zip(p).zip(mix).map(|((x, p), m)| x + (p - x) * m))
        .collect()
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}

/// One chain of products (and the maps between them) of a layer, independent of the others
/// it runs with.
type Chain<'a> = &'a (dyn Fn() -> candle_core::Result<Vec<f32>> + Sync);

/// How a chunk's matrix products run: on host buffers (the CPU engine), or as candle
/// tensors on the weights' device (GPUs; on the CPU, what the tests hold that path to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Products {
    Host,
    Candle,
}

impl Products {
    /// `W · x` for each row of `x`.
    fn project(self, w: &Linear, x: &[f32]) -> candle_core::Result<Vec<f32>> {
        let t = x.len() / w.cols;
        match self {
            Products::Host => {
                let mut out = vec![0.0; t * w.rows];
                w.host(x, &mut out)?;
                Ok(out)
            }
            Products::Candle => {
                let x = Tensor::from_slice(x, (t, w.cols), w.device())?;
                w.forward_candle(&x)?.flatten_all()?.to_vec1()
            }
        }
    }

    /// Runs independent chains, on the host all at once: rayon interleaves their products'
    /// row tasks, so the small LoRA products fill the large ones' gaps and no thread idles at
    /// the end of each product. On a device they run one after another: each product is
    /// already parallel there, and ends by copying its output back.
    fn all<const N: usize>(self, chains: [Chain; N]) -> candle_core::Result<[Vec<f32>; N]> {
        let mut outs: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
        let run = |(out, chain): (&mut Vec<f32>, &Chain)| chain().map(|v| *out = v);
        match self {
            Products::Host => outs
                .par_iter_mut()
                .zip(chains.par_iter())
                .try_for_each(run)?,
            Products::Candle => outs.iter_mut().zip(chains.iter()).try_for_each(run)?,
        }
        Ok(outs)
    }
}

/// Rows of `x` mapped in place with the matching element of `by` (`[hidden]`), the rows split
/// across rayon's threads: these maps take exponentials of every channel of every token.
fn each_row(x: &mut [f32], by: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    x.par_chunks_mut(by.len())
        .with_min_len(16)
        .for_each(|row| row.iter_mut().zip(by).for_each(|(x, b)| *x = f(*x, *b)));
}

/// [`wkv::exp`], which vectorises where libm's does not.
fn exp(x: f32) -> f32 {
    wkv::exp(x)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// The columns `range` of each row of `x` (rows of `width`).
fn columns(x: &[f32], width: usize, range: std::ops::Range<usize>) -> Vec<f32> {
    x.chunks_exact(width)
        .flat_map(|row| row[range.clone()].iter().copied())
        .collect()
}

impl Layer {
    /// The time mix of the normed rows `x` (their predecessors in `prev`), advancing `kv`.
    fn time_mix(
        &self,
        p: Products,
        x: &[f32],
        prev: &[f32],
        kv: &mut [f32],
        v_first: &mut Vec<f32>,
        n: usize,
    ) -> candle_core::Result<Vec<f32>> {
        let out = match &self.mixing {
            Mixing::V5 { mix: m, decay } => {
                let inputs = [0, 1, 2, 3].map(|i| mix(x, prev, &m[i]));
                let w = || Ok(decay.repeat(x.len() / decay.len()));
                self.finch_time_mix(p, inputs, &w, kv, n)?
            }
            Mixing::V6(m) => {
                let (inputs, xw) = m.inputs(p, x, prev)?;
                self.finch_time_mix(p, inputs, &|| m.decay(p, &xw), kv, n)?
            }
            Mixing::V7(m) => self.v7_time_mix(p, m, x, prev, kv, v_first, n)?,
        };
        p.project(&self.output, &out)
    }

    /// v5/v6's WKV, gated by `silu(gate)`, over the mixed inputs `[k, v, r, g]` and the
    /// per-token decay `decay` makes; before the output projection.
    fn finch_time_mix(
        &self,
        p: Products,
        [xk, xv, xr, xg]: [Vec<f32>; 4],
        decay: Chain,
        kv: &mut [f32],
        n: usize,
    ) -> candle_core::Result<Vec<f32>> {
        let gate = self
            .gate
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("v5/v6 layer without a gate".into()))?;
        let [w, r, k, v, g] = p.all([
            decay,
            &|| p.project(&self.receptance, &xr),
            &|| p.project(&self.key, &xk),
            &|| p.project(&self.value, &xv),
            &|| {
                let g = p.project(gate, &xg)?;
                Ok(g.into_iter().map(|g| g * sigmoid(g)).collect())
            },
        ])?;
        let kind = heads::Kind::Finch { u: &self.u };
        Ok(self.heads([&r, &k, &v, &w, &g], &kind, kv, n))
    }

    /// The recurrence of every head over `[r, k, v, w, g]`, normed by `ln_x` and gated.
    fn heads(
        &self,
        [r, k, v, w, g]: [&[f32]; 5],
        kind: &heads::Kind,
        kv: &mut [f32],
        n: usize,
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; r.len()];
        let rows = heads::Rows {
            r,
            k,
            v,
            w,
            g,
            ln_weight: &self.ln_x.weight,
            ln_bias: &self.ln_x.bias,
        };
        heads::run(&rows, kind, kv, n, &mut out);
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn v7_time_mix(
        &self,
        p: Products,
        m: &V7Mixing,
        x: &[f32],
        prev: &[f32],
        kv: &mut [f32],
        v_first: &mut Vec<f32>,
        n: usize,
    ) -> candle_core::Result<Vec<f32>> {
        let c = self.ln1.weight.len();
        let [xr, xw, xk, xv, xa, xg] = [0, 1, 2, 3, 4, 5].map(|i| mix(x, prev, &m.mix[i]));
        let [r, w, mut k, mut v, a, g, residual] = p.all([
            &|| p.project(&self.receptance, &xr),
            &|| {
                let tanh: Vec<f32> = p.project(&m.w1, &xw)?.into_iter().map(f32::tanh).collect();
                let mut w = p.project(&m.w2, &tanh)?;
                each_row(
                    &mut w,
                    &m.w0,
                    |l, w0| exp(-V7_DECAY_SCALE * sigmoid(w0 + l)),
                );
                Ok(w)
            },
            &|| p.project(&self.key, &xk),
            &|| p.project(&self.value, &xv),
            &|| {
                let mut a = p.project(&m.a2, &p.project(&m.a1, &xa)?)?;
                each_row(&mut a, &m.a0, |l, a0| sigmoid(a0 + l));
                Ok(a)
            },
            &|| {
                let sig: Vec<f32> = p.project(&m.g1, &xg)?.into_iter().map(sigmoid).collect();
                p.project(&m.g2, &sig)
            },
            // The value residual's gate, before its bias; layer 0 has none (and this is empty,
            // unread: the match on `m.v` below takes layer 0's value as `v_first` instead).
            &|| match &m.v {
                Some((_, v1, v2)) => p.project(v2, &p.project(v1, &xv)?),
                None => Ok(Vec::new()),
            },
        ])?;
        // κ̂: the key scaled by k_k, L2-normalised per head (F.normalize, eps 1e-12).
        let mut kk: Vec<f32> = k
            .chunks_exact(c)
            .flat_map(|k| k.iter().zip(&m.k_k).map(|(k, s)| k * s))
            .collect();
        for head in kk.chunks_exact_mut(n) {
            let norm = head.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            head.iter_mut().for_each(|v| *v /= norm);
        }
        for (row, a) in k.chunks_exact_mut(c).zip(a.chunks_exact(c)) {
            for ((k, a), ka) in row.iter_mut().zip(a).zip(&m.k_a) {
                *k *= 1.0 + (a - 1.0) * ka;
            }
        }
        match &m.v {
            None => *v_first = v.clone(),
            Some((v0, _, _)) => {
                if v_first.len() != v.len() {
                    candle_core::bail!("layer 0 gave no value for the value residual");
                }
                for (row, (first, gate)) in v
                    .chunks_exact_mut(c)
                    .zip(v_first.chunks_exact(c).zip(residual.chunks_exact(c)))
                {
                    for (((v, f), l), v0) in row.iter_mut().zip(first).zip(gate).zip(v0) {
                        *v += (f - *v) * sigmoid(v0 + l);
                    }
                }
            }
        }
        let kind = heads::Kind::Goose {
            kk: &kk,
            a: &a,
            r_k: &m.r_k,
        };
        Ok(self.heads([&r, &k, &v, &w, &g], &kind, kv, n))
    }

    fn channel_mix(&self, p: Products, x: &[f32], prev: &[f32]) -> candle_core::Result<Vec<f32>> {
        let value = || {
            let k: Vec<f32> = p
                .project(&self.ffn_key, &mix(x, prev, &self.ffn_mix_k))?
                .into_iter()
                .map(|k| {
                    let relu = k.max(0.0);
                    relu * relu
                })
                .collect();
            p.project(&self.ffn_value, &k)
        };
        let Some((mix_r, receptance)) = &self.ffn_receptance else {
            return value();
        };
        let [mut out, r] = p.all([&value, &|| p.project(receptance, &mix(x, prev, mix_r))])?;
        out.iter_mut().zip(r).for_each(|(o, r)| *o *= sigmoid(r));
        Ok(out)
    }
}

/// `exp(-0.5)` as rwkv pip writes it: v7's decay is `exp(-0.606531 · sigmoid(w0 + lora))`.
const V7_DECAY_SCALE: f32 = 0.606531;
