//! Vectorised math on lanes of `f32`, and runtime CPU-feature dispatch.
//!
//! Kernels are written once, over fixed-size arrays ([`V`], [`LANES`] wide),
//! with every helper `#[inline(always)]`. [`dispatch`] then runs the kernel
//! inside a function compiled for the best instruction set the CPU has
//! (AVX-512, AVX2+FMA, or the baseline, which is NEON on aarch64), so LLVM
//! turns the lane loops into the widest vector code the machine runs. This is
//! the `pulp`/`multiversion` pattern on stable Rust with no dependency.
//!
//! The transcendental functions are Cephes-style polynomials with errors of
//! about 1 ulp over the ranges the kernels use; the unit tests bound them
//! against `f64` libm.

/// Width of a lane group: 16 `f32`s, one AVX-512 register, two AVX2 ones.
pub const LANES: usize = 16;

/// A lane group.
pub type V = [f32; LANES];

/// A computation that is compiled once per instruction set by [`dispatch`].
///
/// Implementations must mark `run` `#[inline(always)]`, and everything it
/// calls too, so that the code lands inside the feature-enabled function.
pub trait Kernel {
    /// What the computation returns.
    type Output;
    /// Runs the computation.
    fn run(self) -> Self::Output;
}

/// A closure as a [`Kernel`]: folds over per-part arrays (the checks of
/// 10^5 scales and bounds) compiled per instruction set like any kernel;
/// in the baseline build they run two float64 or four int32 lanes at a time,
/// or none (64-bit integer compares). Only for plain folds: the closure is
/// a function of its own, compiled for the baseline target, that LLVM
/// inlines into the dispatched copy because it is called once from an
/// `#[inline(always)]` method; were it not inlined it would still be
/// correct, only slower (the kernels proper avoid closures; see
/// docs/architecture.md).
pub struct Fold<F>(pub F);

impl<T, F: FnOnce() -> T> Kernel for Fold<F> {
    type Output = T;
    #[inline(always)]
    fn run(self) -> T {
        (self.0)()
    }
}

/// The instruction set [`dispatch`] picks on this machine (see `level` for
/// the `QUANTDRIFT_ISA` cap).
pub fn isa_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            return "avx512";
        }
        if has_avx2() {
            return "avx2+fma";
        }
        "sse2"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}

/// Whether one vector register holds a whole lane group (AVX-512 on x86-64;
/// NEON's 32 registers hold the few lane groups a kernel keeps live too).
/// Kernels with many accumulators use it to keep half-width sums where
/// registers are scarce (AVX2's 16 registers hold only 8 lanes each), so
/// that constants are not reloaded and sums not spilled in the hot loop.
#[inline]
pub fn lane_group_fits_register() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// The x86-64 builds of a kernel, narrowest first.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Baseline,
    Avx2,
    Avx512,
}

/// The widest build this CPU runs, capped by `QUANTDRIFT_ISA` (`sse2`,
/// `avx2` or `avx512`, as [`isa_name`] reports them; read once) so that the narrower builds can be measured
/// and tested on a machine that has the wider ones. A cap wider than the
/// CPU, or an unknown name, changes nothing.
#[cfg(target_arch = "x86_64")]
fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let detected = if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            Level::Avx512
        } else if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            Level::Avx2
        } else {
            Level::Baseline
        };
        let cap = match std::env::var("QUANTDRIFT_ISA").as_deref().map(str::trim) {
            Ok("sse2" | "baseline") => Level::Baseline,
            Ok("avx2" | "avx2+fma") => Level::Avx2,
            _ => Level::Avx512,
        };
        detected.min(cap)
    })
}

/// Proof that kernels may use the F16C conversions (they come with AVX2:
/// see `has_avx2`). Only [`F16c::detect`] makes one, so code holding one
/// may run the instructions; checking once and passing the proof along
/// keeps the check out of hot loops.
#[derive(Debug, Clone, Copy)]
pub struct F16c(());

