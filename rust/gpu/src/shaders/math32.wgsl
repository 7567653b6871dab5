// Float32 elementwise functions shared by the divergence and comparison
// shaders: exact ports of rust/core/src/simd.rs (so that every adapter, and
// the CPU, evaluate e^x and ln x alike, whatever the driver's own exp/log),
// and special values by bit pattern.
//
// The including shader's uniform `params` must have `rows: u32` and
// `one`, `magic_a`, `magic_b: f32` set to 1, 1.5·2^23 and 1.5·2^23: shader
// compilers treat float arithmetic as associative unless told otherwise,
// which WGSL cannot say, and would fold (x + c) − c to x; values they cannot
// see keep those rounding steps as written.

// ---------------------------------------------------------------------------
// Special values by bit pattern (never by float comparison with NaN).
// ---------------------------------------------------------------------------

const NEG_INF_BITS: u32 = 0xff800000u;
const POS_INF_BITS: u32 = 0x7f800000u;

fn neg_inf() -> f32 {
    return bitcast<f32>(NEG_INF_BITS + 0u * params.rows);
}
fn pos_inf() -> f32 {
    return bitcast<f32>(POS_INF_BITS + 0u * params.rows);
}
fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > POS_INF_BITS;
}
fn is_neg_inf(x: f32) -> bool {
    return bitcast<u32>(x) == NEG_INF_BITS;
}
fn is_pos_inf(x: f32) -> bool {
    return bitcast<u32>(x) == POS_INF_BITS;
}

// ---------------------------------------------------------------------------
// Elementwise functions: ports of rust/core/src/simd.rs.
// ---------------------------------------------------------------------------

const LOG2E: f32 = 1.4426950408889634;
const LN2_HI: f32 = 0.6933594;
const LN2_LO: f32 = -2.1219444e-4;
const EXP_LO: f32 = -87.33655;
const EXP_HI: f32 = 88.37626;

// e^x for clamped x, from the Cephes polynomial and 2^k built from k's
// bits; k = round(x·log2 e) by adding and subtracting 1.5·2^23.
fn exp_core(clamped: f32) -> f32 {
    let t = fma(clamped, LOG2E, params.magic_a);
    let k = t - params.magic_b;
    let k_bits = bitcast<u32>(t) - bitcast<u32>(params.magic_b);
    let r = fma(k, -LN2_LO, fma(k, -LN2_HI, clamped));
    var p = 1.9875691e-4;
    p = fma(p, r, 1.3981999e-3);
    p = fma(p, r, 8.333452e-3);
    p = fma(p, r, 4.1665796e-2);
    p = fma(p, r, 1.6666665e-1);
    p = fma(p, r, 0.5);
    let er = fma(p, r * r, r) + 1.0;
    return er * bitcast<f32>((k_bits + 127u) << 23u);
}

// e^x; 0 below −87.34, +inf above 88.38, NaN kept.
fn qd_exp(x: f32) -> f32 {
    let clamped = min(max(x, EXP_LO), EXP_HI);
    var y = exp_core(clamped);
    y = select(y, pos_inf(), x > EXP_HI);
    y = select(y, 0.0, x < EXP_LO);
    return select(y, x, is_nan(x));
}

// e^x for x ≤ 0 or −inf.
fn exp_nonpositive(x: f32) -> f32 {
    let y = exp_core(max(x, EXP_LO));
    return select(y, 0.0, x < EXP_LO);
}

// e^x − 1, accurate near 0.
fn qd_expm1(x: f32) -> f32 {
    var p = 1.0 / 362880.0;
    p = fma(p, x, 1.0 / 40320.0);
    p = fma(p, x, 1.0 / 5040.0);
    p = fma(p, x, 1.0 / 720.0);
    p = fma(p, x, 1.0 / 120.0);
    p = fma(p, x, 1.0 / 24.0);
    p = fma(p, x, 1.0 / 6.0);
    p = fma(p, x, 0.5);
    let small = fma(p * x, x, x);
    return select(qd_exp(x) - 1.0, small, abs(x) < 0.5);
}

// ln x: ln 0 = −inf, ln +inf = +inf, NaN for x < 0 or NaN; subnormals handled.
fn qd_ln(x: f32) -> f32 {
    let tiny = x < 1.17549435e-38;
    let xs = select(x, x * 8388608.0, tiny);
    let bits = bitcast<u32>(xs);
    var e = i32((bits >> 23u) & 0xffu) - 127;
    var m = bitcast<f32>((bits & 0x007fffffu) | 0x3f800000u);
    let big = m > 1.4142135;
    m = select(m, m * 0.5, big);
    e += select(0, 1, big);
    let ef = f32(e) - select(0.0, 23.0, tiny);
    let f = m - 1.0;
    let z = f * f;
    var p = 7.0376836e-2;
    p = fma(p, f, -1.151461e-1);
    p = fma(p, f, 1.1676999e-1);
    p = fma(p, f, -1.2420141e-1);
    p = fma(p, f, 1.4249323e-1);
    p = fma(p, f, -1.6668058e-1);
    p = fma(p, f, 2.0000714e-1);
    p = fma(p, f, -2.4999994e-1);
    p = fma(p, f, 3.333333e-1);
    var y = p * f * z;
    y = fma(ef, -2.1219444e-4, y);
    y = fma(-0.5, z, y);
    var r = fma(ef, 0.6933594, f + y);
    r = select(r, neg_inf(), x == 0.0);
    r = select(r, pos_inf(), is_pos_inf(x));
    return select(r, bitcast<f32>(0x7fc00000u + 0u * params.rows), x < 0.0 || is_nan(x));
}

// ln(1 + x), accurate near 0.
fn qd_ln_1p(x: f32) -> f32 {
    let u = (1.0 + x) * params.one;
    let d = u - 1.0;
    let r = qd_ln(u) * (x / d);
    return select(select(r, u, is_pos_inf(u)), x, d == 0.0);
}
