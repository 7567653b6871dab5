//! Per-token statistics of two models' next-token distributions: the row
//! kernel behind `quantdrift.compare`.
//!
//! For each scored row it computes, in one scan and two passes over the row
//! pair, KL(base‖other), KL(other‖base), JS, both models' top-1 tokens, the
//! overlap of their top-k sets and, given the next token, both models'
//! negative log-likelihoods. Reports (means, standard errors, percentiles,
//! perplexities) are built from these per-token columns, which merge by
//! concatenation, so shards compared apart and merged equal one run.
//!
//! The base side may be dense scores (logits or log-probabilities in f32,
//! f64, f16 or bf16), rows of a llama.cpp `--kl-divergence-base` file, or a
//! top-k dump; the other side is dense or llama.cpp rows.
//!
//! * llama.cpp rows: KL(base‖other) and the base NLL use llama.cpp's own
//!   formulas (the base log-probs as decoded, not renormalised; KL summed
//!   over tokens whose decoded base log-prob exceeds −16), so that numbers
//!   match what `llama-perplexity --kl-divergence` prints. The other
//!   statistics use the decoded rows renormalised.
//! * top-k rows: the base is known on k tokens plus one bucket holding the
//!   rest of its mass; every divergence is taken between the two models'
//!   distributions coarsened onto those k + 1 buckets. By the data-processing
//!   inequality each value is a lower bound of the full-vocabulary one.

use rayon::prelude::*;

use super::fast::{
    check_scan, first_index_of, scan, store_exps, stored_block, Bf16Row, Blocks, F16Row, Load,
    Prefetch, Scan, Totals, BLK, BLOCK,
};
use super::kinds::{js_core, SERIES_LIMIT};
use super::{reference, Inputs, Kind, Options, RowIssue, Side};
use crate::error::{CoreError, Result};
use crate::io::llamacpp;
use crate::rows::{Dtype, Rows};
use crate::simd::{self, Kernel, LANES};

/// Most distinct top-k sizes one comparison tracks.
pub const MAX_TOPK_SIZES: usize = 8;
/// Largest top-k size.
pub const MAX_TOPK: usize = 4096;
/// llama.cpp's KLD loop skips base tokens whose decoded log-prob is not
/// above this (an absolute cut-off, see `log_softmax` in perplexity.cpp).
pub const LLAMACPP_CUTOFF: f32 = -16.0;

/// One side of a block of rows.
#[derive(Debug, Clone, Copy)]
pub enum Block<'a> {
    /// Dense scores: logits or log-probabilities (log-softmax is taken
    /// either way, after dividing by the temperature).
    Dense(Rows<'a>),
    /// Rows of a llama.cpp base file: each `2·((vocab+1)/2) + 4` uint16
    /// values holding an f32 scale, an f32 minimum log-prob and the codes.
    Llamacpp {
        /// The packed rows.
        data: &'a [u16],
        /// Vocabulary size.
        vocab: usize,
    },
    /// A top-k dump: per row, k token ids and their log-probs, and
    /// optionally the log of the probability mass outside them.
    TopK {
        /// Token ids, `rows × k`.
        indices: &'a [i32],
        /// Log-probabilities, `rows × k`.
        logprobs: &'a [f32],
        /// ln(1 − Σ p) per row; computed from `logprobs` when absent.
        rest: Option<&'a [f32]>,
        /// Entries per row.
        k: usize,
        /// Vocabulary size of the model the dump came from.
        vocab: usize,
    },
}

impl Block<'_> {
    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        match *self {
            Block::Dense(rows) => rows.vocab(),
            Block::Llamacpp { vocab, .. } | Block::TopK { vocab, .. } => vocab,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        match *self {
            Block::Dense(rows) => rows.rows(),
            Block::Llamacpp { data, vocab } => data.len() / llamacpp::row_len(vocab),
            Block::TopK { indices, k, .. } => indices.len().checked_div(k).unwrap_or(0),
        }
    }

    fn check(&self, name: &str) -> Result<()> {
        match *self {
            Block::Dense(_) => Ok(()),
            Block::Llamacpp { data, vocab } => {
                if vocab == 0 || data.len() % llamacpp::row_len(vocab) != 0 {
                    return Err(CoreError::Shape(format!(
                        "{name}: llama.cpp rows of vocabulary {vocab} hold {} uint16 values each, \
                         got {} values",
                        llamacpp::row_len(vocab),
                        data.len()
                    )));
                }
                Ok(())
            }
            Block::TopK {
                indices,
                logprobs,
                rest,
                k,
                vocab,
            } => {
                let rows = self.rows();
                if k == 0 || indices.len() != logprobs.len() || indices.len() != rows * k {
                    return Err(CoreError::Shape(format!(
                        "{name}: top-k indices ({} values) and log-probs ({} values) must both \
                         be rows × k with k = {k} > 0",
                        indices.len(),
                        logprobs.len()
                    )));
                }
                if let Some(at) = indices.iter().position(|&i| i < 0 || i as usize >= vocab) {
                    return Err(CoreError::Value(format!(
                        "{name}: top-k row {} lists token {} outside the vocabulary of {vocab}",
                        at / k,
                        indices[at]
                    )));
                }
                if let Some(at) = logprobs.iter().position(|&x| x.is_nan() || x > 0.0) {
                    return Err(CoreError::Value(format!(
                        "{name}: top-k row {} has log-prob {}; log-probs must be <= 0",
                        at / k,
                        logprobs[at]
                    )));
                }
                if rest.is_some_and(|r| r.len() != rows) {
                    return Err(CoreError::Shape(format!(
                        "{name}: top-k 'rest' needs one value per row ({rows}), got {}",
                        rest.map_or(0, |r| r.len())
                    )));
                }
                Ok(())
            }
        }
    }
}

