//! Matrix products over weights held on the host, in every weight format.
//!
//! Generating a token reads every weight once and does two flops per weight, so its speed is
//! memory bandwidth divided by the weights' bytes. candle's matmul with one row runs far below
//! that bandwidth (and has no fast bf16 or 8-bit path on the CPU), so the few-row products run
//! here ([`gemv`]): output rows are split across rayon's threads, each row (q4 and q5: each
//! group of 8 rows) one contiguous read of the weights dotted with the input in SIMD
//! registers, on the best kernels the CPU has (AVX-512 in `avx512`, AVX2 in `x86`, else
//! portable loops; see [`Simd`]). 16-bit weights are widened to f32 on the fly; for the 8-, 5-
//! and 4-bit formats the input is quantized to 8 bits per block too (as ggml does), so a block
//! of 32 products is a handful of integer instructions and the kernels keep up with memory. q4
//! and q5 are stored [`GROUP`] rows interleaved, so their kernels (`int8`, `avx512`) multiply 8
//! rows at once, one lane a row. Every output element is computed by one thread in one fixed
//! order, so the result does not depend on the thread count.
//!
//! Prompt chunks (many rows of input) are compute-bound: [`matmul`] hands them to the `gemm`
//! crate (what candle's CPU matmul uses) one panel of weight rows at a time, widening each
//! panel to f32 in a per-thread buffer rather than the whole matrix. For the quantized
//! formats the input is rounded to 8 bits there too, so that results do not depend on how a
//! text is split into chunks (to rounding); on AVX2 and AVX-512 the 4- and 5-bit panels are
//! multiplied in integers instead (`int8`), in the same operations as the token step's, so
//! there the chunking does not change the results at all. On AVX-512 q8 panels are
//! multiplied in integers too (a chunk's results then differ from the token step's by
//! rounding only, as through `gemm`).
//!
//! The quantized formats are blocks of [`BLOCK`] weights made at load time from f32 weights:
//! 8 and 4 bits sharing one f16 scale (the values of ggml's q8_0 and q4_0), or 5 bits with an
//! f16 scale and minimum (ggml's q5_1), which rwkv.cpp recommends for RWKV as q4_0 costs real
//! quality.

use std::cell::RefCell;

