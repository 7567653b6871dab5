// Integer quantization (Def 3.2) in exact integer arithmetic.
//
// Nothing here relies on the GPU's float arithmetic (no float ops touch
// the data, so flushed subnormals, contracted multiply-adds or fast-math
// NaN handling cannot change a result): inputs arrive as bit patterns,
// x/s and x·fl32(1/s) are formed from the integer significands, and every
// rounding (float64 quotient, float32 product, round(·), float32/float64
// outputs) is done on 64-bit integers held as vec2<u32>(lo, hi). The host
// only sends parts whose scale is a normal float32 and whose integers lie
// within ±2^23 (the CPU's `fast32` parameters); there the CPU's float64
// formulas are reproduced bit for bit.

struct Params {
    count: u32,      // elements in this chunk
    start_lo: u32,   // flat index of the chunk's first element
    start_hi: u32,
    part_lo: u32,    // part id of params[0]
    mode: u32,       // 0 nearest-even, 1 nearest-away, 2 toward zero, 3 down, 4 up, 5 stochastic
    arith: u32,      // 0 x/s (float64), 1 x·fl32(1/s) (float32)
    input: u32,      // 0 float32, 1 float16, 2 bfloat16
    width: u32,      // bits per code: 1..8, 16, 32
    signed_: u32,    // codes sign-extend on reading
    labels: u32,     // 1: part ids come from `ids`
    ndim: u32,       // tile axes (without labels)
    row_len: u32,    // length of the last axis
    key0: u32,       // stochastic rounding key
    key1: u32,
    f64_out: u32,    // dequantize to float64
    _pad: u32,
}

// Per part (2 × vec4): (multiplier bits, zero-point, qmin, qmax), (scale bits, 0, 0, 0).
// The multiplier is the scale (x/s) or fl32(1/s) (reciprocal arithmetic).
// Per axis of tiles: (extent, tile, part-index stride, 0).

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> inp: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read> axes: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> parts: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> out: array<u32>;
@group(0) @binding(6) var<storage, read_write> counter: array<atomic<u32>>;

const SAT: u32 = 0x4000000u; // 2^26: |round(t)| beyond it clips whatever the range

// ---- 64-bit helpers beyond bits.wgsl: vec2(lo, hi) ------------------------

fn bitlen64(v: vec2<u32>) -> u32 {
    if v.y != 0u { return 64u - countLeadingZeros(v.y); }
    return 32u - countLeadingZeros(v.x);
}

// Whether any of the low `s` bits of v is set.
fn low_bits(v: vec2<u32>, s: u32) -> bool {
    if s == 0u { return false; }
    if s >= 64u { return !is_zero64(v); }
    return !is_zero64(v ^ shl64(shr64(v, s), s));
}

fn bit64(v: vec2<u32>, i: u32) -> bool {
    if i >= 64u { return false; }
    return (shr64(v, i).x & 1u) != 0u;
}

// v / 2^s rounded to nearest, ties to even; `sticky` adds bits below v.
fn rne_shr(v: vec2<u32>, s: u32, sticky: bool) -> vec2<u32> {
    if s == 0u { return v; }
    let q = shr64(v, s);
    let half = bit64(v, s - 1u);
    let rest = low_bits(v, s - 1u) || sticky;
    if half && (rest || (q.x & 1u) != 0u) {
        return add64(q, vec2<u32>(1u, 0u));
    }
    return q;
}

// a · b exactly.
fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let m0 = a1 * b0;
    let m1 = a0 * b1;
    var r = vec2<u32>(a0 * b0, a1 * b1);
    r = add64(r, vec2<u32>(m0 << 16u, m0 >> 16u));
    r = add64(r, vec2<u32>(m1 << 16u, m1 >> 16u));
    return r;
}

// ---- float32 bits ------------------------------------------------------------

// A float32 as kind (0 zero, 1 finite, 2 inf, 3 NaN), sign, significand
// m in [2^23, 2^24) and exponent e with |x| = m · 2^(e − 23).
struct F32 {
    kind: u32,
    neg: bool,
    m: u32,
    e: i32,
}

fn unpack_f32(b: u32) -> F32 {
    let neg = (b >> 31u) != 0u;
    let ef = (b >> 23u) & 0xffu;
    let mf = b & 0x7fffffu;
    if ef == 0xffu {
        return F32(select(2u, 3u, mf != 0u), neg, 0u, 0);
    }
    if ef == 0u {
        if mf == 0u {
            return F32(0u, neg, 0u, 0);
        }
        let sh = countLeadingZeros(mf) - 8u;
        return F32(1u, neg, mf << sh, -126 - i32(sh));
    }
    return F32(1u, neg, mf | 0x800000u, i32(ef) - 127);
}

