//! Log-likelihood vectors: double centring and the KL estimate matrix.
//!
//! `L` is a K×N matrix (K models, N texts) of per-text log-likelihoods,
//! row-major. Double centring gives `Q = H_K · L · H_N`, i.e.
//! `q_is = ℓ_is − ℓ̄_i· − ℓ̄_·s + ℓ̄_··`, and the KL estimate between models
//! `i` and `j` is `‖q_i − q_j‖² / (2N)` = `Var_s(ℓ_is − ℓ_js) / 2` (ddof 0),
//! in nats per text.
//!
//! [`kl_matrix`] sums squared differences directly (no Gram-matrix
//! shortcut, so no cancellation between large norms), tile by tile over
//! blocks of rows and columns so that a tile's rows stay in cache, with rayon
//! over blocks of rows. It computes `i < j` only and mirrors, so the result
//! is exactly symmetric with an exactly zero diagonal.

use rayon::prelude::*;

use crate::simd::{self, Kernel};
use crate::threads;
use crate::{CoreError, Result};

/// Rows per block of the KL matrix (both the `i` and the `j` side).
const ROW_BLOCK: usize = 16;
/// Columns per tile: ROW_BLOCK×2 rows of this many f64 stay in L2.
const COL_BLOCK: usize = 1024;
/// f64 lanes of the accumulators.
const LANES: usize = 8;

fn check(x: &[f64], k: usize, n: usize, arg: &str) -> Result<()> {
    if k == 0 || n == 0 {
        return Err(CoreError::Shape(format!(
            "{arg} must have at least one row (model) and one column (text), got {k}×{n}"
        )));
    }
    if x.len() != k * n {
        return Err(CoreError::Shape(format!(
            "{arg} holds {} values, which is not {k}×{n}",
            x.len()
        )));
    }
    if let Some(pos) = x.iter().position(|v| !v.is_finite()) {
        return Err(CoreError::Value(format!(
            "{arg}[{}, {}] is {}; log-likelihoods must be finite (clip them first)",
            pos / n,
            pos % n,
            x[pos]
        )));
    }
    Ok(())
}

/// Mean of each row of the K×N matrix `x`.
fn row_means(x: &[f64], n: usize) -> Vec<f64> {
    x.par_chunks(n)
        .map(|row| row.iter().sum::<f64>() / n as f64)
        .collect()
}

/// Mean of each column of the K×N matrix `x`, columns split across threads.
fn col_means(x: &[f64], k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n];
    out.par_chunks_mut(COL_BLOCK)
        .enumerate()
        .for_each(|(b, chunk)| {
            let c0 = b * COL_BLOCK;
            let c1 = c0 + chunk.len();
            for row in x.chunks_exact(n) {
                for (o, v) in chunk.iter_mut().zip(&row[c0..c1]) {
                    *o += v;
                }
            }
            for o in chunk.iter_mut() {
                *o /= k as f64;
            }
        });
    out
}

/// Double centring `Q = H_K · L · H_N` of the row-major K×N matrix `l`:
/// each row's mean over texts is removed, then each column's mean over
/// models (the order of the original code; the result is the same either
/// way up to rounding). Errors on a shape mismatch, an empty matrix or a
/// non-finite entry (named by row and column).
pub fn double_centre(l: &[f64], k: usize, n: usize) -> Result<Vec<f64>> {
    check(l, k, n, "L")?;
    threads::init_pool();
    let rows = row_means(l, n);
    let cols = col_means(l, k, n);
    // Column means of the row-centred matrix: mean_i(ℓ_is − r_i) = c_s − r̄.
    let rbar = rows.iter().sum::<f64>() / k as f64;
    let mut q = crate::buffers::zeroed_f64(k * n, "the double-centred matrix")?;
    q.par_chunks_mut(n)
        .zip(l.par_chunks(n))
        .zip(rows.par_iter())
        .for_each(|((qr, lr), &r)| {
            for ((o, &v), &c) in qr.iter_mut().zip(lr).zip(&cols) {
                *o = (v - r) - (c - rbar);
            }
        });
    Ok(q)
}

/// Sums of squared differences between one row `a` and four rows `b*`
/// over a column chunk, with lane-wise accumulators.
#[inline(always)]
fn sqdiff4(a: &[f64], b: [&[f64]; 4]) -> [f64; 4] {
    let mut acc = [[0.0f64; LANES]; 4];
    let len = a.len();
    let full = len - len % LANES;
    let mut s = 0;
    while s < full {
        let av: &[f64; LANES] = a[s..s + LANES].try_into().unwrap();
        for (acc_r, br) in acc.iter_mut().zip(b.iter()) {
            let bv: &[f64; LANES] = br[s..s + LANES].try_into().unwrap();
            for l in 0..LANES {
                let d = av[l] - bv[l];
                acc_r[l] += d * d;
            }
        }
        s += LANES;
    }
    let mut out = [0.0; 4];
    for r in 0..4 {
        let mut t = 0.0;
        for l in 0..LANES {
            t += acc[r][l];
        }
        for c in full..len {
            let d = a[c] - b[r][c];
            t += d * d;
        }
        out[r] = t;
    }
    out
}

