// Pass 2 of the comparison: per row and block, the sums that give KL, the
// reverse KL and JS in the cancellation-free forms of the CPU kernel
// (rust/core/src/diverge/compare.rs, `two_passes`), term for term:
// Σ w·u, Σ remainder (KL), Σ v·(−u), Σ remainder (reverse KL), Σ (P+Q)·g(δ).
// The host supplies per row the maxima, the shift and e^(∓shift) and the
// float32 reciprocals of the pass-1 totals, as the CPU computes them.
//
// Output per row: 5 × nb float32 sums (kind-major).

struct Row {
    max_p: f32,
    max_q: f32,
    shift: f32,
    k: f32,
    k_r: f32,
    inv_sp: f32,
    inv_sq: f32,
    _pad: f32,
}

@group(0) @binding(3) var<storage, read> row_params: array<Row>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const SERIES_LIMIT: f32 = 1.0;
const JS_WIDE_LIMIT: f32 = 0.5;

// g(δ) = (1+δ)ln(1+δ) + (1−δ)ln(1−δ) from its series to δ^20 (|δ| < 1/2).
fn js_series_wide(delta: f32) -> f32 {
    let d2 = delta * delta;
    var p = 1.0 / 190.0;
    p = fma(p, d2, 1.0 / 153.0);
    p = fma(p, d2, 1.0 / 120.0);
    p = fma(p, d2, 1.0 / 91.0);
    p = fma(p, d2, 1.0 / 66.0);
    p = fma(p, d2, 1.0 / 45.0);
    p = fma(p, d2, 1.0 / 28.0);
    p = fma(p, d2, 1.0 / 15.0);
    p = fma(p, d2, 1.0 / 6.0);
    p = fma(p, d2, 1.0);
    return p * d2;
}

// g(δ) from logarithms (|δ| ≥ 1/2, where ln(1 ± δ) loses nothing).
fn js_logs(delta: f32) -> f32 {
    let plus = 1.0 + delta;
    let minus = 1.0 - delta;
    let t_plus = select(plus * qd_ln_1p(delta), 0.0, plus == 0.0);
    let t_minus = select(minus * qd_ln_1p(-delta), 0.0, minus == 0.0);
    return t_plus + t_minus;
}

@compute @workgroup_size(256)
fn sums(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = flat_group(wid, nwg);
    if r >= params.rows {
        return;
    }
    let rp = row_params[r];
    let v_len = params.vocab;
    let inv_t = params.inv_t;
    let nb = params.nb;
    let o = r * 5u * nb;
    for (var b = 0u; b < nb; b++) {
        var s_wu = 0.0;
        var s_rem = 0.0;
        var s_vu = 0.0;
        var s_rem_r = 0.0;
        var s_js = 0.0;
        for (var j = 0u; j < BLK; j += WG) {
            let i = b * BLK + j + lid;
            if i >= v_len {
                continue;
            }
            let a = (p_at(r, i) - rp.max_p) * inv_t;
            let bb = (q_at(r, i) - rp.max_q) * inv_t;
            let w = exp_nonpositive(a);
            let v = exp_nonpositive(bb);
            if !(w > 0.0 || v > 0.0) {
                continue;
            }
            let u = a - bb + rp.shift;
            let u2 = u * u;
            var e = 1.0 / 3628800.0;
            e = fma(e, u2, 1.0 / 40320.0);
            e = fma(e, u2, 1.0 / 720.0);
            e = fma(e, u2, 1.0 / 24.0);
            e = fma(e, u2, 0.5);
            var od = 1.0 / 39916800.0;
            od = fma(od, u2, 1.0 / 362880.0);
            od = fma(od, u2, 1.0 / 5040.0);
            od = fma(od, u2, 1.0 / 120.0);
            od = fma(od, u2, 1.0 / 6.0);
            let even = e * u2;
            let odd = od * u2 * u;
            let series = abs(u) <= SERIES_LIMIT;
            if w > 0.0 {
                let w_u = w * u;
                s_wu += w_u;
                s_rem += select(v * rp.k - w + w_u, w * (even - odd), series);
            } else {
                s_rem += v * rp.k;
            }
            if v > 0.0 {
                let v_u = -(v * u);
                s_vu += v_u;
                s_rem_r += select(w * rp.k_r - v + v_u, v * (even + odd), series);
            } else {
                s_rem_r += w * rp.k_r;
            }
            let pp = w * rp.inv_sp;
            let qq = v * rp.inv_sq;
            let sum = pp + qq;
            if sum > 0.0 {
                let delta = (pp - qq) / sum;
                let g = select(js_logs(delta), js_series_wide(delta), abs(delta) < JS_WIDE_LIMIT);
                s_js += sum * g;
            }
        }
        let t_wu = wg_sum(s_wu, lid);
        let t_rem = wg_sum(s_rem, lid);
        let t_vu = wg_sum(s_vu, lid);
        let t_rem_r = wg_sum(s_rem_r, lid);
        let t_js = wg_sum(s_js, lid);
        if lid == 0u {
            out[o + b] = t_wu;
            out[o + nb + b] = t_rem;
            out[o + 2u * nb + b] = t_vu;
            out[o + 3u * nb + b] = t_rem_r;
            out[o + 4u * nb + b] = t_js;
        }
    }
}
