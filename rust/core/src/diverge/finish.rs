//! The last step of each kind: a row's value from its float64 sums.
//!
//! The CPU kernels ([`super::fast`]) and the GPU kernels (crate
//! `quantdrift-gpu`, whose host side finishes rows from the sums a shader
//! wrote) share these, so that both evaluate the same formulas. `None`
//! sends the row to the float64 [`super::reference`].

/// KL(P‖Q) from the sums of the shifted form (see [`super::fast`]):
/// `sp` = Σw, `sq` = Σv, `su` = Σw·u, `sr` = Σ w·(e^(−u) − 1 + u), with
/// u = a − b + `shift`. `robust`: e^(−shift) was finite; `sq_complete`:
/// `sq` covers the whole row.
pub fn kl(
    sp: f64,
    sq: f64,
    su: f64,
    sr: f64,
    shift: f32,
    robust: bool,
    sq_complete: bool,
) -> Option<f64> {
    let mean_u = su / sp;
    let excess = (sr - su) / sp; // E_P[e^(−u)] − 1
    let log_mean_exp = if robust && excess.is_finite() && excess > -0.5 {
        excess.ln_1p()
    } else if sq_complete {
        sq.ln() - sp.ln() - shift as f64
    } else {
        return None;
    };
    let value = mean_u + log_mean_exp;
    value.is_finite().then_some(value.max(0.0))
}

/// H(P) = ln Sp − Σ w·a / Sp.
pub fn entropy(sp: f64, swa: f64) -> f64 {
    (sp.ln() - swa / sp).max(0.0)
}

/// H(P, Q) = ln Sq − Σ w·b / Sp, or `None` where that is not finite: the
/// caller has returned +inf already where Q = 0 under P > 0, so an infinite
/// sum here is a float32 overflow (Σ w·b past f32::MAX) of a row whose
/// value the float64 reference finds.
pub fn cross_entropy(sp: f64, sq: f64, swb: f64) -> Option<f64> {
    let value = (sq.ln() - swb / sp).max(0.0);
    value.is_finite().then_some(value)
}

/// Jensen–Shannon from Σ (P+Q)·g(δ).
pub fn js(total: f64) -> f64 {
    (total / 4.0).clamp(0.0, std::f64::consts::LN_2)
}

/// Total variation from Σ |P − Q|.
pub fn tv(total: f64) -> f64 {
    (total / 2.0).min(1.0)
}

/// Squared Hellinger from Σ (√P − √Q)².
pub fn hellinger(total: f64) -> f64 {
    total.min(2.0)
}

/// Pearson χ² from Σ (P − Q)²/Q.
pub fn chi2(total: f64) -> f64 {
    total.max(0.0)
}

/// Rényi of order α from Σ P[(Q/P)^β − 1 − β(Q/P − 1)], β = 1 − α, and
/// `alpha_minus_one` = α − 1 in float64 (orders within 6e-8 of 1 are 1 in
/// float32, and the quotient needs their distance from 1).
pub fn renyi(total: f64, alpha_minus_one: f64) -> Option<f64> {
    // NaN fails `total > -0.5` and goes to the reference too.
    if total.partial_cmp(&-0.5) != Some(std::cmp::Ordering::Greater) || !total.is_finite() {
        return None;
    }
    Some((total.ln_1p() / alpha_minus_one).max(0.0))
}
