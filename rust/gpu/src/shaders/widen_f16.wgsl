// 16-bit floats widened by the hardware (shader-f16 present).

// Low (`hi == false`) or high half of a packed pair of float16 codes as float32.
fn f16_to_f32(pair: u32, hi: bool) -> f32 {
    let halves = unpack2x16float(pair);
    return select(halves.x, halves.y, hi);
}
