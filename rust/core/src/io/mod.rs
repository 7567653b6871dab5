//! Row codecs of logit file formats.
//!
//! File layouts, memory maps and validation live in Python
//! (`quantdrift/sources.py`); what needs arithmetic on every element — the
//! packing of llama.cpp's `--kl-divergence-base` rows — lives here.
//!
//! * [`llamacpp`]: the uint16 row packing of llama.cpp's KL-divergence base
//!   file, encoded bit-exactly as llama.cpp's writer does it, and decoded.

pub mod llamacpp;
