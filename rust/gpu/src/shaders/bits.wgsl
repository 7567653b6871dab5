// Integer helpers shared by the exact float-format and quantization
// shaders: 64-bit values as vec2<u32>(low, high), float16 widening on bit
// patterns, and the CPU's counter-based random draws.

fn clz64(v: vec2<u32>) -> u32 {
    if v.y != 0u {
        return countLeadingZeros(v.y);
    }
    return 32u + countLeadingZeros(v.x);
}

// v >> s for any s (WGSL shifts take s mod 32, so every case is spelled out).
fn shr64(v: vec2<u32>, s: u32) -> vec2<u32> {
    if s == 0u {
        return v;
    }
    if s >= 64u {
        return vec2<u32>(0u, 0u);
    }
    if s >= 32u {
        return vec2<u32>(v.y >> (s - 32u), 0u);
    }
    return vec2<u32>((v.x >> s) | (v.y << (32u - s)), v.y >> s);
}

// v << s for any s.
fn shl64(v: vec2<u32>, s: u32) -> vec2<u32> {
    if s == 0u {
        return v;
    }
    if s >= 64u {
        return vec2<u32>(0u, 0u);
    }
    if s >= 32u {
        return vec2<u32>(0u, v.x << (s - 32u));
    }
    return vec2<u32>(v.x << s, (v.y << s) | (v.x >> (32u - s)));
}

// v & (2^s - 1) for any s.
fn low_bits64(v: vec2<u32>, s: u32) -> vec2<u32> {
    if s >= 64u {
        return v;
    }
    if s >= 32u {
        return vec2<u32>(v.x, v.y & ((1u << (s - 32u)) - 1u));
    }
    return vec2<u32>(v.x & ((1u << s) - 1u), 0u);
}

// a + b on 64-bit (low, high) pairs (mod 2^64).
fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

fn is_zero64(v: vec2<u32>) -> bool {
    return (v.x | v.y) == 0u;
}

// The CPU's integer hash (lowp/codec.rs), the core of the stochastic draws.
fn lowbias32(x0: u32) -> u32 {
    var x = x0;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

// The draw of element `index` (64-bit, as (low, high)).
fn random_u32(key: vec2<u32>, index: vec2<u32>) -> u32 {
    let hi = index.y * 0x9e3779b9u;
    return lowbias32(lowbias32(index.x ^ key.x) ^ key.y ^ hi);
}

// float16 bits to float32 bits, exactly (payloads kept, as rows::f16_to_f32).
fn f16_bits_to_f32(h: u32) -> u32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let f = h & 0x3ffu;
    if e == 31u {
        return sign | 0x7f800000u | (f << 13u);
    }
    if e == 0u {
        if f == 0u {
            return sign;
        }
        let p = 31u - countLeadingZeros(f); // value = f · 2^-24, top bit p
        return sign | ((p + 103u) << 23u) | ((f << (23u - p)) & 0x7fffffu);
    }
    return sign | ((e + 112u) << 23u) | (f << 13u);
}
