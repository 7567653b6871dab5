// Float-format decode by table lookup: the host builds the table from the
// CPU decoder, so the GPU's values are the CPU's, bit for bit.

struct Params {
    count: u32,      // codes in this chunk
    code_bytes: u32, // 1 or 2
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;  // packed little-endian
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn decode(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_group(wid, nwg) * WG + lid;
    if i >= params.count {
        return;
    }
    var code: u32;
    if params.code_bytes == 1u {
        code = (codes[i / 4u] >> ((i % 4u) * 8u)) & 0xffu;
    } else {
        code = (codes[i / 2u] >> ((i % 2u) * 16u)) & 0xffffu;
    }
    out[i] = table[code];
}
