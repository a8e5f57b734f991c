//! Products over 4- and 5-bit weights in 8-bit integer arithmetic, on AVX2 (and the panels
//! that AVX-512's tiles, `avx512`, share, where 8-bit weights join them).
//!
//! Widening a panel of weights to f32 for `gemm` multiplies at the speed of f32 FMAs, 8
//! products an instruction, and a row-by-row dot reduces every block across lanes. Here the
//! levels stay bytes and meet the input as [`gemv`] rounds it to 8 bits, [`GROUP`] rows at a
//! time interleaved four levels at a time, so one `maddubs` multiplies four levels of each of 8
//! rows by four input bytes broadcast (32 products), and the lanes of its sums are the rows. A
//! block's scales then reach all 8 rows in one FMA. (ggml's repacked `q4_0` kernels
//! interleave rows the same way.) [`Q4`] and [`Q5`] are stored so, and the token step and
//! prompt chunks multiply them as stored.
//!
//! q8 is multiplied so on AVX-512 only: VNNI's `vpdpbusd` sums four products of unsigned by
//! signed bytes straight into an i32, so a panel's levels, repacked into the tiles' layout
//! with 128 added ([`Q8Panel`]), meet the input as q4's do and the offset comes off afterwards
//! as q4's 8 does. AVX2's `maddubs` would sum two such products in an i16, which they
//! overflow (and moving the levels' signs onto the input instead costs a sign and a widening
//! per `maddubs`), so there q8 panels stay on the f32 path.
//!
//! [`gemv`]: super

use std::arch::x86_64::*;
use std::cell::RefCell;

use half::f16;
use rayon::prelude::*;

use super::avx512::X_DWORDS;
use super::{
    BLOCK, Columns, GEMV_MAX_ROWS, GROUP, Int8Row, Int8Rows, Q4, Q4_GROUP_BLOCK, Q5,
    Q5_GROUP_BLOCK, Q8, Rows, Simd, blocks, with_int8_rows,
};
use crate::model::simd;

/// Weight rows one prompt task multiplies: its weights stay in L2 while every input row
/// passes over them.
const PANEL_ROWS: usize = 64;
const _: () = assert!(PANEL_ROWS.is_multiple_of(GROUP));

/// Input rows multiplied per pass over a group's levels.
const TOKENS: usize = 4;

/// How far ahead of its reads [`tile_group`] prefetches the weights, in bytes.
const PREFETCH: usize = simd::INTEGER_PREFETCH;

/// Whether [`panels`] takes `t` inputs over weights of this format on the tiles of `level`:
/// q4 and q5 from two inputs on (their levels are read as stored), q8 on AVX-512 only and above
/// `GEMV_MAX_ROWS` inputs (its panels are repacked first, which costs more than `gemv` up to
/// there).
pub(super) fn takes(level: Simd, w: Rows<'_>, t: usize) -> bool {
    match w {
        Rows::Q4(_) | Rows::Q5(_) => t > 1,
        Rows::Q8(_) => level == Simd::Avx512 && t > GEMV_MAX_ROWS,
        Rows::F32(_) | Rows::F16(_) | Rows::Bf16(_) => false,
    }
}

/// Bytes of one block of a [`Q8Panel`] group: 32 levels of each of its rows.
pub(super) const Q8_GROUP_BLOCK: usize = GROUP * BLOCK;

/// One group of 8 rows as [`tile`] reads it: as stored, or for q8 as repacked.
#[derive(Clone, Copy)]
pub(super) enum Group<'a> {
    /// `Q4::group`: per block four vectors of nibbles, two runs each, and 8 f16 scales; the
    /// levels are 8 above the weights'.
    Q4 { quants: &'a [u8], scales: &'a [f16] },
    /// `Q5::group`: per block q4's nibbles and a vector of bits 4, 8 f16 scales and minima.
    Q5 {
        quants: &'a [u8],
        scales: &'a [f16],
        mins: &'a [f16],
    },
    /// A group of a [`Q8Panel`]: per block 256 bytes of levels 128 above the weights', and 8
    /// f16 scales. AVX-512's tiles only.
    Q8 { levels: &'a [u8], scales: &'a [f16] },
}

