//! The World generations' attention recurrences, head by head: each head's state is its own
//! `n x n` matrix, so the heads of a chunk run in parallel on rayon's threads, each stepping
//! through every token of the chunk. Per token a head also takes its GroupNorm (`ln_x`, one
//! group per head) and its output gate, so a layer's whole WKV is one parallel pass.
//!
//! The inner loops are over `n` contiguous floats with their sums kept in eight lanes, so
//! they vectorise, and they are compiled once per SIMD path (the baseline x86-64 target has
//! SSE2 only); the reference engines ([`super::finch`], [`super::v7`]) keep the plain
//! loops the tests hold these to.

use rayon::prelude::*;

use super::ops;
use super::reference::LN_X_EPS;
use super::simd::{self, Simd, dispatch};

/// Lanes of the partial sums: one AVX2 register of f32.
const LANES: usize = 8;

/// `Σ a[j] b[j]` in [`LANES`] partial sums.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (a_main, a_tail) = a.as_chunks::<LANES>();
    let (b_main, b_tail) = b.as_chunks::<LANES>();
    for (a, b) in a_main.iter().zip(b_main) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(a, b)| a * b).sum();
    acc.iter().sum::<f32>() + tail
}

/// What one layer's recurrence reads, `[T, hidden]` row-major unless said otherwise.
pub struct Rows<'a> {
    pub r: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    /// The per-token decay of each channel, in (0, 1).
    pub w: &'a [f32],
    /// The output gate, applied after the GroupNorm.
    pub g: &'a [f32],
    /// `ln_x`'s weight and bias `[hidden]`.
    pub ln_weight: &'a [f32],
    pub ln_bias: &'a [f32],
}

/// What differs between the generations.
pub enum Kind<'a> {
    /// v5.2 / v6: `S[k, v]`, the current token weighted by the bonus `u` `[hidden]`.
    Finch { u: &'a [f32] },
    /// v7: `S[v, k]`, updated with the normalised key `kk` and the in-context learning rate
    /// `a` (both `[T, hidden]`); `r_k` `[hidden]` weighs the current token's bonus.
    Goose {
        kk: &'a [f32],
        a: &'a [f32],
        r_k: &'a [f32],
    },
}

/// Runs the chunk's tokens through every head of `state` (`[heads, n, n]`), writing the
/// gated, normalised output `[T, hidden]` into `out`.
pub fn run(rows: &Rows, kind: &Kind, state: &mut [f32], n: usize, out: &mut [f32]) {
    run_on(simd::chosen(), rows, kind, state, n, out);
}

/// [`run`] with the loops compiled for `level`'s instructions (the same operations in the same
/// order on every path, so every path gives the portable loops' results to the bit).
fn run_on(level: Simd, rows: &Rows, kind: &Kind, state: &mut [f32], n: usize, out: &mut [f32]) {
    let c = rows.ln_weight.len();
    let t = rows.r.len() / c;
    // Each head's output `[T, n]`, then put in place: heads write disjoint columns.
    let mut by_head = vec![0f32; t * c];
    by_head
        .par_chunks_mut(t * n)
        .zip(state.par_chunks_mut(n * n))
        .enumerate()
        .for_each(|(h, (head_out, s))| head_on(level, rows, kind, h, n, s, head_out));
    for (tok, row) in out.chunks_exact_mut(c).enumerate() {
        for (h, head) in row.chunks_exact_mut(n).enumerate() {
            head.copy_from_slice(&by_head[h * t * n + tok * n..][..n]);
        }
    }
}

/// [`head`] on `level`'s instructions where the CPU has them: a head's loops are most of a
/// World model's time outside the products.
#[allow(clippy::too_many_arguments)]
fn head_on(
    level: Simd,
    rows: &Rows,
    kind: &Kind,
    h: usize,
    n: usize,
    s: &mut [f32],
    out: &mut [f32],
) {
    dispatch!(
        level,
        x86::head_avx512,
        x86::head_avx2,
        head,
        rows,
        kind,
        h,
        n,
        s,
        out
    )
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Kind, Rows, head};

    /// A copy of [`head`] per path, compiled for that path's features.
    macro_rules! copies {
        ($($name:ident: $features:literal),*) => {$(
            #[target_feature(enable = $features)]
            pub(super) fn $name(
                rows: &Rows,
                kind: &Kind,
                h: usize,
                n: usize,
                s: &mut [f32],
                out: &mut [f32],
            ) {
                head(rows, kind, h, n, s, out);
            }
        )*};
    }

    copies!(head_avx512: "avx512f,avx512bw,avx2,fma", head_avx2: "avx2,fma");
}

