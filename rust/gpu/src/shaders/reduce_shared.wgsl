// Workgroup reductions through shared memory (a tree of WG/2, WG/4, ... adds,
// a barrier after every step). Every invocation must call them, in uniform
// control flow; every invocation gets the result.

var<workgroup> qd_partial: array<f32, 256>;

fn wg_sum(v: f32, lid: u32) -> f32 {
    qd_partial[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            qd_partial[lid] += qd_partial[lid + stride];
        }
        workgroupBarrier();
    }
    return workgroupUniformLoad(&qd_partial[0]);
}

fn wg_max(v: f32, lid: u32) -> f32 {
    qd_partial[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            qd_partial[lid] = max(qd_partial[lid], qd_partial[lid + stride]);
        }
        workgroupBarrier();
    }
    return workgroupUniformLoad(&qd_partial[0]);
}

fn wg_min(v: f32, lid: u32) -> f32 {
    return -wg_max(-v, lid);
}
