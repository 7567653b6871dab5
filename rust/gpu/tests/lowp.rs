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