impl F16c {
    /// The proof where this CPU (and `QUANTDRIFT_ISA`) allows F16C; none
    /// off x86-64.
    #[inline]
    pub fn detect() -> Option<F16c> {
        #[cfg(target_arch = "x86_64")]
        return has_avx2().then_some(F16c(()));
        #[cfg(not(target_arch = "x86_64"))]
        None
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    level() == Level::Avx512
}

/// Whether kernels may use AVX2, FMA and F16C (the CPU has them and
/// `QUANTDRIFT_ISA` allows them).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    level() >= Level::Avx2
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
unsafe fn run_avx512<K: Kernel>(kernel: K) -> K::Output {
    kernel.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2<K: Kernel>(kernel: K) -> K::Output {
    kernel.run()
}

/// Runs `kernel` compiled for the widest instruction set this CPU supports.
#[inline]
pub fn dispatch<K: Kernel>(kernel: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: the CPU reports every feature run_avx512 is compiled for.
            return unsafe { run_avx512(kernel) };
        }
        if has_avx2() {
            // SAFETY: the CPU reports AVX2 and FMA.
            return unsafe { run_avx2(kernel) };
        }
    }
    kernel.run()
}

/// Copies `src` into `dst` (the shorter length) with non-temporal stores on
/// x86-64 (32-byte ones with AVX, else SSE2's 16-byte ones): the lines
/// go to memory without first being read into the cache, which for a large
/// output halves the memory traffic of writing it. Elsewhere, a plain copy.
/// Finish with [`store_fence`] before another thread may read `dst`.
#[inline(always)]
pub fn stream_copy_f32(dst: &mut [f32], src: &[f32]) {
    let n = dst.len().min(src.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
        // Every line must take non-temporal stores only: a line that also
        // takes a plain store is pulled back into the cache, which costs far
        // more than it saves. So only the unaligned head and tail of a
        // float32 slice (never more than 3 values) are plain stores.
        let head = dst.as_ptr().align_offset(16).min(n);
        dst[..head].copy_from_slice(&src[..head]);
        let mut i = head;
        let sse = |i: usize, dst: &mut [f32]| {
            // SAFETY: callers keep i + 4 ≤ n, so both 16-byte accesses are
            // in bounds; dst + i is 16-byte aligned (aligned after the head,
            // then moved by multiples of 16 bytes), as movntps requires.
            unsafe { _mm_stream_ps(dst.as_mut_ptr().add(i), _mm_loadu_ps(src.as_ptr().add(i))) };
        };
        while i + 4 <= n && dst[i..].as_ptr().align_offset(32) != 0 {
            sse(i, dst);
            i += 4;
        }
        if n - i >= 8 && has_avx2() {
            let whole = (n - i) / 8 * 8;
            // SAFETY: the CPU has AVX; dst + i is 32-byte aligned (or the
            // loop above ran out, leaving fewer than 8) and both ranges of
            // `whole` values are in bounds.
            unsafe { stream_avx(dst.as_mut_ptr().add(i), src.as_ptr().add(i), whole) };
            i += whole;
        }
        while i + 4 <= n {
            sse(i, dst);
            i += 4;
        }
        dst[i..n].copy_from_slice(&src[i..n]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst[..n].copy_from_slice(&src[..n]);
}

/// `len` (a multiple of 8) floats from `src` to the 32-byte-aligned `dst`
/// in 32-byte non-temporal stores.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn stream_avx(dst: *mut f32, src: *const f32, len: usize) {
    use std::arch::x86_64::{_mm256_loadu_ps, _mm256_stream_ps};
    let mut i = 0;
    while i < len {
        // SAFETY: the caller guarantees bounds, alignment and AVX.
        unsafe { _mm256_stream_ps(dst.add(i), _mm256_loadu_ps(src.add(i))) };
        i += 8;
    }
}

/// Orders earlier non-temporal stores before every later store (a no-op
/// off x86-64, where [`stream_copy_f32`] uses plain stores).
#[inline(always)]
pub fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence has no operands and no preconditions.
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// Asks the CPU to bring bytes `from..to` (clipped to `len`) of the buffer
/// at `base` into the L2 cache. A hint only: prefetches never fault, so any
/// address is acceptable, and it does nothing on targets without one.
#[inline(always)]
pub fn prefetch_l2(base: *const u8, len: usize, from: usize, to: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        // SAFETY: a prefetch is a hint that never faults or reads into the
        // program; the address need not even be valid.
        let line = |offset: usize| unsafe {
            _mm_prefetch::<{ _MM_HINT_T1 }>(base.wrapping_add(offset) as *const i8)
        };
        let to = to.min(len);
        let mut offset = from;
        // four lines a step: the loop's own count and branch cost the
        // quantization of groups of 128 as much as the prefetches
        while offset + 192 < to {
            line(offset);
            line(offset + 64);
            line(offset + 128);
            line(offset + 192);
            offset += 256;
        }
        while offset < to {
            line(offset);
            offset += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (base, len, from, to);
}

/// Input a thread will probably read next (the following task of a
/// contiguous split), pulled into L2 a block at a time while the current
/// task computes, so that a phase that works from cache also keeps the
/// memory busy. A hint: it never reads the data into the program.
#[derive(Debug, Clone, Copy)]
pub struct Ahead {
    base: *const u8,
    /// Bytes in the range (0: nothing to prefetch).
    len: usize,
    element_size: usize,
}

// SAFETY: the pointer is only ever a prefetch address, never dereferenced,
// so sharing it between threads cannot cause a data race.
unsafe impl Send for Ahead {}
// SAFETY: as above.
unsafe impl Sync for Ahead {}

impl Ahead {
    /// Nothing to prefetch.
    pub const NONE: Ahead = Ahead {
        base: std::ptr::null(),
        len: 0,
        element_size: 0,
    };

    /// The elements of `data`.
    pub fn of<T>(data: &[T]) -> Ahead {
        let element_size = std::mem::size_of::<T>();
        Ahead {
            base: data.as_ptr() as *const u8,
            len: std::mem::size_of_val(data),
            element_size,
        }
    }

    /// Prefetches elements `start..start + n` of the range (clipped to it).
    #[inline(always)]
    pub fn fetch(self, start: usize, n: usize) {
        if self.len > 0 {
            let size = self.element_size;
            prefetch_l2(self.base, self.len, start * size, (start + n) * size);
        }
    }
}

// ---------------------------------------------------------------------------
// Lane helpers. Written as plain loops so LLVM vectorises them.
// ---------------------------------------------------------------------------

/// Branch-free select.
#[inline(always)]
pub fn select(cond: bool, a: f32, b: f32) -> f32 {
    // Bit arithmetic rather than `if`: LLVM's SLP vectoriser turns this into
    // a blend reliably, where a branchy select is sometimes left scalar.
    let mask = (cond as u32).wrapping_neg();
    f32::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding then subtracting 1.5·2^23 + 127 rounds to the nearest integer
/// and leaves k + 127, the biased exponent of 2^k, in the low bits.
const ROUND_MAGIC: f32 = 12_583_039.0;

/// The range reduction every exponential here shares: `clamped` =
/// k·ln 2 + r with |r| ≤ ln 2 / 2, returned as (r, 2^k). Lane arithmetic
/// with no float→int conversion, so it vectorises: k = round(x·log2 e) is
/// read from the low mantissa bits of t = x·log2 e + 1.5·2^23 + 127, which
/// hold k + 127, so that shifting t's bits left by 23 leaves exactly the
/// bits of 2^k (for the clamped range, −126 ≤ k ≤ 127).
#[inline(always)]
fn reduce(clamped: f32) -> (f32, f32) {
    let t = clamped.mul_add(LOG2E, ROUND_MAGIC);
    let k = t - ROUND_MAGIC;
    let r = k.mul_add(-LN2_LO, k.mul_add(-LN2_HI, clamped));
    (r, f32::from_bits(t.to_bits() << 23))
}

/// e^r for |r| ≤ ln 2 / 2, Cephes' polynomial (about 1 ulp).
#[inline(always)]
fn exp_reduced(r: f32) -> f32 {
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5); // Cephes writes 5.0000001e-1, which is 0.5 in f32
    p.mul_add(r * r, r) + 1.0
}

/// `e^x` for one lane; 0 below −87.34 (where float32 results turn
/// subnormal), `+inf` above 88.37. Error about 1 ulp.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // max/min rather than clamp: clamp keeps NaN the same, but we want the
    // two plain vector instructions (NaN is patched at the end anyway).
    #[allow(clippy::manual_clamp)]
    let (r, two_k) = reduce(x.max(EXP_LO).min(EXP_HI));
    let y = exp_reduced(r) * two_k;
    let y = select(x > EXP_HI, f32::INFINITY, y);
    let y = select(x < EXP_LO, 0.0, y);
    select(x.is_nan(), x, y)
}

/// `e^x` for x ≤ 0 or −inf (shifted scores, which the scan has checked for
/// NaN and +inf): [`exp`] without the overflow and NaN patches.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    let (r, two_k) = reduce(x.max(EXP_LO));
    select(x < EXP_LO, 0.0, exp_reduced(r) * two_k)
}