/// One block of a [`Group`]: its 8 runs of levels (run `g`: levels `4g..4g + 4` of each row),
/// and per row the scale and what the row adds per unit of the input block's sum.
struct Block {
    runs: [__m256i; 8],
    scales: __m256,
    minima: __m256,
}

impl Group<'_> {
    pub(super) fn blocks(self) -> usize {
        match self {
            Group::Q4 { scales, .. } | Group::Q5 { scales, .. } | Group::Q8 { scales, .. } => {
                scales.len() / GROUP
            }
        }
    }
}

/// Kernels that multiply one group of rows by one input or by [`TOKENS`] of them: [`Avx2`]'s
/// and `avx512`'s.
pub(super) trait Tiles {
    /// The group's 8 dot products with each of `x`, into `out[k][j]` for input `k` and row
    /// `j` (`out` holds at least `T`).
    ///
    /// # Safety
    ///
    /// The CPU must run the features the kernels are compiled for.
    unsafe fn tile<const T: usize>(rows: Group<'_>, x: [Int8Row<'_>; T], out: &mut [[f32; GROUP]]);

    /// The group's 8 dot products with `x`.
    ///
    /// # Safety
    ///
    /// As for [`Tiles::tile`].
    unsafe fn one(rows: Group<'_>, x: Int8Row<'_>) -> [f32; GROUP] {
        let mut out = [[0f32; GROUP]];
        // SAFETY: the caller vouches for the CPU's features.
        unsafe { Self::tile::<1>(rows, [x], &mut out) };
        out[0]
    }
}

/// The tiles of this module, on AVX2, FMA and F16C.
pub(super) struct Avx2;

impl Tiles for Avx2 {
    unsafe fn tile<const T: usize>(rows: Group<'_>, x: [Int8Row<'_>; T], out: &mut [[f32; GROUP]]) {
        // SAFETY: the caller vouches for AVX2, FMA and F16C.
        unsafe { tile_group::<T>(rows, x, out) }
    }
}

/// [`tile`] over a group in either form, its levels unpacked in place. (The unpacking is
/// written into closures, which are inlined into the loop; as a method of [`Group`] it was
/// not, and the call and its return through memory cost a third of the time.)
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_group<const T: usize>(rows: Group<'_>, x: [Int8Row<'_>; T], out: &mut [[f32; GROUP]]) {
    let nb = rows.blocks();
    match rows {
        Group::Q4 { quants, scales } => {
            let mask = _mm256_set1_epi8(0xf);
            let minus_8 = _mm256_set1_ps(-8.0);
            let block = |b: usize| {
                let quants = &quants[b * Q4_GROUP_BLOCK..][..Q4_GROUP_BLOCK];
                let ahead = quants.as_ptr().cast::<i8>().wrapping_add(PREFETCH);
                _mm_prefetch::<_MM_HINT_T0>(ahead);
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
                let mut runs = [_mm256_setzero_si256(); 8];
                for r in 0..4 {
                    let v = load_bytes(&quants[32 * r..]);
                    runs[r] = _mm256_and_si256(v, mask);
                    runs[r + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                }
                let scales = widen(&scales[b * GROUP..]);
                Block {
                    runs,
                    scales,
                    minima: _mm256_mul_ps(scales, minus_8),
                }
            };
            tile::<T, true>(nb, block, x, out);
        }
        Group::Q5 {
            quants,
            scales,
            mins,
        } => {
            let mask = _mm256_set1_epi8(0xf);
            let fifth = _mm256_set1_epi8(0x10);
            let block = |b: usize| {
                let quants = &quants[b * Q5_GROUP_BLOCK..][..Q5_GROUP_BLOCK];
                let ahead = quants.as_ptr().cast::<i8>().wrapping_add(PREFETCH);
                for line in (0..Q5_GROUP_BLOCK).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
                }
                let high = load_bytes(&quants[Q4_GROUP_BLOCK..]);
                // Bit 4 of run `r`'s levels is bit `r` (low half) or `4 + r` (high half) of
                // `high`: shifted to bit 4, within each byte for left shifts of up to 4 and right
                // shifts of up to 3.
                let bits = [
                    _mm256_slli_epi16::<4>(high),
                    _mm256_slli_epi16::<3>(high),
                    _mm256_slli_epi16::<2>(high),
                    _mm256_slli_epi16::<1>(high),
                    high,
                    _mm256_srli_epi16::<1>(high),
                    _mm256_srli_epi16::<2>(high),
                    _mm256_srli_epi16::<3>(high),
                ];
                let mut runs = [_mm256_setzero_si256(); 8];
                for r in 0..4 {
                    let v = load_bytes(&quants[32 * r..]);
                    let (lo, hi) = (v, _mm256_srli_epi16::<4>(v));
                    let with = |nibbles, bits| {
                        _mm256_or_si256(
                            _mm256_and_si256(nibbles, mask),
                            _mm256_and_si256(bits, fifth),
                        )
                    };
                    runs[r] = with(lo, bits[r]);
                    runs[r + 4] = with(hi, bits[r + 4]);
                }
                Block {
                    runs,
                    scales: widen(&scales[b * GROUP..]),
                    minima: widen(&mins[b * GROUP..]),
                }
            };
            tile::<T, false>(nb, block, x, out);
        }
        // `takes` keeps q8 off these tiles: its products would overflow `maddubs`'s i16 sums.
        Group::Q8 { .. } => unreachable!("q8 panels are multiplied on AVX-512 only"),
    }
}

