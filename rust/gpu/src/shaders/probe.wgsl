// Start-up check of the subgroup layout the subgroup reductions assume:
// out[lid] = 1 when invocation lid sits at lane lid % S of subgroup lid / S.

@group(0) @binding(0) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn subgroup_layout(@builtin(local_invocation_index) lid: u32) {
    let width = subgroupAdd(1u);
    let lane = subgroupExclusiveAdd(1u);
    let first = subgroupBroadcastFirst(lid);
    let ok = width > 0u && (WG % width) == 0u && lane == lid % width && first == lid - lid % width;
    out[lid] = select(0u, 1u, ok);
}
