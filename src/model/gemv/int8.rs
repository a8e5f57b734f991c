//! Prompt chunks over 4- and 5-bit weights in 8-bit integer arithmetic, on AVX2.
//!
//! Widening a panel of weights to f32 for `gemm` multiplies at the speed of f32 FMAs, 8
//! products an instruction. Here the levels stay bytes and meet the input as [`gemv`] rounds
//! it to 8 bits: a panel's rows are packed in groups of [`GROUP`], interleaved four levels at a
//! time, so one `maddubs` multiplies four levels of each of 8 rows by four input bytes
//! broadcast (32 products), and the lanes of its sums are the rows. A block's scales then
//! reach all 8 rows in one FMA, where a row-by-row dot would reduce each block across lanes.
//! (ggml's repacked `q4_0` kernels interleave rows the same way.)
//!
//! q8 stays on the f32 path: its signed levels need their signs moved onto the input for every
//! product, and the sum of two of its pairs of products overflows an i16, so it saves little.
//!
//! [`gemv`]: super

use std::arch::x86_64::*;
use std::cell::RefCell;

use rayon::prelude::*;

use super::{BLOCK, Columns, Int8Rows, Rows, blocks, with_int8_rows};

/// Weight rows packed together.
const GROUP: usize = 8;

/// Weight rows one task packs and multiplies: the packed panel (a byte a weight) stays in L2
/// while every input row passes over it.
const PANEL_ROWS: usize = 64;

/// Input rows multiplied per pass over a group's packed levels.
const TOKENS: usize = 4;

/// Whether [`panels`] takes weights of this format.
pub(super) fn takes(w: Rows<'_>) -> bool {
    matches!(w, Rows::Q4(_) | Rows::Q5(_))
}

/// A panel of q4 or q5 rows, packed for [`tile`].
#[derive(Default)]
struct Packed {
    /// Per group, per block, 8 runs of 32 bytes: run `g` holds levels `4g..4g + 4` of each of
    /// the group's rows in turn.
    levels: Vec<u8>,
    /// Per group, per block, each row's scale.
    scales: Vec<f32>,
    /// Per group, per block, what each row adds per unit of the input block's sum: its
    /// minimum (q5), or -8 times its scale (q4's levels are stored 8 above the weights').
    minima: Vec<f32>,
    blocks: usize,
    /// Rows packed (the last group's padding not counted).
    rows: usize,
    /// Whether all of a block's products may be summed in i16 before they are widened: q4's
    /// levels (below 16) times a byte fit eight pairs of products in an i16, q5's (below 32)
    /// only four, half a block.
    wide: bool,
}

impl Packed {
    /// Packs rows `first..first + n` of `w` (q4 or q5); the last group is padded with rows of
    /// zeros.
    fn pack(&mut self, w: Rows<'_>, first: usize, n: usize, cols: usize) {
        let nb = blocks(cols);
        let groups = n.div_ceil(GROUP);
        self.blocks = nb;
        self.rows = n;
        self.wide = matches!(w, Rows::Q4(_));
        self.levels.clear();
        self.levels.resize(groups * nb * GROUP * BLOCK, 0);
        self.scales.clear();
        self.scales.resize(groups * nb * GROUP, 0.0);
        self.minima.clear();
        self.minima.resize(groups * nb * GROUP, 0.0);
        let mut levels = [0u8; BLOCK];
        for i in 0..n {
            let (group, j) = (i / GROUP, i % GROUP);
            for b in 0..nb {
                let (scale, minimum) = match w {
                    Rows::Q4(q) => {
                        let (q, s) = q.row(first + i, cols);
                        let packed = &q[b * BLOCK / 2..(b + 1) * BLOCK / 2];
                        let (lo, hi) = levels.split_at_mut(BLOCK / 2);
                        for ((l, h), &byte) in lo.iter_mut().zip(hi).zip(packed) {
                            (*l, *h) = (byte & 0xf, byte >> 4);
                        }
                        let s = s[b].to_f32();
                        (s, -8.0 * s)
                    }
                    Rows::Q5(q) => {
                        let (q, s, m) = q.row(first + i, cols);
                        let high = u32::from_le_bytes(q[b].high);
                        let fifth = |j: usize| (((high >> j) & 1) as u8) << 4;
                        let (lo, hi) = levels.split_at_mut(BLOCK / 2);
                        let halves = lo.iter_mut().zip(hi).zip(&q[b].low).enumerate();
                        for (j, ((l, h), &byte)) in halves {
                            (*l, *h) = ((byte & 0xf) | fifth(j), (byte >> 4) | fifth(j + 16));
                        }
                        (s[b].to_f32(), m[b].to_f32())
                    }
                    _ => unreachable!("int8 panels take q4 and q5 only"),
                };
                let at = group * nb + b;
                let runs = &mut self.levels[at * GROUP * BLOCK..(at + 1) * GROUP * BLOCK];
                for (g, four) in levels.chunks_exact(4).enumerate() {
                    runs[(g * GROUP + j) * 4..][..4].copy_from_slice(four);
                }
                self.scales[at * GROUP + j] = scale;
                self.minima[at * GROUP + j] = minimum;
            }
        }
    }
}

