//! GPU divergence kernels against the CPU kernels (within 1e-5 relative,
//! 1e-7 absolute) and the CPU's errors (identical messages).

use quantdrift_core::diverge::{self, Inputs, Kind, Options};
use quantdrift_core::{Dtype, Rows};
use quantdrift_gpu::GpuError;

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

/// xorshift64*: uniform in [0, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
}

/// Independent rows, near-identical rows and rows with −inf holes.
fn make_rows(rows: usize, vocab: usize, scale: f64, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut p = vec![0.0f32; rows * vocab];
    let mut q = vec![0.0f32; rows * vocab];
    for r in 0..rows {
        for i in 0..vocab {
            let x = rng.uniform(-2.0, 2.0) * scale;
            p[r * vocab + i] = x as f32;
            q[r * vocab + i] = match r % 3 {
                1 => (x + rng.uniform(-1e-3, 1e-3) * scale.max(1.0)) as f32,
                _ => (rng.uniform(-2.0, 2.0) * scale) as f32,
            };
            if r % 3 == 2 && i > 0 && rng.next() < 0.1 {
                p[r * vocab + i] = f32::NEG_INFINITY;
                if rng.next() < 0.5 {
                    q[r * vocab + i] = f32::NEG_INFINITY;
                }
            }
        }
    }
    (p, q)
}

fn to_f16(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| f32_to_f16(x)).collect()
}

fn to_bf16(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|&x| {
            let b = x.to_bits();
            ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
        })
        .collect()
}

/// Round-to-nearest-even float16 (enough for finite and infinite inputs).
fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let a = f32::from_bits(b & 0x7fff_ffff);
    if a.is_infinite() || a >= 65520.0 {
        return sign | 0x7c00;
    }
    if a < 6.103_515_6e-5 {
        return sign | (a / 5.960_464_5e-8).round_ties_even() as u16;
    }
    let e = (a.to_bits() >> 23) as i32 - 127;
    let m = a / 2f32.powi(e) - 1.0;
    let mut bits = (((e + 15) as u32) << 10) + (m * 1024.0).round_ties_even() as u32;
    if bits >= 0x7c00 {
        bits = 0x7c00;
    }
    sign | bits as u16
}

fn check(p: Rows<'_>, q: Option<Rows<'_>>, opts: &Options, what: &str) {
    let cpu = diverge::divergence_rows(p, q, opts).unwrap();
    let gpu = quantdrift_gpu::diverge::divergence_rows(p, q, opts).unwrap();
    assert_eq!(cpu.len(), gpu.len());
    for (r, (&c, &g)) in cpu.iter().zip(&gpu).enumerate() {
        let ok = if c.is_finite() {
            (g - c).abs() <= 1e-7 + 1e-5 * c.abs()
        } else {
            c == g
        };
        assert!(ok, "{what} {:?} row {r}: gpu {g} cpu {c}", opts.kind);
    }
}

#[test]
fn every_kind_and_dtype_matches_the_cpu() {
    for (vocab, scale) in [
        (1, 1.0),
        (7, 30.0),
        (1000, 1e-3),
        (1000, 1e4),
        (5000, 1.0),
        (32000, 30.0),
    ] {
        let (p, q) = make_rows(3, vocab, scale, vocab as u64);
        let (p16, q16) = (to_f16(&p), to_f16(&q));
        let (pb, qb) = (to_bf16(&p), to_bf16(&q));
        let pairs = [
            (
                "f32",
                Rows::new_f32(&p, vocab).unwrap(),
                Rows::new_f32(&q, vocab).unwrap(),
            ),
            (
                "f16",
                Rows::new_u16(&p16, vocab, Dtype::F16).unwrap(),
                Rows::new_u16(&q16, vocab, Dtype::F16).unwrap(),
            ),
            (
                "bf16",
                Rows::new_u16(&pb, vocab, Dtype::Bf16).unwrap(),
                Rows::new_u16(&qb, vocab, Dtype::Bf16).unwrap(),
            ),
            (
                "f32/bf16",
                Rows::new_f32(&p, vocab).unwrap(),
                Rows::new_u16(&qb, vocab, Dtype::Bf16).unwrap(),
            ),
        ];
        for (name, pr, qr) in pairs {
            for kind in KINDS {
                for temperature in [1.0, 0.7] {
                    let opts = Options {
                        kind,
                        inputs: Inputs::Logits,
                        temperature,
                    };
                    let what = format!("{name} vocab {vocab} scale {scale} t {temperature}");
                    check(pr, Some(qr), &opts, &what);
                }
            }
        }
    }
}

