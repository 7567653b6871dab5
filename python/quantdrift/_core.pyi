# Type stubs of the compiled module quantdrift._core (rust/py/src).
# Keep in step with the #[pyfunction] signatures; tests/test_stubs.py checks names and parameters.

from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

def divergence(
    p: npt.NDArray[np.float32] | npt.NDArray[np.float64] | npt.NDArray[np.uint16],
    q: Optional[npt.NDArray[np.float32] | npt.NDArray[np.float64] | npt.NDArray[np.uint16]],
    kind: str,
    *,
    inputs: str,
    temperature: float,
    alpha: Optional[float] = None,
    p16: str = "bfloat16",
    q16: str = "bfloat16",
    device: str = "cpu",
) -> npt.NDArray[np.float64]: ...
_Block = Union[
    npt.NDArray[np.float32],
    npt.NDArray[np.float64],
    npt.NDArray[np.uint16],
    Tuple[npt.NDArray[np.int32], npt.NDArray[np.float32], Optional[npt.NDArray[np.float32]]],
]

def compare_block(
    base: _Block,
    other: _Block,
    *,
    vocab: int,
    base_layout: str = "dense",
    other_layout: str = "dense",
    base16: str = "bfloat16",
    other16: str = "bfloat16",
    select: Optional[npt.NDArray[np.uint32]] = None,
    tokens: Optional[npt.NDArray[np.int32]] = None,
    temperature: float = 1.0,
    topk: List[int] = ...,
    names: Tuple[str, str] = ("base", "other"),
    row_offset: int = 0,
    device: str = "cpu",
) -> Dict[str, np.ndarray]: ...
def distill_loss(
    teacher: npt.NDArray[np.float32] | npt.NDArray[np.float64] | npt.NDArray[np.uint16],
    student: npt.NDArray[np.float32] | npt.NDArray[np.float64] | npt.NDArray[np.uint16],
    *,
    temperature: float,
    alpha: float,
    labels: Optional[npt.NDArray[np.int64]] = None,
    teacher16: str = "bfloat16",
    student16: str = "bfloat16",
) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.float32] | npt.NDArray[np.float64]]: ...
def isa() -> str: ...
def num_threads() -> int: ...
def read_all(data: npt.NDArray[np.uint8]) -> int: ...

# --- lowp (rust/py/src/lowp.rs) ---
_FormatSpec = Tuple[int, int, int, str, bool]
_In = npt.NDArray[np.float32] | npt.NDArray[np.float64] | npt.NDArray[np.uint16]

def lowp_formats() -> list[Tuple[str, int, int, int, str]]: ...
def lowp_format_info(exponent_bits: int, mantissa_bits: int, bias: Optional[int], special: str) -> dict: ...
def lowp_encode(
    x: _In,
    format: _FormatSpec,
    *,
    rounding: str,
    overflow: Optional[str],
    seed: int,
    x16: str,
    device: str = ...,
    packed_row: Optional[int] = ...,
) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint16]: ...
def lowp_round(
    x: _In, format: _FormatSpec, *, rounding: str, overflow: Optional[str], seed: int, x16: str, device: str = ...
) -> npt.NDArray[np.float32] | npt.NDArray[np.float64]: ...
def lowp_decode(
    codes: npt.NDArray[np.uint8] | npt.NDArray[np.uint16], format: _FormatSpec, *, device: str = ...
) -> npt.NDArray[np.float32]: ...
def lowp_pack(codes: npt.NDArray[np.uint8], row_len: int) -> npt.NDArray[np.uint8]: ...
def lowp_unpack(packed: npt.NDArray[np.uint8], row_len: int) -> npt.NDArray[np.uint8]: ...
def lowp_round_mixed(
    x: _In,
    labels: npt.NDArray[np.int64],
    formats: list[_FormatSpec],
    *,
    rounding: str,
    overflow: Optional[str],
    seed: int,
    x16: str,
    device: str = ...,
) -> npt.NDArray[np.float32] | npt.NDArray[np.float64]: ...
def mx_encode(
    x: _In, row_len: int, *, block: int, elem: str, scale_mode: str, x16: str, device: str = ...
) -> Tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]: ...
def mx_decode(
    codes: npt.NDArray[np.uint8],
    scales: npt.NDArray[np.uint8],
    row_len: int,
    *,
    block: int,
    elem: str,
    device: str = ...,
) -> npt.NDArray[np.float32]: ...
def nvfp4_scale(x: _In, x16: str) -> float: ...
def nvfp4_encode(
    x: _In, row_len: int, *, per_tensor_scale: Optional[float], x16: str, device: str = ...
) -> Tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]: ...
def nvfp4_decode(
    codes: npt.NDArray[np.uint8],
    scales: npt.NDArray[np.uint8],
    row_len: int,
    *,
    per_tensor_scale: Optional[float],
    device: str = ...,
) -> npt.NDArray[np.float32]: ...
def error_stats(x: _In, y: _In, *, clip: Optional[float], x16: str, y16: str) -> dict: ...

# --- io (rust/py/src/io.rs) ---

