//! quantdrift-core: the arithmetic of quantdrift, with no Python in it.
//!
//! * [`buffers`]: output buffers recycled through a small cache instead of
//!   freed, so repeated conversions skip the page faults of fresh memory.
//! * [`diverge`]: divergences (KL, JS, TV, Hellinger, χ², Rényi, cross-entropy,
//!   entropy) between rows of next-token distributions given as logits,
//!   log-probabilities or probabilities, and the distillation loss.
//! * [`llv`]: log-likelihood vectors: double centring and the KL estimate
//!   matrix between models.
//! * [`lowp`]: low-precision float formats, rounding modes, MX and NVFP4
//!   block formats.
//! * [`io`]: row codecs of logit file formats (llama.cpp's KL-divergence
//!   base file).
//! * [`quant`]: integer quantization over any partition (Def 3.2):
//!   calibration, quantize/dequantize kernels, bit packing.
//! * [`simd`]: vectorised `exp`/`ln` on lanes of `f32` and runtime CPU-feature
//!   dispatch (AVX-512, AVX2+FMA, NEON, scalar) on stable Rust.
//! * [`stats`]: error statistics of a reconstruction against its original
//!   (mse, SQNR, cosine, saturated/flushed counts), and their mergeable sums.
//! * [`threads`]: the rayon pool, sized by `QUANTDRIFT_NUM_THREADS`.
//!
//! Every fast kernel has a scalar float64 reference beside it; the reference
//! is the specification and the tests run both on the same inputs.
#![deny(missing_docs)]

pub mod buffers;
pub mod diverge;
pub mod error;
pub mod io;
pub mod llv;
pub mod lowp;
pub mod quant;
pub mod roofline;
pub mod rows;
pub mod simd;
pub mod stats;
pub mod threads;

pub use error::{CoreError, Result};
pub use rows::{Dtype, Rows};
