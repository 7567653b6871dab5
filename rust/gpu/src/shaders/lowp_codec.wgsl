// The float-format codec of quantdrift-core (lowp/reference.rs) in integer
// arithmetic: exact for float32, float16, bfloat16 and float64 input, with
// no reliance on the GPU's float rounding, subnormal or NaN behaviour. Also
// a small soft-float (f32 multiply and divide, round to nearest even, with
// subnormals and the x86 NaN rules the CPU kernels run under), for the MX
// and NVFP4 kernels whose CPU twins compute in float32.

// A format with its options resolved (quantdrift_core::lowp::Codec), all u32
// so that host and shader agree on the layout (64 bytes).
struct Codec {
    m: u32,             // mantissa bits
    emin: i32,          // exponent of the smallest normal binade
    max_mag: u32,       // magnitude code of the largest finite value
    sign_shift: u32,    // position of the sign bit (0: unsigned)
    overflow0: u32,     // code of a positive / negative overflow
    overflow1: u32,
    inf0: u32,          // code of +Inf / -Inf input
    inf1: u32,
    nan0: u32,          // code of +NaN / -NaN input
    nan1: u32,
    neg_zero: u32,      // code of a negative value that rounds to zero
    flags: u32,         // bit 0: e8m0; bit 1: NaN payloads kept
    exp_ones: u32,      // magnitude bits of the all-ones exponent field
    rounding: u32,      // 0 nearest_even, 1 nearest_away, 2 toward_zero, 3 down, 4 up, 5 stochastic
    table_offset: u32,  // where this format's decode table starts
    _pad: u32,
}

const ROUND_NEAREST_EVEN: u32 = 0u;
const ROUND_NEAREST_AWAY: u32 = 1u;
const ROUND_DOWN: u32 = 3u;
const ROUND_UP: u32 = 4u;
const ROUND_STOCHASTIC: u32 = 5u;

// ---------------------------------------------------------------------------
// Encoding (reference.rs: encode_f64_inner, nan_code)
// ---------------------------------------------------------------------------

// The code of a NaN input whose payload's top bits are `top_payload` (the
// payload shifted so that its highest `m` bits remain).
fn nan_input_code(c: Codec, neg: u32, top_payload: u32) -> u32 {
    if (c.flags & 2u) != 0u {
        return (neg << c.sign_shift) | c.exp_ones | max(top_payload, 1u);
    }
    return select(c.nan0, c.nan1, neg != 0u);
}

// The code of the finite nonzero value sig · 2^k (sig < 2^53). `rand` is
// read by stochastic rounding only.
fn encode_finite(c: Codec, neg: u32, sig: vec2<u32>, k: i32, rand: u32) -> u32 {
    let e8m0 = (c.flags & 1u) != 0u;
    let m = i32(c.m);
    let e_x = k + 63 - i32(clz64(sig)); // floor(log2 |v|)
    var top = e_x;
    if !e8m0 {
        top = max(e_x, c.emin);
    }
    let shift = top - m - k; // bits of sig below the quantum
    var n: u32;
    if shift <= 0 {
        n = sig.x << u32(-shift); // exact, < 2^(m+1), so sig < 2^16 here
    } else {
        let s = u32(shift);
        let q = shr64(sig, s).x; // < 2^(m+1)
        let rem = low_bits64(sig, s);
        // The 32 bits just below the quantum, and whether anything lies below them.
        var frac32: u32;
        var sticky = false;
        if s <= 32u {
            frac32 = select(rem.x << (32u - s), rem.x, s == 32u);
        } else {
            frac32 = shr64(rem, s - 32u).x;
            let low = low_bits64(rem, s - 32u);
            sticky = (low.x | low.y) != 0u;
        }
        let half = 0x80000000u;
        let above = frac32 > half || (frac32 == half && sticky);
        let tie = frac32 == half && !sticky;
        let nonzero = frac32 != 0u || sticky;
        var inc = false;
        switch c.rounding {
            case 0u: { inc = above || (tie && (q & 1u) == 1u); }
            case 1u: { inc = above || tie; }
            case 3u: { inc = nonzero && neg != 0u; }
            case 4u: { inc = nonzero && neg == 0u; }
            case 5u: { inc = rand < frac32; }
            default: { inc = false; }
        }
        n = q + select(0u, 1u, inc);
    }
    if e8m0 {
        let code = top + 127 + i32(n) - 1;
        if code < 0 {
            return 0u;
        }
        if u32(code) > c.max_mag {
            return c.overflow0;
        }
        return u32(code);
    }
    let mag = n + (u32(top - c.emin) << c.m);
    if mag > c.max_mag {
        return select(c.overflow0, c.overflow1, neg != 0u);
    }
    if mag == 0u {
        return select(0u, c.neg_zero, neg != 0u);
    }
    return mag | (neg << c.sign_shift);
}

