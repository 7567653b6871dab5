// Divergence row kernels: one workgroup per row pair.
//
// Each entry point takes a scan pass (maxima, NaN/+inf and support flags,
// and for probabilities their sums), then the passes of exponentials the
// CPU kernels take (rust/core/src/diverge/{fast,kinds}.rs), evaluating the
// same cancellation-free forms with the same float32 elementwise functions
// (math32.wgsl: ports of rust/core/src/simd.rs, so that every adapter computes alike).
// Each invocation keeps compensated (Kahan) float32 sums; the workgroup
// merges them as double-float pairs, and the host finishes each row in
// float64 from those sums (quantdrift_core::diverge::finish).
//
// Output: SLOTS floats per row:
//   0 flags (bits, see FLAG_*)   1 max_p   2 max_q   3 shift (KL)
//   4, 5 Σ p as probabilities (hi, lo)    6, 7 Σ q (hi, lo)
//   8..11 the kind's sums (hi)            12..15 the same sums (lo)

struct Params {
    rows: u32,     // rows in this chunk
    vocab: u32,
    p_dtype: u32,  // 0 float32, 1 float16, 2 bfloat16
    q_dtype: u32,
    p_offset: u32, // element index of the chunk's first p element in `pdata`
    q_offset: u32,
    probs: u32,    // 1: rows are probabilities, scored as ln(x)
    _pad0: u32,
    inv_t: f32,    // 1 / temperature
    alpha: f32,    // Rényi order (float32, as the CPU kernels use it)
    beta: f32,     // 1 − alpha
    // 1, 1.5·2^23 and 1.5·2^23 again, read at run time: shader compilers
    // treat float arithmetic as associative unless told otherwise, which
    // WGSL cannot say, and would fold (x + c) − c to x, undoing the
    // rounding and error-compensation steps below. Values they cannot see
    // keep those steps as written.
    one: f32,
    magic_a: f32,
    magic_b: f32,
    reach: f32,          // |y| up to which the Rényi bracket takes its series
    small_alpha: u32,    // 1: the Rényi bracket's direct form is the one with α (α ≤ ½)
    renyi_series: array<vec4<f32>, 3>, // (β^k − β)/k!, k = 2..13 (kinds.rs)
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> pdata: array<u32>;
@group(0) @binding(2) var<storage, read> qdata: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const SLOTS: u32 = 16u;
const FLAG_P_BAD: u32 = 1u;
const FLAG_Q_BAD: u32 = 2u;
const FLAG_P_OUTSIDE_Q: u32 = 4u;
const FLAG_Q_OUTSIDE_P: u32 = 8u;
// A finite score whose shifted score (x − max)·inv_t overflows to −inf, which
// the kernels would read as probability 0 (the host takes such rows to the
// float64 reference, as the CPU does: fast.rs, shift_overflows).
const FLAG_P_SHIFT_OVERFLOW: u32 = 16u;
const FLAG_Q_SHIFT_OVERFLOW: u32 = 32u;

// ---------------------------------------------------------------------------
// Series of the divergence kinds (e^x, ln x and special values: math32.wgsl).
// ---------------------------------------------------------------------------

// e^(−u) − 1 + u for |u| ≤ 1 from its Taylor series (kinds.rs).
fn exp_neg_remainder(u: f32) -> f32 {
    var p = 1.0 / 39916800.0;
    p = fma(p, -u, 1.0 / 3628800.0);
    p = fma(p, -u, 1.0 / 362880.0);
    p = fma(p, -u, 1.0 / 40320.0);
    p = fma(p, -u, 1.0 / 5040.0);
    p = fma(p, -u, 1.0 / 720.0);
    p = fma(p, -u, 1.0 / 120.0);
    p = fma(p, -u, 1.0 / 24.0);
    p = fma(p, -u, 1.0 / 6.0);
    p = fma(p, -u, 0.5);
    return p * u * u;
}

// g(δ) = (1+δ)ln(1+δ) + (1−δ)ln(1−δ), a series for |δ| < 1/4 (kinds.rs).
fn js_core(delta: f32) -> f32 {
    let d2 = delta * delta;
    var p = 1.0 / 91.0;
    p = fma(p, d2, 1.0 / 66.0);
    p = fma(p, d2, 1.0 / 45.0);
    p = fma(p, d2, 1.0 / 28.0);
    p = fma(p, d2, 1.0 / 15.0);
    p = fma(p, d2, 1.0 / 6.0);
    p = fma(p, d2, 1.0);
    let series = p * d2;
    let plus = 1.0 + delta;
    let minus = 1.0 - delta;
    let t_plus = select(plus * qd_ln_1p(delta), 0.0, plus == 0.0);
    let t_minus = select(minus * qd_ln_1p(-delta), 0.0, minus == 0.0);
    return select(t_plus + t_minus, series, abs(delta) < 0.25);
}

// ---------------------------------------------------------------------------
// Loads: element `i` of the chunk (row · vocab + column), widened.
// ---------------------------------------------------------------------------

fn raw_p(i: u32) -> f32 {
    let j = i + params.p_offset;
    if params.p_dtype == 0u {
        return bitcast<f32>(pdata[j]);
    }
    let pair = pdata[j >> 1u];
    let hi = (j & 1u) == 1u;
    if params.p_dtype == 1u {
        return f16_to_f32(pair, hi);
    }
    return bf16_to_f32(pair, hi);
}

fn raw_q(i: u32) -> f32 {
    let j = i + params.q_offset;
    if params.q_dtype == 0u {
        return bitcast<f32>(qdata[j]);
    }
    let pair = qdata[j >> 1u];
    let hi = (j & 1u) == 1u;
    if params.q_dtype == 1u {
        return f16_to_f32(pair, hi);
    }
    return bf16_to_f32(pair, hi);
}

// The score of an element: the value itself, or ln of a probability.
fn score(raw: f32) -> f32 {
    if params.probs == 1u {
        return qd_ln(raw);
    }
    return raw;
}

// ---------------------------------------------------------------------------
// Compensated sums: Kahan per invocation, double-float across the workgroup.
// ---------------------------------------------------------------------------

struct Acc {
    sum: vec4<f32>,
    comp: vec4<f32>, // what the running sum has lost, negated
}

fn acc_new() -> Acc {
    return Acc(vec4<f32>(0.0), vec4<f32>(0.0));
}

fn acc_add(acc: ptr<function, Acc>, x: vec4<f32>) {
    let y = x - (*acc).comp;
    let t = ((*acc).sum + y) * params.one;
    // An infinite sum stays infinite (inf − inf would turn it into NaN).
    let comp = (t - (*acc).sum) - y;
    (*acc).comp = select(vec4<f32>(0.0), comp, abs(t) < vec4<f32>(3.4e38));
    (*acc).sum = t;
}

var<workgroup> red_hi: array<vec4<f32>, 256>;
var<workgroup> red_lo: array<vec4<f32>, 256>;
var<workgroup> red_out: array<vec4<f32>, 2>;

// (a_hi + a_lo) + (b_hi + b_lo) as a double-float pair (Knuth's two-sum).
fn pair_add(a_hi: vec4<f32>, a_lo: vec4<f32>, b_hi: vec4<f32>, b_lo: vec4<f32>) -> array<vec4<f32>, 2> {
    let one = params.one;
    let s = (a_hi + b_hi) * one;
    let bb = (s - a_hi) * one;
    var e = (a_hi - (s - bb)) + (b_hi - bb);
    e += a_lo + b_lo;
    let hi = (s + e) * one;
    let lo = e - (hi - s);
    return array<vec4<f32>, 2>(hi, lo);
}

// The workgroup's total of every invocation's sums, as (hi, lo); uniform.
fn wg_total(acc: Acc, lid: u32) -> array<vec4<f32>, 2> {
    // Guard against non-finite sums: the compensation would turn inf into NaN.
    red_hi[lid] = acc.sum;
    red_lo[lid] = select(vec4<f32>(0.0), -acc.comp, abs(acc.sum) < vec4<f32>(3.4e38));
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            let a_hi = red_hi[lid];
            let b_hi = red_hi[lid + stride];
            let sum = pair_add(a_hi, red_lo[lid], b_hi, red_lo[lid + stride]);
            let ok = abs(sum[0]) < vec4<f32>(3.4e38);
            red_hi[lid] = select(a_hi + b_hi, sum[0], ok);
            red_lo[lid] = select(vec4<f32>(0.0), sum[1], ok);
        }
        workgroupBarrier();
    }
    if lid == 0u {
        red_out[0] = red_hi[0];
        red_out[1] = red_lo[0];
    }
    return workgroupUniformLoad(&red_out);
}

