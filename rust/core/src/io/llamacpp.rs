//! llama.cpp `--kl-divergence-base` rows: log-probabilities packed in uint16.
//!
//! A row of a base file describes one next-token distribution over `vocab`
//! tokens in [`row_len`]`(vocab)` uint16 values:
//!
//! ```text
//! u16[0..2]            float32 scale          (little-endian, low half first)
//! u16[2..4]            float32 min_log_prob
//! u16[4..4+vocab]      q[i]
//! u16[4+vocab]         0, only when vocab is odd
//! ```
//!
//! and decodes to `log p[i] = scale * q[i] + min_log_prob` (float32).
//!
//! [`encode_row`] follows llama.cpp's writer (`log_softmax` in
//! `tools/perplexity/perplexity.cpp`) operation by operation, in float32
//! unless marked:
//!
//! ```text
//! mx = max(l); mn = max(min(l), mx - gap)            gap = 16 (ik_llama.cpp: 24)
//! sum (float64) = Σ_i expf(l[i] - mx), i = 0, 1, ..  sequentially
//! lse = (float) log(sum)
//! min_log_prob = (mn - mx) - lse
//! scale = (mx - mn) / 65535
//! q[i] = l[i] > mn ? nearest_int((1/scale) * (l[i] - mn)) : 0   (all 0 when scale == 0)
//! ```
//!
//! `nearest_int` is llama.cpp's `x + 12582912.f` bit trick, reproduced as
//! is: round half to even on [0, 65535]. So `scale` and every `q[i]` are
//! bit-exact with llama.cpp (a build that contracts `inv * d + 12582912` into
//! one FMA could differ where the float32 product rounds across a half
//! integer). `min_log_prob` goes through the C library's `expf` and `log`,
//! as llama.cpp's does, so it is bit-exact on the same libm and within about
//! one ulp elsewhere.

use rayon::prelude::*;

use crate::error::{CoreError, Result};
use crate::rows::{bf16_to_f32, f16_to_f32, Rows};

/// The clamp llama.cpp uses: tokens more than 16 nats below the top logit
/// are stored as `min_log_prob`.
pub const DEFAULT_GAP: f32 = 16.0;

/// uint16 values per row for a vocabulary of `vocab` tokens:
/// `2 * ((vocab + 1) / 2) + 4` (two for each float32, the codes padded to an
/// even count).
pub fn row_len(vocab: usize) -> usize {
    2 * vocab.div_ceil(2) + 4
}

/// llama.cpp's `nearest_int`: adds 1.5·2²³ so the integer lands in the low
/// mantissa bits, then reads them back. Round half to even for
/// 0 ≤ x < 2²², truncated to 16 bits as the C++ cast to `uint16_t` does.
#[inline(always)]
fn nearest_int(x: f32) -> u16 {
    let bits = (x + 12_582_912.0f32).to_bits();
    ((bits & 0x007f_ffff) as i32 - 0x0040_0000) as u16
}

