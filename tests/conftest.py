"""Suite-wide settings. Tiny models run fastest single-threaded: with 2 threads on a shared
2-core machine, small kernels spend most of their time synchronising threads."""
import os

import torch

torch.set_num_threads(1)
os.environ.setdefault("DIFFUSIONLM_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def pytest_sessionstart(session):
    # the suite reads the real evaluation text: without it, say where it was looked for
    # (rather than skip the tests that need it)
    import pytest

    data = os.environ["DIFFUSIONLM_DATA"]
    if not os.path.exists(os.path.join(data, "SOURCES.md")):
        raise pytest.UsageError(f"offline evaluation data not found at {data}: set DIFFUSIONLM_DATA to ../shared/data")
