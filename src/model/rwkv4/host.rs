//! The forward pass on the CPU, over plain slices.
//!
//! A token step is a few hundred small operations; through candle each one allocates its
//! output and walks it once, which costs more than the arithmetic. Here each layer is a few
//! fused loops over buffers that live in a [`Scratch`] kept between calls, so the token loop
//! allocates nothing but the logits it returns, and the matrix products read host weights
//! directly ([`crate::model::gemv::matmul`]). The math is the candle path's ([`Rwkv4::forward_chunk_candle`],
//! which runs on GPUs); the tests hold the two to each other and to the reference outputs.

use candle_core::Tensor;

use super::{Block, ChannelMix, LayerNorm, LayerState, Mix, Rwkv4, Rwkv4State, TimeMix};
use crate::model::ops;
use crate::model::wkv::{self, Accumulators};

/// Buffers for one chunk of `T` tokens, grown on demand and reused.
#[derive(Default)]
pub(super) struct Scratch {
    /// The residual stream `[T, hidden]`.
    x: Vec<f32>,
    /// A layer norm's output `[T, hidden]`: the input of a mix.
    normed: Vec<f32>,
    /// The token-shift mixes `[T, hidden]` feeding the projections.
    mixed: [Vec<f32>; 3],
    /// Projections `[T, attention or ffn]`.
    k: Vec<f32>,
    v: Vec<f32>,
    r: Vec<f32>,
    /// The WKV output, then the output projection `[T, attention]`.
    wkv: Vec<f32>,
    out: Vec<f32>,
}

fn resize(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    &mut buf[..len]
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + wkv::exp(-x))
}

impl LayerNorm {
    /// Normalises each `[hidden]` row of `x` into `out`.
    fn host(&self, x: &[f32], out: &mut [f32]) {
        ops::layer_norm(x, &self.host_weight, &self.host_bias, self.eps, out);
    }
}

impl Mix {
    /// `out[t] = x[t] * mix + x[t - 1] * (1 - mix)`, with `prev` standing for `x[-1]`.
    fn host(&self, x: &[f32], prev: &[f32], out: &mut [f32]) {
        let n = prev.len();
        for (t, (row, out)) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)).enumerate() {
            let before = if t == 0 { prev } else { &x[(t - 1) * n..t * n] };
            let params = self.host_mix.iter().zip(&self.host_rest);
            for (((o, &v), &p), (m, r)) in out.iter_mut().zip(row).zip(before).zip(params) {
                *o = v * m + p * r;
            }
        }
    }
}

fn last_row(x: &[f32], n: usize) -> &[f32] {
    &x[x.len() - n..]
}

impl Block {
    fn host(&self, s: &mut Scratch, t: usize, st: &mut LayerState) -> candle_core::Result<()> {
        let h = st.att_x.len();
        if let Some(ln) = &self.pre_ln {
            let normed = resize(&mut s.normed, t * h);
            ln.host(&s.x, normed);
            s.x.copy_from_slice(normed);
        }
        self.ln1.host(&s.x, resize(&mut s.normed, t * h));
        self.attention.host(s, t, st)?;
        st.att_x.copy_from_slice(last_row(&s.normed, h));
        self.ln2.host(&s.x, &mut s.normed);
        self.feed_forward.host(s, t, &st.ffn_x)?;
        st.ffn_x.copy_from_slice(last_row(&s.normed, h));
        Ok(())
    }
}