// Zero, ±Inf and the e8m0 cases shared by both input widths; returns
// 0xffffffff when the value is finite and nonzero (the caller rounds it).
fn encode_trivial(c: Codec, neg: u32, is_zero: bool, is_inf: bool) -> u32 {
    if is_inf {
        return select(c.inf0, c.inf1, neg != 0u);
    }
    if (c.flags & 1u) != 0u && (neg != 0u || is_zero) {
        return c.nan0; // e8m0 has neither zero nor sign
    }
    if is_zero {
        return select(0u, c.neg_zero, neg != 0u);
    }
    return 0xffffffffu;
}

// The code of float32 bits `x`.
fn encode_f32_bits(c: Codec, x: u32, rand: u32) -> u32 {
    let neg = x >> 31u;
    let a = x & 0x7fffffffu;
    if a > 0x7f800000u {
        return nan_input_code(c, neg, (a & 0x7fffffu) >> (23u - c.m));
    }
    let t = encode_trivial(c, neg, a == 0u, a == 0x7f800000u);
    if t != 0xffffffffu {
        return t;
    }
    let field = a >> 23u;
    let frac = a & 0x7fffffu;
    var sig = frac | 0x800000u;
    var k = i32(field) - 150;
    if field == 0u {
        sig = frac;
        k = -149;
    }
    return encode_finite(c, neg, vec2<u32>(sig, 0u), k, rand);
}

// The code of the float64 whose bits are (lo, hi): rounded once, directly.
fn encode_f64_bits(c: Codec, lo: u32, hi: u32, rand: u32) -> u32 {
    let neg = hi >> 31u;
    let ahi = hi & 0x7fffffffu;
    let field = ahi >> 20u;
    let frac_hi = ahi & 0xfffffu;
    if field == 0x7ffu && (frac_hi | lo) != 0u {
        // The payload's top m bits (m <= 15 < 20 lie in the high word).
        return nan_input_code(c, neg, frac_hi >> (20u - c.m));
    }
    let t = encode_trivial(c, neg, (ahi | lo) == 0u, field == 0x7ffu);
    if t != 0xffffffffu {
        return t;
    }
    var sig = vec2<u32>(lo, frac_hi | 0x100000u);
    var k = i32(field) - 1075;
    if field == 0u {
        sig = vec2<u32>(lo, frac_hi);
        k = -1074;
    }
    return encode_finite(c, neg, sig, k, rand);
}

// ---------------------------------------------------------------------------
// Soft float32 (round to nearest even, subnormals, x86 SSE NaN rules)
// ---------------------------------------------------------------------------

const QNAN_BIT: u32 = 0x00400000u;
const DEFAULT_NAN: u32 = 0xffc00000u; // x86's result of an invalid operation

fn is_nan_bits(a: u32) -> bool {
    return (a & 0x7fffffffu) > 0x7f800000u;
}

// The NaN an SSE operation returns: the first NaN operand, quieted.
fn propagate_nan(a: u32, b: u32) -> u32 {
    if is_nan_bits(a) {
        return a | QNAN_BIT;
    }
    return b | QNAN_BIT;
}

// (significand, exponent) with value = sig · 2^exp and sig in [2^23, 2^24)
// for a finite nonzero magnitude `a`.
fn unpack_normalized(a: u32) -> vec2<i32> {
    let field = a >> 23u;
    if field == 0u {
        let f = a & 0x7fffffu;
        let p = 31u - countLeadingZeros(f);
        return vec2<i32>(i32(f << (23u - p)), i32(p) - 149 - 23);
    }
    return vec2<i32>(i32((a & 0x7fffffu) | 0x800000u), i32(field) - 150);
}

// sign | RN(sig · 2^exp) as float32 bits, where sig has its top bit at
// `top_bit` (sig < 2^32) and `sticky` says whether nonzero bits were
// dropped below sig. Handles overflow (Inf) and subnormal results.
fn round_pack(sign: u32, sig: u32, exp: i32, sticky: bool) -> u32 {
    let top_bit = i32(31u - countLeadingZeros(sig));
    let e = exp + top_bit; // floor(log2) of the exact value
    // Quantum of the result: 2^(e-23) for normals, 2^-149 below.
    let quantum = max(e - 23, -149);
    let shift = quantum - exp; // bits of sig below the quantum
    var n: u32;
    if shift <= 0 {
        n = sig << u32(-shift);
    } else {
        let s = u32(shift);
        var q = 0u;
        var rem_top = 0u; // the dropped bits' top 32, and whether more lie below
        var below = sticky;
        if s >= 32u {
            if s == 32u {
                rem_top = sig;
            } else {
                rem_top = select(0u, sig >> (s - 32u), s - 32u < 32u);
                below = below || (sig & select(0xffffffffu, (1u << (s - 32u)) - 1u, s - 32u < 32u)) != 0u;
            }
        } else {
            q = sig >> s;
            rem_top = sig << (32u - s);
        }
        let half = 0x80000000u;
        let up = rem_top > half || (rem_top == half && (below || (q & 1u) == 1u));
        n = q + select(0u, 1u, up);
    }
    // n · 2^quantum; n may have carried into 2^24 (or from subnormal into normal).
    var bits: u32;
    if quantum == -149 && n < 0x800000u {
        bits = n; // subnormal (or zero)
    } else {
        var nn = n;
        var qq = quantum;
        if nn >= 0x1000000u {
            nn = nn >> 1u;
            qq = qq + 1;
        }
        let field = qq + 150;
        if field >= 255 {
            return sign | 0x7f800000u;
        }
        bits = (u32(field) << 23u) | (nn & 0x7fffffu);
    }
    return sign | bits;
}

