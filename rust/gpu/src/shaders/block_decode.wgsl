// MX and NVFP4 decoding: element value (by table, built on the host from the
// CPU decoder) times the block's scale, multiplied as the CPU's mulss does.

struct Params {
    count: u32,           // elements in this chunk
    row_len: u32,
    block: u32,
    blocks_per_row: u32,
    first_block_col: u32, // block column of the chunk's first element's block
    pts: u32,             // NVFP4: float32 bits of the per-tensor scale
    has_pts: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;  // bytes, four per word
@group(0) @binding(2) var<storage, read> scales: array<u32>; // bytes, four per word
@group(0) @binding(3) var<storage, read> table: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

fn byte_at_codes(i: u32) -> u32 {
    return (codes[i / 4u] >> (8u * (i % 4u))) & 0xffu;
}

fn byte_at_scales(i: u32) -> u32 {
    return (scales[i / 4u] >> (8u * (i % 4u))) & 0xffu;
}

// Local block of local element i.
fn block_of(i: u32) -> u32 {
    let total = params.first_block_col * params.block + i;
    let row = total / params.row_len;
    let col = total % params.row_len;
    return row * params.blocks_per_row + col / params.block - params.first_block_col;
}

@compute @workgroup_size(256)
fn mx_decode(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_group(wid, nwg) * WG + lid;
    if i >= params.count {
        return;
    }
    let s = byte_at_scales(block_of(i));
    // 2^(s-127) as float32 (subnormal for s = 0), NaN for 0xFF.
    var scale = s << 23u;
    if s == 0u {
        scale = 0x00400000u;
    } else if s == 0xffu {
        scale = 0x7fc00000u;
    }
    out[i] = sf_mul(table[byte_at_codes(i)], scale);
}

@compute @workgroup_size(256)
fn nvfp4_decode(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_group(wid, nwg) * WG + lid;
    if i >= params.count {
        return;
    }
    var scale = table[byte_at_scales(block_of(i))];
    if params.has_pts != 0u {
        scale = sf_mul(scale, params.pts);
    }
    out[i] = sf_mul(table[256u + byte_at_codes(i)], scale);
}
