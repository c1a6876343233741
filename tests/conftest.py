"""Test setup: 8 simulated CPU devices, set before any JAX backend starts."""

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
from lbt.cli import cpu_xla_flags  # noqa: E402  (imports no JAX)

cpu_xla_flags()  # as `lbt train` runs simulated devices
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MNIST = REPO.parent / "shared" / "data" / "mnist10k.npz"


@pytest.fixture
def repo() -> Path:
    return REPO


def lbt_cmd() -> list[str]:
    """The real CLI, run as a subprocess with this interpreter."""
    return [sys.executable, "-m", "lbt.cli"]
