//! Matrix-vector products for the token step, over weights held on the host.
//!
//! Generating a token reads every weight once and does two flops per weight, so its speed is
//! memory bandwidth divided by the weights' bytes. candle's matmul with one row runs far below
//! that bandwidth (and has no fast bf16 or 8-bit path on the CPU), so the few-row products run
//! here instead: output rows are split across rayon's threads, each row is one contiguous read
//! of the weights dotted with the input in SIMD registers, converting 16-, 8- and 4-bit weights
//! to f32 on the fly. Every output element is computed by one thread in one fixed order, so the
//! result does not depend on the thread count.
//!
//! The 8- and 4-bit formats are blocks of [`BLOCK`] weights sharing one f32 scale (like
//! ggml's q8_0 and q4_0), made at load time from f32 weights.

use half::{bf16, f16};
use rayon::prelude::*;

/// Weights per quantization block.
pub const BLOCK: usize = 32;

/// Output rows one rayon task computes: enough to amortise the task, few enough that both
/// cores stay busy on the smallest matrices.
const ROWS_PER_TASK: usize = 32;

/// 8-bit weights: per row `ceil(cols / 32)` blocks of 32 `i8` (the last padded with zeros)
/// and one scale each, `w = q * scale`.
#[derive(Debug, Clone)]
pub struct Q8 {
    pub quants: Vec<i8>,
    pub scales: Vec<f32>,
}

/// 4-bit weights: per row `ceil(cols / 32)` blocks of 16 bytes and one scale each. Byte `j`
/// of a block holds element `j` in its low nibble and element `j + 16` in its high nibble,
/// `w = (q - 8) * scale`.
#[derive(Debug, Clone)]
pub struct Q4 {
    pub quants: Vec<u8>,
    pub scales: Vec<f32>,
}

