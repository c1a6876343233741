"""Per-device memory of lbt's step programs against a plain jitted step (compile only, no step).

It builds the trainer's programs (``lbt.parallel.accumulate.build_programs``) for a model on all
devices and compiles ``accum`` and ``final`` for both reductions (``flat``, ``per_leaf``; with
``--apply`` also ``apply``, the reduction and update alone, which the loop does not run), and a bare ``jax.jit`` training step over the same global microbatch (GSPMD, one
program per batch size, the baseline of ``benchmarks/accumulation.py``), from abstract inputs:
``jax.jit(...).lower(...).compile().memory_analysis()``. Nothing runs, so ResNet-50 at 224x224x3
fits on a small host. Both take uint8 images normalised on the device, as the trainer does.

Per program, per device: argument, output, alias (donated buffers reused as outputs), temp and
generated-code bytes, and ``live_bytes`` = argument + output - alias + temp (the buffers the
program holds at once, at most), and ``footprint_bytes``, the same with the whole resident state
counted (jit prunes unused arguments: ``accum`` does not take the optimizer state, yet it stays on
the device; lbt also keeps its accumulators between steps). Against the bare step's footprint, in
units of the f32 parameter bytes P (``extra_vs_bare``):

* the accumulators are one f32 copy of the parameters (plus the small BN-statistic
  accumulators), so ``accum`` should need about 1 P more than the bare step;
* ``final`` / ``apply`` may hold about two more f32 copies as temporaries (the reduced
  gradients and the update), so they should need at most about 3 P more than the bare step.
  ``within_expectation`` says whether lbt stays at that or below.

    python benchmarks/memory.py [--model resnet50] [--microbatch 8] [--image 224] [--apply] [--quick]

``--quick`` is the digits CNN at 8x8x1, flat reduction only (seconds; what the test runs). One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("LBT_COMPILE_CACHE_DIR", "")  # no persistent compile cache: real compiles, counted
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lbt import runtime  # noqa: E402

runtime.setup(collective_timeout_s=600, warn_stuck_s=120)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import bare_step, run_info  # noqa: E402

from lbt.config import base_config  # noqa: E402
from lbt.models import build_model  # noqa: E402
from lbt.parallel.accumulate import REDUCTIONS, build_programs  # noqa: E402
from lbt.parallel.mesh import data_sharded, make_mesh  # noqa: E402
from lbt.train.optim import make_optimizer  # noqa: E402
from lbt.train.state import abstract_state  # noqa: E402

FIELDS = {
    "argument_bytes": "argument_size_in_bytes",
    "output_bytes": "output_size_in_bytes",
    "alias_bytes": "alias_size_in_bytes",
    "temp_bytes": "temp_size_in_bytes",
    "generated_code_bytes": "generated_code_size_in_bytes",
}
# accum: + the accumulators (1 P); final/apply: + about two f32 copies more as temporaries
EXPECTED_EXTRA_P = {"accum": 1.0, "final": 3.0, "apply": 3.0}
TOLERANCE_P = 0.1


def tree_bytes(tree: Any) -> int:
    return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


def stats(compiled, resident: int, batch: int) -> dict[str, int]:
    """memory_analysis() fields; ``live_bytes`` (the program's own buffers: arguments + outputs -
    aliased + temps); ``footprint_bytes``: the same with the whole resident state counted (jit
    prunes unused arguments: ``accum`` does not take the optimizer state, which stays on the device)."""
    m = compiled.memory_analysis()
    out = {name: int(getattr(m, attr)) for name, attr in FIELDS.items()}
    new = out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    out["live_bytes"] = out["argument_bytes"] + new
    out["footprint_bytes"] = max(out["argument_bytes"], resident + batch) + new
    return out


def compile_timed(name: str, lower, resident: int, batch: int) -> tuple[dict[str, int], float]:
    print(f"[memory] compile {name}", file=sys.stderr, flush=True)
    t = time.perf_counter()
    compiled = lower().compile()
    seconds = time.perf_counter() - t
    print(f"[memory] {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return stats(compiled, resident, batch), seconds


def run(
    model_name: str,
    M: int,
    image: tuple[int, int, int],
    num_classes: int,
    with_apply: bool = False,
    reductions: tuple[str, ...] = REDUCTIONS,
) -> dict[str, Any]:
    config = base_config()
    config.model.name = model_name
    config.train.global_microbatch = M
    mesh = make_mesh()
    n = mesh.devices.size
    b = M // n
    config.model.ghost_batch_size = b  # device-local ghost groups of the per-device microbatch
    tx = make_optimizer(config)
    lut = np.tile(np.linspace(-2.0, 2.0, 256, dtype=np.float32), (image[2], 1))  # uint8 -> f32 on device
    model = build_model(config, num_classes, n)
    bare_model = build_model(config, num_classes, 1)  # same groups of G consecutive examples, under jit
    state = abstract_state(model, tx, mesh, image, config.seed)
    shard = data_sharded(mesh)
    images = jax.ShapeDtypeStruct((M, *image), jnp.uint8, sharding=shard)
    labels = jax.ShapeDtypeStruct((M,), jnp.int32, sharding=shard)
    hyper = np.int32(1), np.float32(0.1), np.float32(0.9)
    state_bytes = tree_bytes(state)
    batch_bytes = (tree_bytes(images) + tree_bytes(labels)) // n  # per device
    programs: dict[str, dict[str, int]] = {}
    compile_s: dict[str, float] = {}
    for reduction in reductions:
        progs = build_programs(
            model, tx, mesh, num_classes=num_classes, bn_momentum=0.9, reduction=reduction, input_lut=lut
        )
        acc_shapes = jax.eval_shape(progs.zeros_acc, state)
        acc = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=shard), acc_shapes)
        acc_bytes = tree_bytes(acc) // n  # per device
        lowerings = {"final": lambda p=progs, a=acc: p.final.lower(state, a, images, labels, *hyper)}
        if with_apply:  # the reduction and update alone: the reference the tests compare final with
            lowerings["apply"] = lambda p=progs, a=acc: p.apply.lower(state, a, *hyper)
        if reduction == reductions[0]:  # accum has no reduction: the same program for both
            lowerings = {"accum": lambda p=progs, a=acc: p.accum.lower(state, a, images, labels), **lowerings}
        for name, lower in lowerings.items():
            key = name if name == "accum" else f"{name}_{reduction}"
            programs[key], compile_s[key] = compile_timed(key, lower, state_bytes + acc_bytes, batch_bytes)
    bare = bare_step(bare_model, tx, num_classes, mesh, lut)
    programs["bare"], compile_s["bare"] = compile_timed(
        "bare", lambda: bare.lower(state, images, labels, np.float32(0.1), np.float32(0.9)), state_bytes, batch_bytes
    )
    P = tree_bytes(state.params)
    base = programs["bare"]
    extra = {}
    for key, s in programs.items():
        if key == "bare":
            continue
        extra[key] = {
            "footprint_extra_P": round((s["footprint_bytes"] - base["footprint_bytes"]) / P, 3),
            "temp_extra_P": round((s["temp_bytes"] - base["temp_bytes"]) / P, 3),
            "footprint_ratio_to_bare": round(s["footprint_bytes"] / base["footprint_bytes"], 3),
        }
    within = {
        key: e["footprint_extra_P"] <= EXPECTED_EXTRA_P[key.split("_")[0]] + TOLERANCE_P for key, e in extra.items()
    }
    return {
        "model": model_name,
        "image_shape": list(image),
        "global_microbatch": M,
        "per_device_microbatch": b,
        "ghost_batch_size": b,
        "param_count": int(sum(np.prod(a.shape) for a in jax.tree.leaves(state.params))),
        "param_bytes_f32": P,
        "batch_stats_bytes": tree_bytes(state.batch_stats),
        "opt_state_bytes": tree_bytes(state.opt_state),
        "state_bytes": state_bytes,
        "accumulator_bytes_per_device": acc_bytes,
        "batch_bytes_per_device": batch_bytes,
        "programs": programs,
        "extra_vs_bare": extra,
        "expected_extra_P": EXPECTED_EXTRA_P,
        "within_expectation": within,
        "all_within_expectation": all(within.values()),
        "reductions": list(reductions),
        "compile_s": {k: round(v, 1) for k, v in compile_s.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50", help="cnn | resnet18 | resnet50 | wrn16_4 | ...")
    ap.add_argument("--microbatch", type=int, default=8, help="global microbatch M (b = M / devices)")
    ap.add_argument("--image", type=int, default=224, help="image side (3 channels unless the model is cnn)")
    ap.add_argument("--apply", action="store_true", help="also compile apply (not run by the loop; slow)")
    ap.add_argument("--quick", action="store_true", help="the digits CNN at 8x8x1, M = 64, flat only (seconds)")
    args = ap.parse_args()
    if args.quick:
        model, M, image, classes = "cnn", 64, (8, 8, 1), 10
        reductions: tuple[str, ...] = ("flat",)
    else:
        channels = 1 if args.model == "cnn" else 3
        classes = 1000 if args.model.startswith("resnet") else 10
        model, M, image = args.model, args.microbatch, (args.image, args.image, channels)
        reductions = REDUCTIONS
    result = run(model, M, image, classes, with_apply=args.apply, reductions=reductions)
    print(json.dumps({"benchmark": "memory", **run_info(), "quick": args.quick, **result}))


if __name__ == "__main__":
    main()
