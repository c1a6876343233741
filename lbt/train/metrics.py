"""Metrics sinks: ``metrics.jsonl`` (one JSON object per line) and TensorBoard (tensorboardX).

Only the primary process (``jax.process_index() == 0``) writes; the others get a no-op writer.

Interrupted writes. A kill or a full disk in the middle of a write leaves a *partial last line*
in ``metrics.jsonl``. Every reader (:func:`read_jsonl`, hence the resume path
:meth:`MetricsWriter.truncate_after` and the tools) treats a last line that does not decode to a
JSON object as not written: it is skipped with one warning (logger ``"lbt"``), and
:class:`MetricsWriter` cuts it off when it opens the file, so the next record starts on a line
of its own. A last line that *is* a complete JSON object but lacks its newline is kept (a
truncated object never parses) and the newline is added before appending. A line that does not
decode *in the middle* of the file is not an interrupted write but damage: it raises
:class:`MetricsFileError` naming the file and line, and nothing is changed (we never drop
records silently). :meth:`MetricsWriter.write` removes its own partial record when a write fails
(e.g. ``ENOSPC``) and raises :class:`MetricsFileError`.

``summary.json`` and other JSON documents go through :func:`write_json`: non-finite floats
become ``null`` (:func:`json_safe`), ``allow_nan=False``, written atomically (temp file +
``os.replace``). Records in ``metrics.jsonl`` keep writing non-finite values as the strings
``"nan"``/``"inf"`` (visible, and still valid JSON).

Object storage (a ``gs://``/``s3://`` workdir, :mod:`lbt.storage`) has no appends:
:func:`metrics_writer` returns an :class:`ObjectMetricsWriter` there, which keeps the file in
memory and rewrites the whole object at each sync (before every checkpoint save, at evals and
preemption, at the end, and every ``sync_every_s`` seconds), so the records up to the last
checkpoint are always stored. A local workdir (also a FUSE-mounted bucket) keeps the unbuffered
appends above.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lbt import storage
from lbt.errors import TrainingError

log = logging.getLogger("lbt")


class MetricsFileError(TrainingError):
    """``metrics.jsonl`` is damaged in the middle, or a record could not be written."""


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep it visible
    return v


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by ``None`` (recursively through dicts, lists and
    tuples; NumPy/JAX scalars and arrays become Python values), so ``json.dumps(...,
    allow_nan=False)`` accepts it."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (str, bytes, bool, int)) or obj is None:
        return obj
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if hasattr(obj, "tolist"):  # NumPy / JAX scalars and arrays
        return json_safe(obj.tolist())
    return obj


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and ``os.replace``: a
    reader sees the old file or the new one, never a part (and a failed write keeps the old).
    On object storage: one object upload (atomic there), :func:`lbt.storage.write_bytes_atomic`."""
    storage.write_bytes_atomic(path, text.encode())


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as strict JSON (non-finite floats -> ``null``), atomically."""
    write_text_atomic(path, json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n")


def _decode(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """The record on ``line`` (None if it is not a JSON object) and why not."""
    try:
        rec = json.loads(line)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        return None, str(e).splitlines()[0]
    if not isinstance(rec, dict):
        return None, f"a JSON {type(rec).__name__}, not an object"
    return rec, ""


def _show(line: bytes, limit: int = 60) -> str:
    text = line[:limit].decode("utf-8", "backslashreplace")
    return repr(text + ("..." if len(line) > limit else ""))


def _warn_partial(path: Path, lineno: int, line: bytes, action: str) -> None:
    log.warning(
        "%s: %s a partial last line (line %d, %d bytes: %s) left by an interrupted write",
        path,
        action,
        lineno,
        len(line),
        _show(line),
    )


def _last_line(f, size: int) -> tuple[int, bytes]:
    """Offset and bytes of the last non-blank line of the open binary file ``f`` (``size`` bytes);
    reads only the tail. ``(size, b"")`` if the file is blank."""
    block, start, data = 1 << 16, size, b""
    while True:
        new_start = max(0, start - block)
        f.seek(new_start)
        data = f.read(start - new_start) + data
        start = new_start
        end = len(data.rstrip())
        if end:
            nl = data.rfind(b"\n", 0, end)
            if nl >= 0 or start == 0:
                return start + nl + 1, data[nl + 1 : end]
        elif start == 0:
            return size, b""
        block *= 2


def repair_tail(path: str | Path) -> str | None:
    """Make ``path`` safe to append to: cut off a partial last line (one warning), or add the
    newline after a complete last record. Returns ``"dropped"``, ``"terminated"`` or None."""
    path = Path(path)
    with open(path, "r+b") as f:
        return _repair(f, path)


def _repair(f, path: Any) -> str | None:
    """:func:`repair_tail` on the open binary file ``f`` (a real file or an ``io.BytesIO``)."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return None
    offset, line = _last_line(f, size)
    if line and _decode(line)[0] is None:
        f.seek(0)
        lineno = f.read(offset).count(b"\n") + 1
        _warn_partial(path, lineno, line, "dropped")
        f.truncate(offset)
        return "dropped"
    f.seek(size - 1)
    if f.read(1) != b"\n":
        f.seek(0, os.SEEK_END)
        f.write(b"\n")
        return "terminated"
    return None


