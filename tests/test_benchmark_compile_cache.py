"""benchmarks/compile_cache.py prints one JSON line; the second process loads both programs from the cache."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_compile_cache_benchmark_quick(repo):
    p = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "compile_cache.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    out = json.loads(p.stdout.strip().splitlines()[-1])
    (result,) = out["results"]
    assert out["benchmark"] == "compile_cache" and result["model"] == "cnn"
    assert result["cache_hits_cold_warm"] == [[0, 2]]  # accum and final, loaded by the second process
    assert result["cold_s_median"] > 0 and result["warm_s_median"] > 0
