//! RWKV-4 (Raven, Pile): its layers, its recurrent state, and the candle path that runs it on
//! GPUs; the host path is [`super::host`].
//!
//! The residual stream stays in f32 whatever the weights' dtype; only the matrix products run
//! in the weights' dtype, and the layer rescaling of transformers keeps their outputs in range.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, Checkpoint};
use super::config::Config;
use super::linear::{Built, Linear};
use super::wkv::{self, Accumulators, WkvParams};
use super::{Fingerprint, Generation, LoadError, LoadOptions, WeightDtype};

mod host;

/// The recurrent state of one layer after some tokens. Vectors of `hidden_size` (shifts) or
/// `attention_hidden_size` (accumulators), in f32 on the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerState {
    /// The channel mix's input (after `ln2`) at the previous token: its token shift.
    pub ffn_x: Vec<f32>,
    /// The time mix's input (after `ln1`) at the previous token: its token shift.
    pub att_x: Vec<f32>,
    /// WKV numerator, `sum exp(k_i - max) * v_i` over past tokens with decay (`aa`).
    pub att_num: Vec<f32>,
    /// WKV denominator, `sum exp(k_i - max)` with decay (`bb`).
    pub att_den: Vec<f32>,
    /// The exponent both sums are scaled by (`pp`), so that neither overflows.
    pub att_max: Vec<f32>,
}

/// Everything the model remembers of the tokens it has read: `5 * layers * hidden` numbers,
/// whatever the length of the text. Saving it is saving the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rwkv4State {
    pub layers: Vec<LayerState>,
}

impl Rwkv4State {
    /// The state before any token: zeros, and a running maximum of `-1e30` so the first
    /// token's weight is exactly one.
    pub fn new(cfg: &Config) -> Self {
        let (h, a) = (cfg.hidden_size, cfg.attention_size());
        let layer = LayerState {
            ffn_x: vec![0.0; h],
            att_x: vec![0.0; h],
            att_num: vec![0.0; a],
            att_den: vec![0.0; a],
            att_max: vec![-1e30; a],
        };
        Self {
            layers: vec![layer; cfg.num_hidden_layers],
        }
    }

    /// True when every vector has the length the model with `fingerprint` uses: a state read
    /// from disk can pass its checksum and still be of another shape (edited, or written by a
    /// bug), and must then be rebuilt rather than fed to the model.
    pub fn fits(&self, fingerprint: &Fingerprint) -> bool {
        let (h, a) = (fingerprint.hidden as usize, fingerprint.attention as usize);
        self.layers.len() == fingerprint.layers as usize
            && self.layers.iter().all(|l| {
                l.ffn_x.len() == h
                    && l.att_x.len() == h
                    && l.att_num.len() == a
                    && l.att_den.len() == a
                    && l.att_max.len() == a
            })
    }

