// Top-k overlap of the comparison: for each requested k (1 < k < vocab),
// |top-k(p) ∩ top-k(q)|, with the CPU's order: larger score first, equal
// scores by lower index. The k-th largest score of each side comes from a
// radix select on order-preserving keys (4 passes of 8-bit histograms);
// where the k-th place falls inside a run of equal scores, a scan in index
// order finds the last index that still belongs.
//
// Output per row: n_sizes u32 counts (0 for sizes the host handles).

@group(0) @binding(3) var<storage, read_write> out: array<u32>;

var<workgroup> hist: array<atomic<u32>, 512>;
// Per side (p at 0, q at 1): key prefix, places still to fill, equal keys.
var<workgroup> prefix: array<u32, 2>;
var<workgroup> need: array<u32, 2>;
var<workgroup> equal: array<u32, 2>;
var<workgroup> cutoff: u32;
var<workgroup> ranks: array<u32, 256>;

// Larger scores get larger keys; −0 and +0 share a key, as they compare equal.
fn key_of(x: f32) -> u32 {
    let b = bitcast<u32>(select(x, 0.0, x == 0.0));
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn key_at(side: u32, r: u32, i: u32) -> u32 {
    if side == 0u {
        return key_of(p_at(r, i));
    }
    return key_of(q_at(r, i));
}

// The last index whose key equals `t` among the first `n` such indices of
// side `side` (uniform arguments; every invocation must call it).
fn nth_equal(side: u32, r: u32, t: u32, n: u32, lid: u32) -> u32 {
    var seen = 0u;
    for (var start = 0u; start < params.vocab; start += WG) {
        let i = start + lid;
        let e = select(0u, 1u, i < params.vocab && key_at(side, r, i) == t);
        ranks[lid] = e;
        workgroupBarrier();
        // Inclusive prefix sums (Hillis–Steele).
        for (var s = 1u; s < WG; s <<= 1u) {
            let add = select(0u, ranks[lid - s], lid >= s);
            workgroupBarrier();
            ranks[lid] += add;
            workgroupBarrier();
        }
        if e == 1u && seen + ranks[lid] == n {
            cutoff = i;
        }
        let total = workgroupUniformLoad(&ranks[WG - 1u]);
        if seen + total >= n {
            break;
        }
        seen += total;
    }
    return workgroupUniformLoad(&cutoff);
}

@compute @workgroup_size(256)
fn overlap(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = flat_group(wid, nwg);
    if r >= params.rows {
        return;
    }
    let v = params.vocab;
    for (var s = 0u; s < params.n_sizes; s++) {
        let k = params.sizes[s / 4u][s % 4u];
        if k <= 1u || k >= v {
            if lid == 0u {
                out[r * params.n_sizes + s] = 0u;
            }
            continue;
        }
        if lid < 2u {
            prefix[lid] = 0u;
            need[lid] = k;
        }
        for (var stage = 0u; stage < 4u; stage++) {
            let shift = 24u - 8u * stage;
            // Bits above this stage's digit must match the prefix so far.
            let high = select(0xffffffffu << (shift + 8u), 0u, stage == 0u);
            atomicStore(&hist[lid], 0u);
            atomicStore(&hist[lid + WG], 0u);
            workgroupBarrier();
            let pre_p = prefix[0];
            let pre_q = prefix[1];
            for (var i = lid; i < v; i += WG) {
                let kp = key_of(p_at(r, i));
                let kq = key_of(q_at(r, i));
                if (kp & high) == pre_p {
                    atomicAdd(&hist[(kp >> shift) & 255u], 1u);
                }
                if (kq & high) == pre_q {
                    atomicAdd(&hist[WG + ((kq >> shift) & 255u)], 1u);
                }
            }
            workgroupBarrier();
            if lid < 2u {
                // The digit of the k-th largest key: walk down from 255.
                var above = 0u;
                var d = 255u;
                loop {
                    let h = atomicLoad(&hist[lid * WG + d]);
                    if above + h >= need[lid] || d == 0u {
                        need[lid] -= above;
                        equal[lid] = h;
                        break;
                    }
                    above += h;
                    d -= 1u;
                }
                prefix[lid] |= d << shift;
            }
            workgroupBarrier();
        }
        let t_p = workgroupUniformLoad(&prefix[0]);
        let t_q = workgroupUniformLoad(&prefix[1]);
        let n_p = workgroupUniformLoad(&need[0]);
        let n_q = workgroupUniformLoad(&need[1]);
        let e_p = workgroupUniformLoad(&equal[0]);
        let e_q = workgroupUniformLoad(&equal[1]);
        var cut_p = 0xffffffffu;
        var cut_q = 0xffffffffu;
        if n_p < e_p {
            cut_p = nth_equal(0u, r, t_p, n_p, lid);
        }
        if n_q < e_q {
            cut_q = nth_equal(1u, r, t_q, n_q, lid);
        }
        var both_in = 0u;
        for (var i = lid; i < v; i += WG) {
            let kp = key_of(p_at(r, i));
            let kq = key_of(q_at(r, i));
            let in_p = kp > t_p || (kp == t_p && i <= cut_p);
            let in_q = kq > t_q || (kq == t_q && i <= cut_q);
            both_in += select(0u, 1u, in_p && in_q);
        }
        // Counts stay below 2^24: exact in float32.
        let total = wg_sum(f32(both_in), lid);
        if lid == 0u {
            out[r * params.n_sizes + s] = u32(total);
        }
    }
}