// Double-float pair as one float32.
fn collapse(hi: f32, lo: f32) -> f32 {
    return hi + lo;
}

// ---------------------------------------------------------------------------
// The scan pass.
// ---------------------------------------------------------------------------

var<workgroup> flags_shared: atomic<u32>;
var<workgroup> index_shared: atomic<u32>;
var<workgroup> flags_plain: u32;
var<workgroup> index_plain: u32;

struct Scan {
    max_p: f32,
    max_q: f32,
    flags: u32,
    sums: array<vec4<f32>, 2>, // (Σp, Σq) as probabilities, hi and lo
}

fn scan_row(base: u32, lid: u32) -> Scan {
    if lid == 0u {
        atomicStore(&flags_shared, 0u);
    }
    var max_p = neg_inf();
    var max_q = neg_inf();
    var min_p = pos_inf(); // the smallest finite score of each side
    var min_q = pos_inf();
    var flags = 0u;
    var sums = acc_new();
    for (var i = lid; i < params.vocab; i += WG) {
        let rp = raw_p(base + i);
        let rq = raw_q(base + i);
        let x = score(rp);
        let y = score(rq);
        let x_bad = is_nan(x) || is_pos_inf(x);
        let y_bad = is_nan(y) || is_pos_inf(y);
        if x_bad {
            flags |= FLAG_P_BAD;
        } else {
            max_p = max(max_p, x);
            if !is_neg_inf(x) {
                min_p = min(min_p, x);
            }
        }
        if y_bad {
            flags |= FLAG_Q_BAD;
        } else {
            max_q = max(max_q, y);
            if !is_neg_inf(y) {
                min_q = min(min_q, y);
            }
        }
        if !is_neg_inf(x) && is_neg_inf(y) {
            flags |= FLAG_P_OUTSIDE_Q;
        }
        if !is_neg_inf(y) && is_neg_inf(x) {
            flags |= FLAG_Q_OUTSIDE_P;
        }
        if params.probs == 1u {
            acc_add(&sums, vec4<f32>(rp, rq, 0.0, 0.0));
        }
    }
    workgroupBarrier();
    if flags != 0u {
        atomicOr(&flags_shared, flags);
    }
    var s: Scan;
    s.max_p = wg_max(max_p, lid);
    s.max_q = wg_max(max_q, lid);
    let low_p = wg_min(min_p, lid);
    let low_q = wg_min(min_q, lid);
    s.sums = wg_total(sums, lid);
    if lid == 0u {
        var all = atomicLoad(&flags_shared);
        // The shifted score is monotone in x: the smallest finite one decides.
        if !is_pos_inf(low_p) && is_neg_inf((low_p - s.max_p) * params.inv_t) {
            all |= FLAG_P_SHIFT_OVERFLOW;
        }
        if !is_pos_inf(low_q) && is_neg_inf((low_q - s.max_q) * params.inv_t) {
            all |= FLAG_Q_SHIFT_OVERFLOW;
        }
        flags_plain = all;
    }
    s.flags = workgroupUniformLoad(&flags_plain);
    return s;
}

