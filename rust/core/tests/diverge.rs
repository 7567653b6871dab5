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