def llamacpp_encode(
    logits: npt.NDArray[np.float32] | npt.NDArray[np.float64] | npt.NDArray[np.uint16],
    *,
    gap: float = 16.0,
    logits16: str = "bfloat16",
) -> npt.NDArray[np.uint16]:
    """Packs rows × vocab logits into rows × (2*((vocab+1)//2)+4) uint16 rows of a
    llama.cpp --kl-divergence-base file, bit-exactly as llama.cpp writes them."""
    ...
def llamacpp_decode(packed: npt.NDArray[np.uint16], vocab: int) -> npt.NDArray[np.float32]:
    """float32 log-probabilities (rows × vocab) of packed llama.cpp base-file rows."""
    ...
# --- llv (rust/py/src/llv.rs) ---

def llv_double_centre(l: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Q = H_K · L · H_N of a K×N float64 C-contiguous matrix: each row's mean
    over texts removed, then each column's mean over models."""
    ...
def llv_kl_matrix(q: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """K×K matrix ‖q_i − q_j‖² / (2N) between the rows of a K×N float64
    C-contiguous matrix, in nats per text; exactly symmetric, zero diagonal."""
    ...
def llv_squared_distance(
    a: npt.NDArray[np.float32] | npt.NDArray[np.float64] | npt.NDArray[np.uint16],
    b: npt.NDArray[np.float32] | npt.NDArray[np.float64] | npt.NDArray[np.uint16],
    *,
    a16: str = "bfloat16",
    b16: str = "bfloat16",
) -> float:
    """‖a − b‖² of two flat float tensors in float64 (uint16 holds a16/b16)."""
    ...

# --- quant (rust/py/src/quant.rs) ---
# partition: (shape, tile, labels or None, parts)
_Part = Tuple[Tuple[int, ...], Tuple[int, ...], Optional[npt.NDArray[np.int64]], int]
_Codes = (
    npt.NDArray[np.int8] | npt.NDArray[np.uint8] | npt.NDArray[np.int16] | npt.NDArray[np.uint16] | npt.NDArray[np.int32]
)

def quant_calibrate(
    x: _In,
    partition: _Part,
    qmin: npt.NDArray[np.int32],
    qmax: npt.NDArray[np.int32],
    *,
    symmetric: bool,
    method: str,
    percentile: float,
    style: str,
    eps: float,
    scale_f32: bool,
    importance: Optional[_In],
    rounding: str,
    seed: int,
    arith: str,
    x16: str,
    w16: str,
    device: str = ...,
) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]]: ...
def quant_quantize(
    x: _In,
    partition: _Part,
    scale: npt.NDArray[np.float64],
    zero_point: npt.NDArray[np.int32],
    qmin: npt.NDArray[np.int32],
    qmax: npt.NDArray[np.int32],
    *,
    code_type: str,
    rounding: str,
    seed: int,
    arith: str,
    x16: str,
    device: str = ...,
) -> Tuple[_Codes, int]: ...
def quant_quantize_calibrated(
    x: _In,
    partition: _Part,
    qmin: npt.NDArray[np.int32],
    qmax: npt.NDArray[np.int32],
    *,
    code_type: str,
    symmetric: bool,
    style: str,
    eps: float,
    scale_f32: bool,
    rounding: str,
    seed: int,
    arith: str,
    x16: str,
) -> Optional[Tuple[_Codes, Union[npt.NDArray[np.float32], npt.NDArray[np.float64]], npt.NDArray[np.int32], int]]: ...
def quant_fake_calibrated(
    x: _In,
    partition: _Part,
    qmin: npt.NDArray[np.int32],
    qmax: npt.NDArray[np.int32],
    *,
    symmetric: bool,
    style: str,
    eps: float,
    scale_f32: bool,
    rounding: str,
    seed: int,
    arith: str,
    x16: str,
) -> Optional[Tuple[npt.NDArray[np.float32], int]]: ...
def quant_fake(
    x: _In,
    partition: _Part,
    scale: npt.NDArray[np.float64],
    zero_point: npt.NDArray[np.int32],
    qmin: npt.NDArray[np.int32],
    qmax: npt.NDArray[np.int32],
    *,
    rounding: str,
    seed: int,
    arith: str,
    x16: str,
    device: str = ...,
) -> Tuple[npt.NDArray[np.float32] | npt.NDArray[np.float64], int]: ...
def quant_dequantize(
    codes: _Codes,
    partition: _Part,
    scale: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    zero_point: _Codes,
    *,
    packed_bits: Optional[int],
    signed: bool,
    length: int,
    f64_out: bool,
    device: str = ...,
) -> npt.NDArray[np.float32] | npt.NDArray[np.float64]: ...
def quant_pack(codes: npt.NDArray[np.int32], bits: int, signed: bool) -> npt.NDArray[np.uint8]: ...
def quant_unpack(packed: npt.NDArray[np.uint8], bits: int, signed: bool, length: int) -> npt.NDArray[np.int32]: ...
def quant_error_sums(x: _In, y: _In, *, x16: str, y16: str) -> dict: ...

# GPU backend
def gpu_available() -> bool: ...
def gpu_info() -> dict[str, Any]: ...
def gpu_profile(on: bool) -> float: ...
def gpu_read_bandwidth(nbytes: int, repeats: int = ...) -> float: ...
