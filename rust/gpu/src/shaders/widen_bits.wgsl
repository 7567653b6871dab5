// 16-bit floats widened with integer arithmetic, for adapters without
// shader-f16. Exact for every code: subnormals, infinities and NaNs included.

// Low (`hi == false`) or high half of a packed pair of float16 codes as float32.
fn f16_to_f32(pair: u32, hi: bool) -> f32 {
    let h = select(pair & 0xffffu, pair >> 16u, hi);
    let sign = (h & 0x8000u) << 16u;
    let exp = (h >> 10u) & 0x1fu;
    let man = h & 0x3ffu;
    if exp == 0x1fu {
        return bitcast<f32>(sign | 0x7f800000u | (man << 13u));
    }
    if exp == 0u {
        // man · 2^-24, exact in float32; the sign survives for ±0.
        let magnitude = f32(man) * 5.9604644775390625e-8;
        return bitcast<f32>(sign | bitcast<u32>(magnitude));
    }
    return bitcast<f32>(sign | ((exp + 112u) << 23u) | (man << 13u));
}