/// Options of a comparison.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Softmax temperature (> 0), applied to both sides.
    pub temperature: f64,
    /// Top-k sizes whose overlap is reported (each ≥ 1, at most
    /// [`MAX_TOPK_SIZES`] of them).
    pub topk: Vec<usize>,
    /// Names of the two sides for error messages (e.g. file names).
    pub names: [String; 2],
    /// Index of the block's first row in the whole source, for messages.
    pub row_offset: usize,
}

/// Per-token columns of a comparison, one entry per evaluated row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenStats {
    /// KL(base‖other), nats.
    pub kl: Vec<f32>,
    /// KL(other‖base), nats.
    pub reverse_kl: Vec<f32>,
    /// Jensen–Shannon divergence, nats.
    pub js: Vec<f32>,
    /// Top-1 token of the base and of the other model (first index of the
    /// maximum).
    pub top1: [Vec<i32>; 2],
    /// For each requested k, |top-k(base) ∩ top-k(other)| / k.
    pub overlap: Vec<Vec<f32>>,
    /// −ln p(next token) under the base and the other model (NaN without
    /// tokens, or where a top-k base does not list the token).
    pub nll: [Vec<f32>; 2],
}

/// The statistics of one row pair.
#[derive(Debug, Clone, Copy)]
struct RowOut {
    kl: f64,
    reverse_kl: f64,
    js: f64,
    top1: [u32; 2],
    overlap: [f32; MAX_TOPK_SIZES],
    nll: [f32; 2],
    /// ln Q_i = x_i/τ − log_norm_q for the other row's scores x.
    log_norm_q: f64,
}

/// Per-thread buffers.
#[derive(Default)]
struct Scratch {
    p32: Vec<f32>,
    q32: Vec<f32>,
    p64: Vec<f64>,
    q64: Vec<f64>,
    exps: Vec<f32>,
    top: [Vec<(f32, u32)>; 2],
    /// Which tokens a top-k row lists.
    listed: Vec<bool>,
}

