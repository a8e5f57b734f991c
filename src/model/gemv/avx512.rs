//! AVX-512 kernels (F, BW and VNNI): the row-by-row dots of the float formats and q8, and the
//! group tiles of q4 and q5 (and of q8 repacked for prompt chunks), 16 lanes wide.
//!
//! The token step is bound by memory: the f32 dot reads a cache line per 64-byte vector (f16
//! and bf16 half a line), and the integer dots need no widening at all, as VNNI's `vpdpbusd`
//! multiplies unsigned by signed bytes and sums each four products straight into an i32 lane
//! (AVX2 needs `maddubs`, `madd` and i16 sums whose range q5 already fills). A q4 or q5
//! group's block is two 64-byte loads and four vectors of levels here (AVX2: four loads, eight
//! vectors), each 256-bit half of a vector one run of the 8 rows; the two halves' partial sums
//! are added once, at the end of the group. A repacked q8 group's block is four plain loads.
//!
//! bf16 weights are widened by a shift rather than multiplied by `vdpbf16ps`, which would
//! round the input to bf16 too: results would then differ from the other paths', and the dot
//! is bound by memory either way.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::int8::{Group, Q8_GROUP_BLOCK, Tiles};
use super::kernels::portable;
use super::{BLOCK, GROUP, Int8Row, Q4_GROUP_BLOCK, Q5_GROUP_BLOCK};
use crate::model::simd;

/// How far ahead of their reads the integer kernels prefetch the weights, in bytes. (The
/// float dots' distance depends on the CPU: `simd::float_prefetch`.)
const PREFETCH: usize = simd::INTEGER_PREFETCH;

/// Loads 16 f32 from `x[i..i + 16]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn load(x: &[f32], i: usize) -> __m512 {
    let x = &x[i..i + 16];
    // SAFETY: `x` has just been sliced to exactly 16 floats; unaligned loads are allowed.
    unsafe { _mm512_loadu_ps(x.as_ptr()) }
}

/// Loads 32 bytes at `q[i..]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn bytes32<T>(q: &[T], i: usize) -> __m256i {
    const { assert!(32 % size_of::<T>() == 0) };
    let q = &q[i..i + 32 / size_of::<T>()];
    // SAFETY: the slice above spans exactly 32 bytes; `loadu` reads 32 unaligned bytes.
    unsafe { _mm256_loadu_si256(q.as_ptr().cast()) }
}

/// Loads 64 bytes at `q[i..]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn bytes64<T>(q: &[T], i: usize) -> __m512i {
    const { assert!(64 % size_of::<T>() == 0) };
    let q = &q[i..i + 64 / size_of::<T>()];
    // SAFETY: the slice above spans exactly 64 bytes; `loadu` reads 64 unaligned bytes.
    unsafe { _mm512_loadu_si512(q.as_ptr().cast()) }
}

/// Prefetches the `bytes` (a multiple of 64) that lie `PREFETCH` bytes past `w[i..]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn ahead<T>(w: &[T], i: usize, bytes: usize) {
    ahead_by(PREFETCH, w, i, bytes);
}

/// Prefetches the `bytes` (a multiple of 64) that lie `distance` bytes past `w[i..]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn ahead_by<T>(distance: usize, w: &[T], i: usize, bytes: usize) {
    let at = w
        .as_ptr()
        .wrapping_add(i)
        .cast::<i8>()
        .wrapping_add(distance);
    for line in (0..bytes).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line));
    }
}