/// `e^x` for x ≤ 0, as [`exp_nonpositive`] but with a degree-5 minimax
/// polynomial: relative error below 3e-7 (about 2.5 ulp) for two fewer
/// multiply-adds. For weights summed with the largest weight, 1: inputs
/// below −87.34 (and −inf) give e^−87.34 ≈ 1.2e-38 rather
/// than 0, which saves a compare and a mask and is far below the float32
/// resolution of such a sum.
///
/// The polynomial is evaluated by Estrin's scheme, in two halves that
/// proceed in parallel: this is the longest dependency chain of KL's hot
/// loop, whose speed on cores with few vector registers is bound by it.
#[inline(always)]
pub fn exp_weight(x: f32) -> f32 {
    let (r, two_k) = reduce(x.max(EXP_LO));
    let r2 = r * r;
    let low = 4.999_889_4e-1f32.mul_add(r2, 9.999_997e-1f32.mul_add(r, 1.000_000_1));
    let high = 8.297_655e-3f32
        .mul_add(r, 4.191_538_3e-2)
        .mul_add(r, 1.666_757_5e-1);
    high.mul_add(r2 * r, low) * two_k
}

const EXP_LO: f32 = -87.336_55;
const EXP_HI: f32 = 88.376_26;

/// `e^x − 1` for one lane, accurate near 0 (Taylor polynomial for |x| < 0.5).
#[inline(always)]
pub fn expm1(x: f32) -> f32 {
    let mut p = 1.0f32 / 362_880.0;
    p = p.mul_add(x, 1.0 / 40_320.0);
    p = p.mul_add(x, 1.0 / 5_040.0);
    p = p.mul_add(x, 1.0 / 720.0);
    p = p.mul_add(x, 1.0 / 120.0);
    p = p.mul_add(x, 1.0 / 24.0);
    p = p.mul_add(x, 1.0 / 6.0);
    p = p.mul_add(x, 0.5);
    let small = (p * x).mul_add(x, x);
    select(x.abs() < 0.5, small, exp(x) - 1.0)
}