// Element i of the chunk's input as float32 bits.
fn load_x(i: u32) -> u32 {
    if P.input == 0u {
        return inp[i];
    }
    let pair = inp[i / 2u];
    let h = select(pair & 0xffffu, pair >> 16u, (i & 1u) == 1u);
    if P.input == 1u {
        return f16_bits_to_f32(h);
    }
    return h << 16u;
}

// ---- partition -----------------------------------------------------------

// Index into `parts` of element i of the chunk.
fn part_of(i: u32) -> u32 {
    if P.labels == 1u {
        return ids[i] - P.part_lo;
    }
    // flat index (chunks stay below 2^32 elements from their start)
    let g = P.start_lo + i;
    let last = axes[P.ndim - 1u];
    var row = g / P.row_len;
    let col = g % P.row_len;
    var part = (col / last.y) * last.z;
    var a = i32(P.ndim) - 2;
    loop {
        if a < 0 { break; }
        let ax = axes[u32(a)];
        part += ((row % ax.x) / ax.y) * ax.z;
        row = row / ax.x;
        a -= 1;
    }
    return part - P.part_lo;
}

// ---- rounding ------------------------------------------------------------

// The CPU's counter-based draw for flat index (lo, hi).
fn draw(lo: u32, hi: u32) -> u32 {
    return random_u32(vec2<u32>(P.key0, P.key1), vec2<u32>(lo, hi));
}

// |round(t)| (saturated at SAT) for t = ±M · 2^E, in the chunk's mode.
// `d` is the stochastic draw.
fn round_mag(neg: bool, m: vec2<u32>, e: i32, d: u32) -> u32 {
    if is_zero64(m) {
        return 0u;
    }
    if e >= 0 {
        if bitlen64(m) + u32(e) > 26u {
            return SAT;
        }
        return shl64(m, u32(e)).x;
    }
    let sh = u32(-e);
    let n64 = shr64(m, sh);
    if n64.y != 0u || n64.x >= SAT {
        return SAT;
    }
    let n = n64.x;
    var up = false;
    switch P.mode {
        case 5u: {
            // up with probability frac(t): draw < (t − floor t) · 2^32
            var mm = m;
            var ss = sh;
            if neg && n == 0u && sh > 53u {
                // the CPU forms t − floor t = t + 1 in float64: 1 − |t|
                // rounded to a multiple of 2^-53
                mm = rne_shr(m, sh - 53u, false);
                ss = 53u;
            }
            var top: u32;
            var rest: bool;
            if ss <= 32u {
                top = shl64(mm, 32u - ss).x; // the fraction's bits, exact
                rest = false;
            } else {
                top = shr64(mm, ss - 32u).x;
                rest = low_bits(mm, ss - 32u);
            }
            let frac = low_bits(m, sh);
            if !frac {
                up = false;
            } else if !neg {
                // draw < top + rest
                up = d < top || (rest && d == top);
            } else {
                // t − floor t = 1 − f: draw < 2^32 − top  (rounds toward −∞ otherwise)
                up = !(top == 0u || d < (0u - top));
            }
        }
        default: {
            let half = bit64(m, sh - 1u);
            let sticky = low_bits(m, sh - 1u);
            switch P.mode {
                case 0u: { up = half && (sticky || (n & 1u) == 1u); }
                case 1u: { up = half; }
                case 3u: { up = neg && (half || sticky); }
                case 4u: { up = !neg && (half || sticky); }
                default: { up = false; }
            }
        }
    }
    return n + select(0u, 1u, up);
}

