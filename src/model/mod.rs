//! RWKV-4 on candle: the model, its recurrent [`State`], and loading from any checkpoint layout.
//!
//! The residual stream stays in f32 whatever the weights' dtype; only the matrix products run
//! in the weights' dtype, and the layer rescaling of transformers keeps their outputs in range.

mod cache;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod finch;
pub mod gemv;
mod host;
pub mod reference;
pub mod v7;
mod wkv;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use candle_core::{CpuStorage, D, DType, Device, Storage, Tensor};
use serde::{Deserialize, Serialize};

pub use checkpoint::{Checkpoint, ModelFiles};
pub use config::Config;
pub use error::LoadError;
use wkv::{Accumulators, WkvParams};

/// How the large matrices are held in memory. `Q8` and `Q4` are blocks of 32 weights with
/// one f16 scale (see [`gemv`]), quantized from f32 at load time; they run on the CPU only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
    Q8,
    Q4,
}

impl WeightDtype {
    pub const ALL: [WeightDtype; 5] = [
        WeightDtype::F32,
        WeightDtype::F16,
        WeightDtype::Bf16,
        WeightDtype::Q8,
        WeightDtype::Q4,
    ];

    /// The candle dtype of the tensors held densely: every matrix for the float formats, the
    /// embeddings (only looked up, never multiplied) for the quantized ones.
    pub fn candle(self) -> DType {
        match self {
            WeightDtype::F32 => DType::F32,
            WeightDtype::F16 | WeightDtype::Q8 | WeightDtype::Q4 => DType::F16,
            WeightDtype::Bf16 => DType::BF16,
        }
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, WeightDtype::Q8 | WeightDtype::Q4)
    }

    /// Memory that `weights` weights take in this format, block scales included.
    pub fn bytes(self, weights: u64) -> u64 {
        let scales = 2 * weights.div_ceil(gemv::BLOCK as u64);
        match self {
            WeightDtype::F32 => 4 * weights,
            WeightDtype::F16 | WeightDtype::Bf16 => 2 * weights,
            WeightDtype::Q8 => weights + scales,
            WeightDtype::Q4 => weights.div_ceil(2) + scales,
        }
    }
}

impl FromStr for WeightDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(WeightDtype::F32),
            "f16" | "fp16" | "float16" => Ok(WeightDtype::F16),
            "bf16" | "bfloat16" => Ok(WeightDtype::Bf16),
            "q8" | "q8_0" | "int8" => Ok(WeightDtype::Q8),
            "q4" | "q4_0" | "int4" => Ok(WeightDtype::Q4),
            _ => Err(format!(
                "unknown dtype `{s}` (expected f32, f16, bf16, q8 or q4)"
            )),
        }
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::Q8 => "q8",
            WeightDtype::Q4 => "q4",
        })
    }
}

/// Where the model runs: `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (expected cpu, cuda or cuda:N)")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    pub fn open(self) -> Result<Device, LoadError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) if cfg!(feature = "cuda") => {
                Device::new_cuda(n).map_err(|e| LoadError::Tensor(format!("cannot open cuda:{n}: {e}")))
            }
            DeviceSpec::Cuda(_) => Err(LoadError::Tensor(
                "this rwkv-chat was built without CUDA; rebuild with `cargo build --release --features cuda`"
                    .into(),
            )),
        }
    }
}

/// What to load and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    pub dtype: WeightDtype,
    pub device: DeviceSpec,
    /// Where to keep q8 and q4 weights between loads (see [`cache`]); `None` quantizes at
    /// every load.
    pub weight_cache: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: WeightDtype::F32,
            device: DeviceSpec::Cpu,
            weight_cache: None,
        }
    }
}

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
pub struct State {
    pub layers: Vec<LayerState>,
}

impl State {
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

/// A bias-free projection `[out, in]`, held in the chosen weight format.
struct Linear {
    /// The checkpoint name, which also names it in the weight cache.
    name: String,
    weight: Weight,
    rows: usize,
    cols: usize,
    /// transformers' power-of-two layer rescaling. On the CPU it multiplies the outputs (exact
    /// for a power of two), so the weights are used as loaded instead of being copied to
    /// scale them; on a GPU the products run in the weights' dtype, so it is folded into the
    /// weights to keep f16 outputs in range, and this is 1.
    out_scale: f32,
}

enum Weight {
    /// f32, f16 or bf16 in a candle tensor: read in place by the host products on the CPU,
    /// multiplied by candle's matmul on a GPU.
    Dense(Tensor),
    Q8(gemv::Q8),
    Q4(gemv::Q4),
}

/// Runs `f` on the contiguous f32 data of a host tensor, without copying it.
fn with_host_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    else {
        candle_core::bail!("expected a contiguous f32 tensor on the CPU");
    };
    Ok(f(&data[start..end]))
}