/// Natural logarithm for one lane: `ln(0) = −inf`, `ln(+inf) = +inf`,
/// NaN for negative input. Subnormal inputs are handled. Error about 1 ulp.
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    // Lift subnormals into the normal range first (exact scaling by 2^23).
    let tiny = x < f32::MIN_POSITIVE;
    let xs = select(tiny, x * 8_388_608.0, x);
    let bits = xs.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000); // [1, 2)
    let big = m > std::f32::consts::SQRT_2;
    m = select(big, m * 0.5, m);
    e += big as i32;
    let e = e as f32 - select(tiny, 23.0, 0.0);
    let f = m - 1.0;
    let z = f * f;
    let mut p = 7.037_683_6e-2f32;
    p = p.mul_add(f, -1.151_461e-1);
    p = p.mul_add(f, 1.167_699_9e-1);
    p = p.mul_add(f, -1.242_014_1e-1);
    p = p.mul_add(f, 1.424_932_3e-1);
    p = p.mul_add(f, -1.666_805_8e-1);
    p = p.mul_add(f, 2.000_071_4e-1);
    p = p.mul_add(f, -2.499_999_4e-1);
    p = p.mul_add(f, 3.333_333e-1);
    let mut y = p * f * z;
    y = e.mul_add(-2.121_944_4e-4, y);
    y = (-0.5f32).mul_add(z, y);
    let r = e.mul_add(0.693_359_4, f + y);
    let r = select(x == 0.0, f32::NEG_INFINITY, r);
    let r = select(x == f32::INFINITY, f32::INFINITY, r);
    select(x < 0.0 || x.is_nan(), f32::NAN, r)
}

