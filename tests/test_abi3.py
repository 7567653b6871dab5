"""One wheel for every CPython 3 from 3.9: the extension may use only the
stable ABI (abi3) as of 3.9. abi3audit reads the symbols the shared object
imports from libpython and flags any outside the limited API, or newer than
3.9; its check of a build that assumed 3.2 shows that it sees them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from quantdrift import _core


def audit(minimum: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "abi3audit", "--assume-minimum-abi3", minimum, _core.__file__],
        capture_output=True, text=True,
    )


def test_extension_uses_only_the_stable_abi_of_python_3_9():
    pytest.importorskip("abi3audit", reason="pip install abi3audit (make test installs it)")
    assert ".abi3." in Path(_core.__file__).name
    result = audit("3.9")
    assert result.returncode == 0, result.stdout + result.stderr
    # the audit is not blind: this extension does use functions newer than 3.2
    assert audit("3.2").returncode != 0