/// Encodes one row of float32 logits into `out` (length [`row_len`]).
///
/// The caller guarantees that every logit is finite or −inf and that at least
/// one is finite ([`encode_rows`] checks this).
///
/// ```
/// use quantdrift_core::io::llamacpp::{decode_row, encode_row, row_len};
/// let logits = [2.0f32, 1.0, 0.0];
/// let mut packed = vec![0u16; row_len(3)];
/// encode_row(&logits, &mut packed, 16.0);
/// let mut logp = [0f32; 3];
/// decode_row(&packed, &mut logp);
/// let lse = (2f64.exp() + 1f64.exp() + 1.0).ln();
/// assert!((logp[1] as f64 - (1.0 - lse)).abs() < 2e-4);
/// ```
pub fn encode_row(logits: &[f32], out: &mut [u16], gap: f32) {
    let vocab = logits.len();
    debug_assert_eq!(out.len(), row_len(vocab));
    let mut mx = logits[0];
    let mut mn = logits[0];
    for &l in &logits[1..] {
        // std::max / std::min as llama.cpp calls them: (a < b) ? b : a.
        if mx < l {
            mx = l;
        }
        if l < mn {
            mn = l;
        }
    }
    let floor = mx - gap;
    if mn < floor {
        mn = floor;
    }
    let mut sum = 0f64;
    for &l in logits {
        sum += (l - mx).exp() as f64;
    }
    let lse = sum.ln() as f32;
    let min_log_prob = (mn - mx) - lse;
    let scale = (mx - mn) / 65535.0f32;
    let (s, m) = (scale.to_bits(), min_log_prob.to_bits());
    out[0] = s as u16;
    out[1] = (s >> 16) as u16;
    out[2] = m as u16;
    out[3] = (m >> 16) as u16;
    let codes = &mut out[4..];
    if scale != 0.0 {
        let inv = 1.0f32 / scale;
        for (q, &l) in codes.iter_mut().zip(logits) {
            *q = if l > mn {
                nearest_int(inv * (l - mn))
            } else {
                0
            };
        }
        codes[vocab..].fill(0);
    } else {
        codes.fill(0);
    }
}

/// The float32 `(scale, min_log_prob)` stored in the first four uint16 of a
/// packed row.
#[inline]
pub fn row_params(row: &[u16]) -> (f32, f32) {
    let scale = f32::from_bits(row[0] as u32 | (row[1] as u32) << 16);
    let min_log_prob = f32::from_bits(row[2] as u32 | (row[3] as u32) << 16);
    (scale, min_log_prob)
}

/// Decodes one packed row into `out.len()` (= vocab) log-probabilities:
/// `scale * q[i] + min_log_prob` in float32, multiply and add rounded
/// separately.
pub fn decode_row(row: &[u16], out: &mut [f32]) {
    let (scale, min_log_prob) = row_params(row);
    let vocab = out.len();
    for (o, &q) in out.iter_mut().zip(&row[4..4 + vocab]) {
        *o = scale * q as f32 + min_log_prob;
    }
}

/// Rows per rayon task: enough work to amortise scheduling, few enough
/// to spread over every thread.
fn rows_per_task(rows: usize, vocab: usize) -> usize {
    let per_row = vocab.max(1);
    (65_536 / per_row).clamp(1, rows.max(1))
}

/// Encodes `rows × vocab` logits into `rows × row_len(vocab)` uint16, in
/// parallel over rows. float16/bfloat16 rows are widened exactly, float64
/// rows are rounded to float32 first (llama.cpp's logits are float32).
/// `gap` is the clamp below the top logit (16 in llama.cpp).
///
/// Errors: a row containing NaN or +inf, or with no finite logit; a gap
/// that is not finite and positive; an empty vocabulary with rows.
pub fn encode_rows(logits: Rows<'_>, gap: f32) -> Result<Vec<u16>> {
    crate::threads::init_pool();
    if !(gap.is_finite() && gap > 0.0) {
        return Err(CoreError::Value(format!(
            "gap must be finite and positive, got {gap}"
        )));
    }
    let (rows, vocab) = (logits.rows(), logits.vocab());
    if rows > 0 && vocab == 0 {
        return Err(CoreError::Shape(
            "logits have an empty vocabulary axis".into(),
        ));
    }
    let width = row_len(vocab);
    let mut out = vec![0u16; rows * width];
    let per_task = rows_per_task(rows, vocab);
    out.par_chunks_mut(per_task * width)
        .enumerate()
        .try_for_each_init(
            || vec![0f32; vocab],
            |buf, (task, chunk)| {
                for (i, packed) in chunk.chunks_exact_mut(width).enumerate() {
                    let r = task * per_task + i;
                    widen(&logits, r, buf);
                    check_row(buf, r)?;
                    encode_row(buf, packed, gap);
                }
                Ok(())
            },
        )?;
    Ok(out)
}

