"""Test setup: 8 simulated CPU devices, set before any JAX backend starts, and one persistent
compilation cache for the whole test run.

The cache is a fresh directory per run, made by the pytest process that starts first (the xdist
controller, or the only process) and inherited by the xdist workers and every ``lbt`` subprocess
through ``$LBT_COMPILE_CACHE_DIR``. Many tests build the same digits programs; loading them
instead of compiling them again roughly halves the suite on the 2-core CI machine. Compile counts
are unchanged (a cache load counts as a compilation, see ``lbt.train.compiles``); tests about the
cache itself use their own directory.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
from lbt import runtime  # noqa: E402  (imports no JAX at import time)

if "LBT_TESTS_COMPILE_CACHE" not in os.environ:
    os.environ["LBT_TESTS_COMPILE_CACHE"] = tempfile.mkdtemp(prefix="lbt-tests-compile-cache-")
    atexit.register(shutil.rmtree, os.environ["LBT_TESTS_COMPILE_CACHE"], ignore_errors=True)
os.environ["LBT_COMPILE_CACHE_DIR"] = os.environ["LBT_TESTS_COMPILE_CACHE"]
runtime.setup(8)  # as `lbt train` runs: simulated devices, the persistent cache above

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo() -> Path:
    return REPO