thread_local! {
    /// Per-thread buffers, kept across rows and calls: a row pair needs
    /// about 4 bytes per vocabulary entry per side, and allocating (and
    /// zeroing) that per row would cost as much as a pass over the row.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Evaluates rows `select` (all rows when `None`) of a block pair.
/// `tokens`, when given, holds the next token of every row of the block
/// (a negative id means none).
pub fn compare_rows(
    base: Block<'_>,
    other: Block<'_>,
    select: Option<&[u32]>,
    tokens: Option<&[i32]>,
    opts: &CompareOptions,
) -> Result<TokenStats> {
    let [base_name, other_name] = &opts.names;
    validate(&base, &other, select, tokens, opts)?;
    crate::threads::init_pool();
    let all: Vec<u32>;
    let select = match select {
        Some(s) => s,
        None => {
            all = (0..base.rows() as u32).collect();
            &all
        }
    };
    let mut sizes: Vec<usize> = opts.topk.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let results: Vec<std::result::Result<RowOut, (Side, RowIssue)>> = select
        .par_iter()
        .with_min_len(1)
        .map(|&r| {
            let r = r as usize;
            let token = tokens.and_then(|t| usize::try_from(t[r]).ok());
            SCRATCH.with(|scratch| {
                row_stats(
                    &base,
                    &other,
                    r,
                    token,
                    opts,
                    &sizes,
                    &mut scratch.borrow_mut(),
                )
            })
        })
        .collect();
    let n = select.len();
    let mut out = TokenStats {
        kl: Vec::with_capacity(n),
        reverse_kl: Vec::with_capacity(n),
        js: Vec::with_capacity(n),
        top1: [Vec::with_capacity(n), Vec::with_capacity(n)],
        overlap: vec![Vec::with_capacity(n); opts.topk.len()],
        nll: [Vec::with_capacity(n), Vec::with_capacity(n)],
    };
    for (i, res) in results.into_iter().enumerate() {
        let row = match res {
            Ok(row) => row,
            Err((side, issue)) => {
                let name = if side == Side::P {
                    base_name
                } else {
                    other_name
                };
                let at = opts.row_offset + select[i] as usize;
                return Err(CoreError::Value(match issue {
                    RowIssue::NotFinite => format!(
                        "{name}: row {at} contains NaN or +inf; scores must be finite or -inf"
                    ),
                    RowIssue::Empty => {
                        format!("{name}: row {at} is all -inf: it gives no distribution")
                    }
                    RowIssue::Negative | RowIssue::BadSum(_) => {
                        format!("{name}: row {at} is not a distribution")
                    }
                }));
            }
        };
        out.kl.push(row.kl as f32);
        out.reverse_kl.push(row.reverse_kl as f32);
        out.js.push(row.js as f32);
        out.top1[0].push(row.top1[0] as i32);
        out.top1[1].push(row.top1[1] as i32);
        for (j, &k) in opts.topk.iter().enumerate() {
            let slot = sizes.binary_search(&k).expect("every size is listed");
            out.overlap[j].push(row.overlap[slot]);
        }
        out.nll[0].push(row.nll[0]);
        out.nll[1].push(row.nll[1]);
    }
    Ok(out)
}

fn validate(
    base: &Block<'_>,
    other: &Block<'_>,
    select: Option<&[u32]>,
    tokens: Option<&[i32]>,
    opts: &CompareOptions,
) -> Result<()> {
    let [base_name, other_name] = &opts.names;
    if !(opts.temperature > 0.0 && opts.temperature.is_finite()) {
        return Err(CoreError::Value(format!(
            "temperature must be a finite number > 0, got {}",
            opts.temperature
        )));
    }
    base.check(base_name)?;
    other.check(other_name)?;
    if matches!(other, Block::TopK { .. }) {
        return Err(CoreError::Value(format!(
            "{other_name}: a top-k dump can only be the base side of a comparison (the other \
             model's full distribution is needed on the base's top tokens)"
        )));
    }
    if base.vocab() != other.vocab() {
        return Err(CoreError::Shape(format!(
            "vocabulary sizes differ: {base_name} has {}, {other_name} has {}",
            base.vocab(),
            other.vocab()
        )));
    }
    if base.rows() != other.rows() {
        return Err(CoreError::Shape(format!(
            "row counts differ: {base_name} has {}, {other_name} has {}",
            base.rows(),
            other.rows()
        )));
    }
    if base.rows() > 0 && base.vocab() == 0 {
        return Err(CoreError::Shape("the vocabulary axis has length 0".into()));
    }
    let mut sizes = opts.topk.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.len() > MAX_TOPK_SIZES || sizes.first() == Some(&0) || sizes.last() > Some(&MAX_TOPK) {
        return Err(CoreError::Value(format!(
            "topk must list at most {MAX_TOPK_SIZES} sizes between 1 and {MAX_TOPK}, got {:?}",
            opts.topk
        )));
    }
    if let Block::TopK { k, .. } = *base {
        if opts.temperature != 1.0 {
            return Err(CoreError::Value(format!(
                "{base_name}: a top-k dump cannot be re-tempered; use temperature=1"
            )));
        }
        if let Some(&largest) = sizes.last() {
            if largest > k {
                return Err(CoreError::Value(format!(
                    "{base_name}: topk={largest} needs a dump of at least {largest} entries per \
                     row, it has {k}"
                )));
            }
        }
    }
    if let Some(select) = select {
        if let Some(&bad) = select.iter().find(|&&r| r as usize >= base.rows()) {
            return Err(CoreError::Value(format!(
                "selected row {bad} is past the block's {} rows",
                base.rows()
            )));
        }
    }
    if let Some(tokens) = tokens {
        if tokens.len() != base.rows() {
            return Err(CoreError::Shape(format!(
                "tokens: need one token id per row ({}), got {}",
                base.rows(),
                tokens.len()
            )));
        }
        let vocab = base.vocab() as i64;
        if let Some((i, &t)) = tokens.iter().enumerate().find(|(_, &t)| t as i64 >= vocab) {
            return Err(CoreError::Value(format!(
                "tokens: id {t} at row {} is outside the vocabulary of {vocab}",
                opts.row_offset + i
            )));
        }
    }
    Ok(())
}

/// The statistics of row `r`.
fn row_stats(
    base: &Block<'_>,
    other: &Block<'_>,
    r: usize,
    token: Option<usize>,
    opts: &CompareOptions,
    sizes: &[usize],
    scratch: &mut Scratch,
) -> std::result::Result<RowOut, (Side, RowIssue)> {
    let inv_t = (1.0 / opts.temperature) as f32;
    let v = base.vocab();
    let span = r * v..(r + 1) * v;
    if let Block::TopK { .. } = base {
        return top_k_row(base, other, r, token, sizes, scratch);
    }
    let wide = |b: &Block<'_>| matches!(b, Block::Dense(rows) if rows.dtype() == Dtype::F64);
    if wide(base) || wide(other) {
        return reference_row(base, other, r, token, opts, sizes, scratch);
    }
    let Scratch {
        p32,
        q32,
        exps,
        top,
        ..
    } = scratch;
    let fast = match (*base, *other) {
        (Block::Dense(Rows::F32(a, _)), Block::Dense(Rows::F32(b, _))) => {
            let next = Prefetch::row(a, b, v, r + 1);
            pair(
                &a[span.clone()],
                &b[span],
                next,
                inv_t,
                token,
                sizes,
                exps,
                top,
            )
        }
        (Block::Dense(Rows::F16(a, _)), Block::Dense(Rows::F16(b, _))) => {
            let next = Prefetch::row(a, b, v, r + 1);
            let (p, q) = (F16Row::new(&a[span.clone()]), F16Row::new(&b[span]));
            pair(p, q, next, inv_t, token, sizes, exps, top)
        }
        (Block::Dense(Rows::Bf16(a, _)), Block::Dense(Rows::Bf16(b, _))) => {
            let next = Prefetch::row(a, b, v, r + 1);
            let (p, q) = (Bf16Row(&a[span.clone()]), Bf16Row(&b[span]));
            pair(p, q, next, inv_t, token, sizes, exps, top)
        }
        _ => {
            widen(base, r, p32);
            widen(other, r, q32);
            pair(
                &p32[..],
                &q32[..],
                Prefetch::NONE,
                inv_t,
                token,
                sizes,
                exps,
                top,
            )
        }
    }?;
    let mut out = match fast {
        Some(out) => out,
        None => return reference_row(base, other, r, token, opts, sizes, scratch),
    };
    if let Block::Llamacpp { .. } = base {
        if opts.temperature == 1.0 {
            // The `_` arm above decoded the base row into p32 and widened
            // the other row into q32.
            out.kl = simd::dispatch(LlamacppKl {
                lpb: &scratch.p32,
                q: &scratch.q32,
                log_norm_q: out.log_norm_q,
            });
            if let Some(t) = token {
                out.nll[0] = -scratch.p32[t];
            }
        }
    }
    Ok(out)
}

/// llama.cpp's KL(base‖other): Σ over tokens whose decoded base log-prob
/// `lpb` exceeds −16 of e^lpb·(lpb − ln q), with the base as stored (not
/// renormalised). `ln q = x − log_norm_q` for the other row's scores x.
struct LlamacppKl<'a> {
    lpb: &'a [f32],
    q: &'a [f32],
    log_norm_q: f64,
}