/// `w . x` with `widen(w, i)` giving weights `i..i + 16` as f32, four accumulators deep,
/// then 16 at a time; `tail` takes what is left past the last multiple of 16 (rows of 32, as
/// RWKV-7's LoRA factors have, all went to `tail` when it took everything past 64, and v7's
/// q4 token step ran at 0.58x of the AVX2 path's). Prefetched as far ahead as
/// `simd::float_prefetch` says (not at all on AMD's Zen 4, where it was slower).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn widened_dot<T>(
    w: &[T],
    x: &[f32],
    widen: impl Fn(&[T], usize) -> __m512,
    tail: fn(&[T], &[f32]) -> f32,
) -> f32 {
    let n = w.len().min(x.len());
    let main = n - n % 64;
    let distance = simd::float_prefetch();
    let mut acc = [_mm512_setzero_ps(); 4];
    for i in (0..main).step_by(64) {
        if distance > 0 {
            ahead_by(distance, w, i, 64 * size_of::<T>());
        }
        for (k, acc) in acc.iter_mut().enumerate() {
            *acc = _mm512_fmadd_ps(widen(w, i + 16 * k), load(x, i + 16 * k), *acc);
        }
    }
    let mut sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    let rest = n - n % 16;
    for i in (main..rest).step_by(16) {
        sum = _mm512_fmadd_ps(widen(w, i), load(x, i), sum);
    }
    _mm512_reduce_add_ps(sum) + tail(&w[rest..n], &x[rest..n])
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    widened_dot(w, x, |w, i| load(w, i), portable::dot_f32)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    widened_dot(
        w,
        x,
        |w, i| _mm512_cvtph_ps(bytes32(w, i)),
        portable::dot_f16,
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    // A bf16 is the top half of an f32: widen and shift into place.
    let widen = |w: &[bf16], i| {
        let wide = _mm512_cvtepu16_epi32(bytes32(w, i));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wide))
    };
    widened_dot(w, x, widen, portable::dot_bf16)
}

/// The 16 partial sums of 64 signed products `w[i] * x[i]`, lane `l` summing products `4 l..4
/// l + 4`: `vpdpbusd` multiplies unsigned by signed bytes, so the sign of `w` moves onto `x`
/// first. Neither side is -128, so both stay in range.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn products(w: __m512i, x: __m512i) -> __m512i {
    let negative = _mm512_movepi8_mask(w);
    let x = _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x);
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), x)
}

/// `sum(q[b] . x[b]) * s[b] * xs[b]` over q8's blocks, two blocks a vector (lanes 0..8 the
/// first block's sums, 8..16 the second's). Runs of eight blocks have their scales widened and
/// multiplied in one vector, each pair's then one permute away (runs of sixteen left rows of
/// 768 weights, 169m's, with a slow remainder of four pairs); the pairs alternate between two
/// accumulators so the FMAs do not wait on each other's latency.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) fn dot_q8(q: &[i8], s: &[f16], x: Int8Row<'_>) -> f32 {
    let (xq, xs) = (x.quants, x.scales);
    let n = (q.len() / BLOCK)
        .min(s.len())
        .min(xq.len() / BLOCK)
        .min(xs.len());
    let pair =
        |b: usize| _mm512_cvtepi32_ps(products(bytes64(q, b * BLOCK), bytes64(xq, b * BLOCK)));
    // Lanes 0..8 from scale `2 p` of a run, 8..16 from scale `2 p + 1`.
    let index: [__m512i; 4] = std::array::from_fn(|p| {
        let p = p as i32;
        _mm512_inserti64x4::<1>(_mm512_set1_epi32(2 * p), _mm256_set1_epi32(2 * p + 1))
    });
    let (mut even, mut odd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let runs = n / 8;
    for g in 0..runs {
        ahead(q, g * 8 * BLOCK, 8 * BLOCK);
        let (s, xs) = (&s[g * 8..g * 8 + 8], &xs[g * 8..g * 8 + 8]);
        // SAFETY: `s` is 8 f16 (16 bytes) and `xs` 8 f32, just sliced; unaligned loads.
        let scales = unsafe {
            let s = _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().cast()));
            _mm256_mul_ps(s, _mm256_loadu_ps(xs.as_ptr()))
        };
        let scales = _mm512_zextps256_ps512(scales);
        for p in (0..4).step_by(2) {
            let b = g * 8 + 2 * p;
            even = _mm512_fmadd_ps(pair(b), _mm512_permutexvar_ps(index[p], scales), even);
            odd = _mm512_fmadd_ps(
                pair(b + 2),
                _mm512_permutexvar_ps(index[p + 1], scales),
                odd,
            );
        }
    }
    // The rest a pair at a time, and a last block alone in the low half.
    let scale = |b: usize| s[b].to_f32() * xs[b];
    let mut b = runs * 8;
    while b + 2 <= n {
        let lanes = _mm512_mask_blend_ps(
            0xff00,
            _mm512_set1_ps(scale(b)),
            _mm512_set1_ps(scale(b + 1)),
        );
        even = _mm512_fmadd_ps(pair(b), lanes, even);
        b += 2;
    }
    if b < n {
        let w = _mm512_zextsi256_si512(bytes32(q, b * BLOCK));
        let x = _mm512_zextsi256_si512(bytes32(xq, b * BLOCK));
        let sums = _mm512_cvtepi32_ps(products(w, x));
        even = _mm512_fmadd_ps(sums, _mm512_set1_ps(scale(b)), even);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(even, odd))
}

