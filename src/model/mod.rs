//! The RWKV models rwkv-chat runs, behind one type: [`Rwkv`] holds an RWKV-4 ([`rwkv4`]) or a
//! World model (v5.2, v6, v7: [`world`]), loaded from any checkpoint layout, with its
//! recurrent [`State`] and the [`Fingerprint`] a saved state must match.
//!
//! The plain-f32 reference engines of the World generations ([`v7`], [`finch`]) are not used
//! to chat; the tests hold the fast engine to them.

mod cache;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod finch;
pub mod gemv;
mod heads;
mod linear;
mod ops;
pub mod reference;
mod rwkv4;
pub mod simd;
pub mod v7;
mod wkv;
mod world;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{D, DType, Device, Tensor};
use serde::{Deserialize, Serialize};

pub use checkpoint::{Checkpoint, ModelFiles};
pub use config::Config;
pub use error::LoadError;
pub use reference::{WorldConfig, WorldLayerState, WorldState};
pub use rwkv4::{LayerState, Rwkv4State};

/// How the large matrices are held in memory. `Q8` and `Q4` are blocks of 32 weights with
/// one f16 scale, `Q5` with an f16 scale and minimum (see [`gemv`]), quantized from f32 at
/// load time; they run on the CPU only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
    Q8,
    Q5,
    Q4,
}

impl WeightDtype {
    pub const ALL: [WeightDtype; 6] = [
        WeightDtype::F32,
        WeightDtype::F16,
        WeightDtype::Bf16,
        WeightDtype::Q8,
        WeightDtype::Q5,
        WeightDtype::Q4,
    ];

    /// The candle dtype of the tensors held densely: every matrix for the float formats, the
    /// embeddings (only looked up, never multiplied) for the quantized ones.
    pub fn candle(self) -> DType {
        match self {
            WeightDtype::F32 => DType::F32,
            WeightDtype::F16 | WeightDtype::Q8 | WeightDtype::Q5 | WeightDtype::Q4 => DType::F16,
            WeightDtype::Bf16 => DType::BF16,
        }
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, WeightDtype::Q8 | WeightDtype::Q5 | WeightDtype::Q4)
    }

    /// Memory that `weights` weights take in this format, block scales (and q5's minima and
    /// bits 4) included.
    pub fn bytes(self, weights: u64) -> u64 {
        let scales = 2 * weights.div_ceil(gemv::BLOCK as u64);
        match self {
            WeightDtype::F32 => 4 * weights,
            WeightDtype::F16 | WeightDtype::Bf16 => 2 * weights,
            WeightDtype::Q8 => weights + scales,
            WeightDtype::Q5 => weights.div_ceil(2) + weights.div_ceil(8) + 2 * scales,
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
            "q5" | "q5_1" => Ok(WeightDtype::Q5),
            "q4" | "q4_0" | "int4" => Ok(WeightDtype::Q4),
            _ => Err(format!(
                "unknown dtype `{s}` (expected f32, f16, bf16, q8, q5 or q4)"
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
            WeightDtype::Q5 => "q5",
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
    /// Where to keep quantized weights between loads (see [`cache`]); `None` quantizes at
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

/// The RWKV generations rwkv-chat runs. Each has its own state layout and layer math; the World
/// generations share the World tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Generation {
    /// RWKV-4: Raven chat and Pile base models, GPT-NeoX tokenizer.
    #[default]
    Rwkv4,
    /// RWKV-5.2 "Eagle".
    V5,
    /// RWKV-6 "Finch".
    V6,
    /// RWKV-7 "Goose", incl. the G1 models.
    V7,
}

impl Generation {
    /// True for the generations trained on the World data with the World tokenizer.
    pub fn is_world(self) -> bool {
        !matches!(self, Generation::Rwkv4)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Generation::Rwkv4 => "RWKV-4",
            Generation::V5 => "RWKV-5.2 (Eagle)",
            Generation::V6 => "RWKV-6 (Finch)",
            Generation::V7 => "RWKV-7 (Goose)",
        })
    }
}

/// What a saved state must match to be used with a model: the generation and shape, and a
/// checksum of some of the weights' values (not of the files), so the same weights in another
/// layout or dtype on disk count as the same model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Sessions saved before the World generations have no such field: they are RWKV-4's.
    #[serde(default)]
    pub generation: Generation,
    pub layers: u32,
    pub hidden: u32,
    /// RWKV-4's `attention_hidden_size`; the World generations' width (heads x head size).
    pub attention: u32,
    /// The World generations' head size; 0 for RWKV-4.
    #[serde(default)]
    pub head_size: u32,
    pub vocab: u32,
    pub weights: u32,
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}x{} vocab {} (weights {:08x})",
            self.generation, self.layers, self.hidden, self.vocab, self.weights
        )
    }
}

