//! The comparison kernel against the float64 divergence reference, and its
//! top-k, token and llama.cpp paths against plain loops.

use quantdrift_core::diverge::compare::{compare_rows, Block, CompareOptions};
use quantdrift_core::diverge::{divergence_rows, Inputs, Kind, Options};
use quantdrift_core::{Dtype, Rows};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn pair(seed: u64, rows: usize, vocab: usize, noise: f32) -> (Vec<f32>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let p: Vec<f32> = (0..rows * vocab)
        .map(|_| (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * 6.0)
        .collect();
    let q = p
        .iter()
        .map(|&x| x + (rng.random::<f32>() - 0.5) * noise)
        .collect();
    (p, q)
}

fn opts(topk: Vec<usize>) -> CompareOptions {
    CompareOptions {
        temperature: 1.0,
        topk,
        names: ["base.npy".into(), "other.npy".into()],
        row_offset: 0,
    }
}

fn reference(kind: Kind, p: &[f32], q: &[f32], vocab: usize) -> Vec<f64> {
    let wide = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let (p, q) = (wide(p), wide(q));
    let o = Options {
        kind,
        inputs: Inputs::Logits,
        temperature: 1.0,
    };
    divergence_rows(
        Rows::new_f64(&p, vocab).unwrap(),
        Some(Rows::new_f64(&q, vocab).unwrap()),
        &o,
    )
    .unwrap()
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        assert!(
            (g - w).abs() <= 2e-5 * w.abs() + 1e-7,
            "{what} row {i}: {g} vs {w}"
        );
    }
}

#[test]
fn divergences_match_the_float64_reference() {
    for (vocab, noise) in [
        (1usize, 0.5f32),
        (7, 0.5),
        (1000, 0.01),
        (4099, 1.0),
        (32000, 3.0),
    ] {
        let (p, q) = pair(vocab as u64, 6, vocab, noise);
        let base = Block::Dense(Rows::new_f32(&p, vocab).unwrap());
        let other = Block::Dense(Rows::new_f32(&q, vocab).unwrap());
        let out = compare_rows(base, other, None, None, &opts(vec![1])).unwrap();
        assert_close(&out.kl, &reference(Kind::Kl, &p, &q, vocab), "kl");
        assert_close(
            &out.reverse_kl,
            &reference(Kind::ReverseKl, &p, &q, vocab),
            "reverse_kl",
        );
        assert_close(&out.js, &reference(Kind::Js, &p, &q, vocab), "js");
    }
}

#[test]
fn sixteen_bit_rows_match_their_float32_widening() {
    let vocab = 5000;
    let (p, q) = pair(3, 4, vocab, 0.3);
    let to16 = |x: &[f32]| {
        x.iter()
            .map(|&v| (v.to_bits() >> 16) as u16)
            .collect::<Vec<u16>>()
    };
    let (p16, q16) = (to16(&p), to16(&q));
    let widen = |x: &[u16]| {
        x.iter()
            .map(|&b| f32::from_bits((b as u32) << 16))
            .collect::<Vec<f32>>()
    };
    let (pw, qw) = (widen(&p16), widen(&q16));
    let out = compare_rows(
        Block::Dense(Rows::new_u16(&p16, vocab, Dtype::Bf16).unwrap()),
        Block::Dense(Rows::new_u16(&q16, vocab, Dtype::Bf16).unwrap()),
        None,
        None,
        &opts(vec![1, 5]),
    )
    .unwrap();
    let wide = compare_rows(
        Block::Dense(Rows::new_f32(&pw, vocab).unwrap()),
        Block::Dense(Rows::new_f32(&qw, vocab).unwrap()),
        None,
        None,
        &opts(vec![1, 5]),
    )
    .unwrap();
    assert_eq!(out.kl, wide.kl, "kl");
    assert_eq!(out.js, wide.js, "js");
    assert_eq!(out.top1, wide.top1, "top1");
    assert_eq!(out.overlap, wide.overlap, "overlap");
    assert_eq!(out.reverse_kl, wide.reverse_kl, "rkl");
}

#[test]
fn top_k_tokens_and_selection() {
    let vocab = 300;
    let (p, q) = pair(5, 8, vocab, 2.0);
    let tokens: Vec<i32> = (0..8).map(|i| (i * 37 % vocab) as i32).collect();
    let select = [1u32, 4, 7];
    let out = compare_rows(
        Block::Dense(Rows::new_f32(&p, vocab).unwrap()),
        Block::Dense(Rows::new_f32(&q, vocab).unwrap()),
        Some(&select),
        Some(&tokens),
        &opts(vec![10, 1]),
    )
    .unwrap();
    assert_eq!(out.kl.len(), 3);
    for (j, &r) in select.iter().enumerate() {
        let r = r as usize;
        let (pr, qr) = (
            &p[r * vocab..(r + 1) * vocab],
            &q[r * vocab..(r + 1) * vocab],
        );
        let ranked = |x: &[f32]| {
            let mut idx: Vec<usize> = (0..vocab).collect();
            idx.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
            idx
        };
        let (rp, rq) = (ranked(pr), ranked(qr));
        assert_eq!(out.top1[0][j] as usize, rp[0]);
        assert_eq!(out.top1[1][j] as usize, rq[0]);
        let common = rp[..10].iter().filter(|i| rq[..10].contains(i)).count();
        assert_eq!(out.overlap[0][j], common as f32 / 10.0);
        assert_eq!(out.overlap[1][j], (rp[0] == rq[0]) as u32 as f32);
        let lse = |x: &[f32]| {
            let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
        };
        let t = tokens[r] as usize;
        let nll_p = lse(pr) - pr[t] as f64;
        assert!((out.nll[0][j] as f64 - nll_p).abs() < 1e-5 * nll_p.max(1.0));
    }
}

#[test]
fn bad_rows_and_shapes_name_the_source_and_row() {
    let vocab = 16;
    let (p, mut q) = pair(9, 5, vocab, 0.1);
    q[3 * vocab + 2] = f32::NAN;
    let err = compare_rows(
        Block::Dense(Rows::new_f32(&p, vocab).unwrap()),
        Block::Dense(Rows::new_f32(&q, vocab).unwrap()),
        None,
        None,
        &CompareOptions {
            row_offset: 100,
            ..opts(vec![1])
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("other.npy") && err.contains("row 103"),
        "{err}"
    );
    let err = compare_rows(
        Block::Dense(Rows::new_f32(&p, vocab).unwrap()),
        Block::Dense(Rows::new_f32(&q[..4 * vocab], vocab).unwrap()),
        None,
        None,
        &opts(vec![1]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("row counts differ"), "{err}");
}