/// A row-major `[rows, cols]` matrix in one of the host formats, borrowed.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
    Q8(&'a Q8),
    Q4(&'a Q4),
}

fn blocks(cols: usize) -> usize {
    cols.div_ceil(BLOCK)
}

impl Q8 {
    /// Quantizes a row-major `[rows, cols]` matrix, each block scaled by its largest magnitude.
    pub fn quantize(w: &[f32], cols: usize) -> Self {
        let nb = blocks(cols);
        let rows = w.len() / cols;
        let mut quants = vec![0i8; rows * nb * BLOCK];
        let mut scales = vec![0f32; rows * nb];
        quants
            .par_chunks_mut(nb * BLOCK)
            .zip(scales.par_chunks_mut(nb))
            .zip(w.par_chunks(cols))
            .for_each(|((q, s), row)| {
                for ((q, s), block) in q.chunks_mut(BLOCK).zip(s).zip(row.chunks(BLOCK)) {
                    let max = block.iter().fold(0f32, |m, x| m.max(x.abs()));
                    *s = max / 127.0;
                    let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
                    for (q, &x) in q.iter_mut().zip(block) {
                        *q = (x * inv).round().clamp(-127.0, 127.0) as i8;
                    }
                }
            });
        Self { quants, scales }
    }

    fn row(&self, r: usize, cols: usize) -> (&[i8], &[f32]) {
        let nb = blocks(cols);
        (
            &self.quants[r * nb * BLOCK..(r + 1) * nb * BLOCK],
            &self.scales[r * nb..(r + 1) * nb],
        )
    }
}

impl Q4 {
    /// Quantizes a row-major `[rows, cols]` matrix: each block's scale maps the weight of
    /// largest magnitude to -8, so its sign gets the one extra level of the 16.
    pub fn quantize(w: &[f32], cols: usize) -> Self {
        let nb = blocks(cols);
        let rows = w.len() / cols;
        let mut quants = vec![0x88u8; rows * nb * BLOCK / 2];
        let mut scales = vec![0f32; rows * nb];
        quants
            .par_chunks_mut(nb * BLOCK / 2)
            .zip(scales.par_chunks_mut(nb))
            .zip(w.par_chunks(cols))
            .for_each(|((q, s), row)| {
                for ((q, s), block) in q.chunks_mut(BLOCK / 2).zip(s).zip(row.chunks(BLOCK)) {
                    let max = block
                        .iter()
                        .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
                    *s = max / -8.0;
                    let inv = if max != 0.0 { -8.0 / max } else { 0.0 };
                    let level = |i: usize| match block.get(i) {
                        Some(&x) => ((x * inv).round() + 8.0).clamp(0.0, 15.0) as u8,
                        None => 8,
                    };
                    for (j, q) in q.iter_mut().enumerate() {
                        *q = level(j) | (level(j + BLOCK / 2) << 4);
                    }
                }
            });
        Self { quants, scales }
    }

    fn row(&self, r: usize, cols: usize) -> (&[u8], &[f32]) {
        let nb = blocks(cols);
        (
            &self.quants[r * nb * BLOCK / 2..(r + 1) * nb * BLOCK / 2],
            &self.scales[r * nb..(r + 1) * nb],
        )
    }
}

impl Rows<'_> {
    /// Writes row `r` as f32 into `out` (`cols` long).
    fn dequantize_row(&self, r: usize, cols: usize, out: &mut [f32]) {
        let span = r * cols..(r + 1) * cols;
        match *self {
            Rows::F32(w) => out.copy_from_slice(&w[span]),
            Rows::F16(w) => {
                for (o, x) in out.iter_mut().zip(&w[span]) {
                    *o = x.to_f32();
                }
            }
            Rows::Bf16(w) => {
                for (o, x) in out.iter_mut().zip(&w[span]) {
                    *o = x.to_f32();
                }
            }
            Rows::Q8(m) => {
                let (q, s) = m.row(r, cols);
                for (i, o) in out.iter_mut().enumerate() {
                    *o = f32::from(q[i]) * s[i / BLOCK];
                }
            }
            Rows::Q4(m) => {
                let (q, s) = m.row(r, cols);
                for (i, o) in out.iter_mut().enumerate() {
                    *o = f32::from(nibble(q, i)) * s[i / BLOCK];
                }
            }
        }
    }

    /// The whole matrix in f32, for prompt chunks, which are compute-bound and go through
    /// candle's matmul.
    pub fn dequantize(&self, rows: usize, cols: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * cols];
        out.par_chunks_mut(cols)
            .enumerate()
            .for_each(|(r, o)| self.dequantize_row(r, cols, o));
        out
    }

    /// `w[r] . x` for one row.
    fn dot(&self, r: usize, cols: usize, x: &[f32]) -> f32 {
        let span = r * cols..(r + 1) * cols;
        match *self {
            Rows::F32(w) => kernels::dot_f32(&w[span], x),
            Rows::F16(w) => kernels::dot_f16(&w[span], x),
            Rows::Bf16(w) => kernels::dot_bf16(&w[span], x),
            Rows::Q8(m) => {
                let (q, s) = m.row(r, cols);
                kernels::dot_q8(q, s, x)
            }
            Rows::Q4(m) => {
                let (q, s) = m.row(r, cols);
                kernels::dot_q4(q, s, x)
            }
        }
    }
}

/// The signed 4-bit level of element `i` of a quantized row.
fn nibble(q: &[u8], i: usize) -> i8 {
    let (block, j) = (i / BLOCK, i % BLOCK);
    let byte = q[block * BLOCK / 2 + j % (BLOCK / 2)];
    let level = if j < BLOCK / 2 { byte & 0xf } else { byte >> 4 };
    level as i8 - 8
}

/// `out[t, r] = scale * (w[r] . x[t])` for `x` `[T, cols]` and `w` `[rows, cols]`; `out` is
/// `[T, rows]`. Each weight row is read once from memory for all `T` inputs.
pub fn gemv(w: Rows<'_>, rows: usize, cols: usize, x: &[f32], scale: f32, out: &mut [f32]) {
    let t = x.len() / cols;
    if t == 1 {
        out.par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, out)| {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = scale * w.dot(task * ROWS_PER_TASK + i, cols, x);
                }
            });
        return;
    }
    // Rows outer, inputs inner, so a weight row is still in cache for the second input; the
    // result comes out `[rows, T]` and is transposed.
    let mut by_row = vec![0f32; rows * t];
    by_row
        .par_chunks_mut(ROWS_PER_TASK * t)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (i, o) in chunk.chunks_mut(t).enumerate() {
                let r = task * ROWS_PER_TASK + i;
                for (o, x) in o.iter_mut().zip(x.chunks_exact(cols)) {
                    *o = scale * w.dot(r, cols, x);
                }
            }
        });
    for (r, row) in by_row.chunks_exact(t).enumerate() {
        for (ti, &v) in row.iter().enumerate() {
            out[ti * rows + r] = v;
        }
    }
}