thread_local! {
    static PACKED: RefCell<Packed> = RefCell::new(Packed::default());
}

/// `out[t, r] = scale * (w[r] . x[t])` for q4 or q5 weights on AVX2, the input rounded to 8
/// bits as the token step rounds it. Each rayon task packs a panel of rows and multiplies it
/// with every input row.
///
/// # Safety
///
/// The CPU must run AVX2 and FMA, and `out` must be a `[T, rows]` matrix (`T = x.len() / cols`)
/// valid for writes and not otherwise accessed during the call.
pub(super) unsafe fn panels(
    w: Rows<'_>,
    rows: usize,
    cols: usize,
    x: &[f32],
    scale: f32,
    out: Columns,
) {
    let t = x.len() / cols;
    with_int8_rows(x, cols, |x| {
        (0..rows.div_ceil(PANEL_ROWS))
            .into_par_iter()
            .for_each(|task| {
                let first = task * PANEL_ROWS;
                let n = PANEL_ROWS.min(rows - first);
                PACKED.with_borrow_mut(|p| {
                    p.pack(w, first, n, cols);
                    // SAFETY: the caller vouches for the CPU and for `out`, `[t, rows]`; this
                    // task alone writes its rows `first..first + n`.
                    unsafe { multiply(p, x, t, first, scale, out) };
                });
            });
    })
}

/// `out[k, first + j] = scale * (row j of p . x[k])` for every input row `k < t` and every row
/// `j` that `p` holds.
///
/// # Safety
///
/// The CPU must run AVX2 and FMA; `out` must be valid for writes at those elements, which
/// nothing else accesses during the call.
unsafe fn multiply(p: &Packed, x: &Int8Rows, t: usize, first: usize, scale: f32, out: Columns) {
    let mut t0 = 0;
    while t0 < t {
        // Whole tiles of input rows, then the rest one by one.
        let here = if t - t0 >= TOKENS { TOKENS } else { 1 };
        for group in 0..p.rows.div_ceil(GROUP) {
            let mut sums = [[0f32; GROUP]; TOKENS];
            // SAFETY: the caller vouches for AVX2 and FMA, the features `tile` is compiled for.
            unsafe {
                match (here, p.wide) {
                    (TOKENS, true) => tile::<TOKENS, true>(p, group, x, t0, &mut sums),
                    (TOKENS, false) => tile::<TOKENS, false>(p, group, x, t0, &mut sums),
                    (_, true) => tile::<1, true>(p, group, x, t0, &mut sums),
                    (_, false) => tile::<1, false>(p, group, x, t0, &mut sums),
                }
            }
            let valid = GROUP.min(p.rows - group * GROUP);
            for (k, sums) in sums[..here].iter().enumerate() {
                for (j, s) in sums[..valid].iter().enumerate() {
                    // SAFETY: `t0 + k < t` and `group * GROUP + j < p.rows`: an element the
                    // caller vouches for.
                    unsafe { out.write(t0 + k, first + group * GROUP + j, scale * s) };
                }
            }
        }
        t0 += here;
    }
}