impl Kernel for LlamacppKl<'_> {
    type Output = f64;

    #[inline(always)]
    fn run(self) -> f64 {
        let LlamacppKl { lpb, q, log_norm_q } = self;
        // log_norm_q (the other row's max + log-sum-exp, ~30–40 for LLM
        // logits) rounded to float32 is off by up to 2e-6, an error every
        // term shares; near-equal models have KL per token of ~1e-4, so that
        // alone cost 1e-2 relative. So it is split into a float32 head and a
        // small tail: x − b + head is exact where x − b and head are within
        // a factor of two (Sterbenz), and the tail adds its digits last.
        let head = log_norm_q as f32;
        let tail_lnq = (log_norm_q - head as f64) as f32;
        let n = lpb.len();
        let full = n - n % BLK;
        let mut totals = Totals::<1>::new();
        let mut terms = [0.0f32; BLK];
        let mut start = 0;
        while start < full {
            let a: &[f32; BLK] = lpb[start..start + BLK].try_into().expect("a whole block");
            let b: &[f32; BLK] = q[start..start + BLK].try_into().expect("a whole block");
            for i in 0..BLK {
                let x = a[i];
                let term = simd::exp(x.min(0.0)) * ((x - (b[i] - head)) + tail_lnq);
                terms[i] = simd::select(x > LLAMACPP_CUTOFF, term, 0.0);
            }
            totals.add(0, &terms);
            start += BLK;
        }
        let mut tail = 0.0f64;
        for i in start..n {
            let x = lpb[i] as f64;
            if lpb[i] > LLAMACPP_CUTOFF {
                tail += x.exp() * (x - (q[i] as f64 - log_norm_q));
            }
        }
        totals.finish()[0] + tail
    }
}

/// Row `r` of a dense or llama.cpp block as float32 scores.
fn widen(block: &Block<'_>, r: usize, out: &mut Vec<f32>) {
    out.clear();
    match *block {
        Block::Dense(rows) => {
            let v = rows.vocab();
            let span = r * v..(r + 1) * v;
            match rows {
                Rows::F32(d, _) => out.extend_from_slice(&d[span]),
                Rows::F16(d, _) => out.extend(d[span].iter().map(|&x| crate::rows::f16_to_f32(x))),
                Rows::Bf16(d, _) => {
                    out.extend(d[span].iter().map(|&x| crate::rows::bf16_to_f32(x)))
                }
                Rows::F64(..) => unreachable!("float64 rows take the reference path"),
            }
        }
        Block::Llamacpp { data, vocab } => {
            let len = llamacpp::row_len(vocab);
            out.resize(vocab, 0.0);
            llamacpp::decode_row(&data[r * len..(r + 1) * len], out);
        }
        Block::TopK { .. } => unreachable!("top-k rows are not widened"),
    }
}

/// The fused kernel over one row pair of scores `p` (base) and `q` (other).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pair<P: Load, Q: Load>(
    p: P,
    q: Q,
    next: Prefetch,
    inv_t: f32,
    token: Option<usize>,
    sizes: &[usize],
    exps: &mut Vec<f32>,
    top: &mut [Vec<(f32, u32)>; 2],
) -> std::result::Result<Option<RowOut>, (Side, RowIssue)> {
    simd::dispatch(PairKernel {
        p,
        q,
        next,
        inv_t,
        token,
        sizes,
        exps,
        top,
    })
}

struct PairKernel<'w, P, Q> {
    p: P,
    q: Q,
    next: Prefetch,
    inv_t: f32,
    token: Option<usize>,
    sizes: &'w [usize],
    exps: &'w mut Vec<f32>,
    top: &'w mut [Vec<(f32, u32)>; 2],
}

/// Sums of the second pass.
const SP: usize = 0;
const SQ: usize = 1;
const KL_U: usize = 2;
const KL_REM: usize = 3;
const RKL_U: usize = 4;
const RKL_REM: usize = 5;
const JS: usize = 6;

impl<P: Load, Q: Load> Kernel for PairKernel<'_, P, Q> {
    type Output = std::result::Result<Option<RowOut>, (Side, RowIssue)>;

    #[inline(always)]
    fn run(self) -> Self::Output {
        let PairKernel {
            p,
            q,
            next,
            inv_t,
            token,
            sizes,
            exps,
            top,
        } = self;
        let s = scan(p, q, next);
        check_scan(&s, true)?;
        if s.p_outside_q || s.q_outside_p {
            // Infinite divergences: the reference states them exactly.
            return Ok(None);
        }
        let top_p = first_index_of(p, s.max_p);
        let top_q = first_index_of(q, s.max_q);
        let Some(sums) = two_passes(p, q, &s, top_p, inv_t, exps) else {
            return Ok(None);
        };
        let (ln_sp, ln_sq) = (sums.sp.ln(), sums.sq.ln());
        let mut overlap = [0.0f32; MAX_TOPK_SIZES];
        if let Some(&largest) = sizes.last() {
            if largest > 1 {
                let [tp, tq] = top;
                top_entries(p, largest, tp);
                top_entries(q, largest, tq);
            }
            for (j, &k) in sizes.iter().enumerate() {
                overlap[j] = if k == 1 {
                    (top_p == top_q) as u32 as f32
                } else {
                    overlap_of(&top[0], &top[1], k)
                };
            }
        }
        let nll = match token {
            Some(t) => [
                (ln_sp - ((p.get(t) - s.max_p) * inv_t) as f64) as f32,
                (ln_sq - ((q.get(t) - s.max_q) * inv_t) as f64) as f32,
            ],
            None => [f32::NAN; 2],
        };
        Ok(Some(RowOut {
            kl: sums.kl,
            reverse_kl: sums.reverse_kl,
            js: sums.js,
            top1: [top_p as u32, top_q as u32],
            overlap,
            nll,
            log_norm_q: (s.max_q * inv_t) as f64 + ln_sq,
        }))
    }
}

