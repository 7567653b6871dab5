//! Bit packing of 2…8-bit codes.
//!
//! Layout: one little-endian bit stream over the flat (C-order) codes. Code
//! `i` occupies stream bits `i·w … i·w + w − 1`, least significant bit
//! first, and stream bit `k` is bit `k mod 8` of byte `k / 8`. For w = 4
//! this is element 2j in the low nibble of byte j and 2j+1 in the high
//! nibble (the layout of `lowp`'s packed float4); for w = 2, byte j holds
//! elements 4j … 4j+3 from the low bits up; for w = 3, 8 codes fill 3 bytes
//! and codes straddle bytes. Negative codes are stored as their w-bit two's
//! complement and sign-extended on unpacking. The last byte is zero-padded.

use crate::error::{CoreError, Result};

/// Packs `codes` (each already within w bits, or w-bit two's complement)
/// into `out`, which must hold `ceil(codes.len() · w / 8)` bytes.
#[inline(always)]
pub fn pack_into(codes: &[i32], bits: u32, out: &mut [u8]) {
    match bits {
        4 => return pack_fixed::<2>(codes, out),
        2 => return pack_fixed::<4>(codes, out),
        8 => {
            for (o, &c) in out.iter_mut().zip(codes) {
                *o = c as u8;
            }
            return;
        }
        _ => {}
    }
    let w = bits as usize;
    let mask = (1u64 << w) - 1;
    let whole = codes.len() / 8;
    for g in 0..whole {
        let mut v = 0u64;
        for k in 0..8 {
            v |= ((codes[8 * g + k] as u32 as u64) & mask) << (k * w);
        }
        let bytes = v.to_le_bytes();
        out[g * w..g * w + w].copy_from_slice(&bytes[..w]);
    }
    let rest = &codes[8 * whole..];
    if !rest.is_empty() {
        let mut v = 0u64;
        for (k, &c) in rest.iter().enumerate() {
            v |= ((c as u32 as u64) & mask) << (k * w);
        }
        let nbytes = (rest.len() * w).div_ceil(8);
        let bytes = v.to_le_bytes();
        out[whole * w..whole * w + nbytes].copy_from_slice(&bytes[..nbytes]);
    }
}

/// Unpacks `out.len()` codes from `data` (laid out as [`pack_into`] writes).
#[inline(always)]
pub fn unpack_from(data: &[u8], bits: u32, signed: bool, out: &mut [i32]) {
    match bits {
        4 => return unpack_fixed::<2>(data, signed, out),
        2 => return unpack_fixed::<4>(data, signed, out),
        _ => {}
    }
    let w = bits as usize;
    let mask = (1u64 << w) - 1;
    let sign = if signed { 1i64 << (w - 1) } else { 0 };
    let n = out.len();
    let whole = n / 8;
    for g in 0..whole {
        let mut bytes = [0u8; 8];
        bytes[..w].copy_from_slice(&data[g * w..g * w + w]);
        let v = u64::from_le_bytes(bytes);
        for k in 0..8 {
            let u = ((v >> (k * w)) & mask) as i64;
            // (u ^ sign) − sign sign-extends a w-bit value (sign = 0: no-op).
            out[8 * g + k] = ((u ^ sign) - sign) as i32;
        }
    }
    let rest = n - 8 * whole;
    if rest > 0 {
        let nbytes = (rest * w).div_ceil(8);
        let mut bytes = [0u8; 8];
        bytes[..nbytes].copy_from_slice(&data[whole * w..whole * w + nbytes]);
        let v = u64::from_le_bytes(bytes);
        for k in 0..rest {
            let u = ((v >> (k * w)) & mask) as i64;
            out[8 * whole + k] = ((u ^ sign) - sign) as i32;
        }
    }
}

/// Bytes per step of the fixed-width loops: whole steps over fixed-size
/// arrays, which the loop vectoriser takes whole.
const STEP: usize = 32;

/// Packing for widths that divide a byte: `PER` codes of 8/PER bits each.
#[inline(always)]
fn pack_fixed<const PER: usize>(codes: &[i32], out: &mut [u8]) {
    let w = 8 / PER;
    let mask = (1u32 << w) - 1;
    let byte = |g: &[i32]| {
        let mut b = 0u32;
        for (k, &c) in g.iter().enumerate() {
            b |= (c as u32 & mask) << (k * w);
        }
        b as u8
    };
    if PER == 2 && cfg!(target_endian = "little") {
        return pack_nibbles(codes, out, byte);
    }
    let steps = codes.len() / (PER * STEP);
    for (o, c) in out
        .chunks_exact_mut(STEP)
        .zip(codes.chunks_exact(PER * STEP))
        .take(steps)
    {
        let o: &mut [u8; STEP] = o.try_into().unwrap();
        for k in 0..STEP {
            o[k] = byte(&c[PER * k..PER * k + PER]);
        }
    }
    let done = steps * STEP;
    for (o, g) in out[done..].iter_mut().zip(codes[done * PER..].chunks(PER)) {
        *o = byte(g);
    }
}

