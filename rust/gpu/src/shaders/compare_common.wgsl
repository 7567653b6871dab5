// The comparison kernels (shared part): one workgroup per row pair; each
// side is float32, float16 or bfloat16 scores, 16-bit codes packed two per
// u32. `off_*` is the element offset of row 0 in its buffer (0 or 1: a
// chunk of 16-bit rows may start in the high half of a word).

struct Params {
    rows: u32,
    vocab: u32,
    off_p: u32,
    off_q: u32,
    dtype_p: u32,   // 0 float32, 1 float16, 2 bfloat16
    dtype_q: u32,
    nb: u32,        // blocks of BLK elements per row
    n_sizes: u32,   // top-k sizes in `sizes`
    inv_t: f32,
    one: f32,       // 1, 1.5·2^23, 1.5·2^23: math32.wgsl's run-time constants
    magic_a: f32,
    magic_b: f32,
    sizes: array<vec4<u32>, 2>,
}

// Elements per block: 16 strides of the workgroup, summed in float32 per
// invocation, then across the workgroup; the host adds blocks in float64
// (as the CPU kernels flush float32 lane sums to float64 every 16 groups).
const BLK: u32 = 4096u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> data_p: array<u32>;
@group(0) @binding(2) var<storage, read> data_q: array<u32>;

fn load(dtype: u32, word: u32, g: u32) -> f32 {
    if dtype == 1u {
        return f16_to_f32(word, (g & 1u) == 1u);
    }
    return bf16_to_f32(word, (g & 1u) == 1u);
}

// Element i of row r of the base side.
fn p_at(r: u32, i: u32) -> f32 {
    let g = params.off_p + r * params.vocab + i;
    if params.dtype_p == 0u {
        return bitcast<f32>(data_p[g]);
    }
    return load(params.dtype_p, data_p[g >> 1u], g);
}

// Element i of row r of the other side.
fn q_at(r: u32, i: u32) -> f32 {
    let g = params.off_q + r * params.vocab + i;
    if params.dtype_q == 0u {
        return bitcast<f32>(data_q[g]);
    }
    return load(params.dtype_q, data_q[g >> 1u], g);
}