// round(t) as a signed integer with t = x/s (float64) or x·fl32(1/s),
// saturated at ±SAT. `kind` 3 (NaN) never gets here.
fn rounded(x: F32, mult: u32, index_lo: u32, index_hi: u32) -> i32 {
    if x.kind == 0u {
        return 0;
    }
    if x.kind == 2u {
        return select(i32(SAT), -i32(SAT), x.neg);
    }
    let a = unpack_f32(mult); // a normal float32 (the host checks)
    var d = 0u;
    if P.mode == 5u {
        d = draw(index_lo, index_hi);
    }
    var mag: u32;
    if P.arith == 1u {
        // t = fl32(x · a): the exact 48-bit product rounded to float32
        let p = mul_wide(x.m, a.m);
        let e0 = x.e + a.e - 46; // |x·a| = p · 2^e0
        let len = i32(bitlen64(p));
        let er = len - 1 + e0; // exponent of the exact product
        if er >= 26 {
            mag = SAT;
        } else {
            var sh: i32;
            if er >= -126 {
                sh = len - 24;
            } else {
                sh = -149 - e0; // subnormal result: quantum 2^-149
            }
            var m: vec2<u32>;
            var e: i32;
            if sh >= 0 {
                m = rne_shr(p, u32(sh), false);
                e = e0 + sh;
            } else {
                m = p;
                e = e0;
            }
            mag = round_mag(x.neg != a.neg, m, e, d);
        }
    } else {
        // t = x / s (x.m / a.m · 2^k)
        let k = x.e - a.e;
        if k >= 28 {
            mag = SAT;
        } else if P.mode != 5u {
            // round(fl64(x/s)) = round(x/s) for |x/s| < 2^28 with float32
            // x and s (the float64 rounding cannot cross k or k + 1/2):
            // integer part n, the half bit and a sticky bit suffice.
            if k < -1 {
                mag = round_mag(x.neg, vec2<u32>(1u, 0u), -3, 0u); // 0 < t < 1/4
            } else {
                var rem = x.m;
                var n = 0u;
                var i = k;
                loop {
                    if i < -1 { break; }
                    let bit = rem >= a.m;
                    if bit { rem -= a.m; }
                    n = (n << 1u) | select(0u, 1u, bit);
                    rem = rem << 1u;
                    i -= 1;
                }
                // n holds the integer part and the half bit; sticky below
                let m = vec2<u32>((n << 1u) | select(0u, 1u, rem != 0u), 0u);
                mag = round_mag(x.neg, m, -2, 0u);
            }
        } else {
            // stochastic rounding needs fl64(x/s) itself: 55 quotient bits,
            // rounded to 53 significant ones
            var rem = x.m;
            var q = vec2<u32>(0u, 0u);
            for (var j = 0u; j < 55u; j++) {
                let bit = rem >= a.m;
                if bit { rem -= a.m; }
                q = shl64(q, 1u);
                q.x |= select(0u, 1u, bit);
                rem = rem << 1u;
            }
            // q · 2^(k − 54) ≈ x/s; bit 54 set iff x.m ≥ a.m
            let sh = bitlen64(q) - 53u;
            let m = rne_shr(q, sh, rem != 0u);
            mag = round_mag(x.neg, m, k - 54 + i32(sh), d);
        }
    }
    return select(i32(mag), -i32(mag), x.neg);
}

// Code of element i (chunk-relative) and whether it was clipped.
fn code_of(i: u32) -> vec2<i32> {
    let pi = part_of(i) * 2u;
    let pr = parts[pi];
    let zp = bitcast<i32>(pr.y);
    let lo = bitcast<i32>(pr.z);
    let hi = bitcast<i32>(pr.w);
    let x = unpack_f32(load_x(i));
    if x.kind == 3u {
        return vec2<i32>(zp, 0);
    }
    let g_lo = P.start_lo + i;
    let g_hi = P.start_hi + select(0u, 1u, g_lo < P.start_lo);
    let q = rounded(x, pr.x, g_lo, g_hi) + zp;
    if q < lo {
        return vec2<i32>(lo, 1);
    }
    if q > hi {
        return vec2<i32>(hi, 1);
    }
    return vec2<i32>(q, 0);
}

// ---- dequantization: fl_out(fl64(d · s)) ------------------------------------

// Bits of fl32(fl64(±mag · s)) (lo) or of fl64(±mag · s) (lo, hi), s a
// normal float32 given by its bits.
fn scaled(neg: bool, mag: u32, sbits: u32, f64: bool) -> vec2<u32> {
    if mag == 0u {
        return vec2<u32>(0u, 0u);
    }
    let s = unpack_f32(sbits);
    var p = mul_wide(mag, s.m);
    var e = s.e - 23; // |value| = p · 2^e
    var len = bitlen64(p);
    if len > 53u {
        p = rne_shr(p, len - 53u, false);
        e += i32(len - 53u);
        len = bitlen64(p);
    }
    let sign = select(0u, 0x80000000u, neg);
    if f64 {
        // normalise to 53 bits; no overflow or subnormals (|value| < 2^161)
        let m = shl64(p, 53u - len);
        let ex = e - i32(53u - len) + 52;
        let biased = u32(ex + 1023);
        return vec2<u32>(m.x, sign | (biased << 20u) | (m.y & 0xfffffu));
    }
    var m = p;
    if len > 24u {
        m = rne_shr(p, len - 24u, false);
        e += i32(len - 24u);
    } else {
        m = shl64(p, 24u - len);
        e -= i32(24u - len);
    }
    if bitlen64(m) > 24u {
        m = shr64(m, 1u);
        e += 1;
    }
    let ex = e + 23; // value = 1.f · 2^ex
    if ex > 127 {
        return vec2<u32>(sign | 0x7f800000u, 0u);
    }
    // |value| ≥ s ≥ 2^-126: normal
    return vec2<u32>(sign | (u32(ex + 127) << 23u) | (m.x & 0x7fffffu), 0u);
}

// ---- entry points ----------------------------------------------------------

