// MX and NVFP4 encoding (lowp/mx.rs, lowp/nvfp4.rs): one invocation per
// block computes the block's amax and scale, then the codes of its elements.
// Blocks of any length (and ragged last blocks) share output words with
// their neighbours, so codes and scales are OR-ed into zeroed buffers.

struct Params {
    blocks: u32,          // blocks in this chunk
    row_len: u32,         // elements per row
    block: u32,           // elements per block
    blocks_per_row: u32,
    first_block_col: u32, // block column of the chunk's first block
    in_kind: u32,         // 0 float32, 1 float16, 2 bfloat16, 3 float64 (NVFP4 only)
    int8: u32,            // MX: int8 elements
    emax: i32,            // MX: emax of the element
    mbits: u32,           // MX: mantissa bits of the element's top binade
    scale_mode: u32,      // MX: 0 floor, 1 ceil, 2 even, 3 rceil
    elem_max: u32,        // MX: float32 bits of the element's max
    pts: u32,             // NVFP4: float32 bits of the per-tensor scale
    has_pts: u32,         // NVFP4: two-level scaling
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> xin: array<u32>;
@group(0) @binding(2) var<storage, read> codecs: array<Codec>;
@group(0) @binding(3) var<storage, read_write> codes: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> scales: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read> table: array<u32>; // NVFP4: e4m3 values

// Float32 bits of local element i.
fn load_f32(i: u32) -> u32 {
    switch params.in_kind {
        case 0u: {
            return xin[i];
        }
        case 1u: {
            return f16_bits_to_f32((xin[i / 2u] >> ((i % 2u) * 16u)) & 0xffffu);
        }
        case 2u: {
            return ((xin[i / 2u] >> ((i % 2u) * 16u)) & 0xffffu) << 16u;
        }
        default: {
            return f64_bits_to_f32(xin[2u * i], xin[2u * i + 1u]);
        }
    }
}

// (first local element, length) of local block lb.
fn block_span(lb: u32) -> vec2<u32> {
    let total = params.first_block_col + lb;
    let row = total / params.blocks_per_row;
    let col = total % params.blocks_per_row;
    let start = row * params.row_len + col * params.block - params.first_block_col * params.block;
    return vec2<u32>(start, min(params.block, params.row_len - col * params.block));
}

fn put_byte(i: u32, byte: u32) {
    atomicOr(&codes[i / 4u], (byte & 0xffu) << (8u * (i % 4u)));
}

fn put_scale(lb: u32, byte: u32) {
    atomicOr(&scales[lb / 4u], (byte & 0xffu) << (8u * (lb % 4u)));
}

// floor(log2 v) and whether v is a power of two, for finite v > 0 (bits).
fn log2_parts(v: u32) -> vec2<i32> {
    let field = v >> 23u;
    let frac = v & 0x7fffffu;
    if field == 0u {
        let p = 31u - countLeadingZeros(frac);
        return vec2<i32>(i32(p) - 149, select(0, 1, countOneBits(frac) == 1u));
    }
    return vec2<i32>(i32(field) - 127, select(0, 1, frac == 0u));
}

// mx.rs shared_exponent for a finite amax ≥ 0 given as float32 bits.
fn shared_exponent(amax: u32) -> i32 {
    if amax == 0u {
        return -127;
    }
    let parts = log2_parts(amax);
    var e: i32;
    switch params.scale_mode {
        case 0u: {
            e = parts.x - params.emax;
        }
        case 1u: {
            e = parts.x + (1 - parts.y) - params.emax;
        }
        case 2u: {
            // significand in [1, 2) as 24 bits; it rounds up to 2 at mbits
            // fraction bits (half up) iff it is >= 2 - 2^-(mbits+1).
            let sig = u32(unpack_normalized(amax).x);
            let bump = sig >= 0x1000000u - (1u << (22u - params.mbits));
            e = parts.x + select(0, 1, bump) - params.emax;
        }
        default: {
            // ceil(log2(amax / max)) with the division rounded in float32.
            let q = sf_div(amax, params.elem_max);
            if q == 0u {
                return -127;
            }
            let qp = log2_parts(q);
            e = qp.x + (1 - qp.y);
        }
    }
    return clamp(e, -127, 127);
}

// round_ties_even(v).clamp(-127, 127) as an int8 byte, for finite v (bits).
fn int8_code(v: u32) -> u32 {
    let neg = (v >> 31u) != 0u;
    let a = v & 0x7fffffffu;
    var q: u32;
    if a >= 0x43000000u {
        q = 127u; // |v| >= 128
    } else if a < 0x3f000000u {
        q = 0u; // |v| < 0.5
    } else {
        let field = a >> 23u; // 126..134
        let sig = (a & 0x7fffffu) | 0x800000u;
        let s = 150u - field; // 16..24
        let t = sig >> s;
        let rem = sig & ((1u << s) - 1u);
        let half = 1u << (s - 1u);
        q = t + select(0u, 1u, rem > half || (rem == half && (t & 1u) == 1u));
        q = min(q, 127u);
    }
    return select(q, (256u - q) & 0xffu, neg);
}

@compute @workgroup_size(256)
fn mx_encode(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let lb = flat_group(wid, nwg) * WG + lid;
    if lb >= params.blocks {
        return;
    }
    let span = block_span(lb);
    var amax = 0u;
    var finite = true;
    for (var t = 0u; t < span.y; t++) {
        let a = load_f32(span.x + t) & 0x7fffffffu;
        finite = finite && a < 0x7f800000u;
        amax = max(amax, a);
    }
    if !finite {
        put_scale(lb, 0xffu); // NaN scale, zero codes
        return;
    }
    let e = shared_exponent(amax);
    // 2^-e as float32 (subnormal 2^-127 for e = 127); x · 2^-e as the CPU's mulss.
    var inv = u32(127 - e) << 23u;
    if e == 127 {
        inv = 0x00400000u;
    }
    let c = codecs[0];
    for (var t = 0u; t < span.y; t++) {
        let y = sf_mul(load_f32(span.x + t), inv);
        var code: u32;
        if params.int8 != 0u {
            code = int8_code(sf_mul(y, 0x42800000u)); // y · 64
        } else {
            code = encode_f32_bits(c, y, 0u);
        }
        put_byte(span.x + t, code);
    }
    put_scale(lb, u32(e + 127));
}

const E2M1_MAX: u32 = 0x40c00000u;  // 6.0
const E4M3_MAX: u32 = 0x43e00000u;  // 448.0
const E4M3_TINY: u32 = 0x3c800000u; // 2^-6
const ONE: u32 = 0x3f800000u;

@compute @workgroup_size(256)
fn nvfp4_encode(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let lb = flat_group(wid, nwg) * WG + lid;
    if lb >= params.blocks {
        return;
    }
    let span = block_span(lb);
    // float32 amax with NaN propagation (any NaN makes it f32::NAN).
    var amax = 0u;
    var nan = false;
    for (var t = 0u; t < span.y; t++) {
        let a = load_f32(span.x + t) & 0x7fffffffu;
        nan = nan || a > 0x7f800000u;
        amax = max(amax, a);
    }
    if nan {
        amax = 0x7fc00000u;
    }
    var wanted = sf_div(amax, E2M1_MAX);
    if params.has_pts != 0u {
        wanted = sf_div(wanted, params.pts);
    }
    // clamp(wanted, 2^-6, 448) keeps NaN; wanted is >= 0 or NaN.
    if !is_nan_bits(wanted) {
        wanted = min(max(wanted, E4M3_TINY), E4M3_MAX);
    }
    let scale_code = encode_f32_bits(codecs[0], wanted, 0u);
    let scale = table[scale_code];
    var multiplier: u32;
    if params.has_pts != 0u {
        multiplier = sf_div(sf_div(ONE, params.pts), scale);
    } else {
        multiplier = sf_div(ONE, scale);
    }
    let e2m1 = codecs[1];
    for (var t = 0u; t < span.y; t++) {
        var y = sf_mul(load_f32(span.x + t), multiplier);
        var code: u32;
        if is_nan_bits(y) {
            code = 0x7u | ((y >> 31u) << 3u);
        } else {
            let o = f32_order(y);
            if o > f32_order(E2M1_MAX) {
                y = E2M1_MAX;
            } else if o < -f32_order(E2M1_MAX) {
                y = E2M1_MAX | 0x80000000u;
            }
            code = encode_f32_bits(e2m1, y, 0u);
        }
        put_byte(span.x + t, code);
    }
    put_scale(lb, scale_code);
}