/// `ln(1 + x)` for one lane, accurate near 0 (x > −1; −inf at −1).
#[inline(always)]
pub fn ln_1p(x: f32) -> f32 {
    // Goldberg's trick: the rounding error of u = 1 + x is divided out.
    let u = 1.0 + x;
    let d = u - 1.0;
    let r = ln(u) * (x / d);
    select(d == 0.0, x, select(u == f32::INFINITY, u, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(got: f32, want: f64) -> f64 {
        let w32 = want as f32;
        if w32 == got {
            return 0.0;
        }
        let ulp = (f32::from_bits(w32.abs().to_bits() + 1) - w32.abs()) as f64;
        (got as f64 - want).abs() / ulp
    }

    fn sweep(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * (i as f32 / n as f32))
    }

    #[test]
    fn exp_is_within_two_ulps() {
        for x in sweep(-87.0, 88.3, 200_000) {
            let e = ulps(exp(x), (x as f64).exp());
            assert!(e <= 2.0, "exp({x}) off by {e} ulp");
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn exp_weight_is_within_three_tenths_of_a_millionth() {
        for x in sweep(-87.0, 0.0, 300_000).chain([-1e-7, -0.0, 0.0]) {
            let want = (x as f64).exp();
            let err = (exp_weight(x) as f64 - want).abs() / want;
            assert!(err < 3e-7, "exp_weight({x}) rel err {err}");
        }
        for x in [-87.5, -100.0, -1e30, f32::NEG_INFINITY] {
            let w = exp_weight(x);
            assert!(w > 0.0 && w < 1.2e-38, "exp_weight({x}) = {w}");
        }
    }

    #[test]
    fn exp_nonpositive_equals_exp() {
        for x in sweep(-100.0, 0.0, 300_000).chain([f32::NEG_INFINITY, -0.0, 0.0]) {
            assert_eq!(exp_nonpositive(x).to_bits(), exp(x).to_bits(), "x = {x}");
        }
    }

    #[test]
    fn expm1_is_accurate_near_zero() {
        for x in sweep(-20.0, 20.0, 100_001).chain(sweep(-1e-3, 1e-3, 10_001)) {
            let want = (x as f64).exp_m1();
            let err = (expm1(x) as f64 - want).abs() / want.abs().max(f64::MIN_POSITIVE);
            assert!(
                err < 4e-7 || (x == 0.0 && expm1(x) == 0.0),
                "expm1({x}) rel err {err}"
            );
        }
    }

    #[test]
    fn ln_is_within_two_ulps_including_subnormals() {
        let mut x = 1e-44f32;
        while x < 3e38 {
            let e = ulps(ln(x), (x as f64).ln());
            assert!(e <= 2.0, "ln({x}) off by {e} ulp");
            x = (x * 1.000_37).max(f32::from_bits(x.to_bits() + 1));
        }
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(0.0), f32::NEG_INFINITY);
        assert_eq!(ln(f32::INFINITY), f32::INFINITY);
        assert!(ln(-1.0).is_nan());
    }

    #[test]
    fn ln_1p_is_accurate_near_zero() {
        for x in sweep(-0.999, 10.0, 100_001).chain(sweep(-1e-4, 1e-4, 10_001)) {
            let want = (x as f64).ln_1p();
            let err = (ln_1p(x) as f64 - want).abs() / want.abs().max(f64::MIN_POSITIVE);
            assert!(err < 3e-7 || x == 0.0, "ln_1p({x}) rel err {err}");
        }
        assert_eq!(ln_1p(-1.0), f32::NEG_INFINITY);
    }
}