use half::{bf16, f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;

use super::simd::{self, Simd};

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod int8;

/// Weights per quantization block.
pub const BLOCK: usize = 32;

/// Output rows one rayon task computes in [`gemv`]: enough to amortise the task, few enough
/// that both cores stay busy on the smallest matrices; whole groups of [`Q4`] and [`Q5`].
const ROWS_PER_TASK: usize = 32;
const _: () = assert!(ROWS_PER_TASK.is_multiple_of(GROUP));

/// Input rows up to which [`matmul`] reads the weights once per call through [`gemv`]; above
/// it the product is compute-bound and goes through `gemm`, or `int8`'s panels. (q4 and q5 go
/// through the panels from two inputs on: they multiply four inputs per pass over the levels
/// as stored.)
pub const GEMV_MAX_ROWS: usize = 8;

/// Most weight rows a [`matmul`] panel holds: a panel of 2048 columns in f32 is 2 MB, of the
/// order of a core's L2. Panels of 32 rows were much slower than 128 or 256 before gemm was
/// given its weights in columns, and 64, 128 and 256 alike after (BENCHMARKS.md).
const PANEL_ROWS: usize = 256;

/// 8-bit weights: per row `ceil(cols / 32)` blocks of 32 `i8` (the last padded with zeros)
/// and one scale each, `w = q * scale`.
#[derive(Debug, Clone)]
pub struct Q8 {
    pub quants: Vec<i8>,
    pub scales: Vec<f16>,
}

/// Rows of [`Q4`] and [`Q5`] stored interleaved, so the integer kernels' lanes are rows.
pub const GROUP: usize = 8;

/// 4-bit weights, `w = (q - 8) * scale` with one scale per block of 32, stored in groups of
/// [`GROUP`] rows (the last padded with rows of zeros): per group, per block, 128 bytes of
/// levels and 8 scales. Byte `32 r + 4 j + k` of a group's block holds level `4 r + k` of its
/// row `j` in its low nibble and level `16 + 4 r + k` in its high nibble, so one 32-byte load
/// gives, one mask and one shift apart, four levels of each of the 8 rows twice over: what
/// `maddubs` multiplies by four input bytes broadcast (as ggml's repacked q4_0 does). The
/// token step then reads 8 rows at a time with the block's scales in one vector, where a row
/// at a time reduced every block across lanes.
#[derive(Debug, Clone)]
pub struct Q4 {
    pub quants: Vec<u8>,
    pub scales: Vec<f16>,
}

/// 5-bit weights, `w = q * scale + min` for `q` in `0..32` with one scale and minimum per
/// block of 32, in groups of [`GROUP`] rows as [`Q4`] (the last padded with rows of zeros):
/// per group, per block, 160 bytes and 8 scales and minima. The first 128 bytes hold each
/// level's bits 0..4 where [`Q4`] holds its level; in the last 32, bit `r` of byte `4 j + k`
/// is bit 4 of level `4 r + k` of row `j` and bit `4 + r` that of level `16 + 4 r + k`, so one
/// shift and mask puts each run's bits 4 in place.
#[derive(Debug, Clone)]
pub struct Q5 {
    pub quants: Vec<u8>,
    pub scales: Vec<f16>,
    pub mins: Vec<f16>,
}

/// Bytes of one block of a [`Q5`] group.
pub const Q5_GROUP_BLOCK: usize = Q4_GROUP_BLOCK + GROUP * BLOCK / 8;

/// A row-major `[rows, cols]` matrix in one of the host formats, borrowed.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
    Q8(&'a Q8),
    Q5(&'a Q5),
    Q4(&'a Q4),
}

fn blocks(cols: usize) -> usize {
    cols.div_ceil(BLOCK)
}

/// A scale rounded to f16, and the multiplier that maps values onto its levels.
fn rounded_scale(max: f32, levels: f32) -> (f16, f32) {
    let scale = f16::from_f32(max / levels);
    let s = scale.to_f32();
    (scale, if s != 0.0 { 1.0 / s } else { 0.0 })
}

impl Q8 {
    /// Quantizes a row-major `[rows, cols]` matrix, each block scaled by its largest magnitude.
    pub fn quantize(w: &[f32], cols: usize) -> Self {
        let nb = blocks(cols);
        let rows = w.len() / cols;
        let mut quants = vec![0i8; rows * nb * BLOCK];
        let mut scales = vec![f16::ZERO; rows * nb];
        quants
            .par_chunks_mut(nb * BLOCK)
            .zip(scales.par_chunks_mut(nb))
            .zip(w.par_chunks(cols))
            .for_each(|((q, s), row)| {
                for ((q, s), block) in q.chunks_mut(BLOCK).zip(s).zip(row.chunks(BLOCK)) {
                    let max = block.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let (scale, inv) = rounded_scale(max, 127.0);
                    *s = scale;
                    for (q, &x) in q.iter_mut().zip(block) {
                        *q = (x * inv).round().clamp(-127.0, 127.0) as i8;
                    }
                }
            });
        Self { quants, scales }
    }

    fn row(&self, r: usize, cols: usize) -> (&[i8], &[f16]) {
        let nb = blocks(cols);
        (
            &self.quants[r * nb * BLOCK..(r + 1) * nb * BLOCK],
            &self.scales[r * nb..(r + 1) * nb],
        )
    }
}

/// Bytes of one block of a [`Q4`] group: 32 levels of 4 bits for each of its rows.
pub const Q4_GROUP_BLOCK: usize = GROUP * BLOCK / 2;

impl Q4 {
    /// Quantizes a row-major `[rows, cols]` matrix: each block's scale maps the weight of
    /// largest magnitude to -8, so its sign gets the one extra level of the 16.
    pub fn quantize(w: &[f32], cols: usize) -> Self {
        let nb = blocks(cols);
        let groups = (w.len() / cols).div_ceil(GROUP);
        let mut quants = vec![0x88u8; groups * nb * Q4_GROUP_BLOCK];
        let mut scales = vec![f16::ZERO; groups * nb * GROUP];
        quants
            .par_chunks_mut(nb * Q4_GROUP_BLOCK)
            .zip(scales.par_chunks_mut(nb * GROUP))
            .zip(w.par_chunks(GROUP * cols))
            .for_each(|((q, s), rows)| {
                for (j, row) in rows.chunks(cols).enumerate() {
                    let blocks = q.chunks_mut(Q4_GROUP_BLOCK).zip(s.chunks_mut(GROUP));
                    for ((q, s), block) in blocks.zip(row.chunks(BLOCK)) {
                        let max = block
                            .iter()
                            .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
                        let (scale, inv) = rounded_scale(max, -8.0);
                        s[j] = scale;
                        let level = |i: usize| match block.get(i) {
                            Some(&x) => ((x * inv).round() + 8.0).clamp(0.0, 15.0) as u8,
                            None => 8,
                        };
                        for i in 0..BLOCK / 2 {
                            q[q4_byte(j, i)] = level(i) | (level(i + BLOCK / 2) << 4);
                        }
                    }
                }
            });
        Self { quants, scales }
    }

    /// Group `g`'s levels and scales.
    fn group(&self, g: usize, cols: usize) -> (&[u8], &[f16]) {
        let nb = blocks(cols);
        (
            &self.quants[g * nb * Q4_GROUP_BLOCK..(g + 1) * nb * Q4_GROUP_BLOCK],
            &self.scales[g * nb * GROUP..(g + 1) * nb * GROUP],
        )
    }
}

/// Where in a [`Q4`] group's block level `i` (below 16; level `i + 16` is the high nibble of
/// the same byte) of its row `j` is.
fn q4_byte(j: usize, i: usize) -> usize {
    32 * (i / 4) + 4 * j + i % 4
}

impl Q5 {
    /// Quantizes a row-major `[rows, cols]` matrix: each block's 32 levels span its smallest to
    /// its largest weight. The levels are rounded against the scale and minimum as stored in
    /// f16, so each weight gets the nearest of the levels it is read back as.
    pub fn quantize(w: &[f32], cols: usize) -> Self {
        let nb = blocks(cols);
        let groups = (w.len() / cols).div_ceil(GROUP);
        let mut quants = vec![0u8; groups * nb * Q5_GROUP_BLOCK];
        let mut scales = vec![f16::ZERO; groups * nb * GROUP];
        let mut mins = vec![f16::ZERO; groups * nb * GROUP];
        quants
            .par_chunks_mut(nb * Q5_GROUP_BLOCK)
            .zip(scales.par_chunks_mut(nb * GROUP))
            .zip(mins.par_chunks_mut(nb * GROUP))
            .zip(w.par_chunks(GROUP * cols))
            .for_each(|(((q, s), m), rows)| {
                for (j, row) in rows.chunks(cols).enumerate() {
                    let blocks = q.chunks_mut(Q5_GROUP_BLOCK).zip(s.chunks_mut(GROUP));
                    let blocks = blocks.zip(m.chunks_mut(GROUP));
                    for (((q, s), m), block) in blocks.zip(row.chunks(BLOCK)) {
                        let (lo, hi) = block
                            .iter()
                            .fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                        let (scale, inv) = rounded_scale(hi - lo, 31.0);
                        s[j] = scale;
                        m[j] = f16::from_f32(lo);
                        let min = m[j].to_f32();
                        // Padding gets level 0; the input is zero there, so its value never
                        // counts.
                        let level = |i: usize| match block.get(i) {
                            Some(&x) => ((x - min) * inv).round().clamp(0.0, 31.0) as u8,
                            None => 0,
                        };
                        let (nibbles, high) = q.split_at_mut(Q4_GROUP_BLOCK);
                        for i in 0..BLOCK / 2 {
                            let (a, b) = (level(i), level(i + BLOCK / 2));
                            nibbles[q4_byte(j, i)] = (a & 0xf) | (b << 4);
                            high[4 * j + i % 4] |= (a >> 4) << (i / 4) | (b >> 4) << (4 + i / 4);
                        }
                    }
                }
            });
        Self {
            quants,
            scales,
            mins,
        }
    }

    /// Group `g`'s levels, scales and minima.
    fn group(&self, g: usize, cols: usize) -> (&[u8], &[f16], &[f16]) {
        let nb = blocks(cols);
        let span = g * nb * GROUP..(g + 1) * nb * GROUP;
        (
            &self.quants[g * nb * Q5_GROUP_BLOCK..(g + 1) * nb * Q5_GROUP_BLOCK],
            &self.scales[span.clone()],
            &self.mins[span],
        )
    }
}

/// Level `i` (0..32) of row `j` of one block of a [`Q5`] group.
fn q5_level(block: &[u8], j: usize, i: usize) -> u8 {
    let (half, i) = (i / (BLOCK / 2), i % (BLOCK / 2));
    let byte = block[q4_byte(j, i)];
    let nibble = if half == 0 { byte & 0xf } else { byte >> 4 };
    let high = (block[Q4_GROUP_BLOCK + 4 * j + i % 4] >> (4 * half + i / 4)) & 1;
    nibble | (high << 4)
}

/// Input rows quantized to 8 bits in blocks of [`BLOCK`], each row padded with zeros to whole
/// blocks: the other operand of the integer kernels.
#[derive(Default)]
struct Int8Rows {
    quants: Vec<i8>,
    scales: Vec<f32>,
    /// Each block's sum, `scale * sum(quants)`: what lets the 4-bit kernel multiply its
    /// levels unsigned and take the offset of 8 off afterwards, and the 5-bit one add its
    /// blocks' minima.
    sums: Vec<f32>,
    blocks: usize,
}

/// One row of [`Int8Rows`].
#[derive(Clone, Copy)]
struct Int8Row<'a> {
    quants: &'a [i8],
    scales: &'a [f32],
    sums: &'a [f32],
}

/// One input row to 8 bits per block of [`BLOCK`]: levels `q`, scales `s` and each block's
/// sum of levels times its scale.
fn round_row(q: &mut [i8], s: &mut [f32], sums: &mut [f32], row: &[f32]) {
    let blocks = q.chunks_mut(BLOCK).zip(s.iter_mut().zip(sums));
    for ((q, (s, sum)), block) in blocks.zip(row.chunks(BLOCK)) {
        let max = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        *s = max / 127.0;
        let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
        for (q, &x) in q.iter_mut().zip(block) {
            // Rounds to nearest by adding and removing 1.5 * 2^23 (|x * inv| <= 127), which
            // vectorises where `round` is a libm call.
            const ROUND: f32 = 12_582_912.0;
            *q = ((x * inv + ROUND) - ROUND).clamp(-127.0, 127.0) as i8;
        }
        *sum = *s * q.iter().map(|&q| i32::from(q)).sum::<i32>() as f32;
    }
}

impl Int8Rows {
    fn quantize(x: &[f32], cols: usize) -> Self {
        let mut rows = Self::default();
        rows.fill(x, cols);
        rows
    }

    /// Quantizes `x` into this buffer, reusing its memory.
    fn fill(&mut self, x: &[f32], cols: usize) {
        let nb = blocks(cols);
        let rows = x.len() / cols;
        self.blocks = nb;
        // Cleared first, so the padding of every row is zero.
        self.quants.clear();
        self.quants.resize(rows * nb * BLOCK, 0);
        self.scales.clear();
        self.scales.resize(rows * nb, 0.0);
        self.sums.clear();
        self.sums.resize(rows * nb, 0.0);
        // A prompt chunk's rows across the threads (on one, rounding a chunk's inputs for each
        // product was a twentieth of a quantized prompt's time, the other thread idle); the
        // token step's few rows stay on the calling thread.
        self.quants
            .par_chunks_mut(nb * BLOCK)
            .zip(self.scales.par_chunks_mut(nb))
            .zip(self.sums.par_chunks_mut(nb))
            .zip(x.par_chunks(cols))
            .with_min_len(GEMV_MAX_ROWS)
            .for_each(|(((q, s), sums), row)| round_row(q, s, sums, row));
    }

    /// The rows back in f32, `cols` wide: the values the integer kernels multiply.
    fn dequantize(&self, cols: usize) -> Vec<f32> {
        let nb = self.blocks;
        let rows = self.quants.len() / (nb * BLOCK);
        let mut out = Vec::with_capacity(rows * cols);
        for t in 0..rows {
            let quants = &self.quants[t * nb * BLOCK..][..cols];
            let scales = &self.scales[t * nb..];
            out.extend(
                quants
                    .iter()
                    .enumerate()
                    .map(|(c, &q)| f32::from(q) * scales[c / BLOCK]),
            );
        }
        out
    }

    fn row(&self, t: usize) -> Input<'_> {
        Input::Int8(self.int8_row(t))
    }

    fn int8_row(&self, t: usize) -> Int8Row<'_> {
        let nb = self.blocks;
        Int8Row {
            quants: &self.quants[t * nb * BLOCK..(t + 1) * nb * BLOCK],
            scales: &self.scales[t * nb..(t + 1) * nb],
            sums: &self.sums[t * nb..(t + 1) * nb],
        }
    }
}

