//! The GPU comparison kernel against the CPU kernel: divergences and NLLs
//! within 1e-5 relative, top-1 tokens and top-k overlaps equal, errors
//! equal. These tests need an adapter (Mesa's lavapipe will do).

use quantdrift_core::diverge::compare::{self as cpu, Block, CompareOptions, TokenStats};
use quantdrift_core::{Dtype, Rows};
use quantdrift_gpu::compare;

/// Deterministic standard normals (xorshift + Box–Muller).
fn normals(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (a, b) = (uniform(), uniform());
            ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
        })
        .collect()
}

fn pair(rows: usize, vocab: usize, noise: f32, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let base: Vec<f32> = normals(rows * vocab, seed)
        .iter()
        .map(|x| x * 3.0)
        .collect();
    let other = base
        .iter()
        .zip(normals(rows * vocab, seed + 1))
        .map(|(b, e)| b + e * noise)
        .collect();
    (base, other)
}

fn opts(topk: &[usize]) -> CompareOptions {
    CompareOptions {
        temperature: 1.0,
        topk: topk.to_vec(),
        names: ["base".into(), "other".into()],
        row_offset: 0,
    }
}

fn close(name: &str, got: &[f32], want: &[f32], atol: f32) {
    assert_eq!(got.len(), want.len(), "{name}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let same = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= atol + 1e-5 * w.abs();
        assert!(same, "{name}[{i}]: gpu {g} cpu {w}");
    }
}

fn check(got: &TokenStats, want: &TokenStats) {
    close("kl", &got.kl, &want.kl, 1e-8);
    close("reverse_kl", &got.reverse_kl, &want.reverse_kl, 1e-8);
    close("js", &got.js, &want.js, 1e-8);
    close("nll_base", &got.nll[0], &want.nll[0], 1e-6);
    close("nll_other", &got.nll[1], &want.nll[1], 1e-6);
    assert_eq!(got.top1, want.top1);
    assert_eq!(got.overlap, want.overlap);
}

fn both(
    base: Block<'_>,
    other: Block<'_>,
    select: Option<&[u32]>,
    tokens: Option<&[i32]>,
    o: &CompareOptions,
) {
    let want = cpu::compare_rows(base, other, select, tokens, o).unwrap();
    let got = compare::compare_rows(base, other, select, tokens, o).unwrap();
    check(&got, &want);
}

fn to16(x: &[f32], dtype: Dtype) -> Vec<u16> {
    x.iter()
        .map(|&v| match dtype {
            Dtype::Bf16 => {
                let b = v.to_bits();
                ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
            }
            _ => f32_to_f16(v),
        })
        .collect()
}

/// Round-to-nearest-even float32 → float16 for finite values in range.
fn f32_to_f16(v: f32) -> u16 {
    if v == f32::NEG_INFINITY {
        return 0xfc00;
    }
    let b = v.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let a = v.abs();
    if a < 6.103_515_6e-5 {
        // Subnormal: multiples of 2^-24.
        return sign | (a * 16_777_216.0).round_ties_even() as u16;
    }
    let e = ((b >> 23) & 0xff) as i32 - 127 + 15;
    let m = b & 0x7f_ffff;
    let mut h = ((e as u32) << 10) | (m >> 13);
    let rest = m & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1;
    }
    sign | h as u16
}

#[test]
fn float32_rows_with_tokens_and_topk() {
    let (rows, vocab) = (40, 257);
    let (b, o) = pair(rows, vocab, 0.3, 1);
    let tokens: Vec<i32> = (0..rows as i32).map(|i| (i * 37) % vocab as i32).collect();
    let (pb, po) = (Rows::F32(&b, vocab), Rows::F32(&o, vocab));
    both(
        Block::Dense(pb),
        Block::Dense(po),
        None,
        Some(&tokens),
        &opts(&[1, 5, 10]),
    );
    // A selection of rows, and no tokens.
    let select: Vec<u32> = (0..rows as u32).step_by(3).collect();
    both(
        Block::Dense(pb),
        Block::Dense(po),
        Some(&select),
        None,
        &opts(&[5, 1]),
    );
    // Tiny divergences and a temperature.
    let (b, o) = pair(rows, vocab, 1e-3, 2);
    let mut t = opts(&[1, 3]);
    t.temperature = 1.7;
    both(
        Block::Dense(Rows::F32(&b, vocab)),
        Block::Dense(Rows::F32(&o, vocab)),
        None,
        None,
        &t,
    );
}