/// 4-bit packing with each pair of codes read as one little-endian u64
/// (code 2k in the low half): contiguous 64-bit lanes, which the loop
/// vectoriser takes, where pairs of i32 loads are left scalar.
#[inline(always)]
fn pack_nibbles(codes: &[i32], out: &mut [u8], byte: impl Fn(&[i32]) -> u8) {
    // SAFETY: every bit pattern is a valid u64.
    let (head, pairs, _) = unsafe { codes.align_to::<u64>() };
    if !head.is_empty() {
        // Not 8-byte aligned (never for the kernels' stack blocks).
        for (o, g) in out.iter_mut().zip(codes.chunks(2)) {
            *o = byte(g);
        }
        return;
    }
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if pairs.len() >= 16 && crate::simd::has_avx2() {
        done = pairs.len() / 16 * 16;
        // SAFETY: the CPU has AVX2; `codes` holds 2·done codes and `out`
        // at least `done` bytes (one per pair, as the caller sizes it).
        unsafe { pack_nibbles_avx2(&codes[..2 * done], &mut out[..done]) };
    }
    for (o, &w) in out[done..].iter_mut().zip(&pairs[done..]) {
        *o = ((w & 0xf) | ((w >> 28) & 0xf0)) as u8;
    }
    if codes.len() % 2 == 1 {
        out[pairs.len()] = byte(&codes[codes.len() - 1..]);
    }
}

/// The 32 codes at `src` (each within i8's range when `SIGNED`, else
/// u8's) as bytes in code order: two saturating packs, exact for codes in
/// range; within each 128-bit lane they interleave the four inputs by
/// quarters, and the permutation restores code order.
///
/// # Safety
/// AVX2, and 4 readable vectors at `src`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bytes_in_order<const SIGNED: bool>(
    src: *const std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees the 4 vectors are readable.
    let v = |i: usize| unsafe { _mm256_loadu_si256(src.add(i)) };
    let words = (
        _mm256_packs_epi32(v(0), v(1)),
        _mm256_packs_epi32(v(2), v(3)),
    );
    let bytes = if SIGNED {
        _mm256_packs_epi16(words.0, words.1)
    } else {
        _mm256_packus_epi16(words.0, words.1)
    };
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// [`pack_nibbles`] 32 codes at a time (`codes.len()` a multiple of 32,
/// `out` half as long), in AVX2 registers: the codes narrowed to bytes with
/// saturating packs (exact, as each already fits in a nibble), put back in
/// order, masked to their low nibbles, and each pair joined by one
/// multiply-add (low + 16·high ≤ 255). About 0.4 instructions a code, a
/// third of what the vectorised u64 loop takes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_nibbles_avx2(codes: &[i32], out: &mut [u8]) {
    use std::arch::x86_64::*;
    let steps = (codes.len() / 32).min(out.len() / 16);
    let src = codes.as_ptr() as *const __m256i;
    let low = _mm256_set1_epi8(0x0f);
    let weights = _mm256_set1_epi16(0x1001); // bytes (1, 16)
    for k in 0..steps {
        // SAFETY: steps bounds every access: 4 vectors of codes read, 16
        // bytes written per step.
        unsafe {
            let bytes = bytes_in_order::<true>(src.add(4 * k));
            let pairs = _mm256_maddubs_epi16(_mm256_and_si256(bytes, low), weights);
            let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi16(pairs, pairs));
            _mm_storeu_si128(
                out.as_mut_ptr().add(16 * k) as *mut __m128i,
                _mm256_castsi256_si128(packed),
            );
        }
    }
}

