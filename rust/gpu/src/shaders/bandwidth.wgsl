// Reads a resident buffer once, 16 bytes per load, the way a
// bandwidth-bound kernel does: the device's memory-read roofline.

@group(0) @binding(0) var<storage, read> data: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> sink: array<u32>;

@compute @workgroup_size(256)
fn read_all(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Each invocation reads 16 vectors strided by the workgroup, so
    // neighbouring invocations read neighbouring addresses.
    let base = flat_group(wid, nwg) * WG * 16u + lid;
    var acc = vec4<u32>(0u);
    for (var k = 0u; k < 16u; k++) {
        let i = base + k * WG;
        if i < arrayLength(&data) {
            acc ^= data[i];
        }
    }
    let folded = acc.x ^ acc.y ^ acc.z ^ acc.w;
    // A data-dependent store the compiler cannot drop, almost never taken.
    if folded == 0x9e3779b9u {
        sink[0] = folded;
    }
}
