# Type stubs of the compiled module quantdrift._core (rust/py/src).
# Keep in step with the #[pyfunction] signatures; tests/test_stubs.py checks.

from typing import Optional, Tuple

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
) -> npt.NDArray[np.float64]: ...
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
