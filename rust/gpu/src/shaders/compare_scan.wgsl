// Pass 1 of the comparison: per row, both maxima, the first index of each
// maximum, the NaN/+inf and support flags, and per block the sums of
// w = e^((p − max_p)/τ) and v = e^((q − max_q)/τ).
//
// Output per row (u32 words): max_p, max_q (float32 bits), top_p, top_q,
// flags (1 p has NaN/+inf, 2 q has NaN/+inf, 4 some P > 0 has Q = 0,
// 8 some Q > 0 has P = 0), 0, then nb sums of w and nb sums of v.

@group(0) @binding(3) var<storage, read_write> out: array<u32>;

var<workgroup> flags: atomic<u32>;

@compute @workgroup_size(256)
fn scan(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = flat_group(wid, nwg);
    // Uniform over the workgroup: whole workgroups leave together.
    if r >= params.rows {
        return;
    }
    let v = params.vocab;
    let neg = bitcast<f32>(0xff800000u | (v & 0u));
    let pos = -neg;
    if lid == 0u {
        atomicStore(&flags, 0u);
    }
    var mp = neg;
    var mq = neg;
    var ip = 0xffffffffu;
    var iq = 0xffffffffu;
    var f = 0u;
    for (var i = lid; i < v; i += WG) {
        let x = p_at(r, i);
        let y = q_at(r, i);
        // x != x: NaN. Strict > keeps each invocation's first index.
        if x > mp {
            mp = x;
            ip = i;
        }
        if y > mq {
            mq = y;
            iq = i;
        }
        if x != x || x == pos {
            f |= 1u;
        }
        if y != y || y == pos {
            f |= 2u;
        }
        if x > neg && y == neg {
            f |= 4u;
        }
        if y > neg && x == neg {
            f |= 8u;
        }
    }
    workgroupBarrier();
    if f != 0u {
        atomicOr(&flags, f);
    }
    let max_p = wg_max(mp, lid);
    let max_q = wg_max(mq, lid);
    // The first index of the maximum: each invocation's first index of its
    // own maximum, the smallest among invocations that reach the row's.
    // Indices below 2^24 are exact in float32 (the host checks the vocabulary).
    let cp = select(16777216.0, f32(ip), mp == max_p && ip != 0xffffffffu);
    let cq = select(16777216.0, f32(iq), mq == max_q && iq != 0xffffffffu);
    let top_p = wg_min(cp, lid);
    let top_q = wg_min(cq, lid);
    let stride = 6u + 2u * params.nb;
    let o = r * stride;
    if lid == 0u {
        out[o] = bitcast<u32>(max_p);
        out[o + 1u] = bitcast<u32>(max_q);
        out[o + 2u] = u32(top_p);
        out[o + 3u] = u32(top_q);
        out[o + 4u] = atomicLoad(&flags);
        out[o + 5u] = 0u;
    }
    let inv_t = params.inv_t;
    for (var b = 0u; b < params.nb; b++) {
        var sw = 0.0;
        var sv = 0.0;
        for (var j = 0u; j < BLK; j += WG) {
            let i = b * BLK + j + lid;
            if i < v {
                sw += exp_nonpositive((p_at(r, i) - max_p) * inv_t);
                sv += exp_nonpositive((q_at(r, i) - max_q) * inv_t);
            }
        }
        let tw = wg_sum(sw, lid);
        let tv = wg_sum(sv, lid);
        if lid == 0u {
            out[o + 6u + b] = bitcast<u32>(tw);
            out[o + 6u + params.nb + b] = bitcast<u32>(tv);
        }
    }
}
