"""Shared by the GPU tests: they run on whatever adapter exists (Mesa's
lavapipe in CI). Under ``make test`` (``QUANTDRIFT_REQUIRE_GPU=1``) a missing
adapter fails the run instead of skipping, so CI cannot pass without
exercising the GPU kernels."""

from __future__ import annotations

import os

import pytest

import quantdrift as qd


def require_gpu() -> None:
    if qd.gpu.available():
        return
    if os.environ.get("QUANTDRIFT_REQUIRE_GPU") == "1":
        pytest.fail("QUANTDRIFT_REQUIRE_GPU=1 but no GPU adapter: install mesa-vulkan-drivers (lavapipe)")
    pytest.skip("no GPU adapter (install mesa-vulkan-drivers for lavapipe)")


@pytest.fixture
def gpu() -> None:
    """Use in GPU tests: skips or fails (under make test) without an adapter."""
    require_gpu()
