# quantdrift developer targets. `make test` is the one test command: it
# creates .venv, installs the test tools, builds the extension in release
# mode, and runs the Rust and Python test suites.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-stamp

.PHONY: test test-rust test-python test-gpu-fallback test-slow develop bench lint typecheck clean vulkan

# The GPU tests run on whatever Vulkan driver exists (Mesa's lavapipe, which
# `vulkan` installs when there is none); a missing adapter fails them.
export QUANTDRIFT_REQUIRE_GPU := 1
export XDG_RUNTIME_DIR ?= /tmp

test: vulkan test-rust test-python test-gpu-fallback

vulkan:
	scripts/ensure_vulkan.sh

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "maturin>=1.9.4,<2.0" "pytest>=7" "hypothesis>=6" "scipy>=1.7" "numpy>=1.21" "ml_dtypes>=0.7" "tqdm>=4.60" "matplotlib>=3.5" "dask>=2023.1" "distributed>=2023.1" "abi3audit>=0.0.20"
	touch $(STAMP)

develop: $(STAMP)
	$(PY) -m maturin develop --release --quiet

test-rust:
	cargo test --workspace --release

test-python: develop
	$(PY) -m pytest -q

# The GPU kernels again without the optional features (shader-f16, subgroups),
# which every adapter may lack.
test-gpu-fallback: develop
	QUANTDRIFT_GPU_FEATURES=none cargo test --release -p quantdrift-gpu
	QUANTDRIFT_GPU_FEATURES=none $(PY) -m pytest -q tests/test_gpu*.py

test-slow: develop
	$(PY) -m pytest -q -m slow

bench: develop
	$(PY) -m pip install --quiet "scipy>=1.7"
	$(PY) benches/bench_divergence.py
	$(PY) benches/bench_formats.py
	$(PY) benches/bench_stream.py
	$(PY) benches/bench_quantize.py
	$(PY) benches/bench_dask.py
	$(PY) benches/bench_llv.py
	$(PY) benches/bench_gpu.py

lint: typecheck
	cargo fmt --all --check
	cargo clippy --workspace --release -- -D warnings

# The Python package against its annotations and the extension's stubs
# (_core.pyi); not part of `make test`, whose pass should not hang on the
# next release of numpy's stubs.
typecheck: $(STAMP)
	$(PY) -m pip install --quiet "mypy>=1.10"
	$(PY) -m mypy

clean:
	cargo clean
	rm -rf $(VENV)