#[test]
fn probabilities_match_the_cpu_and_fail_alike() {
    let vocab = 300;
    let (p, q) = make_rows(6, vocab, 2.0, 5);
    let normalise = |v: &[f32]| -> Vec<f32> {
        v.chunks(vocab)
            .flat_map(|row| {
                let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let s: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
                row.iter()
                    .map(move |&x| ((x as f64 - m).exp() / s) as f32)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (pp, qq) = (normalise(&p), normalise(&q));
    for kind in KINDS {
        for temperature in [1.0, 2.0] {
            let opts = Options {
                kind,
                inputs: Inputs::Probs,
                temperature,
            };
            let (a, b) = (
                Rows::new_f32(&pp, vocab).unwrap(),
                Rows::new_f32(&qq, vocab).unwrap(),
            );
            check(a, Some(b), &opts, "probs");
            let opts = Options {
                kind,
                inputs: Inputs::LogProbs,
                temperature,
            };
            check(
                Rows::new_f32(&p, vocab).unwrap(),
                Some(Rows::new_f32(&q, vocab).unwrap()),
                &opts,
                "logprobs",
            );
        }
    }
    // Invalid probability rows: the CPU's error, word for word.
    let mut bad = qq.clone();
    bad[3 * vocab + 5] += 0.01; // sums to 1.01
    bad[4 * vocab + 2] = -0.1;
    let opts = Options {
        kind: Kind::Kl,
        inputs: Inputs::Probs,
        temperature: 1.0,
    };
    for row in [3, 4] {
        let mut b = bad.clone();
        if row == 4 {
            b[3 * vocab + 5] -= 0.01;
        }
        let (a, b) = (
            Rows::new_f32(&pp, vocab).unwrap(),
            Rows::new_f32(&b, vocab).unwrap(),
        );
        let cpu = diverge::divergence_rows(a, Some(b), &opts)
            .unwrap_err()
            .to_string();
        let gpu = quantdrift_gpu::diverge::divergence_rows(a, Some(b), &opts).unwrap_err();
        assert!(matches!(gpu, GpuError::Core(_)));
        assert_eq!(gpu.to_string(), cpu);
    }
}

#[test]
fn nan_inf_and_empty_rows_raise_the_cpu_error() {
    let vocab = 600;
    let (p, q) = make_rows(5, vocab, 1.0, 9);
    let cases: [(usize, f32, bool); 5] = [
        (2 * vocab + 7, f32::NAN, false),
        (3 * vocab + 500, f32::INFINITY, true),
        (4 * vocab + 1, f32::NAN, true),
        (vocab + 3, f32::INFINITY, false),
        (0, f32::NAN, true),
    ];
    for (at, value, on_q) in cases {
        let (mut a, mut b) = (p.clone(), q.clone());
        if on_q {
            b[at] = value;
        } else {
            a[at] = value;
        }
        for kind in KINDS {
            let opts = Options {
                kind,
                inputs: Inputs::Logits,
                temperature: 1.0,
            };
            let (pr, qr) = (
                Rows::new_f32(&a, vocab).unwrap(),
                Rows::new_f32(&b, vocab).unwrap(),
            );
            let cpu = diverge::divergence_rows(pr, Some(qr), &opts);
            let gpu = quantdrift_gpu::diverge::divergence_rows(pr, Some(qr), &opts);
            match (cpu, gpu) {
                (Err(c), Err(g)) => assert_eq!(g.to_string(), c.to_string()),
                (Ok(c), Ok(g)) => assert_eq!(c.len(), g.len()), // entropy ignores q
                (c, g) => panic!("{kind:?}: cpu {c:?} gpu {g:?}"),
            }
        }
    }
    // An all −inf row.
    let mut a = p.clone();
    a[2 * vocab..3 * vocab].fill(f32::NEG_INFINITY);
    let opts = Options {
        kind: Kind::Js,
        inputs: Inputs::Logits,
        temperature: 1.0,
    };
    let (pr, qr) = (
        Rows::new_f32(&a, vocab).unwrap(),
        Rows::new_f32(&q, vocab).unwrap(),
    );
    let cpu = diverge::divergence_rows(pr, Some(qr), &opts)
        .unwrap_err()
        .to_string();
    let gpu = quantdrift_gpu::diverge::divergence_rows(pr, Some(qr), &opts).unwrap_err();
    assert_eq!(gpu.to_string(), cpu);
}

#[test]
fn odd_row_offsets_of_16_bit_rows_and_many_rows() {
    // 7-element float16 rows start at odd elements every other row.
    let (p, q) = make_rows(40, 7, 3.0, 3);
    let (p16, q16) = (to_f16(&p), to_f16(&q));
    let pr = Rows::new_u16(&p16, 7, Dtype::F16).unwrap();
    let qr = Rows::new_u16(&q16, 7, Dtype::F16).unwrap();
    for kind in KINDS {
        let opts = Options {
            kind,
            inputs: Inputs::Logits,
            temperature: 1.0,
        };
        check(pr, Some(qr), &opts, "odd");
    }
}
