"""Metrics sinks: ``metrics.jsonl`` (one JSON object per line) and TensorBoard (tensorboardX).

Only the primary process (``jax.process_index() == 0``) writes; the others get a no-op writer.
"""

from __future__ import annotations

import json
import math
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