/// One block of a [`Group`] as [`tile`] multiplies it: four vectors of levels (see
/// [`X_DWORDS`]), the rows' scales in both halves, and what each row adds per unit of the
/// input block's sum in the low half only (the halves are added at the end).
struct Block {
    runs: [__m512i; 4],
    scales: __m512,
    minima: __m512,
}

/// Which dwords of the input block meet each of a [`Block`]'s vectors, per half: a group
/// block's first 64 bytes hold runs 0 and 1 (levels `4 r..4 r + 4` of each row) in their low
/// nibbles and levels `16 + 4 r..` in their high nibbles, the next 64 bytes runs 2 and 3.
pub(super) const X_DWORDS: [[i32; 2]; 4] = [[0, 1], [4, 5], [2, 3], [6, 7]];

/// The tiles of q4, q5 and q8 groups on AVX-512.
pub(super) struct Avx512;

impl Tiles for Avx512 {
    unsafe fn tile<const T: usize>(rows: Group<'_>, x: [Int8Row<'_>; T], out: &mut [[f32; GROUP]]) {
        // SAFETY: the caller vouches for AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
        unsafe { tile_group::<T>(rows, x, out) }
    }
}

/// 8 f16 from the start of `v` as f32, in both halves.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn widen(v: &[f16]) -> __m512 {
    let v = &v[..GROUP];
    // SAFETY: `v` has just been sliced to 8 f16, 16 bytes; unaligned loads are allowed.
    let v = unsafe { _mm_loadu_si128(v.as_ptr().cast()) };
    _mm512_cvtph_ps(_mm256_broadcastsi128_si256(v))
}

/// [`tile`] over a group in any of its forms, its levels unpacked in place (in closures, which are
/// inlined into the loop, as in the AVX2 tiles).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn tile_group<const T: usize>(rows: Group<'_>, x: [Int8Row<'_>; T], out: &mut [[f32; GROUP]]) {
    let nb = rows.blocks();
    let mask = _mm512_set1_epi8(0xf);
    match rows {
        Group::Q4 { quants, scales } => {
            let minus_8 = _mm512_set1_ps(-8.0);
            let block = |b: usize| {
                let quants = &quants[b * Q4_GROUP_BLOCK..][..Q4_GROUP_BLOCK];
                ahead(quants, 0, Q4_GROUP_BLOCK);
                let (v0, v1) = (bytes64(quants, 0), bytes64(quants, 64));
                let nibbles = |v| _mm512_and_si512(v, mask);
                let high = |v| _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
                let scales = widen(&scales[b * GROUP..]);
                Block {
                    runs: [nibbles(v0), high(v0), nibbles(v1), high(v1)],
                    scales,
                    minima: _mm512_maskz_mul_ps(0x00ff, scales, minus_8),
                }
            };
            tile::<T>(nb, block, x, out);
        }
        Group::Q5 {
            quants,
            scales,
            mins,
        } => {
            let fifth = _mm512_set1_epi8(0x10);
            // Bit 4 of the levels of run `r` is bit `r` of the last 32 bytes (low nibbles) or
            // bit `4 + r` (high nibbles): per half, the shift that puts it at bit 4. The
            // shifts are of 16-bit lanes, but no bit crosses into bit 4 of the other byte:
            // left shifts are of up to 4, right shifts of up to 3.
            let counts = |low: i16, high: i16| {
                _mm512_inserti64x4::<1>(_mm512_set1_epi16(low), _mm256_set1_epi16(high))
            };
            let (left01, right01) = (counts(4, 3), counts(0, 1));
            let (left23, right23) = (counts(2, 1), counts(2, 3));
            let block = |b: usize| {
                let quants = &quants[b * Q5_GROUP_BLOCK..][..Q5_GROUP_BLOCK];
                ahead(quants, 0, Q5_GROUP_BLOCK.next_multiple_of(64));
                let (v0, v1) = (bytes64(quants, 0), bytes64(quants, 64));
                let bits = _mm512_broadcast_i64x4(bytes32(quants, Q4_GROUP_BLOCK));
                // `(nibbles & 0xf) | (bits & 0x10)`.
                let with = |nibbles, bits| {
                    _mm512_ternarylogic_epi32::<0xf8>(_mm512_and_si512(bits, fifth), nibbles, mask)
                };
                let runs = [
                    with(v0, _mm512_sllv_epi16(bits, left01)),
                    with(_mm512_srli_epi16::<4>(v0), _mm512_srlv_epi16(bits, right01)),
                    with(v1, _mm512_sllv_epi16(bits, left23)),
                    with(_mm512_srli_epi16::<4>(v1), _mm512_srlv_epi16(bits, right23)),
                ];
                Block {
                    runs,
                    scales: widen(&scales[b * GROUP..]),
                    minima: _mm512_maskz_mov_ps(0x00ff, widen(&mins[b * GROUP..])),
                }
            };
            tile::<T>(nb, block, x, out);
        }
        Group::Q8 { levels, scales } => {
            let minus_128 = _mm512_set1_ps(-128.0);
            // Not prefetched: this thread has just written the panel, which is in its cache.
            let block = |b: usize| {
                let levels = &levels[b * Q8_GROUP_BLOCK..][..Q8_GROUP_BLOCK];
                let scales = widen(&scales[b * GROUP..]);
                Block {
                    runs: std::array::from_fn(|i| bytes64(levels, 64 * i)),
                    scales,
                    minima: _mm512_maskz_mul_ps(0x00ff, scales, minus_128),
                }
            };
            tile::<T>(nb, block, x, out);
        }
    }
}