/// Everything the model remembers of the tokens it has read, whatever the length of the text:
/// saving it is saving the conversation. Its layout is the generation's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum State {
    Rwkv4(Rwkv4State),
    World(WorldState),
}

impl State {
    /// The state before any token of an RWKV-4 model of this shape (a loaded model's own is
    /// [`Rwkv::new_state`]).
    pub fn new(cfg: &Config) -> Self {
        State::Rwkv4(Rwkv4State::new(cfg))
    }

    /// True when every vector has the length the model with `fingerprint` uses: a state read
    /// from disk can pass its checksum and still be of another shape or generation (edited, or
    /// written by a bug), and must then be rebuilt rather than fed to the model.
    pub fn fits(&self, fingerprint: &Fingerprint) -> bool {
        match self {
            State::Rwkv4(s) => fingerprint.generation == Generation::Rwkv4 && s.fits(fingerprint),
            State::World(s) => s.fits(fingerprint),
        }
    }

    /// Bytes the state takes in memory or on disk (before any header).
    pub fn size_bytes(&self) -> usize {
        match self {
            State::Rwkv4(s) => s.size_bytes(),
            State::World(s) => s.size_bytes(),
        }
    }

    pub fn as_rwkv4(&self) -> Option<&Rwkv4State> {
        match self {
            State::Rwkv4(s) => Some(s),
            State::World(_) => None,
        }
    }

    pub fn as_rwkv4_mut(&mut self) -> Option<&mut Rwkv4State> {
        match self {
            State::Rwkv4(s) => Some(s),
            State::World(_) => None,
        }
    }

    pub fn as_world(&self) -> Option<&WorldState> {
        match self {
            State::World(s) => Some(s),
            State::Rwkv4(_) => None,
        }
    }
}

enum Net {
    Rwkv4(Box<rwkv4::Rwkv4>),
    World(Box<world::World>),
}

/// An RWKV language model of any supported generation, ready to run.
pub struct Rwkv {
    net: Net,
    /// Tokens per sequence-mode call; longer inputs are split. Larger is faster for prompts
    /// and takes scratch memory in proportion.
    pub chunk_size: usize,
}

/// Prompts are fed whole, so the chunk does not make anything less responsive; the measured
/// effect of its size is in BENCHMARKS.md.
pub const DEFAULT_CHUNK_SIZE: usize = 512;

impl Rwkv {
    /// Opens and loads a model directory or weights file.
    pub fn load(path: &Path, opts: LoadOptions) -> Result<Self, LoadError> {
        let ckpt = Checkpoint::open(ModelFiles::locate(path)?)?;
        Self::new(&ckpt, opts)
    }

    /// Builds the model of the checkpoint's generation.
    pub fn new(ckpt: &Checkpoint, opts: LoadOptions) -> Result<Self, LoadError> {
        let net = match ckpt.generation() {
            Generation::Rwkv4 => {
                Net::Rwkv4(Box::new(rwkv4::Rwkv4::new(&ckpt.config()?, ckpt, opts)?))
            }
            _ => Net::World(Box::new(world::World::new(ckpt, opts)?)),
        };
        Ok(Self {
            net,
            chunk_size: DEFAULT_CHUNK_SIZE,
        })
    }

    pub fn generation(&self) -> Generation {
        self.fingerprint().generation
    }