// Writes the scan's results; the kind's sums follow in slots 8..15.
fn write_scan(row: u32, s: Scan, shift: f32, lid: u32) {
    if lid == 0u {
        let o = row * SLOTS;
        out[o] = bitcast<f32>(s.flags);
        out[o + 1u] = s.max_p;
        out[o + 2u] = s.max_q;
        out[o + 3u] = shift;
        out[o + 4u] = s.sums[0].x;
        out[o + 5u] = s.sums[1].x;
        out[o + 6u] = s.sums[0].y;
        out[o + 7u] = s.sums[1].y;
    }
}

fn write_sums(row: u32, total: array<vec4<f32>, 2>, lid: u32) {
    if lid == 0u {
        let o = row * SLOTS + 8u;
        for (var k = 0u; k < 4u; k++) {
            out[o + k] = total[0][k];
            out[o + 4u + k] = total[1][k];
        }
    }
}

// Whether the scan ends the row: NaN/+inf, an empty side, or (when
// `inf_outside`) Q = 0 where P > 0, which the host turns into +inf.
fn scan_ends_row(s: Scan, needs_q: bool, inf_outside: bool) -> bool {
    let q_mask = select(0u, FLAG_Q_BAD, needs_q);
    let bad = (s.flags & (FLAG_P_BAD | q_mask)) != 0u;
    let empty = is_neg_inf(s.max_p) || (needs_q && is_neg_inf(s.max_q));
    let outside = inf_outside && (s.flags & FLAG_P_OUTSIDE_Q) != 0u;
    return bad || empty || outside;
}

