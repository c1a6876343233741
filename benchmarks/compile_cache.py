"""JAX's persistent compilation cache: compile time of lbt's programs in a second process vs the first.

Each repetition uses a fresh cache directory and runs two child processes one after the other;
each child builds the trainer's programs for the model (the same ``build_model`` /
``build_programs`` as ``lbt train``, 8 simulated devices) and times ``lower(...).compile()`` of
``accum`` and ``final``. The first child compiles and writes the cache; the second loads from it.
Every program is cached (``jax_persistent_cache_min_compile_time_secs = 0``). It prints one JSON
line: per model the median cold and warm seconds and ``warm_over_cold``, the paired per-rep ratios.

    python benchmarks/compile_cache.py [--reps 3] [--models wrn16_4,resnet18]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
from lbt import runtime
runtime.setup(8, compile_cache_dir=sys.argv[2])
import jax
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
import numpy as np
from lbt.config import base_config
from lbt.models import build_model
from lbt.parallel.accumulate import build_programs
from lbt.parallel.mesh import data_sharded, make_mesh
from lbt.train.compiles import CompileCounter
from lbt.train.optim import make_optimizer
from lbt.train.state import init_state

name = sys.argv[1]
c = base_config()
c.model.name = name
c.train.global_microbatch = 64
c.model.ghost_batch_size = 8
mesh = make_mesh()
model = build_model(c, 10, mesh.devices.size)
tx = make_optimizer(c)
progs = build_programs(model, tx, mesh, num_classes=10, bn_momentum=0.9, input_lut=np.zeros((3, 256), np.float32))
state = init_state(model, tx, mesh, (32, 32, 3), 0)
acc = progs.zeros_acc(state)
shard = data_sharded(mesh)
x = jax.ShapeDtypeStruct((64, 32, 32, 3), np.uint8, sharding=shard)
y = jax.ShapeDtypeStruct((64,), np.int32, sharding=shard)
hyper = (np.int32(1), np.float32(0.1), np.float32(0.9))
counter = CompileCounter()
with counter.training():
    t = time.perf_counter()
    progs.accum.lower(state, acc, x, y).compile()
    progs.final.lower(state, acc, x, y, *hyper).compile()
    seconds = time.perf_counter() - t
print(json.dumps({"compile_s": seconds, "cache_hits": counter.train_cache_hits}))
"""


def child(model: str, cache: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    p = subprocess.run(
        [sys.executable, "-c", CHILD, model, cache], capture_output=True, text=True, env=env, timeout=1200, check=True
    )
    return json.loads(p.stdout.strip().splitlines()[-1])


def measure(model: str, reps: int) -> dict:
    cold, warm, ratios, hits = [], [], [], []
    for r in range(reps):
        with tempfile.TemporaryDirectory() as cache:
            first = child(model, cache)
            second = child(model, cache)
        cold.append(first["compile_s"])
        warm.append(second["compile_s"])
        ratios.append(second["compile_s"] / first["compile_s"])
        hits.append([first["cache_hits"], second["cache_hits"]])
        print(f"[compile_cache] {model} rep {r + 1}/{reps}: {first['compile_s']:.2f} s -> {second['compile_s']:.2f} s",
              file=sys.stderr, flush=True)  # fmt: skip
    return {
        "model": model,
        "cold_s_median": round(statistics.median(cold), 3),
        "warm_s_median": round(statistics.median(warm), 3),
        "warm_over_cold": round(statistics.median(ratios), 4),
        "warm_over_cold_per_rep": [round(v, 4) for v in ratios],
        "cache_hits_cold_warm": hits,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", default="wrn16_4,resnet18")
    ap.add_argument("--quick", action="store_true", help="one rep of the small CNN (for the tests)")
    args = ap.parse_args()
    models, reps = (["cnn"], 1) if args.quick else (args.models.split(","), args.reps)
    import datetime
    import platform

    results = [measure(m, reps) for m in models]
    out = {
        "benchmark": "compile_cache",
        "machine": f"{os.cpu_count()}-core {platform.machine()} CPU, 8 simulated XLA CPU devices",
        "date": datetime.date.today().isoformat(),
        "reps": reps,
        "max_warm_over_cold": max(r["warm_over_cold"] for r in results),
        "results": results,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
