//! llama.cpp base-file rows: values derived by hand from the writer's
//! definition, and decoded rows against a float64 log-softmax.

use quantdrift_core::io::llamacpp::{
    decode_row, decode_rows, encode_row, encode_rows, row_len, row_params, DEFAULT_GAP,
};
use quantdrift_core::{CoreError, Rows};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn log_softmax_f64(logits: &[f32]) -> Vec<f64> {
    let mx = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
    let lse = mx
        + logits
            .iter()
            .map(|&l| (l as f64 - mx).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&l| l as f64 - lse).collect()
}

fn encode(logits: &[f32], gap: f32) -> Vec<u16> {
    let mut out = vec![0xffffu16; row_len(logits.len())];
    encode_row(logits, &mut out, gap);
    out
}

#[test]
fn hand_derived_row() {
    // mx = 0, min = -32 is clamped to mn = -16: the top code is 65535, the
    // clamped tokens get 0 and decode to min_log_prob = -16 - lse.
    let logits = [0.0f32, -16.0, -32.0];
    let row = encode(&logits, DEFAULT_GAP);
    let (scale, min_log_prob) = row_params(&row);
    assert_eq!(scale, 16.0f32 / 65535.0f32);
    let lse = (1.0f64 + (-16f64).exp() + (-32f64).exp()).ln();
    assert!((min_log_prob as f64 - (-16.0 - lse)).abs() < 4e-6);
    assert_eq!(&row[4..], &[65535, 0, 0, 0]); // the last 0 pads the odd vocabulary
}

#[test]
fn codes_round_half_to_even() {
    // mx - mn = 65535 / 4096 makes scale exactly 2^-12 and 1/scale 4096, so
    // l - mn = (k + 1/2) / 4096 lands on the half integer k + 1/2.
    let mn = -65535.0f32 / 4096.0;
    let logits = [
        0.0,
        mn,
        mn + 2.5 / 4096.0,
        mn + 3.5 / 4096.0,
        mn + 10.25 / 4096.0,
        mn + 10.75 / 4096.0,
    ];
    let row = encode(&logits, DEFAULT_GAP);
    assert_eq!(row_params(&row).0, 1.0 / 4096.0);
    assert_eq!(&row[4..], &[65535, 0, 2, 4, 10, 11]);
}

#[test]
fn flat_rows_have_zero_scale_and_zero_codes() {
    for logits in [&[3.0f32][..], &[1.5, 1.5, 1.5, 1.5][..]] {
        let row = encode(logits, DEFAULT_GAP);
        let (scale, min_log_prob) = row_params(&row);
        assert_eq!(scale, 0.0);
        let want = -(logits.len() as f64).ln();
        assert!((min_log_prob as f64 - want).abs() < 1e-6);
        assert!(row[4..].iter().all(|&q| q == 0));
    }
}

#[test]
fn negative_infinity_is_a_zero_probability_clamped_token() {
    let logits = [1.0f32, f32::NEG_INFINITY, 0.5];
    let row = encode(&logits, DEFAULT_GAP);
    assert_eq!(row[5], 0);
    let mut logp = [0f32; 3];
    decode_row(&row, &mut logp);
    assert!(logp.iter().all(|v| v.is_finite()));
}

#[test]
fn wider_gap_keeps_more_tokens() {
    let logits = [0.0f32, -20.0, -30.0];
    assert_eq!(encode(&logits, 16.0)[5], 0);
    let row = encode(&logits, 24.0);
    assert!(row[5] > 0);
    let (scale, _) = row_params(&row);
    assert_eq!(scale, 24.0f32 / 65535.0);
}

#[test]
fn decoded_rows_are_within_one_step_of_the_exact_log_softmax() {
    let mut rng = StdRng::seed_from_u64(5);
    for &vocab in &[1usize, 2, 7, 10, 1000, 32_001] {
        let rows = 9;
        let logits: Vec<f32> = (0..rows * vocab)
            .map(|_| rng.random_range(-6.0f32..6.0) * rng.random_range(0.1f32..4.0))
            .collect();
        let packed = encode_rows(Rows::new_f32(&logits, vocab).unwrap(), DEFAULT_GAP).unwrap();
        assert_eq!(packed.len(), rows * row_len(vocab));
        let decoded = decode_rows(&packed, vocab).unwrap();
        for r in 0..rows {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let exact = log_softmax_f64(row);
            let (scale, min_log_prob) = row_params(&packed[r * row_len(vocab)..]);
            let top = exact.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            for i in 0..vocab {
                let got = decoded[r * vocab + i] as f64;
                if exact[i] > top - 16.0 {
                    // half a step of quantisation plus float32 rounding
                    let tol = scale as f64 / 2.0 + 4.0 * f32::EPSILON as f64 * (1.0 + got.abs());
                    assert!((got - exact[i]).abs() <= tol, "vocab {vocab} row {r} i {i}");
                } else {
                    assert_eq!(got, min_log_prob as f64);
                    assert!(got >= exact[i]);
                }
            }
        }
    }
}

#[test]
fn every_dtype_widens_exactly() {
    let logits = [0.5f32, -1.25, 3.0, -7.5];
    let want = encode_rows(Rows::new_f32(&logits, 4).unwrap(), 16.0).unwrap();
    let wide: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
    let bf16: Vec<u16> = logits.iter().map(|x| (x.to_bits() >> 16) as u16).collect();
    // 0.5, -1.25, 3, -7.5 as float16 bit patterns
    let f16 = [0x3800u16, 0xbd00, 0x4200, 0xc780];
    assert_eq!(
        encode_rows(Rows::new_f64(&wide, 4).unwrap(), 16.0).unwrap(),
        want
    );
    let b = Rows::new_u16(&bf16, 4, quantdrift_core::Dtype::Bf16).unwrap();
    assert_eq!(encode_rows(b, 16.0).unwrap(), want);
    let h = Rows::new_u16(&f16, 4, quantdrift_core::Dtype::F16).unwrap();
    assert_eq!(encode_rows(h, 16.0).unwrap(), want);
}

#[test]
fn bad_rows_and_shapes_are_errors() {
    let nan = [0.0f32, f32::NAN, 1.0, 2.0];
    let err = encode_rows(Rows::new_f32(&nan, 2).unwrap(), 16.0).unwrap_err();
    assert!(
        matches!(err, CoreError::Value(ref m) if m.contains("row 0")),
        "{err:?}"
    );
    let inf = [0.0f32, 1.0, f32::INFINITY, 2.0];
    let err = encode_rows(Rows::new_f32(&inf, 2).unwrap(), 16.0).unwrap_err();
    assert!(
        matches!(err, CoreError::Value(ref m) if m.contains("row 1")),
        "{err:?}"
    );
    let dead = [f32::NEG_INFINITY; 2];
    assert!(encode_rows(Rows::new_f32(&dead, 2).unwrap(), 16.0).is_err());
    assert!(encode_rows(Rows::new_f32(&[1.0], 1).unwrap(), 0.0).is_err());
    assert!(matches!(
        decode_rows(&[0u16; 13], 7),
        Err(CoreError::Shape(_))
    ));
    assert!(decode_rows(&[], 7).unwrap().is_empty());
    assert!(encode_rows(Rows::new_f32(&[], 5).unwrap(), 16.0)
        .unwrap()
        .is_empty());
}