// a · b, as an SSE mulss would compute it.
fn sf_mul(a: u32, b: u32) -> u32 {
    if is_nan_bits(a) || is_nan_bits(b) {
        return propagate_nan(a, b);
    }
    let sign = (a ^ b) & 0x80000000u;
    let aa = a & 0x7fffffffu;
    let bb = b & 0x7fffffffu;
    let a_inf = aa == 0x7f800000u;
    let b_inf = bb == 0x7f800000u;
    if a_inf || b_inf {
        if aa == 0u || bb == 0u {
            return DEFAULT_NAN;
        }
        return sign | 0x7f800000u;
    }
    if aa == 0u || bb == 0u {
        return sign;
    }
    let ua = unpack_normalized(aa);
    let ub = unpack_normalized(bb);
    // 24 × 24-bit product = 48 bits: split into 32 high bits and sticky.
    let x = u32(ua.x);
    let y = u32(ub.x);
    let xl = x & 0xfffu;
    let xh = x >> 12u;
    let yl = y & 0xfffu;
    let yh = y >> 12u;
    // x·y = xh·yh·2^24 + (xh·yl + xl·yh)·2^12 + xl·yl, each < 2^24·2
    let ll = xl * yl;
    let mid = xh * yl + xl * yh; // < 2^25
    let hh = xh * yh;
    // lo48 = ll + (mid << 12); hi part carries into hh.
    let lo = ll + ((mid & 0xfffu) << 12u); // < 2^25
    let carry = lo >> 24u;
    let low24 = lo & 0xffffffu;
    let high24 = hh + (mid >> 12u) + carry; // product = high24·2^24 + low24
    // Keep 32 significant bits: product >> 16, sticky from the low 16 bits.
    let kept = (high24 << 8u) | (low24 >> 16u);
    let sticky = (low24 & 0xffffu) != 0u;
    return round_pack(sign, kept, ua.y + ub.y + 16, sticky);
}

// a / b, as an SSE divss would compute it.
fn sf_div(a: u32, b: u32) -> u32 {
    if is_nan_bits(a) || is_nan_bits(b) {
        return propagate_nan(a, b);
    }
    let sign = (a ^ b) & 0x80000000u;
    let aa = a & 0x7fffffffu;
    let bb = b & 0x7fffffffu;
    let a_inf = aa == 0x7f800000u;
    let b_inf = bb == 0x7f800000u;
    if a_inf && b_inf {
        return DEFAULT_NAN;
    }
    if a_inf {
        return sign | 0x7f800000u;
    }
    if b_inf {
        return sign;
    }
    if bb == 0u {
        if aa == 0u {
            return DEFAULT_NAN;
        }
        return sign | 0x7f800000u;
    }
    if aa == 0u {
        return sign;
    }
    let ua = unpack_normalized(aa);
    let ub = unpack_normalized(bb);
    // Long division: 27 quotient bits of (sa / sb) · 2^26, remainder sticky.
    var r = u32(ua.x);
    let d = u32(ub.x);
    var q = 0u;
    for (var i = 0u; i < 27u; i++) {
        q = q << 1u;
        if r >= d {
            r -= d;
            q |= 1u;
        }
        r = r << 1u;
    }
    return round_pack(sign, q, ua.y - ub.y - 26, r != 0u);
}

// float64 bits to float32 bits as an x86 cvtsd2ss rounds them (nearest
// even; NaNs quieted with the payload's top bits kept).
fn f64_bits_to_f32(lo: u32, hi: u32) -> u32 {
    let sign = hi & 0x80000000u;
    let ahi = hi & 0x7fffffffu;
    let field = ahi >> 20u;
    let frac_hi = ahi & 0xfffffu;
    if field == 0x7ffu {
        if (frac_hi | lo) != 0u {
            return sign | 0x7fc00000u | (frac_hi << 3u) | (lo >> 29u);
        }
        return sign | 0x7f800000u;
    }
    if (ahi | lo) == 0u {
        return sign;
    }
    if field == 0u {
        return sign; // float64 subnormals are far below float32's range: ±0
    }
    // sig = 1.frac (53 bits) · 2^(field - 1075): keep the top 32 bits.
    let sig_hi = frac_hi | 0x100000u; // 21 bits
    let kept = (sig_hi << 11u) | (lo >> 21u);
    let sticky = (lo & 0x1fffffu) != 0u;
    return round_pack(sign, kept, i32(field) - 1075 + 21, sticky);
}

// Ordered integer of a non-NaN float32 (−0 and +0 equal), for comparisons.
fn f32_order(x: u32) -> i32 {
    let mag = i32(x & 0x7fffffffu);
    return select(mag, -mag, (x >> 31u) != 0u);
}