impl Linear {
    fn new(
        ckpt: &Checkpoint,
        name: &str,
        (rows, cols): (usize, usize),
        scale: f64,
        opts: &mut Built,
    ) -> Result<Self, LoadError> {
        if let Some(weight) = opts.cache.as_mut().and_then(|c| c.take(name, rows, cols)) {
            return Ok(Self {
                name: name.to_owned(),
                weight,
                rows,
                cols,
                out_scale: scale as f32,
            });
        }
        let weight = ckpt.tensor(name, &[rows, cols], &opts.device)?;
        let (weight, out_scale) = match opts.dtype {
            WeightDtype::Q8 => (
                Weight::Q8(with_host_f32(&weight, |w| gemv::Q8::quantize(w, cols))?),
                scale,
            ),
            WeightDtype::Q4 => (
                Weight::Q4(with_host_f32(&weight, |w| gemv::Q4::quantize(w, cols))?),
                scale,
            ),
            dense if opts.device.is_cpu() => {
                (Weight::Dense(weight.to_dtype(dense.candle())?), scale)
            }
            dense => (
                Weight::Dense(weight.affine(scale, 0.0)?.to_dtype(dense.candle())?),
                1.0,
            ),
        };
        Ok(Self {
            name: name.to_owned(),
            weight,
            rows,
            cols,
            out_scale: out_scale as f32,
        })
    }

    /// Runs `f` on the weights as host rows. Fails for tensors off the CPU.
    fn with_rows<R>(&self, f: impl FnOnce(gemv::Rows<'_>) -> R) -> candle_core::Result<R> {
        let w = match &self.weight {
            Weight::Q8(q) => return Ok(f(gemv::Rows::Q8(q))),
            Weight::Q4(q) => return Ok(f(gemv::Rows::Q4(q))),
            Weight::Dense(w) => w,
        };
        let (storage, layout) = w.storage_and_layout();
        let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("expected contiguous weights on the CPU");
        };
        Ok(match cpu {
            CpuStorage::F32(v) => f(gemv::Rows::F32(&v[start..end])),
            CpuStorage::F16(v) => f(gemv::Rows::F16(&v[start..end])),
            CpuStorage::BF16(v) => f(gemv::Rows::Bf16(&v[start..end])),
            _ => candle_core::bail!("no host kernel for {:?} weights", w.dtype()),
        })
    }

    /// `x [T, in]` in f32 to `[T, out]` in f32.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Weight::Dense(w) = &self.weight
            && !w.device().is_cpu()
        {
            return x.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(DType::F32);
        }
        let x = x.contiguous()?;
        let t = x.dim(0)?;
        let mut out = vec![0f32; t * self.rows];
        with_host_f32(&x, |x| {
            self.with_rows(|w| gemv::matmul(w, self.rows, self.cols, x, self.out_scale, &mut out))
        })??;
        Tensor::from_vec(out, (t, self.rows), x.device())
    }
}

struct Built {
    dtype: WeightDtype,
    device: Device,
    cache: Option<cache::WeightCache>,
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

/// What a saved state must match to be used with a model: the shape, and a checksum of some
/// of the weights' values (not of the files), so the same weights in another layout or dtype
/// on disk count as the same model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint {
    pub layers: u32,
    pub hidden: u32,
    pub attention: u32,
    pub vocab: u32,
    pub weights: u32,
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RWKV-4 {}x{} vocab {} (weights {:08x})",
            self.layers, self.hidden, self.vocab, self.weights
        )
    }
}

/// An RWKV-4 language model ready to run.
pub struct Rwkv {
    cfg: Config,
    fingerprint: Fingerprint,
    embeddings: Tensor,
    blocks: Vec<Block>,
    ln_out: LayerNorm,
    head: Linear,
    dtype: WeightDtype,
    device: Device,
    /// Tokens per sequence-mode call; longer inputs are split. Larger is faster for prompts
    /// and takes `chunk * (8 * hidden + ffn)` floats of scratch.
    pub chunk_size: usize,
    /// The CPU forward pass's buffers, kept between calls.
    scratch: Mutex<host::Scratch>,
    /// Whether every quantized matrix came from the weight cache.
    from_cache: bool,
}