fn row_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return flat_group(wid, nwg);
}

// ---------------------------------------------------------------------------
// KL(P‖Q) (reverse KL is this with p and q swapped by the host).
// ---------------------------------------------------------------------------

@compute @workgroup_size(256)
fn kl(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = row_index(wid, nwg);
    if row >= params.rows {
        return;
    }
    let base = row * params.vocab;
    let s = scan_row(base, lid);
    if scan_ends_row(s, true, true) {
        write_scan(row, s, 0.0, lid);
        return;
    }
    // The first index of max_p.
    if lid == 0u {
        atomicStore(&index_shared, 0xffffffffu);
    }
    workgroupBarrier();
    var hit = 0xffffffffu;
    for (var i = lid; i < params.vocab; i += WG) {
        if score(raw_p(base + i)) == s.max_p {
            hit = i;
            break;
        }
    }
    if hit != 0xffffffffu {
        atomicMin(&index_shared, hit);
    }
    workgroupBarrier();
    if lid == 0u {
        index_plain = atomicLoad(&index_shared);
    }
    var argmax = workgroupUniformLoad(&index_plain);
    if argmax == 0xffffffffu {
        argmax = 0u;
    }
    let inv_t = params.inv_t;
    let shift = (score(raw_q(base + argmax)) - s.max_q) * inv_t;
    var k = qd_exp(-shift);
    let robust = !is_pos_inf(k) && !is_nan(k);
    k = select(0.0, k, robust);
    var acc = acc_new();
    for (var i = lid; i < params.vocab; i += WG) {
        let a = (score(raw_p(base + i)) - s.max_p) * inv_t;
        let b = (score(raw_q(base + i)) - s.max_q) * inv_t;
        let w = exp_nonpositive(a);
        let v = exp_nonpositive(b);
        let u = a - b + shift;
        let positive = w > 0.0;
        let w_u = w * u;
        let ve = v * k;
        let series = abs(u) <= 1.0;
        var rem = ve;
        if positive {
            rem = select(ve - w + w_u, w * exp_neg_remainder(u), series);
        }
        acc_add(&acc, vec4<f32>(w, v, select(0.0, w_u, positive), rem));
    }
    let total = wg_total(acc, lid);
    write_scan(row, s, shift, lid);
    write_sums(row, total, lid);
}

// ---------------------------------------------------------------------------
// Entropy and cross-entropy.
// ---------------------------------------------------------------------------

