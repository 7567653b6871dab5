import os

# Hypothesis runs are deterministic in CI so a failure reproduces.
try:
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, deadline=None, max_examples=60)
    settings.register_profile("dev", deadline=None, max_examples=60)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
except ImportError:  # pragma: no cover
    pass

from gpu_support import gpu  # noqa: E402,F401  (the `gpu` fixture for every test module)
