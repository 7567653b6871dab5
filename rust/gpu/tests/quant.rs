//! GPU integer quantization against the CPU kernels (bit-exact): every
//! rounding mode, both arithmetics, every container, tiles and labels,
//! values at and next to rounding boundaries, subnormals and specials.

use quantdrift_core::lowp::{Rounded, Rounding, Values};
use quantdrift_core::quant::{self, Arith, CodeType, Codes, CodesRef, Options, Partition, QParams};

/// A reproducible mix: boundary values k·s and (k + ½)·s and their float32
/// neighbours for the scales used, random values over many magnitudes,
/// subnormals, zeros, ±inf and NaN.
fn values(n: usize, scales: &[f32], seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let r = next();
        let s = scales[(r % scales.len() as u64) as usize];
        let k = ((r >> 8) % 300) as f32 - 150.0;
        let x = match (r >> 20) % 10 {
            0 => k * s,
            1 => (k + 0.5) * s,
            2 => f32::from_bits(((k + 0.5) * s).to_bits().wrapping_add(1)),
            3 => f32::from_bits(((k + 0.5) * s).to_bits().wrapping_sub(1)),
            4 => f32::from_bits((k * s).to_bits().wrapping_add(1)),
            5 => f32::from_bits((k * s).to_bits().wrapping_sub(1)),
            6 => f32::from_bits((r >> 32) as u32 & 0x807f_ffff), // subnormal
            7 => [
                0.0,
                -0.0,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
                1e30,
                -1e-30,
            ][(r >> 40) as usize % 7],
            _ => f32::from_bits((r >> 32) as u32 & 0xbfff_ffff).clamp(-1e6, 1e6),
        };
        v.push(if x.is_nan() { f32::NAN } else { x });
    }
    v
}

fn bits32(r: &Rounded) -> Vec<u64> {
    match r {
        Rounded::F32(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
        Rounded::F64(v) => v.iter().map(|x| x.to_bits()).collect(),
    }
}

const MODES: [Rounding; 6] = [
    Rounding::NearestEven,
    Rounding::NearestAway,
    Rounding::TowardZero,
    Rounding::Down,
    Rounding::Up,
    Rounding::Stochastic,
];

#[test]
fn quantize_and_fake_quantize_match_the_cpu() {
    let (rows, cols) = (37, 70);
    let n = rows * cols;
    let tiles = [
        vec![1, 70],
        vec![37, 1],
        vec![1, 16],
        vec![8, 8],
        vec![37, 70],
    ];
    for tile in &tiles {
        let part = Partition::Tiles {
            shape: vec![rows, cols],
            tile: tile.clone(),
        };
        let k = rows.div_ceil(tile[0]) * cols.div_ceil(tile[1]);
        let scales: Vec<f32> = (0..k)
            .map(|j| [0.01f32, 0.1, 0.5, 1.0, 3.0, 7.0, 1e-3, 2.5e-5][j % 8])
            .collect();
        let x = values(n, &scales, k as u64);
        let s64: Vec<f64> = scales.iter().map(|&s| s as f64).collect();
        for (qmin, qmax, zp, ct) in [
            (-128, 127, 0, CodeType::I8),
            (0, 255, 131, CodeType::U8),
            (
                -8,
                7,
                0,
                CodeType::Packed {
                    bits: 4,
                    signed: true,
                },
            ),
            (
                0,
                7,
                3,
                CodeType::Packed {
                    bits: 3,
                    signed: false,
                },
            ),
            (-32768, 32767, 5, CodeType::I16),
            (-1000000, 1000000, -7, CodeType::I32),
        ] {
            let (lo, hi, b) = (vec![qmin; k], vec![qmax; k], vec![zp; k]);
            let qp = QParams {
                scale: &s64,
                zero_point: &b,
                qmin: &lo,
                qmax: &hi,
            };
            for rounding in MODES {
                for arith in [Arith::Divide, Arith::Reciprocal32] {
                    let opts = Options {
                        rounding,
                        seed: 7,
                        arith,
                    };
                    let what = format!("{tile:?} {ct:?} {rounding:?} {arith:?}");
                    assert!(
                        quantdrift_gpu::quant::runs_on_gpu(Values::F32(&x), &part, &qp).unwrap()
                    );
                    let want = quant::quantize(Values::F32(&x), &part, &qp, ct, &opts).unwrap();
                    let got =
                        quantdrift_gpu::quant::quantize(Values::F32(&x), &part, &qp, ct, &opts)
                            .unwrap();
                    assert_eq!(got, want, "{what}");
                    let want = quant::fake_quantize(Values::F32(&x), &part, &qp, &opts).unwrap();
                    let got =
                        quantdrift_gpu::quant::fake_quantize(Values::F32(&x), &part, &qp, &opts)
                            .unwrap();
                    assert_eq!(bits32(&got.0), bits32(&want.0), "{what}");
                    assert_eq!(got.1, want.1, "{what}");
                }
            }
        }
    }
}

#[test]
fn labels_and_16_bit_inputs_match_the_cpu() {
    let n = 3001;
    let ids: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % 13).collect();
    let part = Partition::Labels {
        ids: &ids,
        parts: 13,
    };
    let scales: Vec<f64> = (0..13)
        .map(|j| 0.003 * (j + 1) as f64)
        .map(|s: f64| s as f32 as f64)
        .collect();
    let (lo, hi, b) = (vec![-7; 13], vec![7; 13], vec![0; 13]);
    let qp = QParams {
        scale: &scales,
        zero_point: &b,
        qmin: &lo,
        qmax: &hi,
    };
    let x = values(n, &[0.003, 0.03, 0.01], 3);
    let h: Vec<u16> = x.iter().map(|&v| f16_bits(v)).collect();
    let bf: Vec<u16> = x.iter().map(|&v| (v.to_bits() >> 16) as u16).collect();
    for vals in [Values::F32(&x), Values::F16(&h), Values::Bf16(&bf)] {
        for rounding in MODES {
            let opts = Options {
                rounding,
                seed: 11,
                arith: Arith::Divide,
            };
            let ct = CodeType::Packed {
                bits: 4,
                signed: true,
            };
            let want = quant::quantize(vals, &part, &qp, ct, &opts).unwrap();
            let got = quantdrift_gpu::quant::quantize(vals, &part, &qp, ct, &opts).unwrap();
            assert_eq!(got, want, "{rounding:?}");
        }
    }
}

