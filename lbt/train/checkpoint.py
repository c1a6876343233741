"""Checkpoints with orbax: async saves, keep-last-N, auto-resume with fallback past corrupt ones.

A checkpoint holds the replicated ``TrainState`` (params, BN statistics, optimizer state) and JSON
metadata: ``examples_seen``, ``step``, the config hash and the config itself, the lbt version, the
RNG state (the data order and augmentation are pure functions of ``seed`` and the position, so
the seed *is* the RNG state), the skipped data windows, and a SHA-256 digest of the state that
is checked on restore (docs/design.md, semantics 6 and 7).

:class:`SavePolicy` decides when to save: the interval in examples, the interval in minutes and
SIGTERM, with the clock- and signal-driven decisions agreed across processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
        log.warning(
            "checkpoint %s is corrupt or incomplete (%s); trying an older one", self.directory / str(step), reason
        )
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


# ---------------------------------------------------------------------------------------------
# When to save


def next_multiple(x: int, every: int) -> int | None:
    """The smallest multiple of ``every`` strictly greater than ``x`` (None if ``every`` is 0)."""
    return (x // every + 1) * every if every else None


def checkpoint_interval(config: Any, N: int) -> int:
    """Checkpoint interval in examples from checkpoint.every_examples / every_epochs (0 = off)."""
    options = [int(config.checkpoint.every_examples)] if config.checkpoint.every_examples else []
    if config.checkpoint.every_epochs:
        options.append(max(1, int(round(config.checkpoint.every_epochs * N))))
    return min(options) if options else 0


def agree_any(flags: list[bool]) -> list[bool]:
    """Each flag true on every process if it is true on any (a collective when multi-process)."""
    if jax.process_count() == 1:
        return [bool(f) for f in flags]
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(np.asarray(flags, np.int32)))
    return [bool(v) for v in gathered.reshape(-1, len(flags)).any(axis=0)]


@dataclasses.dataclass(frozen=True)
class SaveDecision:
    save: bool = False
    preempt: bool = False  # SIGTERM: save now, then exit


class SavePolicy:
    """When to save, as a function of examples seen, the clock and SIGTERM (Levanter's
    ``Checkpointer.on_step`` plays this role there).

    The interval in examples is deterministic, so every process decides it alike. The clock and
    signals differ between processes: they are only consulted at ``sync`` steps (the loop's log
    steps), where the flags are agreed across processes with :func:`agree_any`.
    """

    def __init__(self, config: Any, N: int, examples_seen: int, clock: Callable[[], float] = time.time):
        self.every = checkpoint_interval(config, N)
        self.minutes = float(config.checkpoint.every_minutes)
        self.clock = clock
        self.next_at = next_multiple(examples_seen, self.every)

    def interval_due(self, examples_seen: int, total: int) -> bool:
        """True at the first step boundary past a multiple of the interval (not at the end)."""
        return self.next_at is not None and total > examples_seen >= self.next_at

    def decide(
        self, examples_seen: int, total: int, *, sync: bool, preempt_requested: bool, last_save_time: float
    ) -> SaveDecision:
        due = self.interval_due(examples_seen, total)
        if not sync:
            return SaveDecision(save=due)
        time_due = self.minutes > 0 and self.clock() - last_save_time >= 60 * self.minutes
        preempt, time_due = agree_any([preempt_requested, time_due])
        return SaveDecision(save=due or time_due, preempt=preempt)

    def saved(self, examples_seen: int) -> None:
        """A checkpoint was written at ``examples_seen``: the next one is one interval on."""
        self.next_at = next_multiple(examples_seen, self.every)