/// Dot products per format, dispatched once per call on the CPU's features.
mod kernels {
    use super::{BLOCK, bf16, f16, nibble};

    #[cfg(target_arch = "x86_64")]
    fn avx2() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    macro_rules! dispatch {
        ($simd:path, $portable:path, $($arg:expr),*) => {{
            #[cfg(target_arch = "x86_64")]
            if avx2() {
                // SAFETY: the CPU has just been checked for AVX2, FMA and F16C, the features
                // the kernel is compiled for.
                return unsafe { $simd($($arg),*) };
            }
            $portable($($arg),*)
        }};
    }

    pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
        dispatch!(super::x86::dot_f32, portable::dot_f32, w, x)
    }
    pub fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
        dispatch!(super::x86::dot_f16, portable::dot_f16, w, x)
    }
    pub fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
        dispatch!(super::x86::dot_bf16, portable::dot_bf16, w, x)
    }
    pub fn dot_q8(q: &[i8], s: &[f32], x: &[f32]) -> f32 {
        dispatch!(super::x86::dot_q8, portable::dot_q8, q, s, x)
    }
    pub fn dot_q4(q: &[u8], s: &[f32], x: &[f32]) -> f32 {
        dispatch!(super::x86::dot_q4, portable::dot_q4, q, s, x)
    }

    /// Plain loops: the fallback on other CPUs, the tail of the SIMD kernels, and the
    /// reference the tests hold the SIMD kernels to.
    pub mod portable {
        use super::{BLOCK, bf16, f16, nibble};

        pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
            w.iter().zip(x).map(|(w, x)| w * x).sum()
        }
        pub fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
            w.iter().zip(x).map(|(w, x)| w.to_f32() * x).sum()
        }
        pub fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
            w.iter().zip(x).map(|(w, x)| w.to_f32() * x).sum()
        }
        pub fn dot_q8(q: &[i8], s: &[f32], x: &[f32]) -> f32 {
            x.chunks(BLOCK)
                .enumerate()
                .map(|(b, x)| {
                    let q = &q[b * BLOCK..];
                    s[b] * x.iter().zip(q).map(|(x, &q)| x * f32::from(q)).sum::<f32>()
                })
                .sum()
        }
        pub fn dot_q4(q: &[u8], s: &[f32], x: &[f32]) -> f32 {
            x.chunks(BLOCK)
                .enumerate()
                .map(|(b, xs)| {
                    let sum = xs
                        .iter()
                        .enumerate()
                        .map(|(j, x)| x * f32::from(nibble(q, b * BLOCK + j)))
                        .sum::<f32>();
                    s[b] * sum
                })
                .sum()
        }
    }
}