/// The dot products of group `group` of `p` with input rows `t0..t0 + T` of `x`, into
/// `out[k][j]` for input `t0 + k` and row `j` of the group (`out` holds at least `T`). `WIDE`
/// is [`Packed::wide`]; otherwise each half block is widened on its own.
#[target_feature(enable = "avx2,fma")]
fn tile<const T: usize, const WIDE: bool>(
    p: &Packed,
    group: usize,
    x: &Int8Rows,
    t0: usize,
    out: &mut [[f32; GROUP]],
) {
    let nb = p.blocks.min(x.blocks);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); T];
    let at = group * p.blocks;
    let runs = p.levels[at * GROUP * BLOCK..]
        .as_chunks::<{ GROUP * BLOCK }>()
        .0;
    let scales = p.scales[at * GROUP..].as_chunks::<GROUP>().0;
    let minima = p.minima[at * GROUP..].as_chunks::<GROUP>().0;
    let inputs: [_; T] = std::array::from_fn(|k| {
        let row = (t0 + k) * x.blocks;
        (
            x.quants[row * BLOCK..].as_chunks::<BLOCK>().0,
            &x.scales[row..],
            &x.sums[row..],
        )
    });
    for (b, ((runs, scales), minima)) in runs.iter().zip(scales).zip(minima).take(nb).enumerate() {
        let scales = load(scales);
        let minima = load(minima);
        for (acc, (xq, xs, sums)) in acc.iter_mut().zip(&inputs) {
            let (lo, hi) = halves(&xq[b]);
            let dot = if WIDE {
                let pairs = _mm256_add_epi16(four(runs, 0, lo), four(runs, 4, hi));
                _mm256_madd_epi16(pairs, ones)
            } else {
                _mm256_add_epi32(
                    _mm256_madd_epi16(four(runs, 0, lo), ones),
                    _mm256_madd_epi16(four(runs, 4, hi), ones),
                )
            };
            let xs = _mm256_set1_ps(xs[b]);
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(scales, xs), *acc);
            *acc = _mm256_fmadd_ps(minima, _mm256_set1_ps(sums[b]), *acc);
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 8 floats; `storeu` writes 8 unaligned floats.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), acc) };
    }
}

/// An input block's two halves of 16 bytes, each in both lanes of a vector.
#[target_feature(enable = "avx2,fma")]
fn halves(x: &[i8; BLOCK]) -> (__m256i, __m256i) {
    // SAFETY: `x` spans 32 bytes; each load reads 16 unaligned bytes of them.
    unsafe {
        (
            _mm256_broadcastsi128_si256(_mm_loadu_si128(x.as_ptr().cast())),
            _mm256_broadcastsi128_si256(_mm_loadu_si128(x.as_ptr().add(16).cast())),
        )
    }
}

/// The products of runs `first..first + 4` of a block's levels with the four dwords of each
/// lane of `x` (dword `i` broadcast against run `first + i`), pairs of products summed to i16
/// and the four runs summed together.
#[target_feature(enable = "avx2,fma")]
fn four(runs: &[u8; GROUP * BLOCK], first: usize, x: __m256i) -> __m256i {
    let run = |i: usize| load_bytes(&runs[(first + i) * 32..]);
    let p0 = _mm256_maddubs_epi16(run(0), _mm256_shuffle_epi32::<0x00>(x));
    let p1 = _mm256_maddubs_epi16(run(1), _mm256_shuffle_epi32::<0x55>(x));
    let p2 = _mm256_maddubs_epi16(run(2), _mm256_shuffle_epi32::<0xaa>(x));
    let p3 = _mm256_maddubs_epi16(run(3), _mm256_shuffle_epi32::<0xff>(x));
    _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3))
}

/// Loads 8 floats from the start of `v`.
#[target_feature(enable = "avx2,fma")]
fn load(v: &[f32]) -> __m256 {
    let v = &v[..8];
    // SAFETY: `v` has just been sliced to exactly 8 floats; unaligned loads are allowed.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

/// Loads 32 bytes from the start of `v`.
#[target_feature(enable = "avx2,fma")]
fn load_bytes(v: &[u8]) -> __m256i {
    let v = &v[..32];
    // SAFETY: `v` has just been sliced to exactly 32 bytes; unaligned loads are allowed.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}