/// 8 f16 from the start of `v` as f32.
#[target_feature(enable = "avx2,fma,f16c")]
fn widen(v: &[f16]) -> __m256 {
    let v = &v[..GROUP];
    // SAFETY: `v` has just been sliced to 8 f16, 16 bytes; unaligned loads are allowed.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(v.as_ptr().cast()) })
}

/// `out[t, r] = scale * (w[r] . x[t])` for q4, q5 or (AVX-512) q8 weights on the tiles of
/// `K`, the input rounded to 8 bits as the token step rounds it. Each rayon task takes a panel
/// of rows and multiplies it with every input row.
///
/// # Safety
///
/// The CPU must run `K`'s features, and `out` must be a `[T, rows]` matrix (`T = x.len() /
/// cols`) valid for writes and not otherwise accessed during the call.
pub(super) unsafe fn panels<K: Tiles>(
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
                match w {
                    Rows::Q4(q) => {
                        let group = |g| q4_group(q, cols, first / GROUP + g);
                        // SAFETY: the caller vouches for the CPU and for `out`, `[t, rows]`;
                        // this task alone writes its rows `first..first + n`.
                        unsafe { multiply::<K>(group, n, x, t, first, scale, out) };
                    }
                    Rows::Q5(q) => {
                        let group = |g| q5_group(q, cols, first / GROUP + g);
                        // SAFETY: as for q4.
                        unsafe { multiply::<K>(group, n, x, t, first, scale, out) };
                    }
                    Rows::Q8(q) => Q8_PANELS.with_borrow_mut(|panel| {
                        // SAFETY: the caller vouches for `K`'s features, which include AVX2.
                        unsafe { panel.fill(q, cols, first, n) };
                        let group = |g| panel.group(g, cols);
                        // SAFETY: as for q4 (`takes` lets q8 reach only AVX-512's tiles).
                        unsafe { multiply::<K>(group, n, x, t, first, scale, out) };
                    }),
                    Rows::F32(_) | Rows::F16(_) | Rows::Bf16(_) => {
                        unreachable!("int8 panels take the quantized formats only: `takes`")
                    }
                }
            });
    })
}

