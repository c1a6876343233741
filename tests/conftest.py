"""Test setup: 8 simulated CPU devices, set before any JAX backend starts."""

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
from lbt import runtime  # noqa: E402  (imports no JAX at import time)

runtime.setup(8, compile_cache_dir="")  # as `lbt train` runs simulated devices; no persistent cache

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo() -> Path:
    return REPO