#[inline(always)]
fn sqdiff1(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let len = a.len();
    let full = len - len % LANES;
    let mut s = 0;
    while s < full {
        let av: &[f64; LANES] = a[s..s + LANES].try_into().unwrap();
        let bv: &[f64; LANES] = b[s..s + LANES].try_into().unwrap();
        for l in 0..LANES {
            let d = av[l] - bv[l];
            acc[l] += d * d;
        }
        s += LANES;
    }
    let mut t = 0.0;
    for v in acc {
        t += v;
    }
    for c in full..len {
        let d = a[c] - b[c];
        t += d * d;
    }
    t
}

/// One block of rows `i0..i0+rows` against all rows `j > i`: squared
/// distances accumulated into `out` (rows × K, row-major), tile by tile.
struct BlockKernel<'a> {
    q: &'a [f64],
    k: usize,
    n: usize,
    i0: usize,
    out: &'a mut [f64],
}

impl Kernel for BlockKernel<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let BlockKernel { q, k, n, i0, out } = self;
        let rows = out.len() / k;
        let mut j0 = i0;
        while j0 < k {
            let j1 = (j0 + ROW_BLOCK).min(k);
            let mut c0 = 0;
            while c0 < n {
                let c1 = (c0 + COL_BLOCK).min(n);
                for di in 0..rows {
                    let i = i0 + di;
                    let a = &q[i * n + c0..i * n + c1];
                    let orow = &mut out[di * k..(di + 1) * k];
                    let mut j = j0.max(i + 1);
                    while j + 4 <= j1 {
                        let b = [
                            &q[j * n + c0..j * n + c1],
                            &q[(j + 1) * n + c0..(j + 1) * n + c1],
                            &q[(j + 2) * n + c0..(j + 2) * n + c1],
                            &q[(j + 3) * n + c0..(j + 3) * n + c1],
                        ];
                        let s = sqdiff4(a, b);
                        for r in 0..4 {
                            orow[j + r] += s[r];
                        }
                        j += 4;
                    }
                    while j < j1 {
                        orow[j] += sqdiff1(a, &q[j * n + c0..j * n + c1]);
                        j += 1;
                    }
                }
                c0 = c1;
            }
            j0 = j1;
        }
    }
}

