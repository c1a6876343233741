"""Checkpoints with orbax: async saves, keep-last-N, auto-resume with fallback past corrupt ones.

A checkpoint holds the replicated ``TrainState`` (params, BN statistics, optimizer state) and JSON
metadata: ``examples_seen``, ``step``, the config hash and the config itself, the lbt version, the
RNG state (the data order and augmentation are pure functions of ``seed`` and the position, so
the seed *is* the RNG state), the skipped data windows, and a SHA-256 digest of the state that
is checked on restore (docs/design.md, semantics 6 and 7).

:class:`SavePolicy` decides when to save: the interval in examples, the interval in minutes and
SIGTERM, with the clock- and signal-driven decisions agreed across processes.

Faults end in one decision, the same on every process, reported in one line: a corrupt checkpoint
is skipped (the verdict is agreed) and moved aside by process 0 while the others wait; a failed
async save (e.g. disk full) raises :class:`CheckpointError` at the next :meth:`Checkpointer.check`;
a checkpoint whose array shapes differ from the config's model is refused as a config change,
not treated as corrupt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

import lbt
from lbt import storage
from lbt.errors import CheckpointError
from lbt.parallel.mesh import host_value

log = logging.getLogger("lbt")

# Config fields that may differ on resume without --allow_config_change (they don't change the
# training computation).
COSMETIC_FIELDS = (
    "train.progress",
    "train.log_every_steps",
    "train.eval_every_epochs",
    "train.max_rollbacks",
    "train.max_skipped_fraction",
    "train.grad_reduction",  # flat and per_leaf give bit-identical results
    "train.steps_in_flight",
    "train.device_prefetch",
    "train.peak_flops",
    "train.profile_steps",
    "train.measure_noise_scale",  # measuring B_simple does not change the training computation
    "train.noise_scale_ema",
    "train.noise_scale_every",  # which steps take the squared norms (adaptive runs: checked on resume)
    "schedule.batch.regime_factor",
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


def checkpoint_dir(workdir: Any) -> Any:
    """``workdir/checkpoints``: an absolute :class:`pathlib.Path`, or an :class:`etils.epath.Path`
    for a URL workdir (orbax writes ``gs://`` itself, through TensorStore)."""
    if storage.is_remote(workdir):
        return storage.as_path(workdir) / "checkpoints"
    return Path(workdir).absolute() / "checkpoints"


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
    """Saves and restores ``(state, meta)`` under ``workdir/checkpoints`` (orbax, async).

    Every decision about checkpoints is the same on every process: which checkpoints are bad
    (the verdicts are agreed, so a file that only one process fails to read still gives one
    decision), which one is restored, when the bad ones are moved aside (process 0 moves them,
    everyone waits at a barrier, then everyone re-lists), and whether a save failed.

    A failed async save (e.g. disk full) is raised as one-line :class:`CheckpointError` by the
    next :meth:`check` (the loop calls it after every step; non-blocking), :meth:`wait` or
    :meth:`save`. Orbax's own tracebacks of such failures are not logged: the error names the
    failed step, the cause and the last good checkpoint.
    """

    def __init__(self, workdir: str | Path, keep: int = 3, digest: bool = True, read_only: bool = False):
        self.directory = checkpoint_dir(workdir)
        # SHA-256 of the whole state at each save (checked on restore when recorded): it catches a
        # checkpoint that reads back without an error but with other bytes. It costs a device->host
        # copy and a hash on the main thread per save (0.22 s for ResNet-50's state).
        self.digest = digest
        # read_only (lbt eval, lbt.load): nothing is created, saved, deleted or moved aside.
        self.read_only = read_only
        _quiet_orbax_tracebacks()
        if read_only:  # not orbax's read_only, which logs a warning each time; this one never saves
            options = ocp.CheckpointManagerOptions(max_to_keep=None, create=False, enable_async_checkpointing=False)
        else:
            options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        # Reads go through the handlers, not the manager: a manager restore ends at a barrier
        # that a process whose read failed never reaches (the others would wait there).
        self._state_handler = ocp.StandardCheckpointHandler()
        self._meta_handler = ocp.JsonCheckpointHandler()
        self._pending: int | None = None  # step of the async save not yet known to have finished
        self._failed = False  # a failed save was reported
        self.last_save_time = time.time()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    # -------------------------------------------------------------------------------------
    # Saving

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Start an async save of ``step`` (after the previous one finished: orbax waits anyway)."""
        if self.read_only:
            raise AssertionError("a read-only Checkpointer never saves")
        self.wait()
        if step in self.manager.all_steps():  # e.g. a finished run started again
            return
        sha = state_digest(state) if self.digest else None
        meta = dict(meta, lbt_version=lbt.__version__, state_sha256=sha, saved_at=time.time())
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
        except Exception as e:  # noqa: BLE001 - e.g. ENOSPC while creating the directories
            self._failed = True
            raise self._save_error(step, e) from None
        self._pending = step
        self.last_save_time = time.time()

    def check(self, sync: bool = True) -> None:
        """Raise :class:`CheckpointError` if the last async save has failed; never blocks.

        Cheap enough to call after every step: with one process it looks at the background
        save only once it has finished. With several processes each one's save finishes at its
        own time, so the outcome is agreed (one small all-gather) only where ``sync`` is true,
        at steps where every process calls it with the same ``sync``, and only while a save is
        unconfirmed; elsewhere it does nothing.
        """
        if self._pending is None:
            return
        multi = jax.process_count() > 1
        if multi and not sync:
            return
        done = not self.manager.is_saving_in_progress()
        if multi:
            done = not agree_any([not done])[0]  # finished everywhere?
        if done:
            self.wait()

    def wait(self) -> None:
        """Block until the pending async save has finished; :class:`CheckpointError` if it failed
        (on any process: with several, the outcome is agreed)."""
        self._finish(agree=True)

    def _finish(self, agree: bool) -> None:
        step, self._pending = self._pending, None
        error: Exception | None = None
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - the background save failed
            error = e
        if step is None:
            return
        if agree and jax.process_count() > 1 and agree_any([error is not None])[0] and error is None:
            error = RuntimeError("it failed on another process")
        if error is not None:
            self._failed = True
            raise self._save_error(step, error) from None

    def _save_error(self, step: int, e: BaseException) -> CheckpointError:
        good = [s for s in self.manager.all_steps() if s != step]
        last = f"the last good checkpoint is {self.directory / str(max(good))}" if good else "there is no earlier one"
        return CheckpointError(
            f"saving checkpoint step {step} failed ({_first_line(e)}); {last} (nothing was deleted). "
            f"Fix the cause (e.g. free space in {self.directory}) and rerun the same command to resume."
        )

    def close(self) -> None:
        """Finish (or give up on) the pending save and close. A failure not yet reported is logged
        in one line, not raised (close runs while another error may be propagating)."""
        try:
            self._finish(agree=False)  # no collective: another process may not be closing
        except CheckpointError as e:
            log.error("%s", e)
        try:
            self.manager.close()
        except Exception as e:  # noqa: BLE001
            # after a failed save (already reported) this is the same cause again
            (log.debug if self._failed else log.warning)(
                "closing the checkpoint manager of %s failed: %s", self.directory, _first_line(e)
            )
        self._state_handler.close()
        self._meta_handler.close()

    # -------------------------------------------------------------------------------------
    # Restoring

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of checkpoint ``step`` (raises if it is unreadable)."""
        return self._meta_handler.restore(self.directory / str(step) / "meta", args=ocp.args.JsonRestore())

    def restore_latest(
        self,
        abstract_state: Any,
        below: int | None = None,
        check_meta: Callable[[dict], None] | None = None,
        *,
        only_step: int | None = None,
    ) -> tuple[Any, dict[str, Any]] | None:
        """Restore the newest good checkpoint (optionally with step < ``below``; with ``only_step``,
        that checkpoint only: a bad one raises instead of falling back).

        The metadata is read first and passed to ``check_meta`` (which may raise, e.g. for a
        config mismatch: that error propagates). Then the stored array shapes and dtypes are
        compared with ``abstract_state``: a difference is a changed model, not corruption, and
        raises :class:`CheckpointError` naming the arrays (every checkpoint is left in place).
        A corrupt or incomplete checkpoint (unreadable files, missing metadata, digest mismatch)
        is skipped with a warning naming it, and moved to ``checkpoints_corrupt/`` once a good
        one has been restored (nothing is deleted). Returns ``None`` if there are no
        checkpoints; raises :class:`CheckpointError` if there are some but none is good. With
        ``read_only`` nothing is moved.
        """
        steps = [s for s in self.steps() if (below is None or s < below) and only_step in (None, s)]
        if not steps:
            return None
        bad: list[tuple[int, str]] = []
        for step in reversed(steps):
            meta, stored, reason = None, None, None
            try:
                meta = self.read_meta(step)
                if not isinstance(meta, dict) or "examples_seen" not in meta or "state_sha256" not in meta:
                    raise ValueError("metadata missing or incomplete")
                stored = self._stored_arrays(step)
            except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
                reason = _first_line(e)
            reason = _agree_reason(reason)
            if reason is not None:
                bad.append((step, self._warn(step, reason)))
                continue
            if check_meta is not None:
                check_meta(meta)
            self._check_shapes(step, stored, abstract_state)
            state, reason = None, None
            try:
                state = self._state_handler.restore(
                    self.directory / str(step) / "state", args=ocp.args.StandardRestore(abstract_state)
                )
                digest = state_digest(state) if meta["state_sha256"] is not None else None
                if digest != meta["state_sha256"]:
                    raise ValueError(f"state digest {digest[:12]} != recorded {str(meta['state_sha256'])[:12]}")
            except Exception as e:  # noqa: BLE001
                reason = _first_line(e)
            reason = _agree_reason(reason)
            if reason is not None:
                bad.append((step, self._warn(step, reason)))
                continue
            self._quarantine([s for s, _ in bad])
            return state, meta
        listing = "; ".join(f"{self.directory / str(s)}: {r}" for s, r in bad)
        raise CheckpointError(
            f"no usable checkpoint in {self.directory} ({listing}). Nothing was deleted; "
            "move the checkpoints away (or use a new --workdir) to start from scratch."
        )

    def _stored_arrays(self, step: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """``{path: (shape, dtype)}`` of the state arrays stored at ``step`` (orbax metadata)."""
        md = self._state_handler.metadata(self.directory / str(step) / "state")
        tree = getattr(md, "tree", md)
        if tree is None:
            raise ValueError("state metadata missing")
        return {path: (tuple(a.shape), str(np.dtype(a.dtype))) for path, a in _leaves_by_path(tree).items()}

    def _check_shapes(self, step: int, stored: dict[str, tuple[tuple[int, ...], str]], abstract_state: Any) -> None:
        """Raise :class:`CheckpointError` if the stored arrays differ from the target's."""
        target = {p: (tuple(a.shape), str(np.dtype(a.dtype))) for p, a in _leaves_by_path(abstract_state).items()}
        if stored == target:
            return
        changed = [p for p in stored.keys() & target.keys() if stored[p] != target[p]]
        changed.sort(key=lambda p: (not p.startswith("params."), -len(stored[p][0]), p))  # kernels first
        missing = sorted(target.keys() - stored.keys())
        extra = sorted(stored.keys() - target.keys())

        def fmt(spec: tuple[tuple[int, ...], str]) -> str:
            return f"{spec[0]} {spec[1]}"

        parts = []
        if changed:
            shown = "; ".join(f"{p}: checkpoint {fmt(stored[p])}, now {fmt(target[p])}" for p in changed[:3])
            more = f"; and {len(changed) - 3} more" if len(changed) > 3 else ""
            params = sum(p.startswith("params.") for p in changed)
            parts.append(
                f"{len(changed)} array(s) changed shape or dtype, {params} of them parameters ({shown}{more})"
            )
        if missing:
            parts.append(f"{len(missing)} array(s) are not in the checkpoint (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(
                f"{len(extra)} array(s) of the checkpoint are not in this config (e.g. {', '.join(extra[:3])})"
            )
        raise CheckpointError(
            f"checkpoint {self.directory / str(step)} does not fit this config's model/optimizer state: "
            + "; ".join(parts)
            + ". --allow_config_change cannot change the state's shapes: use the original config, or a new "
            "--workdir to start from scratch (the checkpoints were left as they are)."
        )

    def _warn(self, step: int, reason: str) -> str:
        reason = reason[:160]
        log.warning(
            "checkpoint %s is corrupt or incomplete (%s); trying an older one", self.directory / str(step), reason
        )
        return reason

    def _quarantine(self, steps: list[int]) -> None:
        """Move bad checkpoints out of orbax's view, so later saves can reuse their step numbers.

        ``steps`` is the same on every process. Process 0 moves them; every process waits until
        it has, then re-lists the directory, so that all of them see the same steps (a save of
        a step that one process still lists would return early there and hang the others).
        """
        if not steps or self.read_only:
            return
        if jax.process_index() == 0:
            dest = self.directory.parent / "checkpoints_corrupt"
            for s in steps:
                src = self.directory / str(s)
                try:
                    if src.exists():
                        dest.mkdir(exist_ok=True)
                        if storage.is_remote(src):
                            src.rename(dest / f"{s}.{int(time.time())}")  # epath: a copy and delete on GCS
                        else:
                            shutil.move(str(src), str(dest / f"{s}.{int(time.time())}"))
                except OSError as e:
                    log.warning("could not move %s to %s: %s", src, dest, _first_line(e))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("lbt:checkpoint_quarantine")
        self.manager.reload()


def _first_line(e: BaseException | str, limit: int = 300) -> str:
    """The first line of an error (its type if empty), without TensorStore's JSON spec, shortened
    in the middle to ``limit`` (the end of a TensorStore message holds the OS error)."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    line = re.sub(r"\s*\[(tensorstore_spec|source locations)=.*$", "", line)
    if len(line) > limit:
        half = (limit - 5) // 2
        line = f"{line[:half]} ... {line[-half:]}"
    return line


def _leaves_by_path(tree: Any) -> dict[str, Any]:
    """Leaves keyed by a dotted path (``params.conv1.kernel``, ``opt_state.0.mu.conv1.kernel``)."""

    def name(k: Any) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    return {".".join(name(k) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _agree_reason(reason: str | None) -> str | None:
    """A checkpoint verdict made the same on every process: bad if bad on any."""
    if jax.process_count() == 1 or not agree_any([reason is not None])[0]:
        return reason
    return reason or "unreadable or different on another process"


class _OrbaxTracebacks(logging.Filter):
    """Drops the tracebacks logged for failures inside orbax, which reach lbt as exceptions and
    are reported there in one line. One async save that failed for lack of space logged four
    through absl (orbax) and more through asyncio ("Task exception was never retrieved" for its
    other writes). Records without a traceback pass."""

    def __init__(self) -> None:
        super().__init__()
        self.root = os.path.dirname(os.path.dirname(ocp.__file__)) + os.sep  # .../orbax/

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or not isinstance(record.exc_info, tuple):
            return True
        if record.name == "asyncio" and "orbax" in record.getMessage():
            return False  # "Task/Future exception was never retrieved" of orbax's writes
        # The failure passed through orbax code, or orbax is logging it (the caller's stack: the
        # record's pathname is only right if absl set its logger class up before anyone called
        # logging.getLogger("absl")).
        tb = record.exc_info[2]
        while tb is not None:
            if tb.tb_frame.f_code.co_filename.startswith(self.root):
                return False
            tb = tb.tb_next
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename.startswith(self.root):
                return False
            frame = frame.f_back
        return True


def _quiet_orbax_tracebacks() -> None:
    for name in ("absl", "asyncio"):  # orbax logs through absl.logging, its event loops through asyncio
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OrbaxTracebacks) for f in logger.filters):
            logger.addFilter(_OrbaxTracebacks())
    if not isinstance(sys.unraisablehook, _UnraisableFilter):
        sys.unraisablehook = _UnraisableFilter(sys.unraisablehook)


class _UnraisableFilter:
    """Drops two kinds of unraisable-exception noise from a failed orbax save, passes the rest on.

    * ``RuntimeError: Event loop is closed`` with no object: TensorStore finishing a write whose
      orbax event loop was already closed by the first failed write (one traceback per write).
    * An exception while an orbax coroutine is finalised (e.g. at interpreter exit).
    """

    def __init__(self, previous: Callable[[Any], Any]):
        self.previous = previous
        self.root = os.path.dirname(os.path.dirname(ocp.__file__)) + os.sep

    def __call__(self, unraisable: Any) -> None:
        exc, obj = unraisable.exc_value, unraisable.object
        if obj is None and isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        code = getattr(obj, "cr_code", None)
        if code is not None and code.co_filename.startswith(self.root):
            return
        self.previous(unraisable)


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
