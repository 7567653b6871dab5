//! The vectorised kernels against the float64 reference on the same inputs.

use quantdrift_core::diverge::{divergence_rows, Inputs, Kind, Options};
use quantdrift_core::Rows;
use rand::{rngs::StdRng, Rng, SeedableRng};

const KINDS: [Kind; 10] = [
    Kind::Kl,
    Kind::ReverseKl,
    Kind::Js,
    Kind::Tv,
    Kind::Hellinger,
    Kind::Chi2,
    Kind::Renyi(0.5),
    Kind::Renyi(2.0),
    Kind::CrossEntropy,
    Kind::Entropy,
];

fn logits(rng: &mut StdRng, rows: usize, vocab: usize, scale: f32, neg_inf: bool) -> Vec<f32> {
    (0..rows * vocab)
        .map(|i| {
            if neg_inf && i % vocab != 0 && rng.random::<f32>() < 0.05 {
                f32::NEG_INFINITY
            } else {
                let g: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum();
                g * scale
            }
        })
        .collect()
}

fn close(got: f64, want: f64) -> bool {
    if want.is_infinite() || got.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= 1e-5 * want.abs() + 1e-7
}

fn check(kind: Kind, p: &[f32], q: &[f32], vocab: usize, temperature: f64) {
    let opts = Options {
        kind,
        inputs: Inputs::Logits,
        temperature,
    };
    let fast = divergence_rows(
        Rows::new_f32(p, vocab).unwrap(),
        Some(Rows::new_f32(q, vocab).unwrap()),
        &opts,
    )
    .unwrap();
    let p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
    let q64: Vec<f64> = q.iter().map(|&x| x as f64).collect();
    let slow = divergence_rows(
        Rows::new_f64(&p64, vocab).unwrap(),
        Some(Rows::new_f64(&q64, vocab).unwrap()),
        &opts,
    )
    .unwrap();
    for (r, (g, w)) in fast.iter().zip(&slow).enumerate() {
        assert!(
            close(*g, *w),
            "{kind:?} vocab {vocab} row {r}: fast {g:e} reference {w:e}"
        );
    }
}

#[test]
fn fast_kernels_match_the_reference() {
    let mut rng = StdRng::seed_from_u64(7);
    for &vocab in &[1usize, 2, 7, 16, 17, 1000, 4099] {
        for &scale in &[1e-3f32, 1.0, 30.0, 1e4] {
            for &neg_inf in &[false, true] {
                let rows = 6;
                let p = logits(&mut rng, rows, vocab, scale, neg_inf);
                let mut q = logits(&mut rng, rows, vocab, scale, neg_inf);
                // Make some rows near-identical: tiny divergences stress cancellation.
                for j in 0..vocab {
                    q[j] = p[j] + 1e-3 * (rng.random::<f32>() - 0.5);
                }
                // And one where most blocks are near-equal but a few entries
                // differ a lot, so fast and general blocks mix in one row.
                for j in 0..vocab {
                    q[vocab + j] = p[vocab + j] + 1e-2 * (rng.random::<f32>() - 0.5);
                    if j % 997 == 3 {
                        q[vocab + j] += 5.0;
                    }
                }
                for kind in KINDS {
                    check(kind, &p, &q, vocab, 1.0);
                }
                check(Kind::Kl, &p, &q, vocab, 2.5);
                check(Kind::Js, &p, &q, vocab, 0.7);
            }
        }
    }
}

#[test]
fn identical_rows_give_zero() {
    let mut rng = StdRng::seed_from_u64(3);
    let p = logits(&mut rng, 4, 333, 5.0, true);
    for kind in KINDS {
        if kind == Kind::Entropy || kind == Kind::CrossEntropy {
            continue;
        }
        let opts = Options {
            kind,
            inputs: Inputs::Logits,
            temperature: 1.0,
        };
        let rows = Rows::new_f32(&p, 333).unwrap();
        for v in divergence_rows(rows, Some(rows), &opts).unwrap() {
            assert!(v.abs() < 1e-7, "{kind:?} of identical rows is {v}");
        }
    }
}

