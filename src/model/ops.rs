//! Host loops every generation's CPU path uses: layer norms over rows and embedding lookups.

use candle_core::{CpuStorage, Storage, Tensor};
use half::slice::HalfFloatSliceExt;

/// LayerNorm of each `[n]` row of `x` into `out`, `n` being the parameters' length.
pub(super) fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (x, out) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let mean = x.iter().sum::<f32>() / n as f32;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((o, &v), (w, b)) in out.iter_mut().zip(x).zip(weight.iter().zip(bias)) {
            *o = (v - mean) * inv * w + b;
        }
    }
}

/// Copies embedding row `id` into `out`, widening it to f32.
pub(super) fn embedding(table: &Tensor, id: usize, out: &mut [f32]) -> candle_core::Result<()> {
    let n = out.len();
    let (storage, layout) = table.storage_and_layout();
    let (Storage::Cpu(cpu), Some((start, _))) = (&*storage, layout.contiguous_offsets()) else {
        candle_core::bail!("expected contiguous embeddings on the CPU");
    };
    let row = start + id * n..start + (id + 1) * n;
    match cpu {
        CpuStorage::F32(e) => out.copy_from_slice(&e[row]),
        CpuStorage::F16(e) => e[row].convert_to_f32_slice(out),
        CpuStorage::BF16(e) => e[row].convert_to_f32_slice(out),
        _ => candle_core::bail!("no host embeddings in {:?}", table.dtype()),
    }
    Ok(())
}
