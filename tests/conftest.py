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
import json
import os
import shutil
import subprocess
import sys
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


@pytest.fixture
def run_benchmark(repo):
    """``run_benchmark("loop_overhead.py", "--quick")``: run a script of ``benchmarks/`` in a
    subprocess; it must exit 0 and print exactly one JSON line, which is returned parsed."""

    def run(script: str, *args: str, timeout: float = 900) -> dict:
        out = subprocess.run(
            [sys.executable, str(repo / "benchmarks" / script), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=repo,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        lines = out.stdout.strip().splitlines()
        assert len(lines) == 1, out.stdout[-2000:]
        return json.loads(lines[0])

    return run
