"""Using a trained run: :func:`load` (``lbt.load``) and :func:`evaluate_checkpoint` (``lbt eval``).

Both reuse the training code rather than a second copy of it: the config is the one stored in
the checkpoint's metadata (:func:`lbt.config.from_json`), the model and optimizer are built from
it as :class:`~lbt.train.loop.Trainer` builds them, the state is restored by
:class:`~lbt.train.checkpoint.Checkpointer` (read-only: nothing in the workdir is created, moved
or deleted; the SHA-256 digest is checked), orbax reshards it onto the devices given (any count:
the state is replicated), and the eval is :func:`lbt.train.evaluate.evaluate` on
``build_programs``' ``evaluate`` program, the one training uses.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import jax

from lbt import config as config_lib
from lbt import storage
from lbt.errors import CheckpointError
from lbt.models import build_model
from lbt.parallel.mesh import make_mesh
from lbt.train.checkpoint import Checkpointer
from lbt.train.optim import make_optimizer
from lbt.train.state import abstract_state
from lbt.train.workdir import check_checkpoint

log = logging.getLogger("lbt")

SPLITS = ("test", "train")


class Loaded(NamedTuple):
    """What :func:`load` returns: ``model, variables, config = lbt.load(workdir)``.

    ``model.apply(variables, images, train=False)`` gives the logits of float32 images
    ``[n, H, W, C]`` normalised as in training (:attr:`lbt.data.types.Source.input_lut`).
    """

    model: Any  # flax.linen.Module
    variables: dict[str, Any]  # {"params": ..., "batch_stats": ...} (no batch_stats for BN-free models)
    config: Any  # ml_collections.ConfigDict, the checkpoint's resolved config


class _Restored(NamedTuple):
    model: Any
    tx: Any
    state: Any  # TrainState, replicated over ``mesh``
    meta: dict[str, Any]
    config: Any
    mesh: Any


def _stored_config(ckpt: Checkpointer, workdir: Any, steps: list[int]) -> tuple[Any, dict[str, Any]]:
    """The config (and metadata) of the newest checkpoint in ``steps`` whose metadata reads; else
    ``config.json``. A checkpoint that is bad in other ways is reported by the restore."""
    for step in reversed(steps):
        try:
            meta = ckpt.read_meta(step)
            return config_lib.from_json(meta["config"]), meta
        except Exception as e:  # noqa: BLE001 - unreadable: try an older one
            log.debug("checkpoint %s: metadata unreadable (%s)", step, e)
    path = storage.as_path(workdir) / "config.json"
    if path.exists():
        return config_lib.from_json(path.read_text()), {}
    raise CheckpointError(f"no checkpoint in {ckpt.directory} has readable metadata, and there is no {path}")


def _input_spec(config: Any, meta: dict[str, Any]) -> tuple[tuple[int, ...], int]:
    """``(image_shape, num_classes)``: from the metadata (saved since lbt 0.1), else from the data."""
    if "image_shape" in meta and "num_classes" in meta:
        return tuple(int(v) for v in meta["image_shape"]), int(meta["num_classes"])
    from lbt.data.registry import load_splits

    splits = load_splits(config)
    return tuple(splits.train.image_shape), int(splits.num_classes)


def restore(workdir: Any, step: int | None = None, devices: list | None = None) -> _Restored:
    """Restore checkpoint ``step`` of ``workdir`` (None: the newest good one) onto ``devices``
    (default: all). Raises :class:`lbt.runtime.SetupError` for a bad workdir or step, and
    :class:`CheckpointError` for a checkpoint that cannot be restored."""
    steps = check_checkpoint(workdir, step)
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        config, meta = _stored_config(ckpt, workdir, steps if step is None else [step])
        image_shape, num_classes = _input_spec(config, meta)
        # Built as on one device: ghost BN's groups matter only with train=True, and then any
        # config is valid on one device (G <= M); train=False uses the running statistics.
        model = build_model(config, num_classes, 1)
        tx = make_optimizer(config)
        mesh = make_mesh(devices)
        target = abstract_state(model, tx, mesh, image_shape, config.seed)
        restored = ckpt.restore_latest(target, only_step=step)
    finally:
        ckpt.close()
    if restored is None:  # listed a moment ago: deleted since (e.g. a live run's keep-last-N)
        raise CheckpointError(f"the checkpoints in {ckpt.directory} disappeared while reading them")
    state, meta = restored
    return _Restored(model, tx, state, meta, config_lib.from_json(meta["config"]), mesh)


def load(workdir: Any, step: int | None = None, *, devices: list | None = None) -> Loaded:
    """The model of checkpoint ``step`` of the run in ``workdir`` (None: the newest good one),
    its variables replicated over ``devices`` (default: all devices; any count, also one other
    than the run's), and the run's resolved config."""
    r = restore(workdir, step, devices)
    variables = {"params": r.state.params}
    if jax.tree.leaves(r.state.batch_stats):
        variables["batch_stats"] = r.state.batch_stats
    return Loaded(r.model, variables, r.config)


def eval_path(workdir: Any, step: int, split: str) -> Any:
    """Where :func:`evaluate_checkpoint` writes its result: ``workdir/eval_step{step}_{split}.json``."""
    return storage.as_path(workdir) / f"eval_step{step}_{split}.json"


def evaluate_checkpoint(
    workdir: Any, step: int | None = None, split: str = "test", devices: list | None = None
) -> dict[str, Any]:
    """Evaluate checkpoint ``step`` (None: the newest good one) on ``split`` over the whole split
    exactly once, with the eval program of training; write the record to :func:`eval_path`
    (atomically, process 0 only) and return it."""
    from lbt.data.registry import load_splits
    from lbt.parallel.accumulate import build_programs
    from lbt.train.evaluate import evaluate
    from lbt.train.metrics import write_json

    if split not in SPLITS:
        from lbt.runtime import SetupError

        raise SetupError(f"--split {split!r}: unknown split; choose one of {', '.join(SPLITS)}")
    r = restore(workdir, step, devices)
    splits = load_splits(r.config)
    source = splits.test if split == "test" else splits.train
    programs = build_programs(
        r.model,
        r.tx,
        r.mesh,
        num_classes=splits.num_classes,
        bn_momentum=r.config.model.bn_momentum,
        input_lut=splits.train.input_lut,
    )
    n = r.mesh.devices.size
    m = int(r.config.train.global_microbatch)
    microbatch = -(-m // n) * n  # M as in training where the device count divides it
    ev = evaluate(programs, r.state, source, r.mesh, microbatch, raw=True)
    step_done = int(r.meta["step"])
    record = {
        "split": split,
        "step": step_done,
        "examples_seen": int(r.meta["examples_seen"]),
        "epoch": r.meta.get("epoch"),
        "accuracy": ev["accuracy"],
        "loss": ev["loss"],
        "count": ev["count"],
        "corrupt_skipped": source.corrupt_count,
        "devices": n,
        "checkpoint": str(storage.as_path(workdir) / "checkpoints" / str(step_done)),
        "config_name": r.config.name,
    }
    if jax.process_index() == 0:
        write_json(eval_path(workdir, step_done, split), record)
    return record
