//! GPU float-format kernels against the CPU kernels (bit-exact).
//! These tests need an adapter; on machines without one, install Mesa's
//! lavapipe (`apt-get install mesa-vulkan-drivers libvulkan1`).

use quantdrift_core::lowp::{self, Format};

#[test]
fn decode_matches_the_cpu_for_every_code() {
    for name in [
        "float8_e4m3fn",
        "float8_e5m2",
        "float4_e2m1fn",
        "float6_e3m2fn",
        "float8_e8m0fnu",
    ] {
        let format = Format::by_name(name).unwrap();
        // Every code, twice, and an odd count so the last word is partial.
        let codes: Vec<u8> = (0..=255u8).chain(0..=255u8).chain([7u8]).collect();
        let mask = ((1u32 << format.bits()) - 1) as u8;
        let codes: Vec<u8> = codes.into_iter().map(|c| c & mask).collect();
        let want = lowp::decode_u8(&codes, &format).unwrap();
        let got = quantdrift_gpu::lowp::decode(&codes, 1, &format).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "{name}");
    }
    for name in ["float16", "bfloat16"] {
        let format = Format::by_name(name).unwrap();
        let codes: Vec<u16> = (0..=u16::MAX).collect();
        let want = lowp::decode_u16(&codes, &format).unwrap();
        let bytes: Vec<u8> = codes.iter().flat_map(|c| c.to_le_bytes()).collect();
        let got = quantdrift_gpu::lowp::decode(&bytes, 2, &format).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "{name}");
    }
}

#[test]
fn info_names_the_adapter() {
    let info = quantdrift_gpu::info().unwrap();
    assert!(!info.adapter.is_empty());
    eprintln!("{info:?}");
}

use quantdrift_core::lowp::{mx, nvfp4, Codes, Options, Overflow, Rounded, Rounding, Values};

/// Random float32 bit patterns, half of them with exponents where the
/// formats live, plus the special values.
fn patterns(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u32
    };
    let mut v: Vec<f32> = (0..n)
        .map(|i| {
            let b = next();
            let b = if i % 2 == 0 {
                (b & 0x807f_ffff) | ((96 + (b >> 26) % 64) << 23)
            } else {
                b
            };
            f32::from_bits(b)
        })
        .collect();
    for (slot, b) in v.iter_mut().zip([
        0,
        0x8000_0000,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0xffc0_0001,
        1,
        0x807f_ffff,
    ]) {
        *slot = f32::from_bits(b);
    }
    v
}

fn bits(r: &Rounded) -> Vec<u64> {
    match r {
        Rounded::F32(v) => v.iter().map(|x| u64::from(x.to_bits())).collect(),
        Rounded::F64(v) => v.iter().map(|x| x.to_bits()).collect(),
    }
}

#[test]
fn encode_and_round_match_the_cpu_in_every_mode() {
    let x = patterns(20_011, 1);
    let x64: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| f64::from(v) * (1.0 + f64::from(i as u32 % 7) * 2f64.powi(-30)))
        .collect();
    for name in [
        "float16",
        "bfloat16",
        "float8_e4m3fn",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
        "float4_e2m1fn",
    ] {
        let f = Format::by_name(name).unwrap();
        for rounding in [
            Rounding::NearestEven,
            Rounding::NearestAway,
            Rounding::TowardZero,
            Rounding::Down,
            Rounding::Up,
            Rounding::Stochastic,
        ] {
            for overflow in [None, Some(Overflow::Saturate)] {
                let o = Options {
                    rounding,
                    overflow,
                    seed: 77,
                };
                for v in [Values::F32(&x), Values::F64(&x64)] {
                    let want = lowp::encode(v, &f, o).unwrap();
                    let got = quantdrift_gpu::lowp::encode(v, &f, o).unwrap();
                    assert!(got == want, "{name} {rounding:?} {overflow:?}");
                    let want = lowp::round(v, &f, o).unwrap();
                    let got = quantdrift_gpu::lowp::round(v, &f, o).unwrap();
                    assert_eq!(bits(&got), bits(&want), "{name} {rounding:?} {overflow:?}");
                }
            }
        }
    }
    let f = Format::by_name("float16").unwrap();
    let h: Vec<u16> = (0..=u16::MAX).collect();
    for v in [Values::F16(&h), Values::Bf16(&h)] {
        let want = lowp::encode(v, &f, Options::default()).unwrap();
        assert!(quantdrift_gpu::lowp::encode(v, &f, Options::default()).unwrap() == want);
    }
    let _ = Codes::U8(Vec::new());
}

#[test]
fn block_formats_match_the_cpu() {
    let x: Vec<f32> = patterns(75 * 40, 3)
        .into_iter()
        .map(|v| if v.is_finite() { v } else { 1.0 })
        .collect();
    for elem in [
        "fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1", "int8",
    ] {
        let e = mx::Element::parse(elem).unwrap();
        for mode in ["floor", "ceil", "even", "rceil"] {
            let m = mx::ScaleMode::parse(mode).unwrap();
            for block in [32, 7] {
                let want = mx::mx_encode(Values::F32(&x), 75, block, e, m).unwrap();
                let got = quantdrift_gpu::mx::mx_encode(Values::F32(&x), 75, block, e, m).unwrap();
                assert_eq!(got, want, "{elem} {mode} {block}");
                let want = mx::mx_decode(&got.0, &got.1, 75, block, e).unwrap();
                let dec = quantdrift_gpu::mx::mx_decode(&got.0, &got.1, 75, block, e).unwrap();
                let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(b(&dec), b(&want), "{elem} {mode} {block}");
            }
        }
    }
    for pts in [None, Some(1e-3f32)] {
        let want = nvfp4::nvfp4_encode(Values::F32(&x), 75, pts).unwrap();
        let got = quantdrift_gpu::mx::nvfp4_encode(Values::F32(&x), 75, pts).unwrap();
        assert_eq!(got, want, "{pts:?}");
        let want = nvfp4::nvfp4_decode(&got.0, &got.1, 75, pts).unwrap();
        let dec = quantdrift_gpu::mx::nvfp4_decode(&got.0, &got.1, 75, pts).unwrap();
        let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(b(&dec), b(&want), "{pts:?}");
    }
}

#[test]
fn packed_encoding_matches_the_cpu_and_refuses_wide_formats_alike() {
    let x = patterns(1001, 7);
    let fp4 = Format::by_name("float4_e2m1fn").unwrap();
    let opts = Options::default();
    let cpu = lowp::encode_packed(Values::F32(&x), 77, &fp4, opts).unwrap();
    let gpu = quantdrift_gpu::lowp::encode_packed(Values::F32(&x), 77, &fp4, opts).unwrap();
    assert_eq!(gpu, cpu);
    let e5m2 = Format::by_name("float8_e5m2").unwrap();
    let cpu = lowp::encode_packed(Values::F32(&x), 77, &e5m2, opts).unwrap_err();
    let gpu = quantdrift_gpu::lowp::encode_packed(Values::F32(&x), 77, &e5m2, opts).unwrap_err();
    assert_eq!(gpu.to_string(), cpu.to_string());
}