#[test]
fn rows_whose_shifted_scores_overflow_float32_take_the_reference() {
    // (q − max q)/τ below −f32::MAX for finite q: the kernels must not read
    // the overflowed −inf as Q = 0 (or P = 0), or sum w·b past f32::MAX.
    let big = 3e38f32;
    let kinds = KINDS.iter().copied().chain(
        [1e-6, 1e-3, 0.3, 0.999, 1.001, 3.0, 50.0]
            .iter()
            .map(|&alpha| Kind::Renyi(alpha)),
    );
    let p = [big, -big, 0.0, f32::NEG_INFINITY];
    let q = [-big, big, 1.0, f32::NEG_INFINITY];
    let mut rng = StdRng::seed_from_u64(5);
    let wide_p: Vec<f32> = (0..600)
        .map(|_| (rng.random::<f32>() - 0.5) * 2e37)
        .collect();
    let wide_q: Vec<f32> = wide_p.iter().map(|x| x * 0.9 + 1e35).collect();
    for kind in kinds {
        check(kind, &p, &q, 4, 1.0);
        check(kind, &q, &p, 4, 1.0);
        check(kind, &wide_p, &wide_q, 600, 0.01);
        check(kind, &wide_p, &wide_q, 300, 0.5);
    }
    // By hand: P = (1, 0, 0, 0) and Q = (e^(−6e38), 1, e^(1−3e38), 0) to
    // float64 precision, so H(P, Q) = −ln Q₀ = 2·big (the rest of ln Σ e^q
    // is below its ulp), χ² ≥ P₀²/Q₀ − 1 = +inf, and P, Q are disjoint in
    // effect: TV = 1, JS = ln 2, squared Hellinger = 2.
    let two_big = 2.0 * big as f64;
    for (kind, want) in [
        (Kind::CrossEntropy, two_big),
        (Kind::Kl, two_big),
        (Kind::Chi2, f64::INFINITY),
        (Kind::Tv, 1.0),
        (Kind::Js, std::f64::consts::LN_2),
        (Kind::Hellinger, 2.0),
    ] {
        let opts = Options {
            kind,
            inputs: Inputs::Logits,
            temperature: 1.0,
        };
        let rows = (Rows::new_f32(&p, 4).unwrap(), Rows::new_f32(&q, 4).unwrap());
        let got = divergence_rows(rows.0, Some(rows.1), &opts).unwrap()[0];
        assert!(close(got, want), "{kind:?}: {got:e}, by hand {want:e}");
    }
}

#[test]
fn renyi_of_a_tiny_order_keeps_its_digits_where_p_underflows() {
    // Half the tokens have P below float32's range (p ≈ −150..−300 under a
    // max near 0) but Q of a few percent: there P·B(y) ≈ Q·α·(1 − y) must
    // not be left as the difference of P^α·Q^β and βQ, both of size Q.
    let vocab = 2048;
    let mut rng = StdRng::seed_from_u64(11);
    let (mut p, mut q) = (Vec::new(), Vec::new());
    for i in 0..2 * vocab {
        let (u, v) = (rng.random::<f32>(), rng.random::<f32>());
        if i % 2 == 0 {
            p.push(u * 20.0 - 20.0);
            q.push(p[i] + (v - 0.5) * 10.0);
        } else {
            p.push(-150.0 - u * 150.0);
            q.push(-v * 10.0);
        }
    }
    // Oracle: ln Σ e^(α·ln P + β·ln Q) / (α − 1) in float64, P > 0 everywhere.
    let log_softmax = |row: &[f32]| -> Vec<f64> {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        row.iter().map(|&x| x as f64 - max - sum.ln()).collect()
    };
    for alpha in [1e-6, 1e-5, 1e-4, 1e-2] {
        let opts = Options {
            kind: Kind::Renyi(alpha),
            inputs: Inputs::Logits,
            temperature: 1.0,
        };
        let rows = (
            Rows::new_f32(&p, vocab).unwrap(),
            Rows::new_f32(&q, vocab).unwrap(),
        );
        let got = divergence_rows(rows.0, Some(rows.1), &opts).unwrap();
        for r in 0..2 {
            let (lp, lq) = (
                log_softmax(&p[r * vocab..(r + 1) * vocab]),
                log_softmax(&q[r * vocab..(r + 1) * vocab]),
            );
            let sum: f64 = lp
                .iter()
                .zip(&lq)
                .map(|(a, b)| (alpha * a + (1.0 - alpha) * b).exp())
                .sum();
            let want = (sum - 1.0).ln_1p() / (alpha - 1.0);
            let err = (got[r] - want).abs() / want;
            assert!(
                err < 1e-5,
                "alpha {alpha} row {r}: {:e} vs {want:e}, rel {err:e}",
                got[r]
            );
        }
    }
}

#[test]
fn support_violations_are_infinite() {
    let p = [0.0f32, 0.0, 0.0];
    let q = [0.0f32, f32::NEG_INFINITY, 0.0];
    let (pr, qr) = (Rows::new_f32(&p, 3).unwrap(), Rows::new_f32(&q, 3).unwrap());
    for kind in [Kind::Kl, Kind::Chi2, Kind::Renyi(2.0), Kind::CrossEntropy] {
        let opts = Options {
            kind,
            inputs: Inputs::Logits,
            temperature: 1.0,
        };
        assert_eq!(
            divergence_rows(pr, Some(qr), &opts).unwrap()[0],
            f64::INFINITY,
            "{kind:?}"
        );
    }
    let opts = Options {
        kind: Kind::ReverseKl,
        inputs: Inputs::Logits,
        temperature: 1.0,
    };
    let v = divergence_rows(pr, Some(qr), &opts).unwrap()[0];
    assert!((v - (1.5f64).ln()).abs() < 1e-7, "reverse KL {v}");
}

#[test]
fn bad_rows_are_named() {
    let p = [0.0f32, 1.0, 0.0, f32::NAN];
    let q = [0.0f32; 4];
    let opts = Options {
        kind: Kind::Kl,
        inputs: Inputs::Logits,
        temperature: 1.0,
    };
    let err = divergence_rows(
        Rows::new_f32(&p, 2).unwrap(),
        Some(Rows::new_f32(&q, 2).unwrap()),
        &opts,
    )
    .unwrap_err();
    assert!(err.to_string().contains("p row 1"), "{err}");
}
