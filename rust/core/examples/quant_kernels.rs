//! Times the quantization kernels on a 4096×4096 float32 matrix:
//! `cargo run --release -p quantdrift-core --example quant_kernels`
//! (QUANTDRIFT_NUM_THREADS=1 for one thread, ROWS=n for n×4096, FUSED_ONLY=1
//! for the fused calibration and quantization alone, ONLY=int4 for one case;
//! the calibration is also timed alone, to see what the quantization adds).

use std::time::Instant;

use quantdrift_core::lowp::Values;
use quantdrift_core::quant::calibrate::{Calibration, Method, Ranges, Style};
use quantdrift_core::quant::{
    self, CodeType, Codes, CodesMut, CodesRef, Options, Partition, QParams,
};

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut t = f64::INFINITY;
    for _ in 0..reps {
        let t0 = Instant::now();
        f();
        t = t.min(t0.elapsed().as_secs_f64());
    }
    t * 1e3
}

fn main() {
    let rows = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096usize);
    let cols = 4096usize;
    // FUSED_ONLY=1 times the fused calibration and quantization alone (for profiles)
    let fused_only = std::env::var_os("FUSED_ONLY").is_some();
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| ((i as u32).wrapping_mul(0x9e37_79b9) >> 8) as f32 / 16_777_216.0 - 0.5)
        .collect();
    let opts = Options::default();
    // SAFETY: any f32 slice is readable as bytes.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, x.len() * 4) };
    let tr = best(10, || {
        quantdrift_core::roofline::read_all(bytes);
    });
    println!("read of x: {tr:.2} ms");
    for (name, tile, bits) in [("int8 per-row", cols, 8), ("int4 g128", 128, 4)] {
        if std::env::var("ONLY").is_ok_and(|o| !name.starts_with(&o)) {
            continue;
        }
        let part = Partition::Tiles {
            shape: vec![rows, cols],
            tile: vec![1, tile],
        };
        let k = rows * cols.div_ceil(tile);
        let (scale, zp) = (vec![0.5 / 7.0; k], vec![0; k]);
        let hi = (1 << (bits - 1)) - 1;
        let (qmin, qmax) = (vec![-hi - 1; k], vec![hi; k]);
        let p = QParams {
            scale: &scale,
            zero_point: &zp,
            qmin: &qmin,
            qmax: &qmax,
        };
        let ct = if bits == 8 {
            CodeType::I8
        } else {
            CodeType::Packed {
                bits: 4,
                signed: true,
            }
        };
        if !fused_only {
            let mut codes = None;
            let tq = best(10, || {
                codes = Some(quant::quantize(Values::F32(&x), &part, &p, ct, &opts).unwrap());
            });
            let (codes, _) = codes.unwrap();
            let cref = match &codes {
                Codes::I8(v) => CodesRef::I8(v),
                Codes::Packed {
                    data,
                    bits,
                    signed,
                    len,
                } => CodesRef::Packed {
                    data,
                    bits: *bits,
                    signed: *signed,
                    len: *len,
                },
                _ => unreachable!(),
            };
            let td = best(10, || {
                quant::dequantize(cref, &part, &scale, &zp, false).unwrap();
            });
            let tf = best(10, || {
                quant::fake_quantize(Values::F32(&x), &part, &p, &opts).unwrap();
            });
            println!("{name}: quantize {tq:.2} ms, dequantize {td:.2} ms, fake {tf:.2} ms");
        }
        // absmax calibration fused with quantization, as quantdrift.quantize runs it
        let cal = Calibration {
            method: Method::Range,
            style: Style::Lecture,
            symmetric: true,
            scale_f32: true,
            weights: None,
            options: opts,
        };
        let ranges = Ranges {
            qmin: &qmin,
            qmax: &qmax,
        };
        let (mut s, mut b) = (vec![0f64; k], vec![0i32; k]);
        let mut out = vec![0u8; (rows * cols * bits).div_ceil(8)];
        let tc = best(10, || {
            let out = if bits == 8 {
                // SAFETY: i8 and u8 have the same layout.
                CodesMut::I8(unsafe {
                    std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut i8, out.len())
                })
            } else {
                CodesMut::Packed {
                    data: &mut out,
                    bits: 4,
                    signed: true,
                }
            };
            quant::quantize_calibrated_into(
                Values::F32(&x),
                &part,
                &ranges,
                &cal,
                &opts,
                out,
                &mut s,
                &mut b,
            )
            .unwrap();
        });
        let tcal = best(10, || {
            quant::calibrate(Values::F32(&x), &part, &ranges, &cal).unwrap();
        });
        println!("{name}: calibrate+quantize {tc:.3} ms, calibrate alone {tcal:.3} ms");
    }
}