/// Rough float16 bits of a float32 (truncating; any pattern will do).
fn f16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let e = ((b >> 23) & 0xff) as i32 - 127 + 15;
    if v.is_nan() {
        return 0x7e00;
    }
    if e >= 31 {
        return sign | 0x7c00;
    }
    if e <= 0 {
        return sign | (((b & 0x7f_ffff) | 0x80_0000) >> (14 - e).min(31)) as u16 & 0x3ff;
    }
    sign | (e as u16) << 10 | ((b >> 13) & 0x3ff) as u16
}

#[test]
fn dequantize_matches_the_cpu() {
    let (rows, cols) = (19, 45);
    let n = rows * cols;
    let part = Partition::Tiles {
        shape: vec![rows, cols],
        tile: vec![4, 16],
    };
    let k: usize = 5 * 3;
    let scales: Vec<f64> = (0..k)
        .map(|j| (0.37f32 * 1.7f32.powi(j as i32 - 7)) as f64)
        .collect();
    let zp: Vec<i32> = (0..k as i32).map(|j| j * 3 - 20).collect();
    let mut st = 12345u32;
    let mut r = || {
        st ^= st << 13;
        st ^= st >> 17;
        st ^= st << 5;
        st
    };
    let i32s: Vec<i32> = (0..n).map(|_| r() as i32).collect();
    let i16s: Vec<i16> = i32s.iter().map(|&v| v as i16).collect();
    let u8s: Vec<u8> = i32s.iter().map(|&v| v as u8).collect();
    let packed: Vec<u8> = (0..(n * 3).div_ceil(8)).map(|_| r() as u8).collect();
    for f64_out in [false, true] {
        for codes in [
            CodesRef::I32(&i32s),
            CodesRef::I16(&i16s),
            CodesRef::U8(&u8s),
            CodesRef::Packed {
                data: &packed,
                bits: 3,
                signed: true,
                len: n,
            },
        ] {
            let want = quant::dequantize(codes, &part, &scales, &zp, f64_out).unwrap();
            let got =
                quantdrift_gpu::quant::dequantize(codes, &part, &scales, &zp, f64_out).unwrap();
            assert_eq!(bits32(&got), bits32(&want), "{codes:?} {f64_out}");
        }
    }
    let _ = Codes::I8(vec![]);
}
