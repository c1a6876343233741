"""Checkpoints with orbax: async saves, keep-last-N, auto-resume with fallback past corrupt ones.

A checkpoint holds the replicated ``TrainState`` (params, BN statistics, optimizer state) and JSON
metadata: ``examples_seen``, ``step``, the config hash and the config itself, the lbt version, the
RNG state (the data order and augmentation are pure functions of ``seed`` and the position, so
the seed *is* the RNG state), the skipped data windows, and a SHA-256 digest of the state that
is checked on restore (DESIGN.md, semantics 6 and 7).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

import lbt
from lbt.errors import CheckpointError
from lbt.parallel.mesh import host_value

log = logging.getLogger("lbt")

# Config fields that may differ on resume without --allow_config_change (they don't change the
# training computation).
COSMETIC_FIELDS = (
    "train.progress",
    "train.log_every_steps",
    "train.eval_every_epochs",
    "checkpoint.",
)


def state_digest(state: Any) -> str:
    """SHA-256 over the bytes of every leaf of a replicated pytree (same on every process)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        a = np.ascontiguousarray(host_value(leaf))
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """Fields (dotted) whose values differ, ignoring cosmetic ones."""
    a, b = _flatten(saved), _flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == f or (f.endswith(".") and key.startswith(f)) for f in COSMETIC_FIELDS):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key}: checkpoint={a.get(key, '<absent>')!r} now={b.get(key, '<absent>')!r}")
    return diffs


class Checkpointer:
    """Saves and restores ``(state, meta)`` under ``workdir/checkpoints`` (orbax, async)."""

    def __init__(self, workdir: str | Path, keep: int = 3):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True),
            item_names=("state", "meta"),
        )
        self.last_save_time = time.time()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        if step in self.manager.all_steps():  # e.g. a finished run started again
            return
        meta = dict(meta, lbt_version=lbt.__version__, state_sha256=state_digest(state), saved_at=time.time())
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self.last_save_time = time.time()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def restore_latest(
        self, abstract_state: Any, below: int | None = None, check_meta: Callable[[dict], None] | None = None
    ) -> tuple[Any, dict[str, Any]] | None:
        """Restore the newest good checkpoint (optionally with step < ``below``).

        The metadata is read first and passed to ``check_meta`` (which may raise, e.g. for a
        config mismatch: that error propagates). A corrupt or incomplete checkpoint (unreadable
        files, missing metadata, digest mismatch) is skipped with a warning naming it, and moved
        to ``checkpoints_corrupt/`` once a good one has been restored (nothing is deleted).
        Returns ``None`` if there are no checkpoints; raises :class:`CheckpointError` if there
        are some but none is good.
        """
        steps = [s for s in self.steps() if below is None or s < below]
        if not steps:
            return None
        bad: list[tuple[int, str]] = []
        for step in reversed(steps):
            try:
                meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                if not isinstance(meta, dict) or "examples_seen" not in meta or "state_sha256" not in meta:
                    raise ValueError("metadata missing or incomplete")
            except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
                bad.append((step, self._warn(step, e)))
                continue
            if check_meta is not None:
                check_meta(meta)
            try:
                state = self.manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
                )["state"]
                digest = state_digest(state)
                if digest != meta["state_sha256"]:
                    raise ValueError(f"state digest {digest[:12]} != recorded {str(meta['state_sha256'])[:12]}")
            except Exception as e:  # noqa: BLE001
                bad.append((step, self._warn(step, e)))
                continue
            self._quarantine([s for s, _ in bad])
            return state, meta
        listing = "; ".join(f"{self.directory / str(s)}: {r}" for s, r in bad)
        raise CheckpointError(
            f"no usable checkpoint in {self.directory} ({listing}). Nothing was deleted; "
            "move the checkpoints away (or use a new --workdir) to start from scratch."
        )

    def _warn(self, step: int, e: Exception) -> str:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        log.warning("checkpoint %s is corrupt or incomplete (%s); trying an older one", self.directory / str(step), reason)
        return reason

    def _quarantine(self, steps: list[int]) -> None:
        """Move bad checkpoints out of orbax's view, so later saves can reuse their step numbers."""
        if not steps or jax.process_index() != 0:
            return
        dest = self.directory.parent / "checkpoints_corrupt"
        dest.mkdir(exist_ok=True)
        for s in steps:
            src = self.directory / str(s)
            if src.exists():
                shutil.move(str(src), str(dest / f"{s}.{int(time.time())}"))
        self.manager.reload()