/// One input row in the form a format's kernel takes.
#[derive(Clone, Copy)]
enum Input<'a> {
    F32(&'a [f32]),
    Int8(Int8Row<'a>),
}

impl Rows<'_> {
    fn is_quantized(&self) -> bool {
        matches!(self, Rows::Q8(_) | Rows::Q5(_) | Rows::Q4(_))
    }

    /// Writes row `r` as f32 into `out` (`cols` long), on the kernels of `level` where that
    /// matters for speed (the values are exact either way).
    fn dequantize_row(&self, level: Simd, r: usize, cols: usize, out: &mut [f32]) {
        let span = r * cols..(r + 1) * cols;
        match *self {
            Rows::F32(w) => out.copy_from_slice(&w[span]),
            Rows::F16(w) => w[span].convert_to_f32_slice(out),
            Rows::Bf16(w) => w[span].convert_to_f32_slice(out),
            Rows::Q8(m) => {
                let (q, s) = m.row(r, cols);
                widen_q8(level, q, s, out);
            }
            Rows::Q5(w) => {
                let (q, s, m) = w.group(r / GROUP, cols);
                let j = r % GROUP;
                let blocks = q
                    .chunks(Q5_GROUP_BLOCK)
                    .zip(s.chunks(GROUP).zip(m.chunks(GROUP)));
                for (out, (q, (s, m))) in out.chunks_mut(BLOCK).zip(blocks) {
                    let (s, m) = (s[j].to_f32(), m[j].to_f32());
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = f32::from(q5_level(q, j, i)) * s + m;
                    }
                }
            }
            Rows::Q4(m) => {
                let (q, s) = m.group(r / GROUP, cols);
                let j = r % GROUP;
                let blocks = q.chunks(Q4_GROUP_BLOCK).zip(s.chunks(GROUP));
                for (out, (q, s)) in out.chunks_mut(BLOCK).zip(blocks) {
                    let s = s[j].to_f32();
                    let mut block = [0f32; BLOCK];
                    let (lo, hi) = block.split_at_mut(BLOCK / 2);
                    for (i, (l, h)) in lo.iter_mut().zip(hi).enumerate() {
                        let b = q[q4_byte(j, i)];
                        *l = (f32::from(b & 0xf) - 8.0) * s;
                        *h = (f32::from(b >> 4) - 8.0) * s;
                    }
                    out.copy_from_slice(&block[..out.len()]);
                }
            }
        }
    }

    /// The whole matrix in f32 (the reference the tests hold the kernels to).
    pub fn dequantize(&self, rows: usize, cols: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * cols];
        out.par_chunks_mut(cols)
            .enumerate()
            .for_each(|(r, o)| self.dequantize_row(Simd::Portable, r, cols, o));
        out
    }

    /// `w[r] . x` for one row.
    fn dot(&self, level: Simd, r: usize, cols: usize, x: Input<'_>) -> f32 {
        let span = r * cols..(r + 1) * cols;
        match (*self, x) {
            (Rows::F32(w), Input::F32(x)) => kernels::dot_f32(level, &w[span], x),
            (Rows::F16(w), Input::F32(x)) => kernels::dot_f16(level, &w[span], x),
            (Rows::Bf16(w), Input::F32(x)) => kernels::dot_bf16(level, &w[span], x),
            (Rows::Q8(m), Input::Int8(x)) => {
                let (q, s) = m.row(r, cols);
                kernels::dot_q8(level, q, s, x)
            }
            (Rows::Q4(_) | Rows::Q5(_), _) => {
                unreachable!("q4 and q5 are multiplied a group at a time (`dots`)")
            }
            _ => unreachable!("gemv quantizes the input exactly for the quantized formats"),
        }
    }

    /// `out[i] = w[first + i] . x` for consecutive rows, `first` a multiple of [`GROUP`]:
    /// q4 and q5 a group at a time, the others a row at a time.
    fn dots(&self, level: Simd, first: usize, cols: usize, x: Input<'_>, out: &mut [f32]) {
        // The rows' groups in turn, group `g`'s 8 dot products by `dots(g)`.
        fn groups(first: usize, out: &mut [f32], dots: impl Fn(usize) -> [f32; GROUP]) {
            for (g, out) in out.chunks_mut(GROUP).enumerate() {
                out.copy_from_slice(&dots(first / GROUP + g)[..out.len()]);
            }
        }
        match (*self, x) {
            (Rows::Q4(m), Input::Int8(x)) => groups(first, out, |g| {
                let (q, s) = m.group(g, cols);
                kernels::dot_q4(level, q, s, x)
            }),
            (Rows::Q5(w), Input::Int8(x)) => groups(first, out, |g| {
                let (q, s, m) = w.group(g, cols);
                kernels::dot_q5(level, q, s, m, x)
            }),
            _ => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = self.dot(level, first + i, cols, x);
                }
            }
        }
    }
}