/// What the two passes give.
struct PassSums {
    sp: f64,
    sq: f64,
    kl: f64,
    reverse_kl: f64,
    js: f64,
}

/// Pass 1 stores the exponentials w = e^a, v = e^b of the shifted scores
/// (in L2, reused by pass 2) and sums them. Pass 2 evaluates KL, reverse KL
/// and JS in the cancellation-free forms of [`super::fast`]:
/// KL = E_P[u] + ln(1 + E_P[e^(−u) − 1 + u] − E_P[u]) with u = ln(P/Q)
/// shifted to 0 at P's argmax, the bracket summed from a series for small
/// u; reverse KL alike; JS = Σ (P+Q)·g(δ)/4.
#[inline(always)]
fn two_passes<P: Load, Q: Load>(
    p: P,
    q: Q,
    s: &Scan,
    top_p: usize,
    inv_t: f32,
    work: &mut Vec<f32>,
) -> Option<PassSums> {
    // One u = a − b + shift serves both directions: KL(Q‖P) takes
    // u' = −u (the forms hold for any constant shift; this one makes u = 0
    // at P's argmax, and near 0 wherever either model has mass when the
    // two are close).
    let shift = (q.get(top_p) - s.max_q) * inv_t; // b at P's argmax (≤ 0)
    let (k, k_r) = (simd::exp(-shift), simd::exp(shift));
    if !(k.is_finite() && k_r > 0.0) {
        return None;
    }
    let (sp, sq) = store_exps(p, q, s, inv_t, work);
    let padded = p.len().div_ceil(BLK) * BLK;
    let (inv_sp, inv_sq) = ((1.0 / sp) as f32, (1.0 / sq) as f32);

    let mut sums = Totals::<7>::new();
    let mut blocks = Blocks::new(p, q, s, s.max_p, s.max_q, inv_t);
    let (mut a, mut b) = ([0.0; BLK], [0.0; BLK]);
    let (mut wu, mut rem, mut vu, mut rem_r, mut js) =
        ([0.0; BLK], [0.0; BLK], [0.0; BLK], [0.0; BLK], [0.0; BLK]);
    let mut far = [0.0f32; BLK];
    let mut start = 0;
    while blocks.next(&mut a, &mut b) {
        let (ws, vs) = stored_block(work, padded, start);
        for i in 0..BLK {
            let (w, v) = (ws[i], vs[i]);
            // h(±u) = e^(∓u) − 1 ± u = E ∓ O from the even and odd parts
            // of one series: KL(P‖Q) sums w·h(u), KL(Q‖P) sums v·h(−u).
            let u = a[i] - b[i] + shift;
            let (even, odd) = exp_remainder_parts(u);
            let series = u.abs() <= SERIES_LIMIT;
            // KL(P‖Q): w·e^(−u) = v·k.
            let w_u = w * u;
            let large = v * k - w + w_u;
            wu[i] = simd::select(w > 0.0, w_u, 0.0);
            rem[i] = simd::select(
                w > 0.0,
                simd::select(series, w * (even - odd), large),
                v * k,
            );
            // KL(Q‖P) with u' = −u: v·e^(u) = w·k_r.
            let v_u = -(v * u);
            let large_r = w * k_r - v + v_u;
            vu[i] = simd::select(v > 0.0, v_u, 0.0);
            rem_r[i] = simd::select(
                v > 0.0,
                simd::select(series, v * (even + odd), large_r),
                w * k_r,
            );
            // JS: (P+Q)·g(δ), δ = (P−Q)/(P+Q); the series covers |δ| < 1/4.
            let (pp, qq) = (w * inv_sp, v * inv_sq);
            let sum = pp + qq;
            let delta = (pp - qq) / sum;
            js[i] = simd::select(sum > 0.0, sum * js_series_wide(delta), 0.0);
            far[i] = simd::select(delta.abs() < JS_WIDE_LIMIT, 0.0, 1.0);
        }
        let mut lanes = [0.0f32; LANES];
        for g in 0..BLOCK {
            for i in 0..LANES {
                lanes[i] += far[g * LANES + i];
            }
        }
        if lanes.iter().any(|&f| f > 0.0) {
            for i in 0..BLK {
                let (pp, qq) = (ws[i] * inv_sp, vs[i] * inv_sq);
                let sum = pp + qq;
                let delta = (pp - qq) / sum;
                let g = simd::select(
                    delta.abs() < JS_WIDE_LIMIT,
                    js_series_wide(delta),
                    js_core(delta),
                );
                js[i] = simd::select(sum > 0.0, sum * g, 0.0);
            }
        }
        sums.add(SP, ws);
        sums.add(SQ, vs);
        sums.add(KL_U, &wu);
        sums.add(KL_REM, &rem);
        sums.add(RKL_U, &vu);
        sums.add(RKL_REM, &rem_r);
        sums.add(JS, &js);
        start += BLK;
    }
    let t = sums.finish();
    let kl = log_ratio_mean(t[KL_U], t[KL_REM], t[SP])?;
    let reverse_kl = log_ratio_mean(t[RKL_U], t[RKL_REM], t[SQ])?;
    let js = (t[JS] / 4.0).clamp(0.0, std::f64::consts::LN_2);
    Some(PassSums {
        sp,
        sq,
        kl,
        reverse_kl,
        js,
    })
}