/// Narrows the leading codes of `codes`, each within the byte container's
/// range (i8 when `signed`, else u8), into `out` 32 at a time in AVX2
/// registers; returns how many it narrowed (0 without AVX2), leaving the
/// rest to the caller's scalar loop.
#[inline(always)]
pub(super) fn narrow_to_bytes(codes: &[i32], signed: bool, out: &mut [u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if codes.len() >= 32 && crate::simd::has_avx2() {
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { narrow_to_bytes_avx2(codes, signed, out) };
    }
    let _ = (codes, signed, out);
    0
}

/// [`narrow_to_bytes`] in AVX2, through [`bytes_in_order`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn narrow_to_bytes_avx2(codes: &[i32], signed: bool, out: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let steps = codes.len().min(out.len()) / 32;
    let src = codes.as_ptr() as *const __m256i;
    for k in 0..steps {
        // SAFETY: steps bounds every access: 4 vectors of codes read, 32
        // bytes written per step.
        unsafe {
            let bytes = if signed {
                bytes_in_order::<true>(src.add(4 * k))
            } else {
                bytes_in_order::<false>(src.add(4 * k))
            };
            _mm256_storeu_si256(out.as_mut_ptr().add(32 * k) as *mut __m256i, bytes);
        }
    }
    32 * steps
}

/// Unpacks 4-bit codes 32 at a time (`out.len()` a multiple of 32, `data`
/// half as long) in AVX2 registers: nibbles split and interleaved as bytes,
/// sign-extended there (`(n ^ 8) − 8`) when `SIGNED`, then widened to i32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn unpack_nibbles_avx2<const SIGNED: bool>(data: &[u8], out: &mut [i32]) {
    use std::arch::x86_64::*;
    let steps = (out.len() / 32).min(data.len() / 16);
    let low = _mm_set1_epi8(0x0f);
    let eight = _mm_set1_epi8(8);
    let dst = out.as_mut_ptr() as *mut __m256i;
    for k in 0..steps {
        // SAFETY: steps bounds every access: 16 bytes read, 4 vectors of
        // codes written per step.
        unsafe {
            let b = _mm_loadu_si128(data.as_ptr().add(16 * k) as *const __m128i);
            let lo = _mm_and_si128(b, low);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(b), low);
            // Code 2j is byte j's low nibble, 2j + 1 its high one.
            let mut first = _mm_unpacklo_epi8(lo, hi);
            let mut second = _mm_unpackhi_epi8(lo, hi);
            let widen = |v: __m128i| {
                if SIGNED {
                    _mm256_cvtepi8_epi32(v)
                } else {
                    _mm256_cvtepu8_epi32(v)
                }
            };
            if SIGNED {
                first = _mm_sub_epi8(_mm_xor_si128(first, eight), eight);
                second = _mm_sub_epi8(_mm_xor_si128(second, eight), eight);
            }
            _mm256_storeu_si256(dst.add(4 * k), widen(first));
            _mm256_storeu_si256(dst.add(4 * k + 1), widen(_mm_srli_si128::<8>(first)));
            _mm256_storeu_si256(dst.add(4 * k + 2), widen(second));
            _mm256_storeu_si256(dst.add(4 * k + 3), widen(_mm_srli_si128::<8>(second)));
        }
    }
}

/// Unpacking for widths that divide a byte.
#[inline(always)]
fn unpack_fixed<const PER: usize>(data: &[u8], signed: bool, out: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if PER == 2 && out.len() >= 32 && crate::simd::has_avx2() {
        let whole = out.len() / 32 * 32;
        let (head, rest) = out.split_at_mut(whole);
        // SAFETY: the CPU has AVX2; `data` holds a byte per two codes.
        unsafe {
            if signed {
                unpack_nibbles_avx2::<true>(&data[..whole / 2], head);
            } else {
                unpack_nibbles_avx2::<false>(&data[..whole / 2], head);
            }
        }
        return unpack_fixed::<PER>(&data[whole / 2..], signed, rest);
    }
    if signed {
        unpack_fixed_as::<PER, true>(data, out)
    } else {
        unpack_fixed_as::<PER, false>(data, out)
    }
}

#[inline(always)]
fn unpack_fixed_as<const PER: usize, const SIGNED: bool>(data: &[u8], out: &mut [i32]) {
    let w = 8 / PER;
    // Field k of byte b: moved to the top of an i32 and shifted back down,
    // arithmetically (sign-extending) or logically.
    let field = |b: u8, k: usize| {
        let top = (b as u32) << (32 - w * (k + 1));
        if SIGNED {
            (top as i32) >> (32 - w)
        } else {
            (top >> (32 - w)) as i32
        }
    };
    let steps = out.len() / (PER * STEP);
    for (o, d) in out
        .chunks_exact_mut(PER * STEP)
        .zip(data.chunks_exact(STEP))
        .take(steps)
    {
        let d: &[u8; STEP] = d.try_into().unwrap();
        for j in 0..STEP {
            for k in 0..PER {
                o[PER * j + k] = field(d[j], k);
            }
        }
    }
    let done = steps * STEP;
    for (g, &b) in out[done * PER..].chunks_mut(PER).zip(&data[done..]) {
        for (k, o) in g.iter_mut().enumerate() {
            *o = field(b, k);
        }
    }
}