// 32 consecutive codes per invocation, `width` bits each, packed LSB-first
// into `width` words (the CPU's byte layout read as little-endian words).
@compute @workgroup_size(256)
fn quantize(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = flat_group(wid, nwg) * WG + lid;
    let first = t * 32u;
    if first >= P.count {
        return;
    }
    let w = P.width;
    let mask = select((1u << w) - 1u, 0xffffffffu, w == 32u);
    var acc: array<u32, 32>;
    for (var j = 0u; j < 32u; j++) {
        acc[j] = 0u;
    }
    var clipped = 0u;
    let n = min(32u, P.count - first);
    for (var j = 0u; j < n; j++) {
        let c = code_of(first + j);
        clipped += u32(c.y);
        let v = bitcast<u32>(c.x) & mask;
        let pos = j * w;
        let word = pos / 32u;
        let sh = pos % 32u;
        acc[word] |= v << sh;
        if sh + w > 32u {
            acc[word + 1u] |= v >> (32u - sh);
        }
    }
    for (var j = 0u; j < w; j++) {
        out[t * w + j] = acc[j];
    }
    if clipped > 0u {
        atomicAdd(&counter[0], clipped);
    }
}

// Q̃(Q(x)) as float32 bits, one element per invocation.
@compute @workgroup_size(256)
fn fake(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_group(wid, nwg) * WG + lid;
    if i >= P.count {
        return;
    }
    let c = code_of(i);
    let pi = part_of(i) * 2u;
    let zp = bitcast<i32>(parts[pi].y);
    let d = c.x - zp; // |d| ≤ 2^24
    out[i] = scaled(d < 0, u32(abs(d)), parts[pi + 1u].x, false).x;
    if c.y != 0 {
        atomicAdd(&counter[0], 1u);
    }
}

// Code i of the chunk (`width` bits at bit i·width, sign-extended when signed).
fn load_code(i: u32) -> i32 {
    let w = P.width;
    if w == 32u {
        return bitcast<i32>(inp[i]);
    }
    let pos = i * w;
    let word = pos / 32u;
    let sh = pos % 32u;
    var v = inp[word] >> sh;
    if sh + w > 32u {
        v |= inp[word + 1u] << (32u - sh);
    }
    v &= (1u << w) - 1u;
    if P.signed_ == 1u && (v >> (w - 1u)) != 0u {
        return bitcast<i32>(v | ~((1u << w) - 1u));
    }
    return bitcast<i32>(v);
}

// s·(n − b): float32 bits (one word) or float64 bits (two words) per element.
@compute @workgroup_size(256)
fn dequantize(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_group(wid, nwg) * WG + lid;
    if i >= P.count {
        return;
    }
    let pi = part_of(i) * 2u;
    let n = load_code(i);
    let b = bitcast<i32>(parts[pi].y);
    // |n − b| < 2^32: the magnitude in u32, wrapping arithmetic
    let neg = n < b;
    let mag = select(bitcast<u32>(n) - bitcast<u32>(b), bitcast<u32>(b) - bitcast<u32>(n), neg);
    let v = scaled(neg, mag, parts[pi + 1u].x, P.f64_out == 1u);
    if P.f64_out == 1u {
        out[2u * i] = v.x;
        out[2u * i + 1u] = v.y;
    } else {
        out[i] = v.x;
    }
    if i == 0xffffffffu {
        atomicAdd(&counter[0], 0u); // keeps binding 6 in the layout
    }
}

// Per-part min and max of the finite values as order-preserving keys
// (atomicMin into counter[2j], atomicMax into counter[2j + 1]); 32
// elements per invocation, one atomic pair per run of a part.
@compute @workgroup_size(256)
fn minmax(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = flat_group(wid, nwg) * WG + lid;
    let first = t * 32u;
    if first >= P.count {
        return;
    }
    let n = min(32u, P.count - first);
    var cur = 0xffffffffu;
    var lo = 0xffffffffu;
    var hi = 0u;
    for (var j = 0u; j < n; j++) {
        let i = first + j;
        let p = part_of(i);
        if p != cur {
            if cur != 0xffffffffu && lo <= hi {
                atomicMin(&counter[2u * cur], lo);
                atomicMax(&counter[2u * cur + 1u], hi);
            }
            cur = p;
            lo = 0xffffffffu;
            hi = 0u;
        }
        let b = load_x(i);
        if ((b >> 23u) & 0xffu) != 0xffu {
            let key = select(b | 0x80000000u, ~b, (b >> 31u) != 0u);
            lo = min(lo, key);
            hi = max(hi, key);
        }
    }
    if lo <= hi {
        atomicMin(&counter[2u * cur], lo);
        atomicMax(&counter[2u * cur + 1u], hi);
    }
    if t == 0xffffffffu {
        out[0] = parts[0].x; // keeps bindings 4 and 5 in the layout
    }
}