/// The dot products of a group's 8 rows, `nb` blocks given by `block(b)`, with each of `x`,
/// into `out[k][j]` for input `k` and row `j` (`out` holds at least `T`). Every product of a
/// block is summed exactly in i32, as the AVX2 tiles' are.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn tile<const T: usize>(
    nb: usize,
    block: impl Fn(usize) -> Block,
    x: [Int8Row<'_>; T],
    out: &mut [[f32; GROUP]],
) {
    let nb = x.iter().fold(nb, |nb, x| nb.min(x.scales.len()));
    let index = X_DWORDS
        .map(|[lo, hi]| _mm512_inserti64x4::<1>(_mm512_set1_epi32(lo), _mm256_set1_epi32(hi)));
    let zero = _mm512_setzero_si512();
    // The minima's terms have accumulators of their own, as in the AVX2 tiles.
    let (mut acc, mut low) = ([_mm512_setzero_ps(); T], [_mm512_setzero_ps(); T]);
    for b in 0..nb {
        let Block {
            runs,
            scales,
            minima,
        } = block(b);
        for ((acc, low), x) in acc.iter_mut().zip(&mut low).zip(&x) {
            let xq = _mm512_zextsi256_si512(bytes32(x.quants, b * BLOCK));
            let at = |i: usize| _mm512_permutexvar_epi32(index[i], xq);
            let first =
                _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, runs[0], at(0)), runs[1], at(1));
            let second =
                _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, runs[2], at(2)), runs[3], at(3));
            let dot = _mm512_cvtepi32_ps(_mm512_add_epi32(first, second));
            let xs = _mm512_set1_ps(x.scales[b]);
            *acc = _mm512_fmadd_ps(dot, _mm512_mul_ps(scales, xs), *acc);
            *low = _mm512_fmadd_ps(minima, _mm512_set1_ps(x.sums[b]), *low);
        }
    }
    for ((o, acc), low) in out.iter_mut().zip(acc).zip(low) {
        let acc = _mm512_add_ps(acc, low);
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
        let sum = _mm256_add_ps(_mm512_castps512_ps256(acc), high);
        // SAFETY: `o` is 8 floats; `storeu` writes 8 unaligned floats.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), sum) };
    }
}