thread_local! {
    /// Each thread's [`Q8Panel`], kept between calls as `gemv`'s f32 panels are.
    static Q8_PANELS: RefCell<Q8Panel> = RefCell::new(Q8Panel::default());
}

/// Up to [`PANEL_ROWS`] rows of [`Q8`] weights in groups of [`GROUP`] rows, as AVX-512's tiles
/// take them (the last group padded with rows of level and scale 0): per group, per block,
/// four vectors of 64 bytes whose half `h` of vector `i` holds, for each row `j` in turn, its
/// four levels of dword `X_DWORDS[i][h]` of the block (the dwords `vpdpbusd` meets with that
/// half's input), each plus 128 to make it unsigned; then per group, per block, the rows'
/// scales. The q4 tiles read their nibbles in that order.
#[derive(Default)]
struct Q8Panel {
    levels: Vec<u8>,
    scales: Vec<f16>,
}

impl Q8Panel {
    /// Repacks rows `first..first + n` of `q`: per group and block, the 8 rows' 8 dwords of
    /// levels transposed, so that dword `d` of every row lies in one 32-byte half. (A byte loop
    /// repacked at 6 GB/s, slower than the whole product by 256 inputs took.)
    #[target_feature(enable = "avx2")]
    fn fill(&mut self, q: &Q8, cols: usize, first: usize, n: usize) {
        let nb = blocks(cols);
        let groups = n.div_ceil(GROUP);
        // Every byte and scale is written below.
        self.levels.resize(groups * nb * Q8_GROUP_BLOCK, 0);
        self.scales.resize(groups * nb * GROUP, f16::ZERO);
        let offset = _mm256_set1_epi8(0x80u8.cast_signed());
        for g in 0..groups {
            let rows: [Option<(&[i8], &[f16])>; GROUP] = std::array::from_fn(|j| {
                let r = g * GROUP + j;
                (r < n).then(|| q.row(first + r, cols))
            });
            for b in 0..nb {
                // Rows past the panel's end as levels 0 (128 once offset) with scale 0.
                let block = rows.map(|row| match row {
                    Some((quants, _)) => load_levels(&quants[b * BLOCK..][..BLOCK]),
                    None => _mm256_setzero_si256(),
                });
                let dwords = transpose(block);
                let at = (g * nb + b) * Q8_GROUP_BLOCK;
                let out = &mut self.levels[at..at + Q8_GROUP_BLOCK];
                for (i, halves) in X_DWORDS.iter().enumerate() {
                    for (h, &dword) in halves.iter().enumerate() {
                        let v = _mm256_xor_si256(dwords[dword as usize], offset);
                        let to = &mut out[64 * i + 32 * h..][..32];
                        // SAFETY: `to` is 32 bytes, just sliced; unaligned stores are allowed.
                        unsafe { _mm256_storeu_si256(to.as_mut_ptr().cast(), v) };
                    }
                }
                let scales = &mut self.scales[(g * nb + b) * GROUP..][..GROUP];
                for (s, row) in scales.iter_mut().zip(&rows) {
                    *s = row.map_or(f16::ZERO, |(_, scales)| scales[b]);
                }
            }
        }
    }

    fn group(&self, g: usize, cols: usize) -> Group<'_> {
        let nb = blocks(cols);
        Group::Q8 {
            levels: &self.levels[g * nb * Q8_GROUP_BLOCK..][..nb * Q8_GROUP_BLOCK],
            scales: &self.scales[g * nb * GROUP..][..nb * GROUP],
        }
    }
}

fn q4_group(q: &Q4, cols: usize, g: usize) -> Group<'_> {
    let (quants, scales) = q.group(g, cols);
    Group::Q4 { quants, scales }
}

fn q5_group(q: &Q5, cols: usize, g: usize) -> Group<'_> {
    let (quants, scales, mins) = q.group(g, cols);
    Group::Q5 {
        quants,
        scales,
        mins,
    }
}

