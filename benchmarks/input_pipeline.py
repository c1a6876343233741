"""Input pipeline vs trainer throughput: is the input pipeline ever the bottleneck?

For each config it measures examples/s of

* the pipeline alone: ``TrainStream.local_microbatch`` over many consecutive positions (one
  thread, no prefetch), and the prefetching ``TrainStream.iterate`` (what the trainer consumes);
* the trainer: ``lbt.train.loop.Trainer(config, workdir).run()`` on the same data. Compilation is
  removed by differencing two runs of different length: (examples_long - examples_short) /
  (train_s_long - train_s_short).

Configs: ``digits`` (8x8x1, in memory), ``npz32`` (a synthetic in-memory 32x32x3 npz, CIFAR-size),
and ``tfds_cifar10`` (a synthetic 32x32x3 PNG dataset written as array_record with the real cifar10
name/version/features by :func:`lbt.testing.fake_tfds.write_fake_cifar10`, read through
``tfds.data_source`` + grain + decode + augmentation: the real CIFAR-10 path). It prints one JSON
line; ``ratio`` is pipeline(iterate)/trainer, and the headline ``ratio_min`` is the smallest over
configs (> 1 means the input pipeline keeps up).

    python benchmarks/input_pipeline.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lbt import runtime  # noqa: E402

# lbt train's XLA:CPU settings; and 8 simulated devices on a few shared cores: a device thread can
# reach a collective long after its peers, so wait instead of aborting after XLA's default 40 s.
runtime.setup(collective_timeout_s=600, warn_stuck_s=120)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from lbt.config import base_config  # noqa: E402
from lbt.data.pipeline import TrainStream  # noqa: E402
from lbt.data.registry import load_splits  # noqa: E402
from lbt.testing.fake_tfds import write_fake_cifar10  # noqa: E402


def _config(name: str, **dataset):
    c = base_config()
    c.name = f"bench_{name}"
    c.dataset.name = name
    for k, v in dataset.items():
        c.dataset[k] = v
    c.train.global_microbatch = 64
    c.train.progress = False
    c.train.eval_every_epochs = 0.0
    c.train.log_every_steps = 10  # the default; see docs/benchmarks.md on deep async dispatch
    s = c.schedule
    s.global_batch = 64
    s.lr.name = "constant"
    s.lr.milestones = ()
    s.batch.mode = "decay_lr"
    return c


def write_npz(path: Path, n: int) -> str:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n,), dtype=np.int64)
    np.savez(path, images=images, labels=labels)
    return str(path)


def pipeline_rates(config, microbatches: int) -> dict[str, float]:
    source = load_splits(config).train
    stream = TrainStream(source, config.seed, config.train.global_microbatch)
    M = config.train.global_microbatch
    stream.local_microbatch(0)  # warm caches (permutation, file handles)
    t = time.perf_counter()
    for i in range(microbatches):
        stream.local_microbatch(i * M)
    direct = microbatches * M / (time.perf_counter() - t)
    it = stream.iterate(0, prefetch=8)
    next(it)
    t = time.perf_counter()
    for _ in range(microbatches):
        next(it)
    prefetched = microbatches * M / (time.perf_counter() - t)
    it.close()
    return {"local_microbatch_eps": direct, "iterate_eps": prefetched}


def trainer_rate(config, epochs_short: float, epochs_long: float) -> dict[str, float]:
    from lbt.train.loop import Trainer

    runs = []
    for epochs in (epochs_short, epochs_long):
        c = config.copy_and_resolve_references()
        c.schedule.epochs = epochs
        with tempfile.TemporaryDirectory() as wd:
            s = Trainer(c, wd).run()
        runs.append((s["examples_seen"], s["examples_seen"] / s["train_examples_per_s"]))
    (e1, t1), (e2, t2) = runs
    if t2 - t1 < 0.2 * t2:  # compile-time noise swamped the difference: the number would be garbage
        raise RuntimeError(f"trainer timing too noisy (short {t1:.1f} s, long {t2:.1f} s); rerun on a quieter machine")
    return {"trainer_eps": (e2 - e1) / max(t2 - t1, 1e-9), "trainer_eps_incl_compile": e2 / t2}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer microbatches and a shorter short trainer run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    mb = 20 if args.quick else 50
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = {
            "digits": (lambda: _config("digits"), (1.0, 4.0)),
            "npz32": (lambda: _config("npz", path=write_npz(tmp / "synthetic32.npz", 2560)), (1.0, 3.0)),
            "tfds_cifar10": (
                lambda: _config("cifar10", data_dir=write_fake_cifar10(tmp / "tfds", 2048, 256)),
                (1.0, 3.0),
            ),
        }
        scale = 0.5 if args.quick else 1.0
        for name, (make, (e_short, e_long)) in cases.items():
            config = make()
            print(f"[input_pipeline] {name}: pipeline", file=sys.stderr, flush=True)
            r = pipeline_rates(config, mb)
            print(f"[input_pipeline] {name}: trainer", file=sys.stderr, flush=True)
            # quick mode shortens only the short run: the long one must outlast compile-time noise
            r.update(trainer_rate(config, e_short * scale, e_long))
            r["ratio"] = r["iterate_eps"] / r["trainer_eps"]
            r["ratio_direct"] = r["local_microbatch_eps"] / r["trainer_eps"]
            results[name] = {k: round(v, 2) for k, v in r.items()}
    out = {
        "benchmark": "input_pipeline",
        "devices": jax.device_count(),
        "cpu_cores": os.cpu_count(),
        "global_microbatch": 64,
        "model": "cnn",
        "ratio_min": min(r["ratio"] for r in results.values()),
        "configs": results,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
