"""The workdir of a run: one run at a time (:class:`WorkdirLock`), and whether it is finished
(:func:`finished_summary`).

**The lock.** A run holds ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``workdir/.lbt.lock`` for its
whole life. A second run on the same workdir refuses with :class:`WorkdirBusyError`, one line
naming the holder (pid, host, start time, command line, which the holder stores in the lock
file as JSON). The kernel drops a flock when the holder's process ends, however it ends (also
``SIGKILL``), so a crashed run's lock never blocks the resume; the stale file's content is just
overwritten. The file itself is never deleted (deleting a lock file races with other runs).

*One lock per job.* Of the processes of a multi-process job only process 0 (``primary``) takes
the OS lock. The outcome is agreed with ``agree`` (a collective over all processes, e.g.
:func:`lbt.train.checkpoint.agree_any`), so all processes refuse together, or none does.

*Filesystems.* flock needs a filesystem that supports it: local filesystems do; NFS does
through lockd (the Linux client maps flock to POSIX locks, unless mounted with
``local_lock=flock|all``, which makes the lock local to one host); Lustre needs the ``flock``
mount option. Where flock fails with ``ENOLCK``/``EOPNOTSUPP``/``ENOSYS``, the run warns once and
continues *unlocked*. FUSE filesystems (e.g. Cloud Storage FUSE) without lock support get a
host-local lock from the kernel: two runs started on different hosts are not detected there.
Processes forked (not exec'd) by the run share its lock, so a forked child that outlives a
crashed run keeps the workdir locked until it exits.

*Object storage.* A URL workdir (``gs://``, :mod:`lbt.storage`) has no locks at all, and an
object written as a lock cannot be created atomically through ``etils.epath`` (no
if-not-exists precondition) nor released by a crash. So there the workdir is **not locked**:
the run logs one warning saying so and goes on; keeping to one run per workdir is the
launcher's job there (one job name per workdir). A crashed run therefore never blocks the resume.

**Finished runs.** Rerunning ``lbt train`` on a finished workdir must leave its results alone:
:func:`finished_summary` returns the stored summary when the run is already complete, and the
loop then returns it without training, evaluating or writing anything. Training longer is
explicit: a larger ``schedule.epochs`` is a config change, which needs
``--allow_config_change``, and then the run continues from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lbt import storage
from lbt.errors import CheckpointError

log = logging.getLogger("lbt")

LOCK_NAME = ".lbt.lock"
# flock itself is not supported here (as opposed to: another process holds the lock)
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
_BUSY = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}
_warned_unsupported = False

Agree = Callable[[list[bool]], list[bool]]


class WorkdirBusyError(CheckpointError):
    """The workdir is locked by another live run. ``holder``: its lock record (or None)."""

    def __init__(self, workdir: str | Path, holder: dict[str, Any] | None):
        self.workdir = Path(workdir)
        self.holder = holder
        super().__init__(
            f"workdir {self.workdir} is in use by another run ({describe_holder(holder)}). Wait for it to finish or "
            "stop it (a crashed run's lock is released by the kernel), or use another --workdir."
        )


def describe_holder(holder: dict[str, Any] | None) -> str:
    """One line about the run in a lock record."""
    if not holder:
        return "its details are not readable yet"
    command = " ".join(str(holder.get("command", "?")).split())  # one line
    if len(command) > 400:
        command = command[:400] + " ..."
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}, "
        f"command: {command}"
    )


def read_holder(path: str | Path, retries: int = 10) -> dict[str, Any] | None:
    """The lock record in ``path``; None if there is none (the holder may be writing it: retried)."""
    for attempt in range(retries):
        try:
            holder = json.loads(Path(path).read_text())
            if isinstance(holder, dict):
                return holder
        except (OSError, ValueError):
            pass
        if attempt + 1 < retries:
            time.sleep(0.05)
    return None


def _holder_record(command: str | None) -> dict[str, Any]:
    now = time.time()
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)),
        "started_unix": now,
        "command": command if command is not None else shlex.join(getattr(sys, "orig_argv", sys.argv)),
    }


class WorkdirLock:
    """Exclusive lock on a run's workdir (see the module docstring).

    ``with WorkdirLock(workdir, primary=..., agree=...):`` or :meth:`acquire` / :meth:`release`.
    :meth:`acquire` raises :class:`WorkdirBusyError` (a :class:`CheckpointError`) if another
    live run holds it, and :class:`CheckpointError` if the lock cannot be taken for another
    reason. ``locked`` says whether this object holds the OS lock (False on non-primary
    processes and on filesystems without flock).

    ``primary``: whether this process takes the OS lock (process 0 of a job). ``agree``: called
    by *every* process with ``[busy, failed]``; returns each flag true if it is true on any
    process (:func:`lbt.train.checkpoint.agree_any`). Without it the outcome is this process's own.
    """

    def __init__(
        self, workdir: str | Path, *, primary: bool = True, agree: Agree | None = None, command: str | None = None
    ):
        self.workdir = storage.as_path(workdir)
        self.path = self.workdir / LOCK_NAME
        self.primary = primary
        self.agree = agree
        self.command = command
        self._fd: int | None = None
        self._pid: int | None = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def acquire(self) -> WorkdirLock:
        if self._fd is not None:
            return self
        busy, error = False, None
        if self.primary:
            try:
                busy = not self._try_lock()
            except OSError as e:
                error = e
        flags = [busy, error is not None]
        if self.agree is not None:
            flags = [bool(f) for f in self.agree(flags)]
        if not any(flags):
            return self
        self.release()  # another process may have refused: let go, so all refuse together
        if flags[0]:
            raise WorkdirBusyError(self.workdir, read_holder(self.path))
        if error is not None:
            raise CheckpointError(f"cannot lock the workdir: {self.path}: {error.strerror or error}") from error
        raise CheckpointError(f"cannot lock the workdir {self.workdir}: process 0 failed to (see its error)")

    def _try_lock(self) -> bool:
        """Take the OS lock; False if another run holds it. Raises OSError on other failures."""
        global _warned_unsupported
        if storage.is_remote(self.workdir):
            log.warning(
                "%s is on object storage, which has no file locks: the workdir is not locked, so nothing stops a "
                "second run on it (docs/checkpointing.md)",
                self.workdir,
            )
            return True
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # no O_TRUNC: not ours yet
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in _BUSY:
                return False
            if e.errno in _UNSUPPORTED:
                if not _warned_unsupported:
                    _warned_unsupported = True
                    log.warning(
                        "the filesystem of %s does not support file locks (%s); continuing unlocked: nothing stops "
                        "a second run on this workdir",
                        self.workdir,
                        e.strerror or e,
                    )
                return True
            raise
        self._fd, self._pid = fd, os.getpid()
        data = json.dumps(_holder_record(self.command)).encode()
        try:  # informative only: the flock is what counts (so a full disk must not fail here)
            os.ftruncate(fd, 0)
            os.pwrite(fd, data + b"\n", 0)
        except OSError as e:
            log.debug("could not write the lock record %s: %s", self.path, e)
        return True

    def release(self) -> None:
        """Let go of the lock (idempotent). The lock file stays, emptied."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._pid == os.getpid():  # a forked child must not unlock its parent's lock
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------
# Finished runs