/// One group of q4 rows against one input on `K`'s tiles: `kernels::dot_q4`.
///
/// # Safety
///
/// The CPU must run `K`'s features.
pub(super) unsafe fn dot_q4<K: Tiles>(
    quants: &[u8],
    scales: &[f16],
    x: Int8Row<'_>,
) -> [f32; GROUP] {
    // SAFETY: the caller vouches for the CPU.
    unsafe { K::one(Group::Q4 { quants, scales }, x) }
}

/// One group of q5 rows against one input on `K`'s tiles: `kernels::dot_q5`.
///
/// # Safety
///
/// The CPU must run `K`'s features.
pub(super) unsafe fn dot_q5<K: Tiles>(
    quants: &[u8],
    scales: &[f16],
    mins: &[f16],
    x: Int8Row<'_>,
) -> [f32; GROUP] {
    let group = Group::Q5 {
        quants,
        scales,
        mins,
    };
    // SAFETY: the caller vouches for the CPU.
    unsafe { K::one(group, x) }
}

/// `out[k, first + j] = scale * (row j of the rows' groups . x[k])` for every input row `k <
/// t` and every row `j < n`, `group(g)` giving group `g` of those rows.
///
/// # Safety
///
/// The CPU must run `K`'s features; `out` must be valid for writes at those elements, which
/// nothing else accesses during the call.
unsafe fn multiply<'a, K: Tiles>(
    group: impl Fn(usize) -> Group<'a>,
    n: usize,
    x: &Int8Rows,
    t: usize,
    first: usize,
    scale: f32,
    out: Columns,
) {
    let mut t0 = 0;
    while t0 < t {
        // Whole tiles of input rows, then the rest one by one.
        let here = if t - t0 >= TOKENS { TOKENS } else { 1 };
        for g in 0..n.div_ceil(GROUP) {
            let mut sums = [[0f32; GROUP]; TOKENS];
            let rows = group(g);
            // SAFETY: the caller vouches for `K`'s features.
            unsafe {
                if here == TOKENS {
                    K::tile::<TOKENS>(rows, inputs(x, t0), &mut sums);
                } else {
                    K::tile::<1>(rows, inputs(x, t0), &mut sums);
                }
            }
            let valid = GROUP.min(n - g * GROUP);
            for (k, sums) in sums[..here].iter().enumerate() {
                for (j, s) in sums[..valid].iter().enumerate() {
                    // SAFETY: `t0 + k < t` and `g * GROUP + j < n`: an element the caller
                    // vouches for.
                    unsafe { out.write(t0 + k, first + g * GROUP + j, scale * s) };
                }
            }
        }
        t0 += here;
    }
}

/// Input rows `t0..t0 + T` of `x`.
fn inputs<const T: usize>(x: &Int8Rows, t0: usize) -> [Int8Row<'_>; T] {
    std::array::from_fn(|k| x.int8_row(t0 + k))
}

/// The dot products of a group's 8 rows, `nb` blocks given by `block(b)`, with each of `x`,
/// into `out[k][j]` for input `k` and row `j` (`out` holds at least `T`). `WIDE`: all of a
/// block's products may be summed in i16 before they are widened, as q4's levels (below 16)
/// times a byte fit eight pairs of products in an i16; q5's (below 32) fit only four, so each
/// half block is widened on its own.
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const T: usize, const WIDE: bool>(
    nb: usize,
    block: impl Fn(usize) -> Block,
    x: [Int8Row<'_>; T],
    out: &mut [[f32; GROUP]],
) {
    let nb = x.iter().fold(nb, |nb, x| nb.min(x.scales.len()));
    let ones = _mm256_set1_epi16(1);
    // The minima's terms go to accumulators of their own, so each block adds one FMA to a
    // chain rather than two (the chain, not the arithmetic, bounded the token step).
    let (mut acc, mut low) = ([_mm256_setzero_ps(); T], [_mm256_setzero_ps(); T]);
    let inputs = x.map(|x| (x.quants.as_chunks::<BLOCK>().0, x.scales, x.sums));
    for b in 0..nb {
        let Block {
            runs,
            scales,
            minima,
        } = block(b);
        for ((acc, low), (xq, xs, sums)) in acc.iter_mut().zip(&mut low).zip(&inputs) {
            let (lo, hi) = halves(&xq[b]);
            let dot = if WIDE {
                let pairs = _mm256_add_epi16(four(&runs[..4], lo), four(&runs[4..], hi));
                _mm256_madd_epi16(pairs, ones)
            } else {
                _mm256_add_epi32(
                    _mm256_madd_epi16(four(&runs[..4], lo), ones),
                    _mm256_madd_epi16(four(&runs[4..], hi), ones),
                )
            };
            let xs = _mm256_set1_ps(xs[b]);
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(scales, xs), *acc);
            *low = _mm256_fmadd_ps(minima, _mm256_set1_ps(sums[b]), *low);
        }
    }
    for ((o, acc), low) in out.iter_mut().zip(acc).zip(low) {
        // SAFETY: `o` is 8 floats; `storeu` writes 8 unaligned floats.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), _mm256_add_ps(acc, low)) };
    }
}