@compute @workgroup_size(256)
fn entropy(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = row_index(wid, nwg);
    if row >= params.rows {
        return;
    }
    let base = row * params.vocab;
    let s = scan_row(base, lid);
    if scan_ends_row(s, false, false) {
        write_scan(row, s, 0.0, lid);
        return;
    }
    var acc = acc_new();
    for (var i = lid; i < params.vocab; i += WG) {
        let a = (score(raw_p(base + i)) - s.max_p) * params.inv_t;
        let w = exp_nonpositive(a);
        acc_add(&acc, vec4<f32>(w, select(0.0, w * a, w > 0.0), 0.0, 0.0));
    }
    let total = wg_total(acc, lid);
    write_scan(row, s, 0.0, lid);
    write_sums(row, total, lid);
}

@compute @workgroup_size(256)
fn cross_entropy(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = row_index(wid, nwg);
    if row >= params.rows {
        return;
    }
    let base = row * params.vocab;
    let s = scan_row(base, lid);
    if scan_ends_row(s, true, true) {
        write_scan(row, s, 0.0, lid);
        return;
    }
    var acc = acc_new();
    for (var i = lid; i < params.vocab; i += WG) {
        let a = (score(raw_p(base + i)) - s.max_p) * params.inv_t;
        let b = (score(raw_q(base + i)) - s.max_q) * params.inv_t;
        let w = exp_nonpositive(a);
        let v = exp_nonpositive(b);
        acc_add(&acc, vec4<f32>(w, v, select(0.0, w * b, w > 0.0), 0.0));
    }
    let total = wg_total(acc, lid);
    write_scan(row, s, 0.0, lid);
    write_sums(row, total, lid);
}

// ---------------------------------------------------------------------------
// Kinds of normalised P and Q: a sum pass, then a term pass.
// ---------------------------------------------------------------------------

struct Norm {
    inv_sp: f32,
    inv_sq: f32,
    log_ratio_shift: f32, // ln Sp − ln Sq
    log_sp: f32,
}

const KIND_JS: u32 = 0u;
const KIND_TV: u32 = 1u;
const KIND_HELLINGER: u32 = 2u;
const KIND_CHI2: u32 = 3u;
const KIND_RENYI: u32 = 4u;

// The Rényi bracket (Q/P)^β − 1 − β(Q/P − 1) for y = ln(Q/P), in the form
// that keeps its digits (kinds.rs, Renyi::bracket): the series near y = 0,
// else the direct form whose terms are of size min(α, β).
fn renyi_bracket(y: f32) -> f32 {
    var s = params.renyi_series[2][3];
    for (var k: i32 = 10; k >= 0; k = k - 1) {
        s = fma(s, y, params.renyi_series[u32(k) / 4u][u32(k) % 4u]);
    }
    let series = s * y * y;
    var direct: f32;
    if params.small_alpha == 1u {
        // Q/P·(e^(−αy) − 1) is 0 where Q is (y = −inf: 0·inf otherwise).
        let scaled = select(qd_exp(y) * qd_expm1(-params.alpha * y), 0.0, is_neg_inf(y));
        direct = scaled + params.alpha * qd_expm1(y);
    } else {
        direct = qd_expm1(params.beta * y) - params.beta * qd_expm1(y);
    }
    return select(direct, series, abs(y) <= params.reach);
}