    /// The RWKV-4 hyper-parameters; `None` for the World generations.
    pub fn config(&self) -> Option<&Config> {
        match &self.net {
            Net::Rwkv4(m) => Some(m.config()),
            Net::World(_) => None,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.fingerprint().vocab as usize
    }

    pub fn fingerprint(&self) -> Fingerprint {
        match &self.net {
            Net::Rwkv4(m) => m.fingerprint(),
            Net::World(m) => m.fingerprint(),
        }
    }

    /// True when the quantized weights were read from the weight cache, not made by this load.
    pub fn weights_from_cache(&self) -> bool {
        match &self.net {
            Net::Rwkv4(m) => m.weights_from_cache(),
            Net::World(m) => m.weights_from_cache(),
        }
    }

    pub fn dtype(&self) -> WeightDtype {
        match &self.net {
            Net::Rwkv4(m) => m.dtype(),
            Net::World(m) => m.dtype(),
        }
    }

    pub fn device(&self) -> &Device {
        match &self.net {
            Net::Rwkv4(m) => m.device(),
            Net::World(m) => m.device(),
        }
    }

    pub fn new_state(&self) -> State {
        match &self.net {
            Net::Rwkv4(m) => State::Rwkv4(m.new_state()),
            Net::World(m) => State::World(m.new_state()),
        }
    }

    /// Feeds `tokens` through the state and returns the logits `[vocab]` after the last one.
    /// Long inputs are split into chunks of `chunk_size`; the result does not depend on it
    /// (to rounding).
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
    /// each, only the recurrence steps through time. Returns logits `[T, vocab]` when
    /// `all_logits`, else `[1, vocab]` for the last token.
    pub fn forward_chunk(
        &self,
        tokens: &[u32],
        state: &mut State,
        all_logits: bool,
    ) -> candle_core::Result<Tensor> {
        self.check_input(tokens, state)?;
        match (&self.net, state) {
            (Net::Rwkv4(m), State::Rwkv4(s)) => m.forward_chunk(tokens, s, all_logits),
            (Net::World(m), State::World(s)) => m.forward_chunk(tokens, s, all_logits),
            _ => candle_core::bail!("the state does not fit this model"),
        }
    }

    /// [`Rwkv::forward_chunk`] as candle tensor operations, what runs on a GPU. On the CPU the
    /// host path replaces it, and the tests hold the two to each other and to the goldens.
    pub fn forward_chunk_candle(
        &self,
        tokens: &[u32],
        state: &mut State,
        all_logits: bool,
    ) -> candle_core::Result<Tensor> {
        self.check_input(tokens, state)?;
        match (&self.net, state) {
            (Net::Rwkv4(m), State::Rwkv4(s)) => m.forward_chunk_candle(tokens, s, all_logits),
            (Net::World(m), State::World(s)) => m.forward_chunk_candle(tokens, s, all_logits),
            _ => candle_core::bail!("the state does not fit this model"),
        }
    }

    fn check_input(&self, tokens: &[u32], state: &State) -> candle_core::Result<()> {
        if tokens.is_empty() {
            candle_core::bail!("forward needs at least one token");
        }
        if !state.fits(&self.fingerprint()) {
            candle_core::bail!("the state does not fit this model");
        }
        let vocab = self.vocab_size();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            candle_core::bail!("token id {bad} is outside the vocabulary ({vocab} ids)");
        }
        Ok(())
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

/// Runs `f` on one of rayon's threads (inline when already on one): the products' tasks then
/// go to the pool from a thread of it, so no thread outside it sleeps and wakes around every
/// product. The engines take their locks before calling this, through [`lock_outside_pool`].
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Takes `lock`, or `None` where waiting for it could deadlock: on a thread of rayon's pool
/// while another call holds it. Such a thread may be waiting inside a product for tasks of the
/// call that holds the lock, which it stole and which sit below this call on its stack; if it
/// slept on the lock, that call would wait for them for ever. Off the pool a caller can wait,
/// as the holder's tasks run on the pool's threads. A poisoned lock is taken: a panic in
/// another call can only have left stale numbers in what it guards, which every call
/// overwrites before reading.
fn lock_outside_pool<T>(lock: &std::sync::Mutex<T>) -> Option<std::sync::MutexGuard<'_, T>> {
    use std::sync::{PoisonError, TryLockError};
    match lock.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) if rayon::current_thread_index().is_some() => None,
        Err(TryLockError::WouldBlock) => Some(lock.lock().unwrap_or_else(PoisonError::into_inner)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::lock_outside_pool;

    /// A free lock is taken anywhere; a held one turns away a thread of rayon's pool, and a
    /// poisoned one is taken.
    #[test]
    fn a_held_lock_turns_away_only_the_pools_threads() {
        let lock = Mutex::new(1);
        assert!(lock_outside_pool(&lock).is_some());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert!(pool.install(|| lock_outside_pool(&lock).is_some()));
        let held = lock.lock().unwrap();
        assert!(pool.install(|| lock_outside_pool(&lock).is_none()));
        drop(held);
        // Off the pool a caller waits for the holder to let go.
        std::thread::scope(|s| {
            let held = lock.lock().unwrap();
            let waiter = s.spawn(|| lock_outside_pool(&lock).map(|g| *g));
            drop(held);
            assert_eq!(waiter.join().unwrap(), Some(1));
        });
        let _ = std::panic::catch_unwind(|| {
            let _guard = lock.lock().unwrap();
            panic!("poisons the lock");
        });
        assert!(lock.is_poisoned());
        assert_eq!(lock_outside_pool(&lock).map(|g| *g), Some(1));
    }
}