def checkpoint_steps(workdir: Any) -> list[int]:
    """The steps of the checkpoints in ``workdir/checkpoints`` (orbax's ``<step>/`` directories,
    not its ``<step>.orbax-checkpoint-tmp-*`` ones), ascending; ``[]`` if there are none."""
    d = storage.as_path(workdir) / "checkpoints"
    try:
        return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and p.is_dir())
    except OSError:
        return []


def _finished(workdir: Any, total_examples: int, config: dict[str, Any] | None) -> dict[str, Any] | None:
    try:
        summary = json.loads((workdir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    seen, steps = summary.get("examples_seen"), summary.get("optimizer_steps")
    if not isinstance(seen, int) or isinstance(seen, bool) or seen < total_examples:
        return None
    # The newest checkpoint must be the final one (none at all is fine: deleted to save space).
    # A newer one means a longer run started since; an older one, that the final one was lost.
    ckpts = checkpoint_steps(workdir)
    if ckpts and ckpts[-1] != steps:
        return None
    from lbt.train.metrics import MetricsFileError, read_jsonl

    try:
        records = read_jsonl(workdir / "metrics.jsonl")
    except (OSError, MetricsFileError):
        return None
    if not any(r.get("split") == "test" and r.get("examples_seen") == seen for r in records):
        return None
    if config is not None:
        try:
            stored = json.loads((workdir / "config.json").read_text())
        except (OSError, ValueError):
            return None
        from lbt.train.checkpoint import config_differences

        if config_differences(stored, config):
            return None  # not the run asked for: the resume path reports the difference
    return summary


def finished_summary(
    workdir: str | Path,
    total_examples: int,
    *,
    config: dict[str, Any] | None = None,
    agree: Agree | None = None,
) -> dict[str, Any] | None:
    """The stored summary if the run in ``workdir`` is finished, else None.

    Finished: ``summary.json`` parses to an object with ``examples_seen >= total_examples``,
    ``metrics.jsonl`` has the final eval record at that ``examples_seen``, and the newest
    checkpoint (if any) is the final step. With ``config`` (the current config as JSON, i.e.
    ``json.loads(config_lib.to_json(config))``) the stored ``config.json`` must also match it,
    ignoring cosmetic fields (:func:`lbt.train.checkpoint.config_differences`); otherwise the
    normal resume path runs, which refuses the change or, with ``--allow_config_change``,
    continues. ``agree`` (called on every process, see :class:`WorkdirLock`) makes the answer
    the same everywhere: finished only if every process found it finished.
    """
    summary = _finished(storage.as_path(workdir), total_examples, config)
    if agree is not None and agree([summary is None])[0]:
        return None
    return summary


def already_finished_message(workdir: str | Path, summary: dict[str, Any]) -> str:
    """The line to log when a finished run is started again."""
    return (
        f"{workdir}: the run is already finished ({summary.get('optimizer_steps')} steps, examples_seen "
        f"{summary.get('examples_seen')}); nothing to do (summary.json kept). To train longer, raise "
        "schedule.epochs with --allow_config_change."
    )


def check_checkpoint(workdir: Any, step: int | None = None) -> list[int]:
    """The checkpoint steps of the run in ``workdir``, after checking that it is a run's workdir
    with checkpoints and that ``step`` (if given) is one of them. Needs no JAX (``lbt eval``
    checks its flags with it before JAX starts).

    Raises :class:`lbt.runtime.SetupError`, one line naming ``--workdir`` or ``--step`` and the fix.
    """
    from lbt.runtime import SetupError

    path = storage.as_path(workdir)
    fix = "pass the --workdir of an lbt train run"
    if not path.is_dir():
        problem = "no such directory" if not path.exists() else "is a file, not a directory"
        raise SetupError(f"--workdir {str(workdir)!r}: {problem}; {fix}")
    steps = checkpoint_steps(path)
    if not steps:
        if not (path / "checkpoints").exists() and not (path / "config.json").exists():
            raise SetupError(f"--workdir {str(workdir)!r}: not an lbt workdir (no checkpoints/ or config.json); {fix}")
        raise SetupError(
            f"--workdir {str(workdir)!r}: has no checkpoints (the run saved none yet, or they were deleted); "
            "train it first (lbt train --workdir ...) or pass another --workdir"
        )
    if step is not None and step not in steps:
        shown = ", ".join(map(str, steps[-10:]))
        raise SetupError(
            f"--step {step}: no checkpoint at step {step} in {path / 'checkpoints'}; choose one of {shown} "
            "(or leave --step out for the newest)"
        )
    return steps