/// Widens 8-bit levels times their blocks' scales into `out`. One loop, compiled a second time
/// for AVX2: prompt chunks off AVX-512 widen every q8 weight of a product this way, and the baseline
/// x86-64 has no instruction that sign-extends bytes to dwords, so the plain loop vectorises
/// poorly.
fn widen_q8(level: Simd, q: &[i8], s: &[f16], out: &mut [f32]) {
    #[inline(always)]
    fn widen(q: &[i8], s: &[f16], out: &mut [f32]) {
        for ((out, q), s) in out.chunks_mut(BLOCK).zip(q.chunks(BLOCK)).zip(s) {
            let s = s.to_f32();
            for (o, &q) in out.iter_mut().zip(q) {
                *o = f32::from(q) * s;
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn widen_avx2(q: &[i8], s: &[f16], out: &mut [f32]) {
        widen(q, s, out)
    }
    #[cfg(target_arch = "x86_64")]
    if level != Simd::Portable && simd::cpu_runs(level) {
        // SAFETY: the CPU has just been checked for the features of `level`, AVX2, FMA and
        // F16C among them.
        return unsafe { widen_avx2(q, s, out) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    widen(q, s, out)
}

/// `out[t, r] = scale * (w[r] . x[t])` for `x` `[T, cols]` and `w` `[rows, cols]`; `out` is
/// `[T, rows]`. Few input rows go through [`gemv`], many through `gemm` one panel at a time
/// (q4 and q5 on AVX2 and AVX-512: one input through `gemv`, more through integer panels,
/// `int8`; q8 on AVX-512 through those panels above [`GEMV_MAX_ROWS`] inputs).
pub fn matmul(w: Rows<'_>, rows: usize, cols: usize, x: &[f32], scale: f32, out: &mut [f32]) {
    matmul_on(simd::chosen(), w, rows, cols, x, scale, out);
}

/// [`matmul`] with the kernels of `level` (where prompt chunks go through `gemm`, it picks its
/// own).
fn matmul_on(
    level: Simd,
    w: Rows<'_>,
    rows: usize,
    cols: usize,
    x: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    let t = x.len() / cols;
    if t <= GEMV_MAX_ROWS && !integer_panels(level, w, t) {
        gemv(level, w, rows, cols, x, scale, out);
    } else {
        panels(level, w, rows, cols, x, scale, out);
    }
}

/// [`matmul`] for few input rows: each weight row is read once from memory for all of them.
fn gemv(
    level: Simd,
    w: Rows<'_>,
    rows: usize,
    cols: usize,
    x: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    let t = x.len() / cols;
    if !w.is_quantized() {
        let input = |ti: usize| Input::F32(&x[ti * cols..(ti + 1) * cols]);
        return gemv_rows(level, w, rows, cols, t, input, scale, out);
    }
    with_int8_rows(x, cols, |q| {
        gemv_rows(level, w, rows, cols, t, |ti| q.row(ti), scale, out)
    });
}

/// Runs `f` with `x` (`[T, cols]`) rounded to 8 bits in a buffer of this thread's. The token
/// step does this a few hundred times per token, so the buffers are kept. While a call waits
/// for its tasks, rayon may start another product on the same thread (a layer runs its
/// independent products together), which takes the next buffer of the thread's stack; it is
/// back on the stack when `f` returns.
fn with_int8_rows<R>(x: &[f32], cols: usize, f: impl FnOnce(&Int8Rows) -> R) -> R {
    let mut q = INPUTS.with_borrow_mut(Vec::pop).unwrap_or_default();
    q.fill(x, cols);
    let result = f(&q);
    INPUTS.with_borrow_mut(|stack| stack.push(q));
    result
}

thread_local! {
    static INPUTS: RefCell<Vec<Int8Rows>> = const { RefCell::new(Vec::new()) };
}

/// [`gemv`] with input row `ti` given by `input(ti)`.
#[allow(clippy::too_many_arguments)]
fn gemv_rows<'a>(
    level: Simd,
    w: Rows<'_>,
    rows: usize,
    cols: usize,
    t: usize,
    input: impl Fn(usize) -> Input<'a> + Sync,
    scale: f32,
    out: &mut [f32],
) {
    if t == 1 {
        let x = input(0);
        out.par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, out)| {
                w.dots(level, task * ROWS_PER_TASK, cols, x, out);
                out.iter_mut().for_each(|o| *o *= scale);
            });
        return;
    }
    // A task's rows for every input in turn, so its weights are still in cache for the
    // second input; the result comes out `[rows, T]` and is transposed.
    let mut by_row = vec![0f32; rows * t];
    by_row
        .par_chunks_mut(ROWS_PER_TASK * t)
        .enumerate()
        .for_each(|(task, chunk)| {
            let mut dots = [0f32; ROWS_PER_TASK];
            let dots = &mut dots[..chunk.len() / t];
            for ti in 0..t {
                w.dots(level, task * ROWS_PER_TASK, cols, input(ti), dots);
                for (o, d) in chunk.chunks_mut(t).zip(&*dots) {
                    o[ti] = scale * d;
                }
            }
        });
    transpose_into(&by_row, t, out);
}

/// `out[t, r] = by_row[r, t]`.
fn transpose_into(by_row: &[f32], t: usize, out: &mut [f32]) {
    let rows = by_row.len() / t;
    for (r, row) in by_row.chunks_exact(t).enumerate() {
        for (ti, &v) in row.iter().enumerate() {
            out[ti * rows + r] = v;
        }
    }
}

/// Whether [`panels`] multiplies `t` inputs over `w` in integers (`int8`).
fn integer_panels(level: Simd, w: Rows<'_>, t: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return level != Simd::Portable && simd::cpu_runs(level) && int8::takes(level, w, t);
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`matmul`] for many input rows: each rayon task takes a panel of weight rows, copies it to
/// f32 columns (widened where it is not f32), and multiplies it with all inputs through
/// single-threaded `gemm`, which writes the panel's columns of `out` in place. On AVX2 and
/// AVX-512, q4 and q5 panels stay in integers instead (`int8`), and so do q8's on AVX-512.
fn panels(
    level: Simd,
    w: Rows<'_>,
    rows: usize,
    cols: usize,
    x: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    let t = x.len() / cols;
    assert_eq!(out.len(), t * rows, "matmul output size");
    let out = Columns {
        ptr: out.as_mut_ptr(),
        stride: rows,
    };
    #[cfg(target_arch = "x86_64")]
    if integer_panels(level, w, t) {
        // SAFETY: the CPU has just been checked for the features of `level`, and `out` is `[t,
        // rows]` (asserted above), borrowed mutably for this whole call.
        return unsafe {
            match level {
                Simd::Avx512 => int8::panels::<avx512::Avx512>(w, rows, cols, x, scale, out),
                Simd::Avx2 => int8::panels::<int8::Avx2>(w, rows, cols, x, scale, out),
                Simd::Portable => unreachable!("the portable path has no integer panels"),
            }
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    // The token step multiplies quantized weights with the input rounded to 8 bits; so must
    // prompt chunks, or the chunk size would change the results.
    let rounded;
    let x = if w.is_quantized() {
        rounded = Int8Rows::quantize(x, cols).dequantize(cols);
        &rounded[..]
    } else {
        x
    };
    // At least a few panels per thread, so the threads finish together.
    let panel = rows
        .div_ceil(4 * rayon::current_num_threads())
        .clamp(16, PANEL_ROWS);
    (0..rows.div_ceil(panel)).into_par_iter().for_each(|task| {
        let first = task * panel;
        let n = panel.min(rows - first);
        PANEL.with_borrow_mut(|(strip, panel)| {
            panel.resize(n * cols, 0.0);
            widen_columns(level, w, first, n, cols, strip, panel);
            // SAFETY: `out` is `[t, rows]` (asserted above) and borrowed mutably for this whole
            // function; this task alone writes its columns `first..first + n`, `n <= rows -
            // first`.
            unsafe { product(t, n, cols, x, panel, scale, out.at(first)) };
        });
    });
}

thread_local! {
    /// Each thread's buffers for a strip of widened rows and a panel of weights in columns
    /// (see [`widen_columns`]), kept between calls: allocating them per call had the kernel
    /// zeroing fresh pages for a fifth of a prompt's time.
    static PANEL: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Rows `first..first + n` of `w` in f32 into `panel` column-major (`panel[l * n + j]` is
/// row `first + j`'s column `l`), [`STRIP`] rows at a time through `strip`. gemm multiplies
/// this layout as it is; given the rows as stored, it transposed them itself, element by
/// element, for a third of a 256-token prompt's product time.
fn widen_columns(
    level: Simd,
    w: Rows<'_>,
    first: usize,
    n: usize,
    cols: usize,
    strip: &mut Vec<f32>,
    panel: &mut [f32],
) {
    for start in (0..n).step_by(STRIP) {
        let rows = STRIP.min(n - start);
        let src: &[f32] = match w {
            Rows::F32(w) => &w[(first + start) * cols..(first + start + rows) * cols],
            _ => {
                strip.resize(rows * cols, 0.0);
                for (i, row) in strip.chunks_mut(cols).enumerate() {
                    w.dequantize_row(level, first + start + i, cols, row);
                }
                strip
            }
        };
        for (l, column) in panel.chunks_exact_mut(n).enumerate() {
            for (j, p) in column[start..start + rows].iter_mut().enumerate() {
                *p = src[j * cols + l];
            }
        }
    }
}

/// Rows [`widen_columns`] turns into columns at a time: their columns' cache lines stay in L1
/// from one column to the next.
const STRIP: usize = 16;

/// A row-major output matrix from some column on, shared by tasks of [`panels`] that each
/// write only their own columns.
#[derive(Clone, Copy)]
struct Columns {
    ptr: *mut f32,
    /// Elements from one row to the next.
    stride: usize,
}

// SAFETY: the tasks sharing it write disjoint elements, and the borrow it comes from outlives
// them all (see `panels`).
unsafe impl Send for Columns {}
unsafe impl Sync for Columns {}

impl Columns {
    fn at(self, column: usize) -> Self {
        Self {
            ptr: self.ptr.wrapping_add(column),
            ..self
        }
    }

    /// Writes `value` at (`row`, `column`).
    ///
    /// # Safety
    ///
    /// That element must be valid for writes and not otherwise accessed during the call.
    #[cfg(target_arch = "x86_64")]
    unsafe fn write(self, row: usize, column: usize, value: f32) {
        // SAFETY: the caller vouches for the element.
        unsafe { *self.ptr.add(row * self.stride + column) = value };
    }
}

/// `out[i, j] = scale * (w[.., j] . x[i])` for `x` `[m, k]` row-major and `w` `[n, k]` held
/// column-major (`w[l * n + j]`). The weights are gemm's left operand, the one it packs in its
/// inner loop, and in columns that packing is a plain copy; the inputs are the smaller matrix.
///
/// # Safety
///
/// `out[i, j]` must be valid for writes, and not otherwise accessed during the call, for every
/// `i < m` and `j < n`.
unsafe fn product(m: usize, n: usize, k: usize, x: &[f32], w: &[f32], scale: f32, out: Columns) {
    assert!(x.len() == m * k && w.len() == n * k && n <= out.stride);
    // SAFETY: the assert bounds every index gemm derives for its operands: lhs `(j, l)` is
    // `w[l * n + j]`, rhs `(l, i)` is `x[i * k + l]`; the caller vouches for dst `(j, i)` at
    // `out.ptr[i * out.stride + j]`.
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            out.ptr,
            out.stride as isize,
            1,
            false,
            w.as_ptr(),
            n as isize,
            1,
            x.as_ptr(),
            k as isize,
            1,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Dot products per format, on the kernels of the [`Simd`] path asked for.
mod kernels {
    use super::{GROUP, Int8Row, bf16, f16};
    #[cfg(target_arch = "x86_64")]
    use super::{avx512, int8, x86};
    use crate::model::simd::{Simd, dispatch};

    pub fn dot_f32(level: Simd, w: &[f32], x: &[f32]) -> f32 {
        dispatch!(
            level,
            avx512::dot_f32,
            x86::dot_f32,
            portable::dot_f32,
            w,
            x
        )
    }
    pub fn dot_f16(level: Simd, w: &[f16], x: &[f32]) -> f32 {
        dispatch!(
            level,
            avx512::dot_f16,
            x86::dot_f16,
            portable::dot_f16,
            w,
            x
        )
    }
    pub fn dot_bf16(level: Simd, w: &[bf16], x: &[f32]) -> f32 {
        dispatch!(
            level,
            avx512::dot_bf16,
            x86::dot_bf16,
            portable::dot_bf16,
            w,
            x
        )
    }
    /// Whole blocks of 8-bit weights against whole blocks of the 8-bit input.
    pub fn dot_q8(level: Simd, q: &[i8], s: &[f16], x: Int8Row<'_>) -> f32 {
        dispatch!(
            level,
            avx512::dot_q8,
            x86::dot_q8,
            portable::dot_q8,
            q,
            s,
            x
        )
    }
    /// One group of [`Q5`](super::Q5) rows (as `Q5::group` gives them) against whole blocks
    /// of the 8-bit input: the group's 8 dot products.
    pub fn dot_q5(level: Simd, q: &[u8], s: &[f16], m: &[f16], x: Int8Row<'_>) -> [f32; GROUP] {
        dispatch!(
            level,
            int8::dot_q5::<avx512::Avx512>,
            int8::dot_q5::<int8::Avx2>,
            portable::dot_q5,
            q,
            s,
            m,
            x
        )
    }
    /// One group of [`Q4`](super::Q4) rows (`q` and `s` as `Q4::group` gives them) against
    /// whole blocks of the 8-bit input: the group's 8 dot products.
    pub fn dot_q4(level: Simd, q: &[u8], s: &[f16], x: Int8Row<'_>) -> [f32; GROUP] {
        dispatch!(
            level,
            int8::dot_q4::<avx512::Avx512>,
            int8::dot_q4::<int8::Avx2>,
            portable::dot_q4,
            q,
            s,
            x
        )
    }

    /// Plain loops: the fallback on other CPUs, the tail of the SIMD kernels, and the
    /// reference the tests hold the SIMD kernels to. The integer ones sum each block exactly,
    /// as the SIMD kernels do.
    pub mod portable {
        use super::super::{BLOCK, Q4_GROUP_BLOCK, Q5_GROUP_BLOCK, q4_byte, q5_level};
        use super::{GROUP, Int8Row, bf16, f16};

        pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
            w.iter().zip(x).map(|(w, x)| w * x).sum()
        }
        pub fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
            w.iter().zip(x).map(|(w, x)| w.to_f32() * x).sum()
        }
        pub fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
            w.iter().zip(x).map(|(w, x)| w.to_f32() * x).sum()
        }
        pub fn dot_q8(q: &[i8], s: &[f16], x: Int8Row<'_>) -> f32 {
            q.chunks_exact(BLOCK)
                .zip(x.quants.chunks_exact(BLOCK))
                .zip(s.iter().zip(x.scales))
                .map(|((q, x), (s, xs))| {
                    let sum: i32 = q
                        .iter()
                        .zip(x)
                        .map(|(&q, &x)| i32::from(q) * i32::from(x))
                        .sum();
                    sum as f32 * (s.to_f32() * xs)
                })
                .sum()
        }
        /// `sum(q * x) * s * xs + m * sum(x)` per block and row, the input's sum being its
        /// `sums`.
        pub fn dot_q5(q: &[u8], s: &[f16], m: &[f16], x: Int8Row<'_>) -> [f32; GROUP] {
            let blocks = q
                .chunks_exact(Q5_GROUP_BLOCK)
                .zip(s.chunks_exact(GROUP).zip(m.chunks_exact(GROUP)))
                .zip(
                    x.quants
                        .chunks_exact(BLOCK)
                        .zip(x.scales.iter().zip(x.sums)),
                );
            std::array::from_fn(|j| {
                blocks
                    .clone()
                    .map(|((q, (s, m)), (x, (xs, sum)))| {
                        let dot: i32 = x
                            .iter()
                            .enumerate()
                            .map(|(i, &x)| i32::from(q5_level(q, j, i)) * i32::from(x))
                            .sum();
                        dot as f32 * (s[j].to_f32() * xs) + m[j].to_f32() * sum
                    })
                    .sum()
            })
        }
        pub fn dot_q4(q: &[u8], s: &[f16], x: Int8Row<'_>) -> [f32; GROUP] {
            let blocks = q
                .chunks_exact(Q4_GROUP_BLOCK)
                .zip(s.chunks_exact(GROUP))
                .zip(x.quants.chunks_exact(BLOCK).zip(x.scales));
            std::array::from_fn(|j| {
                blocks
                    .clone()
                    .map(|((q, s), (x, xs))| {
                        let (lo, hi) = x.split_at(BLOCK / 2);
                        let sum: i32 = (0..BLOCK / 2)
                            .map(|i| {
                                let b = q[q4_byte(j, i)];
                                (i32::from(b & 0xf) - 8) * i32::from(lo[i])
                                    + (i32::from(b >> 4) - 8) * i32::from(hi[i])
                            })
                            .sum();
                        sum as f32 * (s[j].to_f32() * xs)
                    })
                    .sum()
            })
        }
    }
}

/// AVX2 + FMA + F16C kernels: 8 float lanes or 32 byte lanes, several accumulators so the FMA
/// latency is hidden.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::kernels::portable;
    use super::{BLOCK, Int8Row, bf16, f16};
    use crate::model::simd;

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

    /// Loads 16 bytes at `q[i..]`.
    #[target_feature(enable = "avx2,fma")]
    fn bytes16<T>(q: &[T], i: usize) -> __m128i {
        let q = &q[i..i + 16 / size_of::<T>()];
        // SAFETY: the slice above spans exactly 16 bytes; `loadu` reads 16 unaligned bytes.
        unsafe { _mm_loadu_si128(q.as_ptr().cast()) }
    }

    /// One f16 scale times one f32 scale, broadcast.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn scale(s: f16, xs: f32) -> __m256 {
        let s = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(s.to_bits()))));
        _mm256_set1_ps(s * xs)
    }

    /// The 8 partial sums (as f32) of 32 signed products `w[i] * x[i]`: `maddubs` multiplies
    /// unsigned by signed bytes, so the sign of `w` moves onto `x` first. Neither side is -128,
    /// so pairs of products fit in an i16.
    #[target_feature(enable = "avx2,fma")]
    fn products(w: __m256i, x: __m256i) -> __m256 {
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// `w . x` with `widen(w, i)` giving weights `i..i + 8` as f32, four accumulators deep;
    /// `tail` takes what is left past the last multiple of 32.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn widened_dot<T>(
        w: &[T],
        x: &[f32],
        widen: impl Fn(&[T], usize) -> __m256,
        tail: fn(&[T], &[f32]) -> f32,
    ) -> f32 {
        let n = w.len().min(x.len());
        let main = n - n % 32;
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in (0..main).step_by(32) {
            ahead(w, i);
            for (k, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(widen(w, i + 8 * k), load(x, i + 8 * k), *acc);
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum(sum) + tail(&w[main..n], &x[main..n])
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
        widened_dot(w, x, |w, i| load(w, i), portable::dot_f32)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
        widened_dot(
            w,
            x,
            |w, i| _mm256_cvtph_ps(bytes16(w, i)),
            portable::dot_f16,
        )
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
        // A bf16 is the top half of an f32: widen and shift into place.
        let widen = |w: &[bf16], i| {
            let wide = _mm256_cvtepu16_epi32(bytes16(w, i));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide))
        };
        widened_dot(w, x, widen, portable::dot_bf16)
    }

    /// Loads an array of 32 bytes.
    #[target_feature(enable = "avx2,fma")]
    fn load_array<T, const N: usize>(a: &[T; N]) -> __m256i {
        const { assert!(size_of::<[T; N]>() == 32) };
        // SAFETY: `a` spans exactly 32 bytes; `loadu` reads 32 unaligned bytes.
        unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
    }

    /// How far ahead of the float dots' reads the weights are prefetched, in bytes.
    const PREFETCH: usize = 1024;

    /// Prefetches the cache lines of the 32 weights `PREFETCH` bytes past `w[i..]`.
    #[target_feature(enable = "avx2,fma")]
    fn ahead<T>(w: &[T], i: usize) {
        let at = w
            .as_ptr()
            .wrapping_add(i)
            .cast::<i8>()
            .wrapping_add(PREFETCH);
        for line in (0..32 * size_of::<T>()).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line));
        }
    }

    /// `sum(q[b] . x[b]) * s[b] * xs[b]` over q8's blocks. Eight blocks' scales are widened
    /// and multiplied in one vector, each then one permute away, and the blocks alternate
    /// between two accumulators so the FMAs do not wait on each other's latency.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_q8(q: &[i8], s: &[f16], x: Int8Row<'_>) -> f32 {
        let q = q.as_chunks::<BLOCK>().0;
        let (xq, xs) = (x.quants.as_chunks::<BLOCK>().0, x.scales);
        let n = q.len().min(s.len()).min(xq.len()).min(xs.len());
        let block = |b: usize| products(load_array(&q[b]), load_array(&xq[b]));
        let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let groups = n / 8;
        for g in 0..groups {
            let ahead = q[g * 8].as_ptr().wrapping_add(simd::INTEGER_PREFETCH);
            for line in (0..8 * BLOCK).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
            }
            let scales = _mm256_mul_ps(_mm256_cvtph_ps(bytes16(s, g * 8)), load(xs, g * 8));
            let lane = |i: i32| _mm256_permutevar8x32_ps(scales, _mm256_set1_epi32(i));
            for i in (0..8).step_by(2) {
                let b = g * 8 + i;
                even = _mm256_fmadd_ps(block(b), lane(i as i32), even);
                odd = _mm256_fmadd_ps(block(b + 1), lane(i as i32 + 1), odd);
            }
        }
        for b in groups * 8..n {
            even = _mm256_fmadd_ps(block(b), scale(s[b], xs[b]), even);
        }
        hsum(_mm256_add_ps(even, odd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(n: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// `out[t, r]` from the dequantized weights (and, for the 8- and 4-bit formats, the
    /// input as quantized to 8 bits), summed in f64: the reference every path is held to.
    fn reference(w: Rows<'_>, rows: usize, cols: usize, x: &[f32], scale: f32) -> Vec<f32> {
        let dense = w.dequantize(rows, cols);
        let t = x.len() / cols;
        let x: Vec<f32> = if w.is_quantized() {
            Int8Rows::quantize(x, cols).dequantize(cols)
        } else {
            x.to_vec()
        };
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

    /// Odd sizes (not multiples of 8, 16 or 32) exercise every kernel's tail; more than
    /// [`GEMV_MAX_ROWS`] inputs go through the panels, and 300 rows make more than one.
    const SHAPES: [(usize, usize, usize); 11] = [
        (1, 1, 1),
        (3, 17, 1),
        (37, 45, 1),
        (64, 256, 1),
        (70, 100, 3),
        (33, 129, 8),
        (33, 129, 9),
        (21, 70, 11),
        (300, 64, 12),
        (5, 3000, 20),
        // The token step over 35 blocks: four runs of 8, a pair and a last block in the
        // AVX-512 q8 dot, and a float tail of 12 past the last 64.
        (3, 1100, 1),
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
                for level in Simd::supported() {
                    matmul_on(level, rows_view, rows, cols, &x, 0.5, &mut out);
                    for (a, b) in out.iter().zip(&expected) {
                        let tol = 1e-5 * (cols as f32).sqrt().max(1.0) * (1.0 + b.abs());
                        assert!(
                            (a - b).abs() <= tol,
                            "{level} {rows}x{cols} t={t}: {a} vs {b}"
                        );
                    }
                }
            });
        }
    }

    #[test]
    fn f32_matmul_matches_reference() {
        check(|w, _| {
            let w = w.to_vec();
            Box::new(move |f| f(Rows::F32(&w)))
        });
    }

    #[test]
    fn f16_matmul_matches_reference() {
        check(|w, _| {
            let w: Vec<f16> = w.iter().map(|&x| f16::from_f32(x)).collect();
            Box::new(move |f| f(Rows::F16(&w)))
        });
    }

    #[test]
    fn bf16_matmul_matches_reference() {
        check(|w, _| {
            let w: Vec<bf16> = w.iter().map(|&x| bf16::from_f32(x)).collect();
            Box::new(move |f| f(Rows::Bf16(&w)))
        });
    }

    #[test]
    fn q8_matmul_matches_reference() {
        check(|w, cols| {
            let q = Q8::quantize(w, cols);
            Box::new(move |f| f(Rows::Q8(&q)))
        });
    }

    #[test]
    fn q5_matmul_matches_reference() {
        check(|w, cols| {
            let q = Q5::quantize(w, cols);
            Box::new(move |f| f(Rows::Q5(&q)))
        });
    }

    #[test]
    fn q4_matmul_matches_reference() {
        check(|w, cols| {
            let q = Q4::quantize(w, cols);
            Box::new(move |f| f(Rows::Q4(&q)))
        });
    }

    /// The integer panels at the ends of their ranges, where a sum kept in i16 would first
    /// overflow: nearly every q4 level 15 and q5 level 31 (one weight of -1 per block, the
    /// rest 0.875), and q8's levels at both ends once 128 is added (1 and 255), against
    /// inputs of all +1 or all -1 (8-bit levels of +-127). Eleven inputs make two tiles of
    /// four and three single rows; 19 rows, a partial group.
    #[test]
    fn integer_panels_hold_at_the_ends_of_their_ranges() {
        let (rows, cols, t) = (19, 96, 11);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| {
                if i % BLOCK == (i / cols) % BLOCK {
                    -1.0
                } else {
                    0.875
                }
            })
            .collect();
        let x: Vec<f32> = (0..t * cols)
            .map(|i| if (i / cols) % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let (q4, q5) = (Q4::quantize(&w, cols), Q5::quantize(&w, cols));
        // q8's levels -127 and 111, and negated 127 and -111: 1 and 255 once made unsigned.
        let negated: Vec<f32> = w.iter().map(|w| -w).collect();
        let (q8, q8_negated) = (Q8::quantize(&w, cols), Q8::quantize(&negated, cols));
        let formats = [
            Rows::Q4(&q4),
            Rows::Q5(&q5),
            Rows::Q8(&q8),
            Rows::Q8(&q8_negated),
        ];
        for rows_view in formats {
            let expected = reference(rows_view, rows, cols, &x, 1.0);
            let mut out = vec![0f32; t * rows];
            for level in Simd::supported() {
                matmul_on(level, rows_view, rows, cols, &x, 1.0, &mut out);
                for (a, b) in out.iter().zip(&expected) {
                    assert!(
                        (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                        "{level}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// The stored bytes are the layout [`Q4`] and [`Q5`] document (which the weight cache
    /// holds): levels chosen per row and column, `(3 j + c) % 16` (q4) or `% 32` (q5) in row
    /// `j`, are read back from the bytes by the documented formulas.
    #[test]
    fn q4_and_q5_bytes_are_the_documented_layout() {
        let level = |j: usize, c: usize, n: usize| ((3 * j + c) % n) as u8;
        // Each row holds -8 (q4: the scale is then exactly 1) or 0 and 31 (q5: scale 1,
        // minimum 0), so every level is exact.
        let w = |n: usize, offset: f32| -> Vec<f32> {
            (0..GROUP * BLOCK)
                .map(|i| f32::from(level(i / BLOCK, i % BLOCK, n)) - offset)
                .collect()
        };
        let (q4, q5) = (
            Q4::quantize(&w(16, 8.0), BLOCK),
            Q5::quantize(&w(32, 0.0), BLOCK),
        );
        assert!(q4.scales.iter().all(|&s| s == f16::ONE), "{:?}", q4.scales);
        assert!(q5.scales.iter().all(|&s| s == f16::ONE), "{:?}", q5.scales);
        for j in 0..GROUP {
            for r in 0..4 {
                for k in 0..4 {
                    let byte = 32 * r + 4 * j + k;
                    let (lo, hi) = (4 * r + k, 16 + 4 * r + k);
                    assert_eq!(q4.quants[byte], level(j, lo, 16) | level(j, hi, 16) << 4);
                    let (l5, h5) = (level(j, lo, 32), level(j, hi, 32));
                    assert_eq!(q5.quants[byte], (l5 & 0xf) | (h5 & 0xf) << 4);
                    let high = q5.quants[Q4_GROUP_BLOCK + 4 * j + k];
                    assert_eq!((high >> r) & 1, l5 >> 4, "row {j} level {lo}");
                    assert_eq!((high >> (4 + r)) & 1, h5 >> 4, "row {j} level {hi}");
                }
            }
        }
    }

    /// Where q4 and q5 are multiplied in integers, a chunk of inputs gives each input exactly
    /// what it gives alone (the token step), whatever the chunk's size. q8's panels (more than
    /// [`GEMV_MAX_ROWS`] inputs) sum in another order than its row-by-row dot, so there a
    /// chunk gives each input exactly what a chunk of copies of it gives, and what it gives
    /// alone to rounding; smaller chunks give exactly what it gives alone.
    #[test]
    fn integer_products_do_not_depend_on_the_chunk() {
        let mut rng = StdRng::seed_from_u64(17);
        let (rows, cols) = (70, 200);
        let w = random(rows * cols, &mut rng);
        let (q4, q5, q8) = (
            Q4::quantize(&w, cols),
            Q5::quantize(&w, cols),
            Q8::quantize(&w, cols),
        );
        let mut checked_q8 = false;
        for t in [2, 5, 11] {
            let x = random(t * cols, &mut rng);
            for rows_view in [Rows::Q4(&q4), Rows::Q5(&q5), Rows::Q8(&q8)] {
                for level in Simd::supported() {
                    // The formats this path multiplies in integers in long chunks.
                    if !integer_panels(level, rows_view, GEMV_MAX_ROWS + 1) {
                        continue;
                    }
                    let mut chunk = vec![0f32; t * rows];
                    matmul_on(level, rows_view, rows, cols, &x, 0.5, &mut chunk);
                    for (x, chunk) in x.chunks(cols).zip(chunk.chunks(rows)) {
                        let mut alone = vec![0f32; rows];
                        matmul_on(level, rows_view, rows, cols, x, 0.5, &mut alone);
                        if !matches!(rows_view, Rows::Q8(_)) || t <= GEMV_MAX_ROWS {
                            assert_eq!(chunk, &alone[..], "{level} t={t}");
                            continue;
                        }
                        checked_q8 = true;
                        for (a, b) in chunk.iter().zip(&alone) {
                            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
                        }
                        let copies = GEMV_MAX_ROWS + 1;
                        let same = x.repeat(copies);
                        let mut all = vec![0f32; copies * rows];
                        matmul_on(level, rows_view, rows, cols, &same, 0.5, &mut all);
                        for copy in all.chunks(rows) {
                            assert_eq!(chunk, copy, "{level} t={t}");
                        }
                    }
                }
            }
        }
        let avx512 = Simd::supported().contains(&Simd::Avx512);
        assert_eq!(checked_q8, avx512, "q8 panels are integer on AVX-512 only");
    }

    /// Quantization error is at most half a step of each block's scale (the scale itself
    /// rounded to f16, hence the 1e-3), except in q4 for a weight of the opposite sign to the
    /// block's largest, which may be clamped a full step. q5's step is `(max - min) / 31`, and
    /// its ends may move by the f16 rounding of the scale (31 times) and of the minimum.
    #[test]
    fn quantization_rounds_to_the_nearest_level() {
        let mut rng = StdRng::seed_from_u64(3);
        let (rows, cols) = (5, 77);
        let w = random(rows * cols, &mut rng);
        let q8 = Q8::quantize(&w, cols);
        let q4 = Q4::quantize(&w, cols);
        let q5 = Q5::quantize(&w, cols);
        // The largest error each format may make in block `b`.
        let bound = |format: &Rows<'_>, b: &[f32]| {
            let largest = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            let (lo, hi) = b
                .iter()
                .fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            let allowed = match format {
                Rows::Q8(_) => largest * 0.5 / 127.0,
                Rows::Q4(_) => largest / 8.0,
                // f16 keeps 11 significant bits of the scale and the minimum.
                _ => (hi - lo) / 31.0 * 0.5 + ((hi - lo) + lo.abs()) / 2048.0,
            };
            allowed * 1.001 + 1e-6
        };
        for rows_view in [Rows::Q8(&q8), Rows::Q4(&q4), Rows::Q5(&q5)] {
            let dense = rows_view.dequantize(rows, cols);
            for (r, (orig, deq)) in w.chunks(cols).zip(dense.chunks(cols)).enumerate() {
                for (b, (ob, db)) in orig.chunks(BLOCK).zip(deq.chunks(BLOCK)).enumerate() {
                    for (o, d) in ob.iter().zip(db) {
                        let err = (o - d).abs();
                        let bound = bound(&rows_view, ob);
                        assert!(err <= bound, "row {r} block {b}: {err} > {bound}");
                    }
                }
            }
        }
    }

    /// Each q5 block's levels reach both ends of its range: the smallest weight is level 0
    /// and the largest level 31, bit 4 included.
    #[test]
    fn q5_levels_span_each_block() {
        let mut rng = StdRng::seed_from_u64(13);
        let cols = 64;
        let w = random(3 * cols, &mut rng);
        let q5 = Q5::quantize(&w, cols);
        let (q, _, _) = q5.group(0, cols);
        for (b, values) in w.chunks(BLOCK).enumerate() {
            let (row, block) = (b / blocks(cols), b % blocks(cols));
            let block = &q[block * Q5_GROUP_BLOCK..][..Q5_GROUP_BLOCK];
            let levels: Vec<u8> = (0..BLOCK).map(|i| q5_level(block, row, i)).collect();
            let at = |pick: fn(f32, f32) -> bool| {
                (0..BLOCK)
                    .reduce(|a, b| if pick(values[b], values[a]) { b } else { a })
                    .unwrap()
            };
            assert_eq!(levels[at(|a, b| a < b)], 0, "{levels:?}");
            assert_eq!(levels[at(|a, b| a > b)], 31, "{levels:?}");
        }
    }

    /// The 8-bit input keeps each element within half a step of its block's scale.
    #[test]
    fn input_quantization_rounds_to_the_nearest_level() {
        let mut rng = StdRng::seed_from_u64(5);
        let cols = 77;
        let x = random(2 * cols, &mut rng);
        let q = Int8Rows::quantize(&x, cols);
        for (t, row) in x.chunks(cols).enumerate() {
            let back = &q.dequantize(cols)[t * cols..(t + 1) * cols];
            for (c, (&v, &back)) in row.iter().zip(back).enumerate() {
                let s = q.scales[t * q.blocks + c / BLOCK];
                assert!((back - v).abs() <= s * 0.5 + 1e-7, "row {t} col {c}");
            }
        }
    }

    /// The SIMD kernels against the plain loops directly, at a size with every kind of tail:
    /// 1100 is 35 blocks (four runs of 8, a pair and one more) and 12 floats past the last 64.
    #[test]
    fn simd_kernels_match_portable_loops() {
        let mut rng = StdRng::seed_from_u64(11);
        let cols = 1100;
        let w = random(cols, &mut rng);
        let x = random(cols, &mut rng);
        let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let b: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let q8 = Q8::quantize(&w, cols);
        // One group of q4 and of q5 rows, the last padding.
        let group = random((GROUP - 1) * cols, &mut rng);
        let (q4, q5) = (Q4::quantize(&group, cols), Q5::quantize(&group, cols));
        let xq = Int8Rows::quantize(&x, cols);
        let Input::Int8(xq) = xq.row(0) else {
            unreachable!()
        };
        for level in Simd::supported() {
            let pairs = [
                (
                    kernels::dot_f32(level, &w, &x),
                    kernels::portable::dot_f32(&w, &x),
                ),
                (
                    kernels::dot_f16(level, &h, &x),
                    kernels::portable::dot_f16(&h, &x),
                ),
                (
                    kernels::dot_bf16(level, &b, &x),
                    kernels::portable::dot_bf16(&b, &x),
                ),
                (
                    kernels::dot_q8(level, &q8.quants, &q8.scales, xq),
                    kernels::portable::dot_q8(&q8.quants, &q8.scales, xq),
                ),
            ];
            let simd = kernels::dot_q4(level, &q4.quants, &q4.scales, xq);
            let plain = kernels::portable::dot_q4(&q4.quants, &q4.scales, xq);
            let q4_pairs = simd.into_iter().zip(plain);
            let (q, s, m) = (&q5.quants, &q5.scales, &q5.mins);
            let simd = kernels::dot_q5(level, q, s, m, xq);
            let plain = kernels::portable::dot_q5(q, s, m, xq);
            let q5_pairs = simd.into_iter().zip(plain);
            let all = pairs.into_iter().chain(q4_pairs).chain(q5_pairs);
            for (i, (simd, plain)) in all.enumerate() {
                assert!(
                    (simd - plain).abs() < 1e-3,
                    "{level} kernel {i}: {simd} vs {plain}"
                );
            }
        }
    }
}
