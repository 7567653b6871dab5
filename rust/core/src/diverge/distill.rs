//! Knowledge-distillation loss and its gradient (lecture Def 3.3; the
//! lesson's temperature-scaled KL).
//!
//! For teacher logits t, student logits s, temperature τ and weight α:
//!
//! loss = α·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)) + (1 − α)·CE(label, softmax(s))
//!
//! and ∂loss/∂s = α·τ·(softmax(s/τ) − softmax(t/τ)) + (1 − α)·(softmax(s) − onehot(label)).
//! The τ² factor keeps the gradient's scale independent of τ (Hinton et al.).
//! Computed in float64; this is a training-loss utility, not a hot loop.

use rayon::prelude::*;

use super::reference::log_softmax;
use super::{issue_error, Inputs, Side};
use crate::error::{CoreError, Result};
use crate::rows::Rows;

/// Loss per row and gradient (row-major, like `student`).
pub struct Distilled {
    /// One loss value per row.
    pub loss: Vec<f64>,
    /// ∂loss_row/∂student, one row per row.
    pub grad: Vec<f64>,
}

/// Distillation loss and gradient for each row.
///
/// `labels` (one per row, in `0..vocab`) are needed when `alpha < 1`.
pub fn distill_rows(
    teacher: Rows<'_>,
    student: Rows<'_>,
    labels: Option<&[i64]>,
    temperature: f64,
    alpha: f64,
) -> Result<Distilled> {
    super::check_pair(&teacher, Some(&student)).map_err(|e| {
        CoreError::Shape(
            e.to_string()
                .replace("p and q", "teacher and student")
                .replace("p (", "teacher (")
                .replace("q (", "student ("),
        )
    })?;
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(CoreError::Value(format!(
            "temperature must be a finite number > 0, got {temperature}"
        )));
    }
    if !(0.0..=1.0).contains(&alpha) {
        return Err(CoreError::Value(format!(
            "alpha must be in [0, 1], got {alpha}"
        )));
    }
    let (rows, vocab) = (student.rows(), student.vocab());
    match labels {
        None if alpha < 1.0 => {
            return Err(CoreError::Value(format!(
                "labels are required when alpha < 1 (alpha = {alpha} weights the hard-label cross-entropy)"
            )))
        }
        Some(l) if l.len() != rows => {
            return Err(CoreError::Shape(format!(
                "labels must have one entry per row: got {} labels for {rows} rows",
                l.len()
            )))
        }
        Some(l) => {
            if let Some((r, &bad)) = l.iter().enumerate().find(|(_, &y)| y < 0 || y as u64 >= vocab as u64) {
                return Err(CoreError::Value(format!(
                    "labels[{r}] = {bad} is outside the vocabulary [0, {vocab})"
                )));
            }
        }
        None => {}
    }
    crate::threads::init_pool();
    type RowOutcome = std::result::Result<(f64, Vec<f64>), (usize, Side, super::RowIssue)>;
    let per_row: Vec<RowOutcome> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let (mut t, mut s) = (Vec::new(), Vec::new());
            teacher.row_f64(r, &mut t);
            student.row_f64(r, &mut s);
            let lt =
                log_softmax(&t, Inputs::Logits, temperature, 0.0).map_err(|e| (r, Side::P, e))?;
            let ls =
                log_softmax(&s, Inputs::Logits, temperature, 0.0).map_err(|e| (r, Side::Q, e))?;
            let mut kl = 0.0;
            for (&a, &b) in lt.iter().zip(&ls) {
                if a > f64::NEG_INFINITY {
                    kl += if b == f64::NEG_INFINITY {
                        f64::INFINITY
                    } else {
                        a.exp() * (a - b)
                    };
                }
            }
            let scale = alpha * temperature;
            let mut grad: Vec<f64> = lt
                .iter()
                .zip(&ls)
                .map(|(&a, &b)| scale * (b.exp() - a.exp()))
                .collect();
            // alpha = 0 is plain cross-entropy: an infinite KL (a student
            // −inf where the teacher has mass) weighs nothing, not 0·inf = NaN.
            let mut loss = if alpha > 0.0 {
                alpha * temperature * temperature * kl.max(0.0)
            } else {
                0.0
            };
            if alpha < 1.0 {
                let y = labels.expect("checked above")[r] as usize;
                let ls1 = log_softmax(&s, Inputs::Logits, 1.0, 0.0).map_err(|e| (r, Side::Q, e))?;
                loss += (1.0 - alpha) * -ls1[y];
                for (g, &b) in grad.iter_mut().zip(&ls1) {
                    *g += (1.0 - alpha) * b.exp();
                }
                grad[y] -= 1.0 - alpha;
            }
            Ok((loss, grad))
        })
        .collect();
    let mut out = Distilled {
        loss: Vec::with_capacity(rows),
        grad: Vec::with_capacity(rows * vocab),
    };
    for res in per_row {
        match res {
            Ok((loss, grad)) => {
                out.loss.push(loss);
                out.grad.extend_from_slice(&grad);
            }
            Err((r, side, issue)) => {
                let e = issue_error(r, side, issue, Inputs::Logits, 0.0);
                let name = if side == Side::P {
                    "teacher"
                } else {
                    "student"
                };
                return Err(CoreError::Value(e.to_string().replacen(
                    if side == Side::P { "p" } else { "q" },
                    name,
                    1,
                )));
            }
        }
    }
    Ok(out)
}
