//! Encodes 2^20 float32 to one format, for instruction counts under
//! callgrind: `cargo run --release -p quantdrift-core --example lowp_encode
//! -- float8_e4m3fn [reps] [mode]` (QUANTDRIFT_NUM_THREADS=1 for one thread).

use quantdrift_core::lowp::{self, Format, Options, Rounding, Values};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map_or("float8_e4m3fn", |s| s.as_str());
    let reps: usize = args.get(2).map_or(1, |s| s.parse().unwrap());
    let rounding = Rounding::parse(args.get(3).map_or("nearest_even", |s| s.as_str())).unwrap();
    let f = Format::by_name(name).unwrap();
    // A cheap deterministic spread over the interesting exponents.
    let x: Vec<f32> = (0..1u32 << 20)
        .map(|i| f32::from_bits(i.wrapping_mul(0x9e37_79b9) >> 2 | 0x3000_0000 ^ (i & 1) << 31))
        .collect();
    let opts = Options {
        rounding,
        ..Options::default()
    };
    let mut check = 0u64;
    for _ in 0..reps {
        match lowp::encode(Values::F32(&x), &f, opts).unwrap() {
            lowp::Codes::U8(c) => check += c.iter().map(|&v| v as u64).sum::<u64>(),
            lowp::Codes::U16(c) => check += c.iter().map(|&v| v as u64).sum::<u64>(),
        }
    }
    println!("{name}: checksum {check}");
}