/// Where [`js_series_wide`] gives g(δ): quantised or fine-tuned models
/// rarely move a token's log-ratio by more than ln 3 (|δ| = 1/2), so
/// blocks needing the logarithms stay rare.
const JS_WIDE_LIMIT: f32 = 0.5;

/// g(δ) = (1+δ)ln(1+δ) + (1−δ)ln(1−δ) = Σ_{k≥1} δ^(2k) / (k(2k−1)) for
/// |δ| < [`JS_WIDE_LIMIT`]: δ² times a degree-5 minimax polynomial in δ²
/// (relative error below 2e-7 in float32; the series needs ten terms for
/// the same).
#[inline(always)]
fn js_series_wide(delta: f32) -> f32 {
    let d2 = delta * delta;
    let mut p = 2.762_525_7e-2f32;
    p = p.mul_add(d2, 1.823_735_2e-2);
    p = p.mul_add(d2, 3.626_623e-2);
    p = p.mul_add(d2, 6.663_290_4e-2);
    p = p.mul_add(d2, 1.666_674_2e-1);
    p = p.mul_add(d2, 1.0);
    p * d2
}

/// The even and odd parts (E, O) of h(u) = e^(−u) − 1 + u = E − O for
/// |u| ≤ [`SERIES_LIMIT`]: E = Σ u^(2j)/(2j)! and O = Σ u^(2j+1)/(2j+1)!
/// (j ≥ 1), so h(−u) = E + O comes at no extra cost. Each is u² (u³)
/// times a degree-3 minimax polynomial in u²: relative error in float32
/// below 3e-7, as with the five-term series, for one multiply-add less.
#[inline(always)]
fn exp_remainder_parts(u: f32) -> (f32, f32) {
    let u2 = u * u;
    let mut e = 2.535_587_6e-5f32;
    e = e.mul_add(u2, 1.388_543_6e-3);
    e = e.mul_add(u2, 4.166_673_5e-2);
    e = e.mul_add(u2, 0.5);
    let mut o = 2.806_141_8e-6f32;
    o = o.mul_add(u2, 1.983_812_3e-4);
    o = o.mul_add(u2, 8.333_339e-3);
    o = o.mul_add(u2, 1.666_666_7e-1);
    (e * u2, o * u2 * u)
}

/// KL = E[u] + ln(1 + E[e^(−u) − 1]) from Σw·u, Σw·(e^(−u) − 1 + u) and Σw.
#[inline(always)]
fn log_ratio_mean(su: f64, sr: f64, sw: f64) -> Option<f64> {
    let mean_u = su / sw;
    let excess = (sr - su) / sw;
    if !(excess.is_finite() && excess > -0.5) {
        return None;
    }
    let value = mean_u + excess.ln_1p();
    value.is_finite().then_some(value.max(0.0))
}

/// The `k` largest entries of a row as (value, index), largest first, ties
/// broken by the lower index. A lane group is inspected element by element
/// only when one of its values beats the current k-th largest.
#[inline(always)]
fn top_entries<L: Load>(row: L, k: usize, out: &mut Vec<(f32, u32)>) {
    out.clear();
    let n = row.len();
    let k = k.min(n);
    let mut threshold = f32::NEG_INFINITY;
    let full = n - n % LANES;
    let mut start = 0;
    while start < full {
        let v = row.full_group(start);
        let mut hit = false;
        for i in 0..LANES {
            hit |= v[i] > threshold;
        }
        if hit || out.len() < k {
            for i in 0..LANES {
                insert_top(out, k, v[i], (start + i) as u32, &mut threshold);
            }
        }
        start += LANES;
    }
    for i in start..n {
        insert_top(out, k, row.get(i), i as u32, &mut threshold);
    }
}

#[inline(always)]
fn insert_top(out: &mut Vec<(f32, u32)>, k: usize, value: f32, index: u32, threshold: &mut f32) {
    if out.len() == k && value <= *threshold {
        return;
    }
    // After every entry ≥ value: equal values keep index order.
    let at = out.partition_point(|&(x, _)| x >= value);
    if out.len() == k {
        out.pop();
    }
    out.insert(at, (value, index));
    if out.len() == k {
        *threshold = out[k - 1].0;
    }
}

