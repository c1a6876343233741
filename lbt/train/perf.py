"""How busy the accelerators are: model FLOPs per example, peak FLOP/s per device, MFU; profiling.

Model FLOPs come from XLA's cost analysis of the lowered ``accum`` program (forward and backward
of one microbatch on one device), divided by the per-device microbatch b. MFU (model FLOPs
utilisation, as in PaLM, Chowdhery et al. 2022, appendix B) is

    MFU = flops_per_example * examples_per_s / (peak_flops_per_device * devices).

Peaks are the vendors' dense figures per chip (no sparsity). On CPU there is no meaningful peak
and MFU is omitted; ``train.peak_flops`` overrides the table for any device.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax

from lbt import storage

log = logging.getLogger("lbt")

#: Dense peak FLOP/s per chip: (bfloat16, float32 as the default matmul precision runs it).
#: TPU float32 matmuls run as bf16 passes by default, so they get the bf16 peak; NVIDIA float32
#: matmuls run on TF32 tensor cores by default (dense TF32 peak). Sources: Google Cloud TPU
#: system architecture pages (v4, v5e, v5p, v6e); NVIDIA A100 / H100 / H200 datasheets (SXM).
PEAK_FLOPS: dict[str, tuple[float, float]] = {
    "TPU v4": (275e12, 275e12),
    "TPU v5 lite": (197e12, 197e12),
    "TPU v5e": (197e12, 197e12),
    "TPU v5p": (459e12, 459e12),
    "TPU v5": (459e12, 459e12),
    "TPU v6 lite": (918e12, 918e12),
    "TPU v6e": (918e12, 918e12),
    "NVIDIA A100": (312e12, 156e12),
    "NVIDIA H100": (989e12, 495e12),
    "NVIDIA H200": (989e12, 495e12),
    "NVIDIA B200": (2250e12, 1100e12),
}


def peak_flops(device_kind: str, dtype: str, override: float = 0.0) -> float | None:
    """Peak FLOP/s of one device of ``device_kind`` for ``dtype`` ("bfloat16" | "float32"), or None."""
    if override > 0:
        return float(override)
    for prefix in sorted(PEAK_FLOPS, key=len, reverse=True):  # the most specific name first
        if device_kind.startswith(prefix):
            bf16, f32 = PEAK_FLOPS[prefix]
            return bf16 if dtype == "bfloat16" else f32
    return None


def flops_per_example(accum: Any, args: tuple, per_device_examples: int) -> float | None:
    """Model FLOPs of one training example: XLA's cost analysis of ``accum`` lowered on ``args``
    (no compile), per device, divided by the per-device microbatch. None if XLA gives no figure."""
    try:
        cost = accum.lower(*args).cost_analysis()
    except Exception as e:  # cost analysis is best effort; never fail a run for it
        log.warning("no cost analysis of the accum program (%s); flops and MFU are not reported", e)
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    if not flops or flops <= 0:
        return None
    return float(flops) / per_device_examples


def mfu(flops_example: float | None, examples_per_s: float, peak: float | None, devices: int) -> float | None:
    """Model FLOPs utilisation of ``devices`` devices of peak ``peak`` (None where unknown)."""
    if flops_example is None or peak is None or examples_per_s <= 0:
        return None
    return flops_example * examples_per_s / (peak * devices)


class Profiler:
    """``train.profile_steps = (start, count)``: a ``jax.profiler`` trace of optimizer steps
    start .. start + count - 1 (1-based), written to ``WORKDIR/profile`` (TensorBoard's profile
    plugin or Perfetto read it)."""

    def __init__(self, workdir: str | Path, profile_steps: tuple, enabled: bool = True):
        steps = tuple(int(v) for v in profile_steps)
        self.start, self.count = (steps + (0, 0))[:2] if steps else (0, 0)
        self.directory = storage.as_path(workdir) / "profile"  # gs://: written by jax.profiler itself
        self.enabled = enabled and self.count > 0
        self.active = False

    def before_step(self, step: int) -> None:
        """Called before optimizer step ``step`` (1-based) is dispatched."""
        if self.enabled and not self.active and step == self.start:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory))
            self.active = True

    def after_step(self, step: int, outputs: Any) -> None:
        """Called after step ``step`` was dispatched; ends the trace after the last profiled step."""
        if self.active and step >= self.start + self.count - 1:
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            self.enabled = False
            log.info("wrote a profile of %d step(s) to %s", self.count, self.directory)