    /// Bytes the state takes in memory or on disk (before any header).
    pub fn size_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                4 * (l.ffn_x.len()
                    + l.att_x.len()
                    + l.att_num.len()
                    + l.att_den.len()
                    + l.att_max.len())
            })
            .sum()
    }
}
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    /// The same parameters on the host, for [`host`].
    host_weight: Vec<f32>,
    host_bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    fn new(
        ckpt: &Checkpoint,
        prefix: &str,
        size: usize,
        eps: f64,
        dev: &Device,
    ) -> Result<Self, LoadError> {
        let weight = ckpt.tensor(&format!("{prefix}.weight"), &[size], dev)?;
        let bias = ckpt.tensor(&format!("{prefix}.bias"), &[size], dev)?;
        Ok(Self {
            host_weight: weight.to_vec1()?,
            host_bias: bias.to_vec1()?,
            weight,
            bias,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// A token-shift mix: `x * mix + prev * (1 - mix)`, with `1 - mix` computed once at load.
struct Mix {
    mix: Tensor,
    rest: Tensor,
    host_mix: Vec<f32>,
    host_rest: Vec<f32>,
}

impl Mix {
    fn new(ckpt: &Checkpoint, name: &str, size: usize, dev: &Device) -> Result<Self, LoadError> {
        let mix = ckpt.tensor(name, &[size], dev)?;
        let rest = mix.affine(-1.0, 1.0)?;
        Ok(Self {
            host_mix: mix.to_vec1()?,
            host_rest: rest.to_vec1()?,
            mix,
            rest,
        })
    }

    fn forward(&self, x: &Tensor, prev: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_mul(&self.mix)? + prev.broadcast_mul(&self.rest)?
    }
}
struct TimeMix {
    mix_k: Mix,
    mix_v: Mix,
    mix_r: Mix,
    key: Linear,
    value: Linear,
    receptance: Linear,
    output: Linear,
    wkv: WkvParams,
}

struct ChannelMix {
    mix_k: Mix,
    mix_r: Mix,
    key: Linear,
    receptance: Linear,
    value: Linear,
}

struct Block {
    pre_ln: Option<LayerNorm>,
    ln1: LayerNorm,
    ln2: LayerNorm,
    attention: TimeMix,
    feed_forward: ChannelMix,
}
/// An RWKV-4 language model ready to run: what [`super::Rwkv`] holds for this generation.
pub(super) struct Rwkv4 {
    cfg: Config,
    fingerprint: Fingerprint,
    embeddings: Tensor,
    blocks: Vec<Block>,
    ln_out: LayerNorm,
    head: Linear,
    dtype: WeightDtype,
    device: Device,
    /// The CPU forward pass's buffers, kept between calls.
    scratch: Mutex<host::Scratch>,
    /// Whether every quantized matrix came from the weight cache.
    from_cache: bool,
}

impl Rwkv4 {
    /// Builds the model from an opened checkpoint, names mirroring the Hugging Face layout.
    pub fn new(cfg: &Config, ckpt: &Checkpoint, opts: LoadOptions) -> Result<Self, LoadError> {
        let mut built = Built::new(ckpt, &opts)?;
        let device = built.device.clone();
        let (h, a, f, v) = (
            cfg.hidden_size,
            cfg.attention_size(),
            cfg.ffn_size(),
            cfg.vocab_size,
        );
        let eps = cfg.layer_norm_epsilon;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("rwkv.blocks.{i}");
            // transformers divides these two by 2^(i / rescale_every) for inference and halves
            // the residual stream to match; powers of two keep it exact.
            let scale = match cfg.rescale_every {
                0 => 1.0,
                every => 0.5f64.powi((i / every) as i32),
            };
            let att = format!("{p}.attention");
            let ffn = format!("{p}.feed_forward");
            let time_decay = ckpt.tensor(&format!("{att}.time_decay"), &[a], &Device::Cpu)?;
            let time_first = ckpt.tensor(&format!("{att}.time_first"), &[a], &Device::Cpu)?;
            let decay = time_decay
                .to_vec1::<f32>()?
                .into_iter()
                .map(|w| -w.exp())
                .collect();
            blocks.push(Block {
                pre_ln: if i == 0 {
                    Some(LayerNorm::new(
                        ckpt,
                        &format!("{p}.pre_ln"),
                        h,
                        eps,
                        &device,
                    )?)
                } else {
                    None
                },
                ln1: LayerNorm::new(ckpt, &format!("{p}.ln1"), h, eps, &device)?,
                ln2: LayerNorm::new(ckpt, &format!("{p}.ln2"), h, eps, &device)?,
                attention: TimeMix {
                    mix_k: Mix::new(ckpt, &format!("{att}.time_mix_key"), h, &device)?,
                    mix_v: Mix::new(ckpt, &format!("{att}.time_mix_value"), h, &device)?,
                    mix_r: Mix::new(ckpt, &format!("{att}.time_mix_receptance"), h, &device)?,
                    key: Linear::new(ckpt, &format!("{att}.key.weight"), (a, h), 1.0, &mut built)?,
                    value: Linear::new(
                        ckpt,
                        &format!("{att}.value.weight"),
                        (a, h),
                        1.0,
                        &mut built,
                    )?,
                    receptance: Linear::new(
                        ckpt,
                        &format!("{att}.receptance.weight"),
                        (a, h),
                        1.0,
                        &mut built,
                    )?,
                    output: Linear::new(
                        ckpt,
                        &format!("{att}.output.weight"),
                        (h, a),
                        scale,
                        &mut built,
                    )?,
                    wkv: WkvParams {
                        decay,
                        first: time_first.to_vec1::<f32>()?,
                    },
                },
                feed_forward: ChannelMix {
                    mix_k: Mix::new(ckpt, &format!("{ffn}.time_mix_key"), h, &device)?,
                    mix_r: Mix::new(ckpt, &format!("{ffn}.time_mix_receptance"), h, &device)?,
                    key: Linear::new(ckpt, &format!("{ffn}.key.weight"), (f, h), 1.0, &mut built)?,
                    receptance: Linear::new(
                        ckpt,
                        &format!("{ffn}.receptance.weight"),
                        (h, h),
                        1.0,
                        &mut built,
                    )?,
                    value: Linear::new(
                        ckpt,
                        &format!("{ffn}.value.weight"),
                        (h, f),
                        scale,
                        &mut built,
                    )?,
                },
            });
        }
        let embeddings = ckpt
            .tensor(checkpoint::EMBEDDING, &[v, h], &device)?
            .to_dtype(opts.dtype.candle())?;
        let ln_out = LayerNorm::new(ckpt, "rwkv.ln_out", h, eps, &device)?;
        let mut crc = crc32fast::Hasher::new();
        for block in &blocks {
            for x in block
                .attention
                .wkv
                .decay
                .iter()
                .chain(&block.attention.wkv.first)
            {
                crc.update(&x.to_le_bytes());
            }
        }
        for x in ln_out.weight.to_vec1::<f32>()? {
            crc.update(&x.to_le_bytes());
        }
        let fingerprint = Fingerprint {
            generation: Generation::Rwkv4,
            layers: cfg.num_hidden_layers as u32,
            hidden: h as u32,
            attention: a as u32,
            head_size: 0,
            vocab: v as u32,
            weights: crc.finalize(),
        };
        let model = Self {
            cfg: cfg.clone(),
            fingerprint,
            embeddings,
            blocks,
            ln_out,
            head: Linear::new(ckpt, "head.weight", (v, h), 1.0, &mut built)?,
            dtype: opts.dtype,
            device,
            scratch: Mutex::default(),
            from_cache: built.all_cached(),
        };
        built.save_cache(model.linears());
        Ok(model)
    }

    /// Every projection, in load order.
    fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.blocks
            .iter()
            .flat_map(|b| {
                let (a, f) = (&b.attention, &b.feed_forward);
                [
                    &a.key,
                    &a.value,
                    &a.receptance,
                    &a.output,
                    &f.key,
                    &f.receptance,
                    &f.value,
                ]
            })
            .chain([&self.head])
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// True when the quantized weights were read from the weight cache, not made by this load.
    pub fn weights_from_cache(&self) -> bool {
        self.from_cache
    }

    pub fn dtype(&self) -> WeightDtype {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn new_state(&self) -> Rwkv4State {
        Rwkv4State::new(&self.cfg)
    }

    /// Feeds one chunk in sequence mode: the projections of all tokens are one matrix product
    /// each, only the WKV recurrence steps through time. Returns logits `[T, vocab]` when
    /// `all_logits`, else `[1, vocab]` for the last token.
    pub fn forward_chunk(
        &self,
        tokens: &[u32],
        state: &mut Rwkv4State,
        all_logits: bool,
    ) -> candle_core::Result<Tensor> {
        if !self.device.is_cpu() {
            return self.forward_chunk_candle(tokens, state, all_logits);
        }
        // Locked here, on the caller's thread, then run on one of rayon's threads (see
        // `super::on_pool`); a call the lock turns away (see `super::lock_outside_pool`) runs
        // with buffers of its own.
        let mut own;
        let mut locked = super::lock_outside_pool(&self.scratch);
        let scratch: &mut host::Scratch = match locked.as_deref_mut() {
            Some(shared) => shared,
            None => {
                own = host::Scratch::default();
                &mut own
            }
        };
        super::on_pool(|| self.forward_host(scratch, tokens, state, all_logits))
    }

    /// [`Rwkv4::forward_chunk`] as candle tensor operations: what runs on a GPU. On the CPU the
    /// host path replaces it, and the tests hold the two to each other.
    pub fn forward_chunk_candle(
        &self,
        tokens: &[u32],
        state: &mut Rwkv4State,
        all_logits: bool,
    ) -> candle_core::Result<Tensor> {
        let t = tokens.len();
        let ids = Tensor::from_slice(tokens, t, &self.device)?;
        let mut x = self
            .embeddings
            .index_select(&ids, 0)?
            .to_dtype(DType::F32)?;
        let every = self.cfg.rescale_every;
        for (i, (block, st)) in self.blocks.iter().zip(state.layers.iter_mut()).enumerate() {
            x = block.forward(&x, st)?;
            if every > 0 && (i + 1) % every == 0 {
                x = x.affine(0.5, 0.0)?;
            }
        }
        let x = if all_logits {
            x
        } else {
            x.narrow(0, t - 1, 1)?
        };
        self.head.forward(&self.ln_out.forward(&x)?)
    }
}
/// The previous token's row for each row of `x` `[T, n]`: `prev` then rows `0..T-1`.
fn shift(x: &Tensor, prev: &[f32]) -> candle_core::Result<Tensor> {
    let (t, n) = x.dims2()?;
    let first = Tensor::from_slice(prev, (1, n), x.device())?;
    if t == 1 {
        Ok(first)
    } else {
        Tensor::cat(&[&first, &x.narrow(0, 0, t - 1)?], 0)
    }
}

fn last_row(x: &Tensor) -> candle_core::Result<Vec<f32>> {
    let t = x.dim(0)?;
    x.get(t - 1)?.to_vec1::<f32>()
}

impl Block {
    fn forward(&self, x: &Tensor, st: &mut LayerState) -> candle_core::Result<Tensor> {
        let x = match &self.pre_ln {
            Some(ln) => ln.forward(x)?,
            None => x.clone(),
        };
        let xa = self.ln1.forward(&x)?;
        let x = (&x + self.attention.forward(&xa, st)?)?;
        st.att_x = last_row(&xa)?;
        let xf = self.ln2.forward(&x)?;
        let x = (&x + self.feed_forward.forward(&xf, &st.ffn_x)?)?;
        st.ffn_x = last_row(&xf)?;
        Ok(x)
    }
}

impl TimeMix {
    fn forward(&self, xa: &Tensor, st: &mut LayerState) -> candle_core::Result<Tensor> {
        let prev = shift(xa, &st.att_x)?;
        let k = self.key.forward(&self.mix_k.forward(xa, &prev)?)?;
        let v = self.value.forward(&self.mix_v.forward(xa, &prev)?)?;
        let r =
            candle_nn::ops::sigmoid(&self.receptance.forward(&self.mix_r.forward(xa, &prev)?)?)?;
        let shape = k.shape().clone();
        let k = k.flatten_all()?.to_vec1::<f32>()?;
        let v = v.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; k.len()];
        let acc = Accumulators {
            num: &mut st.att_num,
            den: &mut st.att_den,
            max: &mut st.att_max,
        };
        wkv::wkv(&self.wkv, &k, &v, acc, &mut out);
        let wkv = Tensor::from_vec(out, shape, xa.device())?;
        self.output.forward(&(r * wkv)?)
    }
}

impl ChannelMix {
    fn forward(&self, xf: &Tensor, prev: &[f32]) -> candle_core::Result<Tensor> {
        let prev = shift(xf, prev)?;
        let k = self
            .key
            .forward(&self.mix_k.forward(xf, &prev)?)?
            .relu()?
            .sqr()?;
        let r =
            candle_nn::ops::sigmoid(&self.receptance.forward(&self.mix_r.forward(xf, &prev)?)?)?;
        r * self.value.forward(&k)?
    }
}
