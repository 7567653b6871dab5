//! Times KL on 512×32000 rows, float32 and bfloat16:
//! `cargo run --release -p quantdrift-core --example kl_kernel`
//! (QUANTDRIFT_NUM_THREADS=1 for one thread; an argument `once` runs each
//! call once, for instruction counts under callgrind).

use std::time::Instant;

use quantdrift_core::diverge::{divergence_rows, Inputs, Kind, Options};
use quantdrift_core::{Dtype, Rows};

fn main() {
    let once = std::env::args().any(|a| a == "once");
    let (rows, vocab) = (512usize, 32000usize);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut normal = move || {
        // Sum of four uniforms: a cheap, bell-shaped stand-in for N(0, 1/3).
        let mut s = 0.0f32;
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            s += (state >> 40) as f32 / 16_777_216.0 - 0.5;
        }
        s * 1.732
    };
    let p: Vec<f32> = (0..rows * vocab).map(|_| normal() * 2.5).collect();
    let q: Vec<f32> = p.iter().map(|&x| x + normal() * 0.1).collect();
    let bf = |v: &[f32]| -> Vec<u16> { v.iter().map(|x| (x.to_bits() >> 16) as u16).collect() };
    let (pb, qb) = (bf(&p), bf(&q));
    let opts = Options {
        kind: Kind::Kl,
        inputs: Inputs::Logits,
        temperature: 1.0,
    };
    let cases = [
        (
            "float32",
            Rows::new_f32(&p, vocab).unwrap(),
            Rows::new_f32(&q, vocab).unwrap(),
        ),
        (
            "bfloat16",
            Rows::new_u16(&pb, vocab, Dtype::Bf16).unwrap(),
            Rows::new_u16(&qb, vocab, Dtype::Bf16).unwrap(),
        ),
    ];
    for (name, pr, qr) in cases {
        let reps = if once { 1 } else { 15 };
        let mut best = f64::INFINITY;
        let mut total = 0.0;
        for _ in 0..reps {
            let t0 = Instant::now();
            total = divergence_rows(pr, Some(qr), &opts)
                .unwrap()
                .iter()
                .sum::<f64>();
            best = best.min(t0.elapsed().as_secs_f64());
        }
        let ns = best * 1e9 / (rows * vocab) as f64;
        println!(
            "{name}: {:.2} ms, {ns:.3} ns per element pair (mean KL {:.5})",
            best * 1e3,
            total / rows as f64
        );
    }
}
