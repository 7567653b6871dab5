// Workgroup reductions with subgroup operations: each subgroup reduces in
// registers, then the first subgroup reduces the per-subgroup partials, so
// a 256-wide sum takes two barrier rounds instead of eight. The context
// checks at start-up that subgroup k holds local indices [k·S, (k+1)·S), as
// these reductions assume, and uses the shared-memory ones otherwise. Every
// invocation must call them, in uniform control flow; every invocation gets
// the result.

var<workgroup> qd_partial: array<f32, 256>;
var<workgroup> qd_width: u32;

// Subgroup width S, uniform over the workgroup.
fn qd_subgroup_width(lid: u32) -> u32 {
    let width = subgroupAdd(1u);
    if lid == 0u {
        qd_width = width;
    }
    return workgroupUniformLoad(&qd_width);
}

fn wg_sum(v: f32, lid: u32) -> f32 {
    let width = qd_subgroup_width(lid);
    var x = subgroupAdd(v);
    var parts = WG / width;
    while parts > 1u {
        workgroupBarrier();
        if lid % width == 0u {
            qd_partial[lid / width] = x;
        }
        workgroupBarrier();
        x = subgroupAdd(select(0.0, qd_partial[lid], lid < parts));
        parts = (parts + width - 1u) / width;
    }
    workgroupBarrier();
    if lid == 0u {
        qd_partial[0] = x;
    }
    return workgroupUniformLoad(&qd_partial[0]);
}

fn wg_max(v: f32, lid: u32) -> f32 {
    let width = qd_subgroup_width(lid);
    var x = subgroupMax(v);
    var parts = WG / width;
    while parts > 1u {
        workgroupBarrier();
        if lid % width == 0u {
            qd_partial[lid / width] = x;
        }
        workgroupBarrier();
        // Lanes past the partials repeat the last one, which leaves the max alone.
        x = subgroupMax(qd_partial[min(lid, parts - 1u)]);
        parts = (parts + width - 1u) / width;
    }
    workgroupBarrier();
    if lid == 0u {
        qd_partial[0] = x;
    }
    return workgroupUniformLoad(&qd_partial[0]);
}

fn wg_min(v: f32, lid: u32) -> f32 {
    return -wg_max(-v, lid);
}