/// Every token of the chunk through head `h` of size `n`, its state `s` (`[n, n]`), into its
/// output `head_out` (`[T, n]`). Inlined into each path's copy, with everything it calls.
#[inline(always)]
fn head(rows: &Rows, kind: &Kind, h: usize, n: usize, s: &mut [f32], head_out: &mut [f32]) {
    let c = rows.ln_weight.len();
    let (mut ka, mut normed) = (vec![0f32; n], vec![0f32; n]);
    for (tok, o) in head_out.chunks_exact_mut(n).enumerate() {
        let at = tok * c + h * n;
        let span = at..at + n;
        let (r, k, v) = (
            &rows.r[span.clone()],
            &rows.k[span.clone()],
            &rows.v[span.clone()],
        );
        let w = &rows.w[span.clone()];
        match kind {
            Kind::Finch { u } => finch_step(r, k, v, w, &u[h * n..(h + 1) * n], s, o),
            Kind::Goose { kk, a, .. } => {
                let kk = &kk[span.clone()];
                for ((ka, kk), a) in ka.iter_mut().zip(kk).zip(&a[span.clone()]) {
                    *ka = kk * a;
                }
                goose_step(r, k, v, w, kk, &ka, s, o);
            }
        }
        let ln = h * n..(h + 1) * n;
        ops::layer_norm(
            o,
            &rows.ln_weight[ln.clone()],
            &rows.ln_bias[ln.clone()],
            LN_X_EPS,
            &mut normed,
        );
        let g = &rows.g[span.clone()];
        match kind {
            Kind::Finch { .. } => {
                for ((o, nv), g) in o.iter_mut().zip(&normed).zip(g) {
                    *o = nv * g;
                }
            }
            Kind::Goose { r_k, .. } => {
                let bonus: f32 = r
                    .iter()
                    .zip(k)
                    .zip(&r_k[ln])
                    .map(|((r, k), rk)| r * k * rk)
                    .sum();
                for (((o, nv), v), g) in o.iter_mut().zip(&normed).zip(v).zip(g) {
                    *o = (nv + bonus * v) * g;
                }
            }
        }
    }
}

/// One token of one v5/v6 head: `out_j = Σ_i r_i (u_i k_i v_j + S_ij)`,
/// `S_ij ← k_i v_j + w_i S_ij`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn finch_step(
    r: &[f32],
    k: &[f32],
    v: &[f32],
    w: &[f32],
    u: &[f32],
    s: &mut [f32],
    out: &mut [f32],
) {
    out.fill(0.0);
    for (i, row) in s.chunks_exact_mut(v.len()).enumerate() {
        let (ri, ki, ui, wi) = (r[i], k[i], u[i], w[i]);
        for ((o, s), &vj) in out.iter_mut().zip(row.iter_mut()).zip(v) {
            let kv = ki * vj;
            *o += ri * (ui * kv + *s);
            *s = kv + wi * *s;
        }
    }
}

/// One token of one v7 head: `S ← S·diag(w) − (S·κ̂)(κ̂∘a)ᵀ + v kᵀ`, `out = S r`, with
/// `ka = κ̂∘a`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn goose_step(
    r: &[f32],
    k: &[f32],
    v: &[f32],
    w: &[f32],
    kk: &[f32],
    ka: &[f32],
    s: &mut [f32],
    out: &mut [f32],
) {
    let n = v.len();
    for ((row, &vi), o) in s.chunks_exact_mut(n).zip(v).zip(out.iter_mut()) {
        let sk = dot(row, kk);
        for (((s, w), ka), k) in row.iter_mut().zip(w).zip(ka).zip(k) {
            *s = *s * w - sk * ka + vi * k;
        }
        *o = dot(row, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in [-1, 1] that differ from one seed to the next.
    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + 1) * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// Every path this CPU runs gives the portable loops' outputs and states to the bit, for
    /// both generations' recurrences, with a head size that fills whole vectors (64) and one
    /// that leaves a tail in each (20).
    #[test]
    fn every_path_gives_the_portable_results_to_the_bit() {
        for (n, heads, t) in [(64, 3, 4), (20, 2, 3)] {
            let c = n * heads;
            let [r, k, v, g, kk, a] = [1, 2, 3, 4, 5, 6].map(|seed| values(t * c, seed));
            // Decays in (0, 1), as the engines make them.
            let w: Vec<f32> = values(t * c, 7).iter().map(|x| 0.5 + 0.45 * x).collect();
            let [ln_weight, ln_bias, u, r_k] = [8, 9, 10, 11].map(|seed| values(c, seed));
            let rows = Rows {
                r: &r,
                k: &k,
                v: &v,
                w: &w,
                g: &g,
                ln_weight: &ln_weight,
                ln_bias: &ln_bias,
            };
            let kinds = [
                Kind::Finch { u: &u },
                Kind::Goose {
                    kk: &kk,
                    a: &a,
                    r_k: &r_k,
                },
            ];
            for kind in &kinds {
                let run = |level| {
                    let mut state = values(heads * n * n, 12);
                    let mut out = vec![0f32; t * c];
                    run_on(level, &rows, kind, &mut state, n, &mut out);
                    (out, state)
                };
                let portable = run(Simd::Portable);
                assert!(portable.0.iter().all(|o| o.is_finite()));
                assert!(portable.0.iter().filter(|o| **o != 0.0).count() > t * c / 2);
                for level in Simd::supported() {
                    let (out, state) = run(level);
                    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&out), bits(&portable.0), "{level}: output, n {n}");
                    assert_eq!(bits(&state), bits(&portable.1), "{level}: state, n {n}");
                }
            }
        }
    }
}