fn check_bits(bits: u32) -> Result<()> {
    if !(1..=8).contains(&bits) {
        return Err(CoreError::Value(format!(
            "bits must be in 1..8 for packing, got {bits}"
        )));
    }
    Ok(())
}

/// Packs codes into `bits` per code; every code must fit (in `0..2^bits` or,
/// if `signed`, in `−2^(bits−1)..2^(bits−1)`).
pub fn pack(codes: &[i32], bits: u32, signed: bool) -> Result<Vec<u8>> {
    check_bits(bits)?;
    let (lo, hi) = if signed {
        (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
    } else {
        (0, (1i64 << bits) - 1)
    };
    if let Some(i) = codes
        .iter()
        .position(|&c| (c as i64) < lo || (c as i64) > hi)
    {
        return Err(CoreError::Value(format!(
            "codes[{i}] = {} does not fit in {bits} {} bits ({lo}..={hi})",
            codes[i],
            if signed { "signed" } else { "unsigned" }
        )));
    }
    let mut out = vec![0u8; (codes.len() * bits as usize).div_ceil(8)];
    pack_into(codes, bits, &mut out);
    Ok(out)
}

/// Unpacks `len` codes of `bits` each.
pub fn unpack(data: &[u8], bits: u32, signed: bool, len: usize) -> Result<Vec<i32>> {
    check_bits(bits)?;
    let need = (len * bits as usize).div_ceil(8);
    if data.len() != need {
        return Err(CoreError::Shape(format!(
            "packed: {len} codes of {bits} bits need {need} bytes, got {}",
            data.len()
        )));
    }
    let mut out = vec![0i32; len];
    unpack_par(data, bits, signed, &mut out);
    Ok(out)
}

fn unpack_par(data: &[u8], bits: u32, signed: bool, out: &mut [i32]) {
    use rayon::prelude::*;
    const N: usize = 1 << 16;
    let w = bits as usize;
    out.par_chunks_mut(N).enumerate().for_each(|(k, o)| {
        let byte0 = k * N * w / 8;
        let nbytes = (o.len() * w).div_ceil(8);
        unpack_from(&data[byte0..byte0 + nbytes], bits, signed, o);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_lsb_first() {
        assert_eq!(pack(&[1, 2, 3, 4], 4, false).unwrap(), vec![0x21, 0x43]);
        assert_eq!(pack(&[1, 2, 3, 0], 2, false).unwrap(), vec![0b00_11_10_01]);
        assert_eq!(pack(&[-1, 0], 4, true).unwrap(), vec![0x0f]);
        // 3 bits: 1, 7 -> 0b111_001
        assert_eq!(pack(&[1, 7], 3, false).unwrap(), vec![0b00_111_001]);
    }

    #[test]
    fn narrowing_to_bytes_keeps_every_code_in_order() {
        for signed in [false, true] {
            let lo = if signed { -128 } else { 0 };
            for len in [0usize, 31, 32, 33, 64, 95, 1000] {
                let codes: Vec<i32> = (0..len).map(|i| lo + (i as i32 * 7919) % 256).collect();
                let mut out = vec![0u8; len];
                let done = narrow_to_bytes(&codes, signed, &mut out);
                assert!(done <= len && done.is_multiple_of(32));
                for i in 0..done {
                    assert_eq!(out[i], codes[i] as u8, "signed {signed}, len {len}, at {i}");
                }
            }
        }
    }

    #[test]
    fn round_trips() {
        for bits in 1..=8u32 {
            for signed in [false, true] {
                if signed && bits == 1 {
                    continue;
                }
                let (lo, hi) = if signed {
                    (-(1i32 << (bits - 1)), (1i32 << (bits - 1)) - 1)
                } else {
                    (0, (1i32 << bits) - 1)
                };
                for len in [0usize, 1, 7, 8, 9, 23, 1000] {
                    let codes: Vec<i32> = (0..len)
                        .map(|i| lo + (i as i32 * 7919) % (hi - lo + 1))
                        .collect();
                    let p = pack(&codes, bits, signed).unwrap();
                    assert_eq!(unpack(&p, bits, signed, len).unwrap(), codes);
                }
            }
        }
    }
}
