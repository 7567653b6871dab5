// Shared by every kernel: the workgroup size, flat workgroup indexing over a
// 2-D dispatch grid, bfloat16 widening and workgroup reductions.

const WG: u32 = 256u;

// Flat index of a workgroup in a grid split by the host's `grid()`.
fn flat_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// Low (`hi == false`) or high half of a packed pair of bfloat16 codes as float32.
fn bf16_to_f32(pair: u32, hi: bool) -> f32 {
    return bitcast<f32>(select(pair << 16u, pair & 0xffff0000u, hi));
}