/// |top-k(a) ∩ top-k(b)| / k for prefix lists sorted best first.
fn overlap_of(a: &[(f32, u32)], b: &[(f32, u32)], k: usize) -> f32 {
    let k_a = k.min(a.len());
    let k_b = k.min(b.len());
    let mut x: Vec<u32> = a[..k_a].iter().map(|e| e.1).collect();
    let mut y: Vec<u32> = b[..k_b].iter().map(|e| e.1).collect();
    x.sort_unstable();
    y.sort_unstable();
    let (mut i, mut j, mut common) = (0, 0, 0usize);
    while i < x.len() && j < y.len() {
        match x[i].cmp(&y[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    common as f32 / k_a.max(1) as f32
}

/// The float64 path: float64 inputs, and rows whose values leave the
/// float32 kernels' range.
fn reference_row(
    base: &Block<'_>,
    other: &Block<'_>,
    r: usize,
    token: Option<usize>,
    opts: &CompareOptions,
    sizes: &[usize],
    scratch: &mut Scratch,
) -> std::result::Result<RowOut, (Side, RowIssue)> {
    let Scratch { p64, q64, p32, .. } = scratch;
    row_f64(base, r, p64, p32);
    row_f64(other, r, q64, p32);
    let opts_of = |kind| Options {
        kind,
        inputs: Inputs::Logits,
        temperature: opts.temperature,
    };
    let tol = (0.0, 0.0);
    let kl = reference::row(p64, Some(q64), &opts_of(Kind::Kl), tol)?;
    let reverse_kl = reference::row(p64, Some(q64), &opts_of(Kind::ReverseKl), tol)?;
    let js = reference::row(p64, Some(q64), &opts_of(Kind::Js), tol)?;
    let lp = reference::log_softmax(p64, Inputs::Logits, opts.temperature, 0.0)
        .map_err(|e| (Side::P, e))?;
    let lq = reference::log_softmax(q64, Inputs::Logits, opts.temperature, 0.0)
        .map_err(|e| (Side::Q, e))?;
    let ranked = |x: &[f64]| {
        let mut order: Vec<u32> = (0..x.len() as u32).collect();
        // Stable: ties keep the lower index first.
        order.sort_by(|&i, &j| x[j as usize].total_cmp(&x[i as usize]));
        order
    };
    let (rp, rq) = (ranked(&lp), ranked(&lq));
    let as_entries =
        |order: &[u32]| -> Vec<(f32, u32)> { order.iter().map(|&i| (0.0, i)).collect() };
    let (ep, eq) = (as_entries(&rp), as_entries(&rq));
    let mut overlap = [0.0f32; MAX_TOPK_SIZES];
    for (j, &k) in sizes.iter().enumerate() {
        overlap[j] = overlap_of(&ep, &eq, k);
    }
    let max_q = q64.iter().cloned().fold(f64::NEG_INFINITY, f64::max) / opts.temperature;
    let log_norm_q = q64[rq[0] as usize] / opts.temperature - lq[rq[0] as usize];
    debug_assert!(max_q.is_finite());
    let mut out = RowOut {
        kl,
        reverse_kl,
        js,
        log_norm_q,
        top1: [rp[0], rq[0]],
        overlap,
        nll: match token {
            Some(t) => [-lp[t] as f32, -lq[t] as f32],
            None => [f32::NAN; 2],
        },
    };
    if let Block::Llamacpp { .. } = base {
        if opts.temperature == 1.0 {
            let (lpb, q): (Vec<f32>, Vec<f32>) = p64
                .iter()
                .zip(q64.iter())
                .map(|(&a, &b)| (a as f32, b as f32))
                .unzip();
            out.kl = LlamacppKl {
                lpb: &lpb,
                q: &q,
                log_norm_q: out.log_norm_q,
            }
            .run();
            if let Some(t) = token {
                out.nll[0] = -lpb[t];
            }
        }
    }
    Ok(out)
}

/// Row `r` of a dense or llama.cpp block as float64.
fn row_f64(block: &Block<'_>, r: usize, out: &mut Vec<f64>, tmp: &mut Vec<f32>) {
    match *block {
        Block::Dense(rows) => rows.row_f64(r, out),
        _ => {
            widen(block, r, tmp);
            out.clear();
            out.extend(tmp.iter().map(|&x| x as f64));
        }
    }
}

/// A row whose base is a top-k dump: both distributions coarsened onto the
/// base's k tokens plus one bucket for the rest.
fn top_k_row(
    base: &Block<'_>,
    other: &Block<'_>,
    r: usize,
    token: Option<usize>,
    sizes: &[usize],
    scratch: &mut Scratch,
) -> std::result::Result<RowOut, (Side, RowIssue)> {
    let Block::TopK {
        indices,
        logprobs,
        rest,
        k,
        ..
    } = *base
    else {
        unreachable!("called for top-k bases only")
    };
    let (idx, lp) = (&indices[r * k..(r + 1) * k], &logprobs[r * k..(r + 1) * k]);
    let Scratch {
        q32,
        p64,
        q64,
        listed,
        ..
    } = scratch;
    widen(other, r, q32);
    if q32.iter().any(|x| x.is_nan() || *x == f32::INFINITY) {
        return Err((Side::Q, RowIssue::NotFinite));
    }
    let lq = log_softmax_f64(q32);
    let Some(lq) = lq else {
        return Err((Side::Q, RowIssue::Empty));
    };
    // Buckets: the k listed tokens, then the rest.
    p64.clear();
    q64.clear();
    listed.clear();
    listed.resize(q32.len(), false);
    let mut listed_p = 0.0f64;
    for (&i, &l) in idx.iter().zip(lp) {
        p64.push(l as f64);
        q64.push(lq.at(q32[i as usize]));
        listed[i as usize] = true;
        listed_p += (l as f64).exp();
    }
    // The other model's rest is summed over the tokens the row leaves out,
    // not taken as 1 − Σ listed: that difference cancels to a few ulps
    // where the list covers (nearly) everything, and a rest of 1e-16 against
    // the base's 0 made reverse KL +inf.
    let rest_q: f64 = q32
        .iter()
        .zip(listed.iter())
        .filter(|(_, &l)| !l)
        .map(|(&x, _)| lq.at(x).exp())
        .sum();
    let complete = listed.iter().all(|&l| l);
    // A list of every token leaves nothing for the rest, whatever rounding
    // the dump's stored rest holds.
    let rest_p = match rest {
        _ if complete => 0.0,
        Some(rest) => (rest[r] as f64).exp(),
        None => (1.0 - listed_p).max(0.0),
    };
    p64.push(rest_p.ln());
    q64.push(rest_q.ln());
    let opts_of = |kind| Options {
        kind,
        inputs: Inputs::LogProbs,
        temperature: 1.0,
    };
    let tol = (0.0, 0.0);
    let kl = reference::row(p64, Some(q64), &opts_of(Kind::Kl), tol)?;
    let reverse_kl = reference::row(p64, Some(q64), &opts_of(Kind::ReverseKl), tol)?;
    let js = reference::row(p64, Some(q64), &opts_of(Kind::Js), tol)?;
    // The base's ranking: by log-prob, ties by token id.
    let mut order: Vec<(f32, u32)> = idx.iter().zip(lp).map(|(&i, &l)| (l, i as u32)).collect();
    order.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let top = &mut scratch.top[1];
    let largest = sizes.last().copied().unwrap_or(1).max(1);
    top_entries(&scratch.q32[..], largest, top);
    let mut overlap = [0.0f32; MAX_TOPK_SIZES];
    for (j, &kk) in sizes.iter().enumerate() {
        overlap[j] = overlap_of(&order, top, kk);
    }
    let top_q = top[0].1;
    let nll = match token {
        Some(t) => [
            idx.iter()
                .position(|&i| i as usize == t)
                .map_or(f32::NAN, |j| -lp[j]),
            -(lq.at(scratch.q32[t]) as f32),
        ],
        None => [f32::NAN; 2],
    };
    Ok(RowOut {
        kl,
        reverse_kl,
        js,
        log_norm_q: lq.max + lq.lse,
        top1: [order[0].1, top_q],
        overlap,
        nll,
    })
}

/// max and ln Σ e^(x − max) of a float32 row, in float64.
struct LogSoftmax {
    max: f64,
    lse: f64,
}

impl LogSoftmax {
    fn at(&self, x: f32) -> f64 {
        x as f64 - self.max - self.lse
    }
}

fn log_softmax_f64(x: &[f32]) -> Option<LogSoftmax> {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    if max == f64::NEG_INFINITY {
        return None;
    }
    let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
    Some(LogSoftmax { max, lse: sum.ln() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * (i as f32 / n as f32))
    }

    #[test]
    fn js_series_is_within_two_tenths_of_a_millionth() {
        for d in sweep(-JS_WIDE_LIMIT, JS_WIDE_LIMIT, 200_000) {
            let x = d as f64;
            let want = if x.abs() < 1e-3 {
                (1..=6)
                    .map(|k| x.powi(2 * k) / (k * (2 * k - 1)) as f64)
                    .sum::<f64>()
            } else {
                (1.0 + x) * x.ln_1p() + (1.0 - x) * (-x).ln_1p()
            };
            let got = js_series_wide(d) as f64;
            assert!(
                (got - want).abs() <= 2e-7 * want || want == 0.0 && got == 0.0,
                "g({d}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn remainder_parts_are_within_three_tenths_of_a_millionth() {
        for u in sweep(-SERIES_LIMIT, SERIES_LIMIT, 200_000) {
            let x = u as f64;
            let even: f64 = (1..=8)
                .map(|j| x.powi(2 * j) / (1..=2 * j).map(f64::from).product::<f64>())
                .sum();
            let odd: f64 = (1..=8)
                .map(|j| x.powi(2 * j + 1) / (1..=2 * j + 1).map(f64::from).product::<f64>())
                .sum();
            let (e, o) = exp_remainder_parts(u);
            assert!(
                (e as f64 - even).abs() <= 3e-7 * even,
                "E({u}) = {e}, want {even}"
            );
            assert!(
                (o as f64 - odd).abs() <= 3e-7 * odd.abs(),
                "O({u}) = {o}, want {odd}"
            );
        }
    }

    /// llama.cpp's KL of near-equal rows whose other-model logits sit near
    /// 30 (as LLM logits do), against the same sum in float64 from the same
    /// float32 inputs: the normaliser's float32 rounding used to leave ~1e-2.
    #[test]
    fn llamacpp_kl_keeps_its_digits_with_large_logits() {
        let vocab = 3 * BLK + 5; // whole blocks and a tail
        let mut state = 7u64;
        let mut noise = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f64 / (1u64 << 24) as f64) - 0.5
        };
        let base: Vec<f64> = (0..vocab)
            .map(|i| 28.0 + 4.0 * noise() - (i % 13) as f64)
            .collect();
        let other: Vec<f32> = base.iter().map(|&x| (x + 0.01 * noise()) as f32).collect();
        let norm = |v: &mut dyn Iterator<Item = f64>| {
            let v: Vec<f64> = v.collect();
            let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
        };
        let log_norm_p = norm(&mut base.iter().cloned());
        let lpb: Vec<f32> = base.iter().map(|&x| (x - log_norm_p) as f32).collect();
        let log_norm_q = norm(&mut other.iter().map(|&x| x as f64));
        let want: f64 = lpb
            .iter()
            .zip(&other)
            .filter(|(&a, _)| a > LLAMACPP_CUTOFF)
            .map(|(&a, &b)| (a as f64).exp() * (a as f64 - (b as f64 - log_norm_q)))
            .sum();
        let got = simd::dispatch(LlamacppKl {
            lpb: &lpb,
            q: &other,
            log_norm_q,
        });
        assert!(
            want > 0.0 && want < 1e-3,
            "test rows should be near-equal: {want}"
        );
        assert!((got - want).abs() <= 1e-5 * want, "got {got}, want {want}");
    }
}