/// Measured at 1b5 in f32 on a 2-core machine here: 33 prompt tokens/s in chunks of 128, 37
/// in 256, 44 in 512 (the products' efficiency grows with the rows they share); 169m: 420,
/// 500, 540. Prompts are fed whole, so the chunk does not make anything less responsive.
pub const DEFAULT_CHUNK_SIZE: usize = 512;

impl Rwkv {
    /// Opens and loads a model directory or weights file.
    pub fn load(path: &Path, opts: LoadOptions) -> Result<Self, LoadError> {
        let ckpt = Checkpoint::open(ModelFiles::locate(path)?)?;
        let cfg = ckpt.config()?;
        Self::new(&cfg, &ckpt, opts)
    }

    /// Builds the model from an opened checkpoint, names mirroring the Hugging Face layout.
    pub fn new(cfg: &Config, ckpt: &Checkpoint, opts: LoadOptions) -> Result<Self, LoadError> {
        let device = opts.device.open()?;
        if opts.dtype.is_quantized() && !device.is_cpu() {
            return Err(LoadError::Tensor(format!(
                "--dtype {} runs on the CPU only; use f16 or bf16 on a GPU",
                opts.dtype
            )));
        }
        let cache = match &opts.weight_cache {
            Some(dir) if opts.dtype.is_quantized() && !ckpt.files.weights.is_empty() => Some(
                cache::WeightCache::open(dir, &ckpt.files.weights, opts.dtype),
            ),
            _ => None,
        };
        let mut built = Built {
            dtype: opts.dtype,
            device: device.clone(),
            cache,
        };
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
            layers: cfg.num_hidden_layers as u32,
            hidden: h as u32,
            attention: a as u32,
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
            chunk_size: DEFAULT_CHUNK_SIZE,
            scratch: Mutex::default(),
            from_cache: built.cache.as_ref().is_some_and(|c| c.complete()),
        };
        if let Some(cache) = built.cache {
            cache.save(
                model
                    .linears()
                    .map(|l| (l.name.as_str(), l.rows, l.cols, &l.weight)),
            );
        }
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

    pub fn new_state(&self) -> State {
        State::new(&self.cfg)
    }

    /// Feeds `tokens` through the state and returns the logits `[vocab]` after the last one.
    /// Long inputs are split into chunks of `chunk_size`; the result does not depend on it.
    pub fn forward(&self, tokens: &[u32], state: &mut State) -> candle_core::Result<Tensor> {
        if tokens.is_empty() {
            candle_core::bail!("forward needs at least one token");
        }
        let mut last = None;
        for chunk in tokens.chunks(self.chunk_size.max(1)) {
            last = Some(self.forward_chunk(chunk, state, false)?);
        }
        last.ok_or_else(|| candle_core::Error::Msg("no tokens".into()))?
            .squeeze(0)
    }

    /// Feeds one chunk in sequence mode: the projections of all tokens are one matrix product
    /// each, only the WKV recurrence steps through time. Returns logits `[T, vocab]` when
    /// `all_logits`, else `[1, vocab]` for the last token.
    pub fn forward_chunk(
        &self,
        tokens: &[u32],
        state: &mut State,
        all_logits: bool,
    ) -> candle_core::Result<Tensor> {
        self.check_input(tokens, state)?;
        if !self.device.is_cpu() {
            return self.forward_chunk_candle(tokens, state, all_logits);
        }
        // A panic in another call can only have left stale numbers in the buffers, and every
        // call overwrites what it reads: a poisoned lock is safe to take.
        let mut scratch = self
            .scratch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.forward_host(&mut scratch, tokens, state, all_logits)
    }

    fn check_input(&self, tokens: &[u32], state: &State) -> candle_core::Result<()> {
        if tokens.is_empty() {
            candle_core::bail!("forward needs at least one token");
        }
        if !state.fits(&self.fingerprint) {
            candle_core::bail!("the state does not fit this model");
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            candle_core::bail!(
                "token id {bad} is outside the vocabulary ({} ids)",
                self.cfg.vocab_size
            );
        }
        Ok(())
    }

    /// [`Rwkv::forward_chunk`] as candle tensor operations: what runs on a GPU. On the CPU the
    /// host path replaces it, and the tests hold the two to each other.
    pub fn forward_chunk_candle(
        &self,
        tokens: &[u32],
        state: &mut State,
        all_logits: bool,
    ) -> candle_core::Result<Tensor> {
        self.check_input(tokens, state)?;
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

/// `log(sum(exp(logits)))` along the last dimension, computed stably.
pub fn logsumexp(logits: &Tensor) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?;
    let sum = logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?;
    (sum + max)?.squeeze(D::Minus1)
}