def _scan(path: Any) -> list[tuple[int, int, dict[str, Any]]]:
    """``(start, end, record)`` of every record line of ``path`` (byte offsets, ``end`` past the
    newline). A partial last line is skipped with a warning; a bad line before the last raises."""
    return _scan_bytes(storage.as_path(path).read_bytes(), path)


def _scan_bytes(data: bytes, path: Any) -> list[tuple[int, int, dict[str, Any]]]:
    """:func:`_scan` of the bytes ``data`` of the file ``path`` (named in messages)."""
    out: list[tuple[int, int, dict[str, Any]]] = []
    bad = None  # (lineno, line, why) of an undecodable line: fine only if it is the last one
    pos, lineno = 0, 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        line, lineno = data[pos:end].rstrip(b"\r\n"), lineno + 1
        if line.strip():
            if bad is not None:
                raise MetricsFileError(
                    f"{path} line {bad[0]}: not a JSON record ({bad[2]}; {_show(bad[1])}). The file is damaged in the "
                    "middle, not just at its end (an interrupted write only leaves a partial last line); nothing was "
                    "changed. Repair or delete that line, then rerun."
                )
            rec, why = _decode(line)
            if rec is None:
                bad = (lineno, line, why)
            else:
                out.append((pos, end, rec))
        pos = end
    if bad is not None:
        _warn_partial(path, bad[0], bad[1], "ignoring")
    return out


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file.

    Blank lines are ignored. A last line that is not a JSON object (an interrupted write) is
    skipped with a warning; such a line anywhere else raises :class:`MetricsFileError` naming
    the file and line number.
    """
    return [rec for _, _, rec in _scan(path)]


#: Events that are part of the training computation's record (a resumed run writes them again at
#: the same step, like the train records), so a resume or rollback drops them past its position.
REGENERATED_EVENTS = ("noise_regime",)


def kept_on_resume(record: dict[str, Any], examples_seen: int) -> bool:
    """Whether a resume or rollback to ``examples_seen`` keeps ``record``: every train/eval record
    up to that point, every event of the run's history (``resume``, ``rollback``, ``preempted``),
    and :data:`REGENERATED_EVENTS` only up to that point."""
    if "event" in record and record["event"] not in REGENERATED_EVENTS:
        return True
    return record.get("examples_seen", 0) <= examples_seen


class MetricsWriter:
    """Appends records to ``workdir/metrics.jsonl`` and scalars to ``workdir/tb``.

    Opening cuts off a partial last line left by an interrupted write (:func:`repair_tail`).
    Each :meth:`write` (or :meth:`write_many`: a metrics flush's records together) is one
    unbuffered append; if it fails (e.g. the disk is full) what it wrote is removed again and
    :class:`MetricsFileError` is raised.
    """

    def __init__(self, workdir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._f = None
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                repair_tail(self.path)
            self._open()
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(Path(workdir) / "tb"), flush_secs=10)

    def _open(self) -> None:
        self._f = open(self.path, "ab", buffering=0)

    def _append(self, data: bytes) -> None:
        fd = self._f.fileno()
        size = os.fstat(fd).st_size  # O_APPEND: the record starts here (the workdir lock makes us the only writer)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as e:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise MetricsFileError(
                f"could not append to {self.path}: {e.strerror or e}; the partial record was removed. "
                "Free space and rerun the same command to resume from the last checkpoint."
            ) from e

    def write(self, record: dict[str, Any], tb_step: int | None = None, prefix: str = "") -> None:
        """One record (and, with ``tb_step``, its numbers as one TensorBoard event)."""
        self.write_many([(record, tb_step, prefix)])

    def write_many(self, entries: list[tuple[dict[str, Any], int | None, str]]) -> None:
        """``(record, tb_step, prefix)`` entries in order, as one append: one ``write`` system
        call for a whole metrics flush instead of an ``fstat`` and a ``write`` per record. A failed
        append removes all of them again (and raises :class:`MetricsFileError`)."""
        if not self.enabled or not entries:
            return
        cleaned = [({k: _clean(v) for k, v in r.items()}, tb, prefix) for r, tb, prefix in entries]
        self._append("".join(json.dumps(r) + "\n" for r, _, _ in cleaned).encode())
        if self._tb is not None:
            for rec, tb_step, prefix in cleaned:
                if tb_step is not None:
                    self._write_tb(rec, tb_step, prefix)

    def _write_tb(self, rec: dict[str, Any], step: int, prefix: str) -> None:
        """All of a record's numbers as one TensorBoard ``Summary`` (one event), not one
        ``add_scalar`` each: 0.36 ms instead of 2.8 ms for 16 scalars on the 2-core CI machine,
        which kept the loop below 0.95x a bare loop (docs/benchmarks.md, loop overhead)."""
        from tensorboardX.proto.summary_pb2 import Summary

        values = [
            Summary.Value(tag=f"{prefix}{k}", simple_value=float(v))
            for k, v in rec.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "examples_seen"
        ]
        if values:
            self._tb.file_writer.add_summary(Summary(value=values), step)

    def truncate_after(self, examples_seen: int) -> None:
        """Drop train/eval records past ``examples_seen`` (a resume or rollback regenerates them).

        Event records (``"event"`` key) are kept, except :data:`REGENERATED_EVENTS` past the point
        (:func:`kept_on_resume`); a partial last line is dropped. A line damaged
        in the middle raises :class:`MetricsFileError` and changes nothing. When only a tail goes
        the file is cut in place (no free space needed, e.g. resuming on a full disk); otherwise
        it is replaced atomically.
        """
        if not self.enabled:
            return
        self._f.close()
        try:
            lines = _scan(self.path) if self.path.exists() else []
            keep = [kept_on_resume(r, examples_seen) for _, _, r in lines]
            first_drop = keep.index(False) if False in keep else len(keep)
            if not any(keep[first_drop:]):
                # The common case: only a tail goes. Cut it in place, which needs no free space
                # (a resume on a full disk must not fail here).
                if self.path.exists():
                    cut = lines[first_drop][0] if first_drop < len(lines) else (lines[-1][1] if lines else 0)
                    with open(self.path, "r+b") as f:
                        f.truncate(cut)  # also cuts a partial last line
                    repair_tail(self.path)  # the newline after the last record
            else:
                text = "".join(json.dumps(r) + "\n" for (_, _, r), k in zip(lines, keep, strict=True) if k)
                try:
                    write_text_atomic(self.path, text)
                except OSError as e:
                    raise MetricsFileError(
                        f"could not rewrite {self.path}: {e.strerror or e}; it is unchanged. Free space and rerun."
                    ) from e
        finally:
            self._open()

    def sync(self) -> None:
        """Make every record written so far durable (the loop calls it before each checkpoint
        save). Local records are written unbuffered, so this does nothing here."""

    def flush(self) -> None:
        # records are written unbuffered; only TensorBoard buffers
        if self._tb:
            self._tb.flush()

    def close(self) -> None:
        if self._f:
            self._f.close()
            self._f = None
        if self._tb:
            self._tb.close()
            self._tb = None


class ObjectMetricsWriter(MetricsWriter):
    """:class:`MetricsWriter` for a workdir on object storage, where objects cannot be appended to.

    The bytes of ``metrics.jsonl`` are kept in memory (read, and a partial last line cut off,
    at open) and :meth:`sync` rewrites the whole object: before every checkpoint save
    (:meth:`sync`), at :meth:`flush` (evals, preemption), at :meth:`close`, and at the first
    write ``sync_every_s`` seconds after the previous sync. A crash loses at most the records
    since the last sync, which lie after the last checkpoint: the resume drops and regenerates
    those anyway. The cost is one upload of the whole file per sync (a 10,000-record file is
    about 6.5 MB). TensorBoard writes a local temporary directory whose files are copied to
    ``workdir/tb`` at each sync (tensorboardX's own ``gs://`` writer also re-uploads the whole
    event file at each flush, and needs google-cloud-storage).
    """

    def __init__(self, workdir: Any, enabled: bool = True, tensorboard: bool = True, *, sync_every_s: float = 30.0):
        import io

        self.enabled = enabled
        self.workdir = storage.as_path(workdir)
        self.path = self.workdir / "metrics.jsonl"
        self.sync_every_s = sync_every_s
        self._f = None
        self._tb = None
        self._tb_dir: Path | None = None
        self._data = bytearray()
        self._next_sync = time.monotonic() + sync_every_s
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            buf = io.BytesIO(self.path.read_bytes())
            repaired = _repair(buf, self.path)  # the same repair as a local file's
            self._data = bytearray(buf.getvalue())
            if repaired is not None:
                self._upload()
        if tensorboard:
            import tempfile

            from tensorboardX import SummaryWriter

            self._tb_dir = Path(tempfile.mkdtemp(prefix="lbt-tb-"))
            self._tb = SummaryWriter(str(self._tb_dir), flush_secs=10)

    def _open(self) -> None:
        pass

    def _append(self, data: bytes) -> None:
        self._data += data
        if time.monotonic() >= self._next_sync:
            self.sync()

    def _upload(self) -> None:
        try:
            self.path.write_bytes(bytes(self._data))
        except OSError as e:
            raise MetricsFileError(
                f"could not write {self.path}: {e.strerror or e}; the records are kept in memory and written at "
                "the next sync."
            ) from e

    def sync(self) -> None:
        """Upload ``metrics.jsonl`` and the TensorBoard files now."""
        if not self.enabled:
            return
        self._next_sync = time.monotonic() + self.sync_every_s
        self._upload()
        if self._tb is not None:
            self._tb.flush()
            storage.copy_tree_up(self._tb_dir, self.workdir / "tb")

    def truncate_after(self, examples_seen: int) -> None:
        """As :meth:`MetricsWriter.truncate_after`, on the bytes in memory; then :meth:`sync`."""
        if not self.enabled:
            return
        lines = _scan_bytes(bytes(self._data), self.path)
        kept = [self._data[a:b].rstrip(b"\r\n") + b"\n" for a, b, r in lines if kept_on_resume(r, examples_seen)]
        self._data = bytearray(b"".join(kept))
        self.sync()

    def flush(self) -> None:
        self.sync()

    def close(self) -> None:
        if not self.enabled or self._data is None:
            return
        try:
            self.sync()
        finally:
            if self._tb is not None:
                self._tb.close()
                storage.copy_tree_up(self._tb_dir, self.workdir / "tb")
                import shutil

                shutil.rmtree(self._tb_dir, ignore_errors=True)
                self._tb = None
            self._data = None


def metrics_writer(workdir: Any, enabled: bool = True, tensorboard: bool = True) -> MetricsWriter:
    """The writer for ``workdir``: :class:`MetricsWriter` (local, appends) or, for a URL workdir,
    :class:`ObjectMetricsWriter` (object storage, rewrites)."""
    cls = ObjectMetricsWriter if storage.is_remote(workdir) else MetricsWriter
    return cls(workdir, enabled=enabled, tensorboard=tensorboard)


class PendingMetrics:
    """Train records whose device metrics are not read yet (the loop runs ahead of the host).

    :meth:`add` queues a record with its device metrics and bounds async dispatch: it waits for
    the step before last, so at most ``lookahead`` steps are in flight. :meth:`flush` reads every
    pending step, writes the records and returns the first non-finite one (later ones are
    dropped: a rollback or stop follows).
    """

    def __init__(
        self,
        writer: MetricsWriter,
        progress: Any = None,
        lookahead: int = 1,
        on_read: Callable[[], dict[str, Any]] | None = None,
        on_record: Callable[[dict[str, Any], dict[str, Any]], list[dict[str, Any]]] | None = None,
        tb_every: int = 1,
    ):
        self.writer = writer
        # TensorBoard gets every tb_every-th step (the loop's log_every_steps), the last record of
        # a full flush and any non-finite one; metrics.jsonl gets every step. One Summary per step
        # cost 0.37 ms, 2-3% of a digits CNN step at B = 64 (docs/benchmarks.md, loop overhead).
        self.tb_every = max(1, int(tb_every))
        self.progress = progress
        self.lookahead = lookahead
        self.on_read = on_read  # fields measured once the pending steps are done (throughput)
        # per read step, in order: (record, device values) -> event records to write after it
        self.on_record = on_record
        self._items: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, record: dict[str, Any], device_metrics: dict[str, Any]) -> None:
        import jax

        self._items.append((record, device_metrics))
        if self.lookahead and len(self._items) > self.lookahead:
            # Bound async dispatch. A deep queue of collective programs (e.g. log_every_steps=1000)
            # deadlocked XLA:CPU's simulated devices in an all-reduce rendezvous; one step of
            # lookahead keeps the devices busy.
            jax.block_until_ready(self._items[-1 - self.lookahead][1]["loss"])

    def flush(self, extra: dict[str, Any] | None = None, keep: int = 0) -> dict[str, Any] | None:
        """Write the pending records (with ``extra`` fields); return the first non-finite one.

        ``keep``: leave the newest ``keep`` steps pending. The loop's periodic flush keeps the
        step just dispatched, so reading the others never waits for it and the devices stay busy
        while the host writes (a full flush drained the queue every ``log_every_steps`` steps:
        about 10% of the digits CNN's throughput at B = 64). Before eval, a save or the end,
        everything is flushed (``keep=0``).
        """
        from lbt.parallel.mesh import host_values

        bad = None
        n = max(0, len(self._items) - keep)
        items, self._items = self._items[:n], self._items[n:]
        values = host_values([dev for _, dev in items])  # one transfer for all read steps
        if items and self.on_read is not None:
            extra = {**(extra or {}), **self.on_read()}
        out: list[tuple[dict[str, Any], int | None, str]] = []  # written in one append
        for i, ((rec, _), dev) in enumerate(zip(items, values)):
            rec.update(loss=float(dev["loss"]), grad_norm=float(dev["grad_norm"]))
            rec["skipped_nonfinite"] = not bool(dev["finite"])
            events = self.on_record(rec, dev) if self.on_record is not None else []
            rec.update(extra or {})
            closes_full_flush = keep == 0 and i == len(items) - 1
            tb = rec["step"] % self.tb_every == 0 or closes_full_flush or rec["skipped_nonfinite"]
            out.append((rec, rec["examples_seen"] if tb else None, "train/"))
            out.extend((event, None, "") for event in events)
            if rec["skipped_nonfinite"]:
                bad = rec
                break
        self.writer.write_many(out)
        if items and self.progress is not None:
            last = bad or items[-1][0]
            self.progress.set_postfix(loss=f"{last['loss']:.4f}", B=last["global_batch"], lr=f"{last['lr']:.4g}")
        if bad is not None:
            self._items.clear()  # the steps after a non-finite one are dropped: a rollback or stop follows
        return bad


class TrainClock:
    """Training throughput without eval, checkpoint and compile time.

    :meth:`step` closes the interval since the previous mark; steps that compiled are left out
    (examples and time). :meth:`skip` restarts the interval after eval or checkpoint work.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.examples = 0
        self._last = time.perf_counter()
        self._window = [0, 0.0, 0]  # examples, seconds, steps since the last window()

    def step(self, examples: int, compiled: bool) -> None:
        now = time.perf_counter()
        if not compiled:
            self._add(now - self._last, examples, 1)
        self._last = now

    def _add(self, seconds: float, examples: int, steps: int) -> None:
        self.seconds += seconds
        self.examples += examples
        self._window[0] += examples
        self._window[1] += seconds
        self._window[2] += steps

    def skip(self) -> None:
        self._last = time.perf_counter()

    def finish(self) -> None:
        """Count the time until now (the last steps' device work, read by the final flush)."""
        now = time.perf_counter()
        self._add(now - self._last, 0, 0)
        self._last = now

    def window(self) -> tuple[int, float, int]:
        """``(examples, seconds, steps)`` since the previous window, the time until now included
        (call it once the window's steps are done, e.g. after their metrics were read)."""
        self.finish()
        out = (self._window[0], self._window[1], self._window[2])
        self._window = [0, 0.0, 0]
        return out

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0