fn term(kind: u32, a: f32, b: f32, w: f32, v: f32, n: Norm) -> f32 {
    let pp = w * n.inv_sp;
    let qq = v * n.inv_sq;
    switch kind {
        case KIND_JS: {
            let sum = pp + qq;
            return select(0.0, sum * js_core((pp - qq) / sum), sum > 0.0);
        }
        case KIND_TV: {
            return abs(pp - qq);
        }
        case KIND_HELLINGER: {
            let diff = pp - qq;
            let root = sqrt(pp) + sqrt(qq);
            return select(0.0, diff * diff / (root * root), root > 0.0);
        }
        case KIND_CHI2: {
            let y = a - b - n.log_ratio_shift; // ln(P/Q)
            let log_p = a - n.log_sp;
            let m_below = qd_expm1(-y);
            let m_above = qd_expm1(y);
            let above = qd_exp(log_p + y) * (m_below * m_below);
            let below = qq * (m_above * m_above);
            let t = select(below, above, y >= 0.0);
            return select(t, 0.0, is_neg_inf(b));
        }
        default: {
            let beta = params.beta;
            let y = b - a + n.log_ratio_shift; // ln(Q/P)
            let bracket = renyi_bracket(y);
            // Where P underflowed: P^α·Q^β − βQ, for α ≤ ½ in the bracket's
            // α-form Q·(e^(−αy) − 1) + αQ, which keeps its digits as α → 0
            // (kinds.rs, Renyi::term).
            var tiny: f32;
            if params.small_alpha == 1u {
                let scaled = qq * qd_expm1(-params.alpha * y) + params.alpha * qq;
                tiny = select(0.0, scaled, qq > 0.0);
            } else {
                let log_q = b - (n.log_sp - n.log_ratio_shift);
                tiny = qd_exp(params.alpha * (a - n.log_sp) + beta * log_q) - beta * qq;
                tiny = select(tiny, -beta * qq, is_neg_inf(a));
            }
            return select(tiny, pp * bracket, w > 0.0);
        }
    }
}

fn normalised(kind: u32, inf_outside: bool, wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let row = row_index(wid, nwg);
    if row >= params.rows {
        return;
    }
    let base = row * params.vocab;
    let s = scan_row(base, lid);
    if scan_ends_row(s, true, inf_outside) {
        write_scan(row, s, 0.0, lid);
        return;
    }
    let inv_t = params.inv_t;
    var sums = acc_new();
    for (var i = lid; i < params.vocab; i += WG) {
        let a = (score(raw_p(base + i)) - s.max_p) * inv_t;
        let b = (score(raw_q(base + i)) - s.max_q) * inv_t;
        acc_add(&sums, vec4<f32>(exp_nonpositive(a), exp_nonpositive(b), 0.0, 0.0));
    }
    let total = wg_total(sums, lid);
    // The row constants, from the double-float sums: ln Sp − ln Sq as
    // ln(1 + (Sp − Sq)/Sq) keeps its digits when Sp ≈ Sq.
    let sp_hi = total[0].x;
    let sp_lo = total[1].x;
    let sq_hi = total[0].y;
    let sq_lo = total[1].y;
    let sp = collapse(sp_hi, sp_lo);
    let sq = collapse(sq_hi, sq_lo);
    var n: Norm;
    n.inv_sp = 1.0 / sp;
    n.inv_sq = 1.0 / sq;
    n.log_sp = qd_ln(sp_hi) + sp_lo / sp_hi;
    let diff = (sp_hi - sq_hi) + (sp_lo - sq_lo);
    n.log_ratio_shift = qd_ln_1p(diff / sq);
    var terms = acc_new();
    for (var i = lid; i < params.vocab; i += WG) {
        let a = (score(raw_p(base + i)) - s.max_p) * inv_t;
        let b = (score(raw_q(base + i)) - s.max_q) * inv_t;
        let w = exp_nonpositive(a);
        let v = exp_nonpositive(b);
        acc_add(&terms, vec4<f32>(term(kind, a, b, w, v, n), 0.0, 0.0, 0.0));
    }
    var result = wg_total(terms, lid);
    result[0].y = sp_hi;
    result[1].y = sp_lo;
    result[0].z = sq_hi;
    result[1].z = sq_lo;
    write_scan(row, s, 0.0, lid);
    write_sums(row, result, lid);
}

@compute @workgroup_size(256)
fn js(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    normalised(KIND_JS, false, wid, nwg, lid);
}

@compute @workgroup_size(256)
fn tv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    normalised(KIND_TV, false, wid, nwg, lid);
}

@compute @workgroup_size(256)
fn hellinger(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    normalised(KIND_HELLINGER, false, wid, nwg, lid);
}

@compute @workgroup_size(256)
fn chi2(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    normalised(KIND_CHI2, true, wid, nwg, lid);
}

@compute @workgroup_size(256)
fn renyi(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    normalised(KIND_RENYI, params.alpha > 1.0, wid, nwg, lid);
}
