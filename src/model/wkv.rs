//! The WKV recurrence, RWKV-4's attention: the one part of the model that is sequential in
//! time. It runs as a plain loop over host slices (time outer, channels inner, so the inner
//! loop vectorises) instead of a handful of tensor ops per token.

/// Decay and bonus of one layer, in f32 as every reference implementation keeps them.
#[derive(Debug, Clone)]
pub struct WkvParams {
    /// `-exp(time_decay)`: the log of the per-step decay, always negative.
    pub decay: Vec<f32>,
    /// `time_first` (`u`): the bonus given to the current token.
    pub first: Vec<f32>,
}

/// The accumulators of one layer, updated in place.
pub struct Accumulators<'a> {
    pub num: &'a mut [f32],
    pub den: &'a mut [f32],
    pub max: &'a mut [f32],
}

/// Runs `k.len() / channels` steps. `k`, `v` and `out` are `[T, channels]`, row-major.
///
/// Every `exp` is taken of a difference against a running maximum, so keys far above 88
/// (where `exp` overflows f32) stay finite.
pub fn wkv(params: &WkvParams, k: &[f32], v: &[f32], acc: Accumulators<'_>, out: &mut [f32]) {
    let channels = params.decay.len();
    let Accumulators { num, den, max } = acc;
    let rows = k
        .chunks_exact(channels)
        .zip(v.chunks_exact(channels))
        .zip(out.chunks_exact_mut(channels));
    for ((k, v), out) in rows {
        // Iterators rather than indices, so the loop has no bounds checks and vectorises.
        let state = num.iter_mut().zip(den.iter_mut()).zip(max.iter_mut());
        let params = params.first.iter().zip(&params.decay);
        let step = k.iter().zip(v).zip(out.iter_mut());
        for (((&kc, &vc), out), (((num, den), max), (&first, &decay))) in
            step.zip(state.zip(params))
        {
            let pp = *max;
            let uk = first + kc;
            let q = pp.max(uk);
            let e1 = exp(pp - q);
            let e2 = exp(uk - q);
            *out = (e1 * *num + e2 * vc) / (e1 * *den + e2);

            let pw = pp + decay;
            let q = pw.max(kc);
            let e1 = exp(pw - q);
            let e2 = exp(kc - q);
            *num = e1 * *num + e2 * vc;
            *den = e1 * *den + e2;
            *max = q;
        }
    }
}

/// `e^x` in plain arithmetic (Cephes' `expf`: a degree-6 polynomial on `[-ln 2 / 2, ln 2 / 2]`
/// scaled by a power of two, within 2 ulp), so that loops calling it vectorise; the libm call
/// does not, and was a tenth of a prompt's time on small models. Inputs below -87.3 give
/// about 1e-38 instead of underflowing to 0; every caller multiplies or adds it to values
/// where that is invisible.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2_E + ROUND) - ROUND;
    // ln 2 in two parts, the first exact in a few bits, so `n * LN2_HI` is exact.
    const LN2_HI: f32 = 355.0 / 512.0;
    let r = x - n * LN2_HI + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_352e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook form, in f64 and without the max trick: only usable for small keys.
    fn naive(w: f64, u: f64, ks: &[f64], vs: &[f64]) -> Vec<f64> {
        let mut out = vec![];
        for t in 0..ks.len() {
            let mut num = (u + ks[t]).exp() * vs[t];
            let mut den = (u + ks[t]).exp();
            for i in 0..t {
                let weight = (w * (t - 1 - i) as f64 + ks[i]).exp();
                num += weight * vs[i];
                den += weight;
            }
            out.push(num / den);
        }
        out
    }

    fn run(w: f32, u: f32, ks: &[f32], vs: &[f32]) -> Vec<f32> {
        let params = WkvParams {
            decay: vec![w],
            first: vec![u],
        };
        let (mut num, mut den, mut max) = ([0.0], [0.0], [-1e30]);
        let mut out = vec![0.0; ks.len()];
        let acc = Accumulators {
            num: &mut num,
            den: &mut den,
            max: &mut max,
        };
        wkv(&params, ks, vs, acc, &mut out);
        out
    }

    #[test]
    fn matches_the_textbook_formula() {
        let ks = [0.3, -1.2, 2.0, 0.7, -0.1];
        let vs = [1.0, -2.0, 0.5, 3.0, -1.5];
        let (w, u) = (-0.6, 0.4);
        let got = run(w, u, &ks, &vs);
        let ks64: Vec<f64> = ks.iter().map(|&x| x as f64).collect();
        let vs64: Vec<f64> = vs.iter().map(|&x| x as f64).collect();
        let want = naive(w as f64, u as f64, &ks64, &vs64);
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (fast, libm) = (exp(x), x.exp());
            let ulp = libm * f32::EPSILON;
            assert!(
                (fast - libm).abs() <= 2.0 * ulp,
                "exp({x}): {fast} vs {libm}"
            );
            x += 0.0137;
        }
        assert!(exp(-1e30) < 1e-37 && exp(-1e30) >= 0.0);
        assert!(exp(0.0) == 1.0);
    }

    #[test]
    fn huge_keys_do_not_overflow() {
        // exp(200) overflows f32; shifting every key by the same amount must not change the
        // result, since the shift cancels between numerator and denominator.
        let vs = [1.0, -2.0, 0.5, 3.0];
        let small = [0.3, -1.2, 2.0, 0.7];
        let huge: Vec<f32> = small.iter().map(|k| k + 200.0).collect();
        let a = run(-0.6, 0.4, &small, &vs);
        let b = run(-0.6, 0.4, &huge, &vs);
        for (x, y) in a.iter().zip(&b) {
            assert!(y.is_finite());
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }
}