#[test]
fn sixteen_bit_rows_odd_vocab_and_mixed_sides() {
    let (rows, vocab) = (33, 101);
    let (b, o) = pair(rows, vocab, 0.2, 3);
    let tokens: Vec<i32> = (0..rows as i32)
        .map(|i| if i % 4 == 0 { -1 } else { i })
        .collect();
    for dtype in [Dtype::F16, Dtype::Bf16] {
        let (b16, o16) = (to16(&b, dtype), to16(&o, dtype));
        let pb = Rows::new_u16(&b16, vocab, dtype).unwrap();
        let po = Rows::new_u16(&o16, vocab, dtype).unwrap();
        both(
            Block::Dense(pb),
            Block::Dense(po),
            None,
            Some(&tokens),
            &opts(&[1, 5]),
        );
        // Rows starting in the middle of a packed word.
        let select: Vec<u32> = (1..rows as u32).step_by(2).collect();
        both(
            Block::Dense(pb),
            Block::Dense(po),
            Some(&select),
            Some(&tokens),
            &opts(&[2, 7]),
        );
        both(
            Block::Dense(pb),
            Block::Dense(Rows::F32(&o, vocab)),
            None,
            None,
            &opts(&[1, 5]),
        );
    }
}

#[test]
fn ties_infinities_and_tiny_vocabularies() {
    // Coarse values: many ties at the top-k boundary and at the maximum.
    let (rows, vocab) = (30, 64);
    let (b, o) = pair(rows, vocab, 0.5, 4);
    let b: Vec<f32> = b.iter().map(|x| x.round()).collect();
    let mut o: Vec<f32> = o.iter().map(|x| x.round()).collect();
    o[5 * vocab] = -0.0;
    both(
        Block::Dense(Rows::F32(&b, vocab)),
        Block::Dense(Rows::F32(&o, vocab)),
        None,
        None,
        &opts(&[1, 2, 5, 10, 63, 64, 100]),
    );
    // −inf on both sides at the same places, and on one side only.
    let (mut b, mut o) = pair(8, 300, 0.3, 5);
    for i in 0..150 {
        b[300 + i] = f32::NEG_INFINITY;
        o[300 + i] = f32::NEG_INFINITY;
    }
    o[2 * 300 + 7] = f32::NEG_INFINITY;
    b[3 * 300 + 9] = f32::NEG_INFINITY;
    both(
        Block::Dense(Rows::F32(&b, 300)),
        Block::Dense(Rows::F32(&o, 300)),
        None,
        None,
        &opts(&[1, 5]),
    );
    // Vocabularies of 1 and 2; identical rows.
    let (b, o) = (vec![0.0f32; 5], vec![1.0f32; 5]);
    both(
        Block::Dense(Rows::F32(&b, 1)),
        Block::Dense(Rows::F32(&o, 1)),
        None,
        Some(&[0; 5]),
        &opts(&[1, 5]),
    );
    let (b, _) = pair(6, 2, 0.1, 6);
    both(
        Block::Dense(Rows::F32(&b, 2)),
        Block::Dense(Rows::F32(&b, 2)),
        None,
        None,
        &opts(&[1, 2]),
    );
    // No rows.
    both(
        Block::Dense(Rows::F32(&[], 7)),
        Block::Dense(Rows::F32(&[], 7)),
        None,
        None,
        &opts(&[1]),
    );
}

#[test]
fn large_vocabulary_uses_many_blocks() {
    let (rows, vocab) = (3, 70_001);
    let (b, o) = pair(rows, vocab, 0.05, 7);
    let tokens = [5, 70_000, 123];
    both(
        Block::Dense(Rows::F32(&b, vocab)),
        Block::Dense(Rows::F32(&o, vocab)),
        None,
        Some(&tokens),
        &opts(&[1, 5, 100]),
    );
}

#[test]
fn errors_are_the_cpus() {
    let (rows, vocab) = (12, 20);
    let (b, mut o) = pair(rows, vocab, 0.3, 8);
    o[4 * vocab + 3] = f32::NAN;
    o[9 * vocab + 1] = f32::INFINITY;
    let (pb, po) = (
        Block::Dense(Rows::F32(&b, vocab)),
        Block::Dense(Rows::F32(&o, vocab)),
    );
    let want = cpu::compare_rows(pb, po, None, None, &opts(&[1]))
        .unwrap_err()
        .to_string();
    let got = compare::compare_rows(pb, po, None, None, &opts(&[1]))
        .unwrap_err()
        .to_string();
    assert_eq!(got, want);
    assert!(got.contains("row 4"), "{got}");
    let short = Block::Dense(Rows::F32(&o[..rows * 19], 19));
    let want = cpu::compare_rows(pb, short, None, None, &opts(&[1]))
        .unwrap_err()
        .to_string();
    let got = compare::compare_rows(pb, short, None, None, &opts(&[1]))
        .unwrap_err()
        .to_string();
    assert_eq!(got, want);
    let empty = vec![f32::NEG_INFINITY; vocab];
    let (pb, pe) = (
        Block::Dense(Rows::F32(&b[..vocab], vocab)),
        Block::Dense(Rows::F32(&empty, vocab)),
    );
    let want = cpu::compare_rows(pb, pe, None, None, &opts(&[1]))
        .unwrap_err()
        .to_string();
    let got = compare::compare_rows(pb, pe, None, None, &opts(&[1]))
        .unwrap_err()
        .to_string();
    assert_eq!(got, want);
}