/// Row `r` as float32 in `buf`.
fn widen(logits: &Rows<'_>, r: usize, buf: &mut [f32]) {
    let v = buf.len();
    match *logits {
        Rows::F32(d, _) => buf.copy_from_slice(&d[r * v..(r + 1) * v]),
        Rows::F64(d, _) => {
            for (b, &x) in buf.iter_mut().zip(&d[r * v..(r + 1) * v]) {
                *b = x as f32;
            }
        }
        Rows::F16(d, _) => {
            for (b, &x) in buf.iter_mut().zip(&d[r * v..(r + 1) * v]) {
                *b = f16_to_f32(x);
            }
        }
        Rows::Bf16(d, _) => {
            for (b, &x) in buf.iter_mut().zip(&d[r * v..(r + 1) * v]) {
                *b = bf16_to_f32(x);
            }
        }
    }
}

/// llama.cpp would write garbage for these rows; refuse them instead.
fn check_row(row: &[f32], r: usize) -> Result<()> {
    let mut any_finite = false;
    for (i, &l) in row.iter().enumerate() {
        if l.is_nan() || l == f32::INFINITY {
            return Err(CoreError::Value(format!(
                "logits row {r} has {l} at index {i}; a base file needs finite logits (or -inf)"
            )));
        }
        any_finite |= l.is_finite();
    }
    if !any_finite {
        return Err(CoreError::Value(format!(
            "logits row {r} is -inf everywhere: no distribution to store"
        )));
    }
    Ok(())
}

/// Decodes `rows × row_len(vocab)` packed uint16 into `rows × vocab` float32
/// log-probabilities, in parallel over rows.
///
/// Errors: data that is not a whole number of rows of `row_len(vocab)`.
pub fn decode_rows(packed: &[u16], vocab: usize) -> Result<Vec<f32>> {
    let rows = check_packed(packed, vocab)?;
    let mut out = vec![0f32; rows * vocab];
    decode_rows_into(packed, vocab, &mut out)?;
    Ok(out)
}

/// [`decode_rows`] into a caller's buffer of `rows × vocab` float32.
pub fn decode_rows_into(packed: &[u16], vocab: usize, out: &mut [f32]) -> Result<()> {
    crate::threads::init_pool();
    let rows = check_packed(packed, vocab)?;
    if out.len() != rows * vocab {
        return Err(CoreError::Shape(format!(
            "output has {} elements, {rows} rows of {vocab} need {}",
            out.len(),
            rows * vocab
        )));
    }
    if rows == 0 || vocab == 0 {
        return Ok(());
    }
    let width = row_len(vocab);
    let per_task = rows_per_task(rows, vocab);
    out.par_chunks_mut(per_task * vocab)
        .zip(packed.par_chunks(per_task * width))
        .for_each(|(dst, src)| {
            for (o, p) in dst.chunks_exact_mut(vocab).zip(src.chunks_exact(width)) {
                decode_row(p, o);
            }
        });
    Ok(())
}

fn check_packed(packed: &[u16], vocab: usize) -> Result<usize> {
    let width = row_len(vocab);
    if !packed.len().is_multiple_of(width) {
        return Err(CoreError::Shape(format!(
            "packed rows: {} uint16 values are not a whole number of rows of {width} \
             (vocab {vocab}: 4 + {} codes)",
            packed.len(),
            width - 4
        )));
    }
    Ok(packed.len() / width)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_len_pads_odd_vocabularies() {
        assert_eq!(row_len(7), 12);
        assert_eq!(row_len(10), 14);
        assert_eq!(row_len(128_256), 128_260);
        assert_eq!(row_len(0), 4);
    }

    #[test]
    fn nearest_int_is_round_half_even() {
        for k in 0..=65_535u32 {
            let x = k as f32;
            assert_eq!(nearest_int(x) as u32, k);
            if k < 65_535 {
                let half = x + 0.5;
                assert_eq!(nearest_int(half) as f32, half.round_ties_even());
                assert_eq!(nearest_int(x + 0.25) as u32, k);
                assert_eq!(nearest_int(x + 0.75) as u32, k + 1);
            }
        }
    }
}
