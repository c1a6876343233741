"""Metrics sinks: ``metrics.jsonl`` (one JSON object per line) and TensorBoard (tensorboardX).

Only the primary process (``jax.process_index() == 0``) writes; the others get a no-op writer.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep it visible
    return v


class MetricsWriter:
    """Appends records to ``workdir/metrics.jsonl`` and scalars to ``workdir/tb``."""

    def __init__(self, workdir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._f = None
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", buffering=1)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(Path(workdir) / "tb"), flush_secs=10)

    def write(self, record: dict[str, Any], tb_step: int | None = None, prefix: str = "") -> None:
        if not self.enabled:
            return
        rec = {k: _clean(v) for k, v in record.items()}
        self._f.write(json.dumps(rec) + "\n")
        if self._tb is not None and tb_step is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("examples_seen",):
                    self._tb.add_scalar(f"{prefix}{k}", v, tb_step)

    def truncate_after(self, examples_seen: int) -> None:
        """Drop train/eval records past ``examples_seen`` (a resume or rollback regenerates them).

        Event records (``"event"`` key) are kept.
        """
        if not self.enabled:
            return
        self._f.close()
        records = read_jsonl(self.path) if self.path.exists() else []
        keep = [r for r in records if "event" in r or r.get("examples_seen", 0) <= examples_seen]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        tmp.replace(self.path)
        self._f = open(self.path, "a", buffering=1)

    def flush(self) -> None:
        if self._f:
            self._f.flush()
        if self._tb:
            self._tb.flush()

    def close(self) -> None:
        if self._f:
            self._f.close()
            self._f = None
        if self._tb:
            self._tb.close()
            self._tb = None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class PendingMetrics:
    """Train records whose device metrics are not read yet (the loop runs ahead of the host).

    :meth:`add` queues a record with its device metrics and bounds async dispatch: it waits for
    the step before last, so at most ``lookahead`` steps are in flight. :meth:`flush` reads every
    pending step, writes the records and returns the first non-finite one (later ones are
    dropped: a rollback or stop follows).
    """

    def __init__(self, writer: MetricsWriter, progress: Any = None, lookahead: int = 1):
        self.writer = writer
        self.progress = progress
        self.lookahead = lookahead
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

    def flush(self, extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Write the pending records (with ``extra`` fields); return the first non-finite one."""
        from lbt.parallel.mesh import host_value

        bad = None
        for rec, dev in self._items:
            rec.update(loss=float(host_value(dev["loss"])), grad_norm=float(host_value(dev["grad_norm"])))
            rec["skipped_nonfinite"] = not bool(host_value(dev["finite"]))
            rec.update(extra or {})
            self.writer.write(rec, tb_step=rec["examples_seen"], prefix="train/")
            if rec["skipped_nonfinite"]:
                bad = rec
                break
        if self._items and self.progress is not None:
            last = bad or self._items[-1][0]
            self.progress.set_postfix(loss=f"{last['loss']:.4f}", B=last["global_batch"], lr=f"{last['lr']:.4g}")
        self._items.clear()
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

    def step(self, examples: int, compiled: bool) -> None:
        now = time.perf_counter()
        if not compiled:
            self.seconds += now - self._last
            self.examples += examples
        self._last = now

    def skip(self) -> None:
        self._last = time.perf_counter()

    def finish(self) -> None:
        """Count the time until now (the last steps' device work, read by the final flush)."""
        self.seconds += time.perf_counter() - self._last
        self._last = time.perf_counter()

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0