/// The K×K matrix of KL estimates `‖q_i − q_j‖² / (2N)` between the rows of
/// the row-major K×N matrix `q` (normally the output of [`double_centre`]),
/// in nats per text. Exactly symmetric, zero on the diagonal.
pub fn kl_matrix(q: &[f64], k: usize, n: usize) -> Result<Vec<f64>> {
    check(q, k, n, "Q")?;
    threads::init_pool();
    let mut out =
        crate::buffers::zeroed_f64(k.saturating_mul(k), &format!("the {k}×{k} KL matrix"))?;
    out.par_chunks_mut(ROW_BLOCK * k)
        .enumerate()
        .for_each(|(b, block)| {
            simd::dispatch(BlockKernel {
                q,
                k,
                n,
                i0: b * ROW_BLOCK,
                out: block,
            })
        });
    let scale = 1.0 / (2.0 * n as f64);
    for i in 0..k {
        out[i * k + i] = 0.0;
        for j in i + 1..k {
            let v = out[i * k + j] * scale;
            out[i * k + j] = v;
            out[j * k + i] = v;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn squared_distance_widens_exactly() {
        let a = [1.0f32, -2.5, 3.0];
        let b = [0x3c00u16, 0x0000, 0xc000]; // f16: 1, 0, -2
        let d = super::squared_distance(super::Flat::F32(&a), super::Flat::F16(&b)).unwrap();
        assert_eq!(d, 0.0 + 6.25 + 25.0);
        assert!(super::squared_distance(super::Flat::F32(&a), super::Flat::F32(&a[..2])).is_err());
    }

    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(k: usize, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..k * n)
            .map(|_| rng.random::<f64>() * 10.0 - 50.0)
            .collect()
    }

    #[test]
    fn centring_removes_row_and_column_means() {
        let (k, n) = (7, 13);
        let l = random(k, n, 1);
        let q = double_centre(&l, k, n).unwrap();
        for i in 0..k {
            let m: f64 = q[i * n..(i + 1) * n].iter().sum::<f64>() / n as f64;
            assert!(m.abs() < 1e-12, "row {i} mean {m}");
        }
        for s in 0..n {
            let m: f64 = (0..k).map(|i| q[i * n + s]).sum::<f64>() / k as f64;
            assert!(m.abs() < 1e-12, "column {s} mean {m}");
        }
        // q_is = ℓ_is − ℓ̄_i· − ℓ̄_·s + ℓ̄_·· by the definition.
        let grand = l.iter().sum::<f64>() / (k * n) as f64;
        for i in 0..k {
            let ri = l[i * n..(i + 1) * n].iter().sum::<f64>() / n as f64;
            for s in 0..n {
                let cs = (0..k).map(|r| l[r * n + s]).sum::<f64>() / k as f64;
                let want = l[i * n + s] - ri - cs + grand;
                assert!((q[i * n + s] - want).abs() < 1e-11);
            }
        }
    }

    #[test]
    fn kl_matrix_matches_half_variance_of_differences() {
        // Sizes that exercise ragged row blocks, ragged 4-groups, lane tails
        // and more than one column block.
        for &(k, n) in &[(1, 5), (2, 1), (5, 3), (37, 2051), (19, 1024)] {
            let l = random(k, n, (k * n) as u64);
            let q = double_centre(&l, k, n).unwrap();
            let kl = kl_matrix(&q, k, n).unwrap();
            for i in 0..k {
                assert_eq!(kl[i * k + i], 0.0);
                for j in 0..k {
                    assert_eq!(kl[i * k + j], kl[j * k + i]);
                    if i == j {
                        continue;
                    }
                    let d: Vec<f64> = (0..n).map(|s| l[i * n + s] - l[j * n + s]).collect();
                    let mean = d.iter().sum::<f64>() / n as f64;
                    let var = d.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
                    let want = var / 2.0;
                    assert!(
                        (kl[i * k + j] - want).abs() <= 1e-10 * want.max(1.0),
                        "{k}×{n} ({i},{j}): {} vs {want}",
                        kl[i * k + j]
                    );
                }
            }
        }
    }

    #[test]
    fn errors_name_shape_and_position() {
        assert!(matches!(double_centre(&[], 0, 3), Err(CoreError::Shape(_))));
        assert!(matches!(
            double_centre(&[1.0; 5], 2, 3),
            Err(CoreError::Shape(_))
        ));
        let mut l = vec![0.0; 6];
        l[4] = f64::NAN;
        match double_centre(&l, 2, 3) {
            Err(CoreError::Value(m)) => assert!(m.contains("L[1, 1]"), "{m}"),
            other => panic!("{other:?}"),
        }
        l[4] = f64::NEG_INFINITY;
        assert!(matches!(kl_matrix(&l, 2, 3), Err(CoreError::Value(_))));
    }
}

/// A flat tensor as a checkpoint stores it.
#[derive(Debug, Clone, Copy)]
pub enum Flat<'a> {
    /// float32 values.
    F32(&'a [f32]),
    /// float64 values.
    F64(&'a [f64]),
    /// float16 bit patterns.
    F16(&'a [u16]),
    /// bfloat16 bit patterns.
    Bf16(&'a [u16]),
}

impl Flat<'_> {
    fn len(&self) -> usize {
        match self {
            Flat::F32(x) => x.len(),
            Flat::F64(x) => x.len(),
            Flat::F16(x) | Flat::Bf16(x) => x.len(),
        }
    }

    /// Elements `start..start + out.len()` widened to float64 (exact).
    fn widen(&self, start: usize, out: &mut [f64]) {
        let end = start + out.len();
        match self {
            Flat::F32(x) => out
                .iter_mut()
                .zip(&x[start..end])
                .for_each(|(o, &v)| *o = v as f64),
            Flat::F64(x) => out.copy_from_slice(&x[start..end]),
            Flat::F16(x) => out
                .iter_mut()
                .zip(&x[start..end])
                .for_each(|(o, &v)| *o = crate::rows::f16_to_f32(v) as f64),
            Flat::Bf16(x) => out
                .iter_mut()
                .zip(&x[start..end])
                .for_each(|(o, &v)| *o = crate::rows::bf16_to_f32(v) as f64),
        }
    }
}

/// Elements per parallel task of [`squared_distance`].
const DISTANCE_CHUNK: usize = 1 << 16;

/// ‖a − b‖² of two equally long tensors of any float dtype, in float64:
/// every element is widened exactly, differenced and squared in float64.
/// Chunks run in parallel and their sums are added in chunk order, so the
/// result does not depend on the thread count.
pub fn squared_distance(a: Flat<'_>, b: Flat<'_>) -> Result<f64> {
    if a.len() != b.len() {
        return Err(CoreError::Shape(format!(
            "tensors of {} and {} elements cannot be compared",
            a.len(),
            b.len()
        )));
    }
    threads::init_pool();
    let n = a.len();
    let sums: Vec<f64> = (0..n.div_ceil(DISTANCE_CHUNK))
        .into_par_iter()
        .map(|c| {
            let (start, end) = (c * DISTANCE_CHUNK, ((c + 1) * DISTANCE_CHUNK).min(n));
            let mut xa = [0.0f64; 256];
            let mut xb = [0.0f64; 256];
            let mut lanes = [0.0f64; 8];
            let mut at = start;
            while at < end {
                let m = (end - at).min(256);
                a.widen(at, &mut xa[..m]);
                b.widen(at, &mut xb[..m]);
                for i in 0..m {
                    let d = xa[i] - xb[i];
                    lanes[i % 8] += d * d;
                }
                at += m;
            }
            lanes.iter().sum::<f64>()
        })
        .collect();
    Ok(sums.iter().sum())
}
