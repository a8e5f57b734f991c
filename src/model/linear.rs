//! The large projections of every generation, held in the chosen weight format and multiplied
//! on the host by [`gemv`] (or by candle's matmul on a GPU).

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};

use super::checkpoint::Checkpoint;
use super::{LoadError, LoadOptions, WeightDtype, cache, gemv};

/// A bias-free projection `[out, in]`, held in the chosen weight format.
pub(super) struct Linear {
    /// The checkpoint name, which also names it in the weight cache.
    pub(super) name: String,
    pub(super) weight: Weight,
    pub(super) rows: usize,
    pub(super) cols: usize,
    /// transformers' power-of-two layer rescaling. On the CPU it multiplies the outputs (exact
    /// for a power of two), so the weights are used as loaded instead of being copied to
    /// scale them; on a GPU the products run in the weights' dtype, so it is folded into the
    /// weights to keep f16 outputs in range, and this is 1.
    pub(super) out_scale: f32,
}

pub(super) enum Weight {
    /// f32, f16 or bf16 in a candle tensor: read in place by the host products on the CPU,
    /// multiplied by candle's matmul on a GPU.
    Dense(Tensor),
    Q8(gemv::Q8),
    Q5(gemv::Q5),
    Q4(gemv::Q4),
}

impl Weight {
    /// False when a quantized block's f16 scale or minimum overflowed (weights beyond what
    /// f16 spans): such a matrix would compute NaN.
    fn scales_finite(&self) -> bool {
        let finite = |s: &[half::f16]| s.iter().all(|s| s.is_finite());
        match self {
            Weight::Dense(_) => true,
            Weight::Q8(q) => finite(&q.scales),
            Weight::Q5(q) => finite(&q.scales) && finite(&q.mins),
            Weight::Q4(q) => finite(&q.scales),
        }
    }
}

/// Runs `f` on the contiguous f32 data of a host tensor, without copying it.
pub(super) fn with_host_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    else {
        candle_core::bail!("expected a contiguous f32 tensor on the CPU");
    };
    Ok(f(&data[start..end]))
}

impl Linear {
    pub(super) fn new(
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
            WeightDtype::Q5 => (
                Weight::Q5(with_host_f32(&weight, |w| gemv::Q5::quantize(w, cols))?),
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
        if !weight.scales_finite() {
            return Err(LoadError::Tensor(format!(
                "{name}: its weights are too large for {} (a block's f16 scale or minimum                  overflows); load the model as f32 or bf16",
                opts.dtype
            )));
        }
        Ok(Self {
            name: name.to_owned(),
            weight,
            rows,
            cols,
            out_scale: out_scale as f32,
        })
    }

    /// A small matrix (a LoRA factor) stored `[in, out]` as BlinkDL writes them, held
    /// transposed to `[out, in]` like every projection, on the host. Never quantized: f32 for
    /// the f32 format, else 16 bits (the `.pth` checkpoints store them in bf16), since in f32
    /// they were a sixth of a quantized token step's product time.
    pub(super) fn lora(name: &str, weight: &Tensor, dtype: WeightDtype) -> Result<Self, LoadError> {
        let weight = weight.to_dtype(dtype.candle())?.t()?.contiguous()?;
        let (rows, cols) = weight.dims2()?;
        Ok(Self {
            name: name.to_owned(),
            weight: Weight::Dense(weight),
            rows,
            cols,
            out_scale: 1.0,
        })
    }

    /// Runs `f` on the weights as host rows. Fails for tensors off the CPU.
    pub(super) fn with_rows<R>(
        &self,
        f: impl FnOnce(gemv::Rows<'_>) -> R,
    ) -> candle_core::Result<R> {
        let w = match &self.weight {
            Weight::Q8(q) => return Ok(f(gemv::Rows::Q8(q))),
            Weight::Q5(q) => return Ok(f(gemv::Rows::Q5(q))),
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

    /// `out [T, rows] = x [T, cols] . W^T` on host buffers.
    pub(super) fn host(&self, x: &[f32], out: &mut [f32]) -> candle_core::Result<()> {
        self.with_rows(|w| gemv::matmul(w, self.rows, self.cols, x, self.out_scale, out))
    }

    /// The device the weights are on (the quantized formats are on the host).
    pub(super) fn device(&self) -> &Device {
        match &self.weight {
            Weight::Dense(w) => w.device(),
            _ => &Device::Cpu,
        }
    }

    /// `x [T, in]` to `[T, out]` in f32 by candle's matmul on the weights' device, whatever
    /// the device: the path that runs on GPUs, testable on the CPU. Dense weights only.
    pub(super) fn forward_candle(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let Weight::Dense(w) = &self.weight else {
            candle_core::bail!("{}: quantized weights have no candle product", self.name);
        };
        let y = x
            .to_dtype(w.dtype())?
            .matmul(&w.t()?)?
            .to_dtype(DType::F32)?;
        if self.out_scale == 1.0 {
            Ok(y)
        } else {
            y.affine(f64::from(self.out_scale), 0.0)
        }
    }

    /// `x [T, in]` in f32 to `[T, out]` in f32.
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
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

/// What every projection of one load is built with.
pub(super) struct Built {
    pub(super) dtype: WeightDtype,
    pub(super) device: Device,
    pub(super) cache: Option<cache::WeightCache>,
}

impl Built {
    pub(super) fn new(ckpt: &Checkpoint, opts: &LoadOptions) -> Result<Self, LoadError> {
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
        Ok(Self {
            dtype: opts.dtype,
            device,
            cache,
        })
    }

    /// True when every quantized matrix came from the weight cache.
    pub(super) fn all_cached(&self) -> bool {
        self.cache.as_ref().is_some_and(|c| c.complete())
    }

    /// Writes what this load quantized to the weight cache, for the next load.
    pub(super) fn save_cache<'a>(self, linears: impl Iterator<Item = &'a Linear>) {
        if let Some(cache) = self.cache {
            cache.save(linears.map(|l| (l.name.as_str(), l.rows, l.cols, &l.weight)));
        }
    }
}