/// AVX2 + FMA + F16C kernels: 8 lanes, several accumulators so the FMA latency is hidden.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::kernels::portable;
    use super::{BLOCK, bf16, f16};

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Loads 8 f32 from `x[i..i + 8]`.
    #[target_feature(enable = "avx2,fma")]
    fn load(x: &[f32], i: usize) -> __m256 {
        let x = &x[i..i + 8];
        // SAFETY: `x` has just been sliced to exactly 8 floats; unaligned loads are allowed.
        unsafe { _mm256_loadu_ps(x.as_ptr()) }
    }

    /// Widens 8 bytes at `q[i..i + 8]` to 8 i32.
    #[target_feature(enable = "avx2,fma")]
    fn bytes8<T>(q: &[T], i: usize) -> __m128i {
        let q = &q[i..i + 8 / size_of::<T>()];
        // SAFETY: the slice above spans exactly 8 bytes; `loadl` reads 8 unaligned bytes.
        unsafe { _mm_loadl_epi64(q.as_ptr().cast()) }
    }

    /// Loads 16 bytes at `q[i..]` (8 halves).
    #[target_feature(enable = "avx2,fma")]
    fn bytes16<T>(q: &[T], i: usize) -> __m128i {
        let q = &q[i..i + 16 / size_of::<T>()];
        // SAFETY: the slice above spans exactly 16 bytes; `loadu` reads 16 unaligned bytes.
        unsafe { _mm_loadu_si128(q.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let main = n - n % 32;
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in (0..main).step_by(32) {
            for (k, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(load(w, i + 8 * k), load(x, i + 8 * k), *acc);
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum(sum) + portable::dot_f32(&w[main..n], &x[main..n])
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let main = n - n % 32;
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in (0..main).step_by(32) {
            for (k, acc) in acc.iter_mut().enumerate() {
                let wv = _mm256_cvtph_ps(bytes16(w, i + 8 * k));
                *acc = _mm256_fmadd_ps(wv, load(x, i + 8 * k), *acc);
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum(sum) + portable::dot_f16(&w[main..n], &x[main..n])
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let main = n - n % 32;
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in (0..main).step_by(32) {
            for (k, acc) in acc.iter_mut().enumerate() {
                // A bf16 is the top half of an f32: widen and shift into place.
                let wide = _mm256_cvtepu16_epi32(bytes16(w, i + 8 * k));
                let wv = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide));
                *acc = _mm256_fmadd_ps(wv, load(x, i + 8 * k), *acc);
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum(sum) + portable::dot_bf16(&w[main..n], &x[main..n])
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn dot_q8(q: &[i8], s: &[f32], x: &[f32]) -> f32 {
        let full = x.len() / BLOCK;
        let mut acc = [_mm256_setzero_ps(); 2];
        for b in 0..full {
            let (qb, xb) = (b * BLOCK, b * BLOCK);
            let mut block = _mm256_setzero_ps();
            for k in 0..4 {
                let wv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes8(q, qb + 8 * k)));
                block = _mm256_fmadd_ps(wv, load(x, xb + 8 * k), block);
            }
            acc[b % 2] = _mm256_fmadd_ps(block, _mm256_set1_ps(s[b]), acc[b % 2]);
        }
        let tail = portable::dot_q8(&q[full * BLOCK..], &s[full..], &x[full * BLOCK..]);
        hsum(_mm256_add_ps(acc[0], acc[1])) + tail
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn dot_q4(q: &[u8], s: &[f32], x: &[f32]) -> f32 {
        let full = x.len() / BLOCK;
        let mut acc = [_mm256_setzero_ps(); 2];
        let low = _mm256_set1_epi32(0xf);
        let eight = _mm256_set1_epi32(8);
        for b in 0..full {
            let (qb, xb) = (b * BLOCK / 2, b * BLOCK);
            let mut block = _mm256_setzero_ps();
            for k in 0..2 {
                let bytes = _mm256_cvtepu8_epi32(bytes8(q, qb + 8 * k));
                let lo = _mm256_sub_epi32(_mm256_and_si256(bytes, low), eight);
                let hi = _mm256_sub_epi32(_mm256_srli_epi32::<4>(bytes), eight);
                let xlo = load(x, xb + 8 * k);
                let xhi = load(x, xb + BLOCK / 2 + 8 * k);
                block = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), xlo, block);
                block = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), xhi, block);
            }
            acc[b % 2] = _mm256_fmadd_ps(block, _mm256_set1_ps(s[b]), acc[b % 2]);
        }
        let tail = portable::dot_q4(&q[full * BLOCK / 2..], &s[full..], &x[full * BLOCK..]);
        hsum(_mm256_add_ps(acc[0], acc[1])) + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(n: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// `out[t, r]` by dequantizing and summing in f64: the reference every kernel is held to.
    fn reference(w: Rows<'_>, rows: usize, cols: usize, x: &[f32], scale: f32) -> Vec<f32> {
        let dense = w.dequantize(rows, cols);
        let t = x.len() / cols;
        let mut out = vec![0f32; t * rows];
        for ti in 0..t {
            for r in 0..rows {
                let dot: f64 = (0..cols)
                    .map(|c| f64::from(dense[r * cols + c]) * f64::from(x[ti * cols + c]))
                    .sum();
                out[ti * rows + r] = (dot * f64::from(scale)) as f32;
            }
        }
        out
    }

    /// Odd sizes (not multiples of 8, 16 or 32) exercise every kernel's tail.
    const SHAPES: [(usize, usize, usize); 6] = [
        (1, 1, 1),
        (3, 17, 1),
        (37, 45, 1),
        (64, 256, 1),
        (70, 100, 3),
        (33, 129, 8),
    ];

    fn check(make: impl Fn(&[f32], usize) -> Box<dyn Fn(&dyn Fn(Rows<'_>))>) {
        let mut rng = StdRng::seed_from_u64(7);
        for (rows, cols, t) in SHAPES {
            let w = random(rows * cols, &mut rng);
            let x = random(t * cols, &mut rng);
            let with = make(&w, cols);
            with(&|rows_view: Rows<'_>| {
                let expected = reference(rows_view, rows, cols, &x, 0.5);
                let mut out = vec![0f32; t * rows];
                gemv(rows_view, rows, cols, &x, 0.5, &mut out);
                for (a, b) in out.iter().zip(&expected) {
                    let tol = 1e-5 * (cols as f32).sqrt().max(1.0) * (1.0 + b.abs());
                    assert!((a - b).abs() <= tol, "{rows}x{cols} t={t}: {a} vs {b}");
                }
            });
        }
    }

    #[test]
    fn f32_gemv_matches_reference() {
        check(|w, _| {
            let w = w.to_vec();
            Box::new(move |f| f(Rows::F32(&w)))
        });
    }

    #[test]
    fn f16_gemv_matches_reference() {
        check(|w, _| {
            let w: Vec<f16> = w.iter().map(|&x| f16::from_f32(x)).collect();
            Box::new(move |f| f(Rows::F16(&w)))
        });
    }

    #[test]
    fn bf16_gemv_matches_reference() {
        check(|w, _| {
            let w: Vec<bf16> = w.iter().map(|&x| bf16::from_f32(x)).collect();
            Box::new(move |f| f(Rows::Bf16(&w)))
        });
    }

    #[test]
    fn q8_gemv_matches_reference() {
        check(|w, cols| {
            let q = Q8::quantize(w, cols);
            Box::new(move |f| f(Rows::Q8(&q)))
        });
    }

    #[test]
    fn q4_gemv_matches_reference() {
        check(|w, cols| {
            let q = Q4::quantize(w, cols);
            Box::new(move |f| f(Rows::Q4(&q)))
        });
    }

    /// Quantization error is at most half a step of each block's scale, except in q4 for a
    /// weight of the opposite sign to the block's largest, which may be clamped a full step.
    #[test]
    fn quantization_rounds_to_the_nearest_level() {
        let mut rng = StdRng::seed_from_u64(3);
        let (rows, cols) = (5, 77);
        let w = random(rows * cols, &mut rng);
        let q8 = Q8::quantize(&w, cols);
        let q4 = Q4::quantize(&w, cols);
        for (rows_view, bound) in [(Rows::Q8(&q8), 0.5 / 127.0), (Rows::Q4(&q4), 1.0 / 8.0)] {
            let dense = rows_view.dequantize(rows, cols);
            for (r, (orig, deq)) in w.chunks(cols).zip(dense.chunks(cols)).enumerate() {
                for (b, (ob, db)) in orig.chunks(BLOCK).zip(deq.chunks(BLOCK)).enumerate() {
                    let max = ob.iter().fold(0f32, |m, x| m.max(x.abs()));
                    for (o, d) in ob.iter().zip(db) {
                        let err = (o - d).abs();
                        assert!(err <= max * bound + 1e-6, "row {r} block {b}: {err}");
                    }
                }
            }
        }
    }

    /// The SIMD kernels against the plain loops directly, at a size with no tail.
    #[test]
    fn simd_kernels_match_portable_loops() {
        let mut rng = StdRng::seed_from_u64(11);
        let cols = 1024;
        let w = random(cols, &mut rng);
        let x = random(cols, &mut rng);
        let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let b: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let q8 = Q8::quantize(&w, cols);
        let q4 = Q4::quantize(&w, cols);
        let pairs = [
            (kernels::dot_f32(&w, &x), kernels::portable::dot_f32(&w, &x)),
            (kernels::dot_f16(&h, &x), kernels::portable::dot_f16(&h, &x)),
            (
                kernels::dot_bf16(&b, &x),
                kernels::portable::dot_bf16(&b, &x),
            ),
            (
                kernels::dot_q8(&q8.quants, &q8.scales, &x),
                kernels::portable::dot_q8(&q8.quants, &q8.scales, &x),
            ),
            (
                kernels::dot_q4(&q4.quants, &q4.scales, &x),
                kernels::portable::dot_q4(&q4.quants, &q4.scales, &x),
            ),
        ];
        for (i, (simd, plain)) in pairs.into_iter().enumerate() {
            assert!((simd - plain).abs() < 1e-3, "kernel {i}: {simd} vs {plain}");
        }
    }
}