impl TimeMix {
    /// Adds the time mix of `s.normed` to `s.x`.
    fn host(&self, s: &mut Scratch, t: usize, st: &mut LayerState) -> candle_core::Result<()> {
        let h = st.att_x.len();
        let a = self.key.rows;
        let [xk, xv, xr] = &mut s.mixed;
        let (xk, xv, xr) = (resize(xk, t * h), resize(xv, t * h), resize(xr, t * h));
        self.mix_k.host(&s.normed, &st.att_x, xk);
        self.mix_v.host(&s.normed, &st.att_x, xv);
        self.mix_r.host(&s.normed, &st.att_x, xr);
        let (k, v, r) = (
            resize(&mut s.k, t * a),
            resize(&mut s.v, t * a),
            resize(&mut s.r, t * a),
        );
        // Independent: run together, so no thread idles at the end of each.
        let ((key, value), receptance) = rayon::join(
            || rayon::join(|| self.key.host(xk, k), || self.value.host(xv, v)),
            || self.receptance.host(xr, r),
        );
        key?;
        value?;
        receptance?;
        let wkv = resize(&mut s.wkv, t * a);
        let acc = Accumulators {
            num: &mut st.att_num,
            den: &mut st.att_den,
            max: &mut st.att_max,
        };
        wkv::wkv(&self.wkv, k, v, acc, wkv);
        for (w, &r) in wkv.iter_mut().zip(r.iter()) {
            *w *= sigmoid(r);
        }
        let out = resize(&mut s.out, t * h);
        self.output.host(wkv, out)?;
        for (x, o) in s.x.iter_mut().zip(out.iter()) {
            *x += o;
        }
        Ok(())
    }
}

impl ChannelMix {
    /// Adds the channel mix of `s.normed` to `s.x`.
    fn host(&self, s: &mut Scratch, t: usize, prev: &[f32]) -> candle_core::Result<()> {
        let h = prev.len();
        let f = self.key.rows;
        let [xk, xr, _] = &mut s.mixed;
        let (xk, xr) = (resize(xk, t * h), resize(xr, t * h));
        self.mix_k.host(&s.normed, prev, xk);
        self.mix_r.host(&s.normed, prev, xr);
        let (k, v, r) = (
            resize(&mut s.k, t * f),
            resize(&mut s.v, t * h),
            resize(&mut s.r, t * h),
        );
        let value = || {
            self.key.host(xk, k)?;
            for k in k.iter_mut() {
                let relu = k.max(0.0);
                *k = relu * relu;
            }
            self.value.host(k, v)
        };
        // Independent of the value: run beside it, so no thread idles at each product's end.
        let (value, receptance) = rayon::join(value, || self.receptance.host(xr, r));
        value?;
        receptance?;
        for ((x, &v), &r) in s.x.iter_mut().zip(v.iter()).zip(r.iter()) {
            *x += sigmoid(r) * v;
        }
        Ok(())
    }
}

impl Rwkv4 {
    /// [`Rwkv4::forward_chunk`] on the CPU: logits `[T, vocab]` when `all_logits`, else
    /// `[1, vocab]` for the last token.
    pub(super) fn forward_host(
        &self,
        s: &mut Scratch,
        tokens: &[u32],
        state: &mut Rwkv4State,
        all_logits: bool,
    ) -> candle_core::Result<Tensor> {
        let (t, h) = (tokens.len(), self.cfg.hidden_size);
        let x = resize(&mut s.x, t * h);
        for (&id, row) in tokens.iter().zip(x.chunks_exact_mut(h)) {
            ops::embedding(&self.embeddings, id as usize, row)?;
        }
        let every = self.cfg.rescale_every;
        for (i, (block, st)) in self.blocks.iter().zip(state.layers.iter_mut()).enumerate() {
            block.host(s, t, st)?;
            if every > 0 && (i + 1) % every == 0 {
                s.x.iter_mut().for_each(|x| *x *= 0.5);
            }
        }
        let rows = if all_logits { t } else { 1 };
        let x = &s.x[(t - rows) * h..];
        let normed = resize(&mut s.normed, rows * h);
        self.ln_out.host(x, normed);
        let mut logits = vec![0f32; rows * self.head.rows];
        self.head.host(normed, &mut logits)?;
        Tensor::from_vec(logits, (rows, self.head.rows), &self.device)
    }
}