/// One block of 32 levels.
#[target_feature(enable = "avx2")]
fn load_levels(v: &[i8]) -> __m256i {
    let v = &v[..BLOCK];
    // SAFETY: `v` has just been sliced to 32 bytes; unaligned loads are allowed.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

/// The 8 x 8 dwords of `rows` transposed: vector `d` holds dword `d` of each row in turn.
#[target_feature(enable = "avx2")]
fn transpose(rows: [__m256i; GROUP]) -> [__m256i; GROUP] {
    let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
    // Pairs of rows' dwords interleaved, then pairs of pairs: `u[k]` holds dwords k and 4 + k
    // of four rows, one per 128-bit lane.
    let (t0, t1) = (_mm256_unpacklo_epi32(r0, r1), _mm256_unpackhi_epi32(r0, r1));
    let (t2, t3) = (_mm256_unpacklo_epi32(r2, r3), _mm256_unpackhi_epi32(r2, r3));
    let (t4, t5) = (_mm256_unpacklo_epi32(r4, r5), _mm256_unpackhi_epi32(r4, r5));
    let (t6, t7) = (_mm256_unpacklo_epi32(r6, r7), _mm256_unpackhi_epi32(r6, r7));
    let first = [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ];
    let second = [
        _mm256_unpacklo_epi64(t4, t6),
        _mm256_unpackhi_epi64(t4, t6),
        _mm256_unpacklo_epi64(t5, t7),
        _mm256_unpackhi_epi64(t5, t7),
    ];
    std::array::from_fn(|d| {
        let (a, b) = (first[d % 4], second[d % 4]);
        if d < 4 {
            _mm256_permute2x128_si256::<0x20>(a, b)
        } else {
            _mm256_permute2x128_si256::<0x31>(a, b)
        }
    })
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

/// The products of four runs of a block's levels with the four dwords of each lane of `x`
/// (dword `i` broadcast against run `i`), pairs of products summed to i16 and the four runs
/// summed together.
#[target_feature(enable = "avx2,fma")]
fn four(runs: &[__m256i], x: __m256i) -> __m256i {
    let p0 = _mm256_maddubs_epi16(runs[0], _mm256_shuffle_epi32::<0x00>(x));
    let p1 = _mm256_maddubs_epi16(runs[1], _mm256_shuffle_epi32::<0x55>(x));
    let p2 = _mm256_maddubs_epi16(runs[2], _mm256_shuffle_epi32::<0xaa>(x));
    let p3 = _mm256_maddubs_epi16(runs[3], _mm256_shuffle_epi32::<0xff>(x));
    _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3))
}

/// Loads 32 bytes from the start of `v`.
#[target_feature(enable = "avx2,fma")]
fn load_bytes(v: &[u8]) -> __m256i {
    let v = &v[..32];
    // SAFETY: `v` has just been sliced to exactly 32 bytes; unaligned loads are allowed.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}
