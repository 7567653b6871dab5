//! Per-token statistics of a block of row pairs (the kernel of `compare`).

use numpy::{
    IntoPyArray, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use quantdrift_core::diverge::compare::{self, Block, CompareOptions};
use quantdrift_core::CoreError;

use crate::array::Matrix;
use crate::errors::{Error, Result};
use crate::gpu::{on_gpu, to_py};

/// One side of a block as Python hands it over: a dense or llama.cpp
/// matrix, or a top-k triple (indices, log-probs, rest or None).
#[derive(FromPyObject)]
pub enum BlockArg<'py> {
    TopK(
        (
            PyReadonlyArray2<'py, i32>,
            PyReadonlyArray2<'py, f32>,
            Option<PyReadonlyArray1<'py, f32>>,
        ),
    ),
    Matrix(Matrix<'py>),
}

impl BlockArg<'_> {
    fn block(&self, arg: &str, layout: &str, dtype16: &str, vocab: usize) -> Result<Block<'_>> {
        fn slice<'a, T>(
            arg: &str,
            r: std::result::Result<&'a [T], numpy::AsSliceError>,
        ) -> std::result::Result<&'a [T], CoreError> {
            r.map_err(|e| CoreError::Value(format!("{arg}: {e}")))
        }
        Ok(match (layout, self) {
            ("dense", BlockArg::Matrix(m)) => Block::Dense(m.rows(arg, dtype16)?),
            ("llamacpp", BlockArg::Matrix(Matrix::U16(a))) => Block::Llamacpp {
                data: slice(arg, a.as_slice())?,
                vocab,
            },
            ("topk", BlockArg::TopK((indices, logprobs, rest))) => Block::TopK {
                k: indices.shape()[1],
                indices: slice(arg, indices.as_slice())?,
                logprobs: slice(arg, logprobs.as_slice())?,
                rest: match rest {
                    Some(r) => Some(slice(arg, r.as_slice())?),
                    None => None,
                },
                vocab,
            },
            (layout, _) => {
                return Err(CoreError::Value(format!(
                    "{arg}: data does not match layout {layout:?} (dense: a 2-D float array; \
                     llamacpp: a 2-D uint16 array; topk: (indices, logprobs, rest))"
                ))
                .into())
            }
        })
    }
}

/// Per-token statistics of rows ``select`` (all when None) of two blocks.
/// Returns a dict of numpy arrays: kl, reverse_kl, js (float32), top1_base,
/// top1_other (int32), overlap (float32, rows × len(topk)), nll_base,
/// nll_other (float32, NaN without tokens). ``device="gpu"`` runs dense
/// float32/float16/bfloat16 blocks on the GPU (other blocks on the CPU).
#[pyfunction]
#[pyo3(signature = (base, other, *, vocab, base_layout="dense", other_layout="dense",
    base16="bfloat16", other16="bfloat16", select=None, tokens=None, temperature=1.0,
    topk=vec![1, 5], names=("base".to_string(), "other".to_string()), row_offset=0,
    device="cpu"))]
#[allow(clippy::too_many_arguments)]
pub fn compare_block<'py>(
    py: Python<'py>,
    base: BlockArg<'py>,
    other: BlockArg<'py>,
    vocab: usize,
    base_layout: &str,
    other_layout: &str,
    base16: &str,
    other16: &str,
    select: Option<PyReadonlyArray1<'py, u32>>,
    tokens: Option<PyReadonlyArray1<'py, i32>>,
    temperature: f64,
    topk: Vec<usize>,
    names: (String, String),
    row_offset: usize,
    device: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let gpu = on_gpu(device)?;
    let base_block = base.block(&names.0, base_layout, base16, vocab)?;
    let other_block = other.block(&names.1, other_layout, other16, vocab)?;
    let core = |e: CoreError| PyErr::from(Error(e));
    let select = match &select {
        Some(s) => Some(
            s.as_slice()
                .map_err(|e| core(CoreError::Value(format!("select: {e}"))))?,
        ),
        None => None,
    };
    let tokens = match &tokens {
        Some(t) => Some(
            t.as_slice()
                .map_err(|e| core(CoreError::Value(format!("tokens: {e}"))))?,
        ),
        None => None,
    };
    let n_sizes = topk.len();
    let opts = CompareOptions {
        temperature,
        topk,
        names: [names.0, names.1],
        row_offset,
    };
    let stats = if gpu {
        py.detach(|| {
            quantdrift_gpu::compare::compare_rows(base_block, other_block, select, tokens, &opts)
        })
        .map_err(to_py)?
    } else {
        py.detach(|| compare::compare_rows(base_block, other_block, select, tokens, &opts))
            .map_err(core)?
    };
    let n = stats.kl.len();
    let mut overlap = vec![0.0f32; n * n_sizes];
    for (j, column) in stats.overlap.iter().enumerate() {
        for (i, &x) in column.iter().enumerate() {
            overlap[i * n_sizes + j] = x;
        }
    }
    let out = PyDict::new(py);
    let [top_base, top_other] = stats.top1;
    let [nll_base, nll_other] = stats.nll;
    out.set_item("kl", stats.kl.into_pyarray(py))?;
    out.set_item("reverse_kl", stats.reverse_kl.into_pyarray(py))?;
    out.set_item("js", stats.js.into_pyarray(py))?;
    out.set_item("top1_base", top_base.into_pyarray(py))?;
    out.set_item("top1_other", top_other.into_pyarray(py))?;
    let overlap: Bound<'py, PyArray2<f32>> = overlap.into_pyarray(py).reshape([n, n_sizes])?;
    out.set_item("overlap", overlap)?;
    out.set_item("nll_base", nll_base.into_pyarray(py))?;
    out.set_item("nll_other", nll_other.into_pyarray(py))?;
    Ok(out)
}
