"""SGD noise scale and the gradient noise scale, as pure functions.

References:
  * Smith, Kindermans, Ying & Le 2018, "Don't Decay the Learning Rate, Increase the Batch Size":
    the SGD noise scale g = ε (N / B - 1) / (1 - m), approximated by ε N / (B (1 - m)) for
    ``B << N``. The approximation overstates g by the factor N / (N - B), i.e. by B / (N - B):
    11% at B = N/10, 47% at B = 16,000 of CIFAR-10's N = 50,000. ``noise_scale`` is the
    approximation (what the paper's scaling rules keep constant, and what the Plan matches
    across modes); ``noise_scale_exact`` is the exact form.
  * McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch Training",
    appendix A.1: unbiased estimates of |G|^2 and tr(Σ) from gradient norms measured at two
    batch sizes, and the simple noise scale B_simple = tr(Σ) / |G|^2 (eq. 2.8), smoothed as the
    ratio of separate exponential moving averages of the two estimates (:class:`NoiseScaleEMA`).
    Section 2.2: the optimal LR is ε_opt(B) = ε_max / (1 + B_noise / B), so below B_noise the
    best ε grows about linearly with B and above it saturates at ε_max; B_simple equals B_noise
    when the Hessian is a multiple of the identity. Section 2.3: the steps S and examples E to
    reach a given loss trade off as (S/S_min - 1)(E/E_min - 1) = 1, with the critical batch
    B_crit = E_min / S_min ≈ B_noise (at B = B_noise both are twice their minimum).
  * Smith, Elsen & De 2020, "On the Generalization Benefit of Noise in SGD": the same two regimes
    measured, "noise dominated" (small B, best ε ∝ B) and "curvature dominated" (large B).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

#: Default ``schedule.batch.regime_factor``: B > 1 · B_simple is past B_noise, where (McCandlish
#: et al. 2018, section 2.2) ε_opt(B) = ε_max / (1 + B_noise / B) has reached half of ε_max and
#: (section 2.3) a run needs more than twice the minimum examples, E/E_min = 1 + B / B_noise > 2:
#: the curvature-dominated regime of Smith, Elsen & De 2020. B_simple estimates B_noise.
DEFAULT_REGIME_FACTOR = 1.0


def noise_scale(lr: float, N: int, global_batch: int, momentum: float = 0.0) -> float:
    """g = ε N / (B (1 - m)) (Smith et al. 2018). Dividing ε by f equals multiplying B by f."""
    if global_batch <= 0:
        raise ValueError(f"global_batch must be positive, got {global_batch}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return lr * N / (global_batch * (1.0 - momentum))


def noise_scale_exact(lr: float, N: int, global_batch: int, momentum: float = 0.0) -> float:
    """g = ε (N / B - 1) / (1 - m) (Smith et al. 2018), exact for any B <= N (0 at B = N)."""
    if global_batch <= 0:
        raise ValueError(f"global_batch must be positive, got {global_batch}")
    if global_batch > N:
        raise ValueError(f"global_batch {global_batch} exceeds the N={N} training examples")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return lr * (N / global_batch - 1.0) / (1.0 - momentum)


def noise_scale_overstatement(N: int, global_batch: int) -> float:
    """How much ε N / (B (1 - m)) overstates the exact ε (N / B - 1) / (1 - m), as a fraction:
    B / (N - B) (0.111 at B = N/10; ``inf`` at B = N)."""
    if not 0 < global_batch <= N:
        raise ValueError(f"need 0 < global_batch <= N, got B={global_batch}, N={N}")
    return float("inf") if global_batch == N else global_batch / (N - global_batch)


def lr_for_noise_scale(g: float, N: int, global_batch: int, momentum: float = 0.0) -> float:
    """The ε that gives noise scale ``g`` at batch B and momentum m: ε = g B (1 - m) / N."""
    return g * global_batch * (1.0 - momentum) / N


def batch_for_noise_scale(g: float, lr: float, N: int, momentum: float = 0.0) -> float:
    """The (real-valued) B that gives noise scale ``g``: B = ε N / (g (1 - m))."""
    return lr * N / (g * (1.0 - momentum))


def gradient_stats(grad_sq_small: float, grad_sq_big: float, batch_small: int, batch_big: int) -> tuple[float, float]:
    """McCandlish et al. 2018 (A.1): unbiased ``(|G|^2, tr(Σ))`` from the squared norms of the
    mean gradient measured at two batch sizes ``batch_small < batch_big``::

        |G|^2  ≈ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
        tr(Σ)  ≈ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)
    """
    if not 0 < batch_small < batch_big:
        raise ValueError(f"need 0 < batch_small < batch_big, got {batch_small}, {batch_big}")
    g2 = (batch_big * grad_sq_big - batch_small * grad_sq_small) / (batch_big - batch_small)
    trace = (grad_sq_small - grad_sq_big) / (1.0 / batch_small - 1.0 / batch_big)
    return g2, trace


def b_simple_from_stats(g2: float, trace_sigma: float) -> float:
    """B_simple = tr(Σ) / |G|^2 (McCandlish et al. 2018, eq. 2.8). ``inf`` when |G|^2 <= 0."""
    if g2 <= 0.0:
        return float("inf")
    return trace_sigma / g2


def b_simple(grad_sq_small: float, grad_sq_big: float, batch_small: int, batch_big: int) -> float:
    """B_simple from gradient norms at two batch sizes (McCandlish et al. 2018)."""
    return b_simple_from_stats(*gradient_stats(grad_sq_small, grad_sq_big, batch_small, batch_big))


def microbatch_stats(
    grad_sq_micro: float, grad_sq_device: float, grad_sq_big: float, k: int, global_batch: int
) -> tuple[float, float]:
    """Unbiased ``(|G|^2, tr(Σ))`` from the microbatches inside each device, for layouts where the
    devices' gradients are not independent (cross-replica ghost BN, G > b) or there is one device.

    McCandlish et al.'s two-batch estimator (2018, A.1) applied within a device: its k microbatch
    gradients g_i (each its share of a ghost group) are independent, with mean G and some
    covariance C, so ``grad_sq_micro`` = mean |g_i|^2 has expectation |G|^2 + tr(C) and
    ``grad_sq_device`` = |mean_i g_i|^2 (averaged over devices) |G|^2 + tr(C)/k::

        |G|^2 ≈ (k Q - S) / (k - 1)
        tr(Σ) ≈ B (|G_B|^2 - |G|^2)          (E |G_B|^2 = |G|^2 + tr(Σ)/B)

    with S = ``grad_sq_micro``, Q = ``grad_sq_device``, |G_B|^2 = ``grad_sq_big``. C is not needed,
    so the shares' correlation inside a ghost group does not bias the result; Σ is per example
    (for ghost groups of G examples, G times a group gradient's covariance). On one device
    (Q = |G_B|^2) this is :func:`gradient_stats` with b = B / k. Needs k >= 2.
    """
    if k < 2:
        raise ValueError(f"need k >= 2 microbatches, got {k}")
    g2 = (k * grad_sq_device - grad_sq_micro) / (k - 1)
    return g2, global_batch * (grad_sq_big - g2)


# ---------------------------------------------------------------------------------------------
# Smoothing and reading the measurement


@dataclasses.dataclass(frozen=True)
class NoiseScaleEMA:
    """Bias-corrected EMAs of the unbiased per-step estimates of |G|^2 and tr(Σ).

    McCandlish et al. 2018 (A.1) smooth the two estimates separately and take the ratio of the
    averages (the ratio of two noisy unbiased estimates is biased; the ratio of their averages
    much less so). ``g2`` and ``trace`` are the raw EMA accumulators ``m <- beta m + (1 - beta) x``
    (started at 0), ``count`` the steps absorbed, ``weight`` the total weight of what they hold,
    ``w <- beta w + (1 - beta)`` = ``1 - beta**count`` for a constant beta; the bias-corrected values
    divide by it (Kingma & Ba 2015, section 3), which stays right if a resumed run continues with
    another beta. Non-finite estimates are skipped. Immutable and JSON-exact (:meth:`to_dict`),
    so a checkpoint restores it bit for bit.
    """

    beta: float
    g2: float = 0.0
    trace: float = 0.0
    count: int = 0
    weight: float = 0.0

    def update(self, g2: float, trace: float) -> NoiseScaleEMA:
        """The EMA after one more step's estimates (unchanged if either is not finite)."""
        if not (math.isfinite(g2) and math.isfinite(trace)):
            return self
        b = self.beta
        return dataclasses.replace(
            self,
            g2=b * self.g2 + (1.0 - b) * g2,
            trace=b * self.trace + (1.0 - b) * trace,
            count=self.count + 1,
            weight=b * self.weight + (1.0 - b),
        )

    def _correction(self) -> float:
        return self.weight

    @property
    def g2_hat(self) -> float | None:
        """Bias-corrected EMA of |G|^2 (None before the first step)."""
        return self.g2 / self._correction() if self.count else None

    @property
    def trace_hat(self) -> float | None:
        """Bias-corrected EMA of tr(Σ) (None before the first step)."""
        return self.trace / self._correction() if self.count else None

    @property
    def b_simple(self) -> float | None:
        """Smoothed B_simple = EMA(tr Σ) / EMA(|G|^2); ``inf`` while EMA(|G|^2) <= 0 (noise swamps
        the signal), None before the first step. The bias corrections cancel in the ratio."""
        return b_simple_from_stats(self.g2, self.trace) if self.count else None

    def to_dict(self) -> dict[str, Any]:
        return {"beta": self.beta, "g2": self.g2, "trace": self.trace, "count": self.count, "weight": self.weight}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, beta: float) -> NoiseScaleEMA:
        """The EMA stored by :meth:`to_dict` (a fresh one for None), continued with ``beta``
        (a checkpoint without ``weight`` was written with the constant ``d["beta"]``)."""
        if not d:
            return cls(beta)
        count = int(d["count"])
        weight = float(d["weight"]) if "weight" in d else 1.0 - float(d["beta"]) ** count
        return cls(float(beta), float(d["g2"]), float(d["trace"]), count, weight)


def ratio_estimate(traces: Sequence[float], g2s: Sequence[float]) -> tuple[float, float]:
    """B_simple over a window of steps as the ratio of the means, mean(tr Σ) / mean(|G|^2), and its
    standard error by the delta method, treating the steps as independent::

        se = sqrt(var(t_i - R g_i) / n) / |mean(g)|

    (``inf`` for both if mean(|G|^2) <= 0; the error is ``inf`` with fewer than 2 steps).
    """
    t = [float(x) for x in traces]
    g = [float(x) for x in g2s]
    n = len(t)
    if n == 0 or n != len(g):
        raise ValueError(f"need equally many (>= 1) traces and |G|^2 values, got {len(t)} and {len(g)}")
    mg, mt = sum(g) / n, sum(t) / n
    if mg <= 0.0:
        return math.inf, math.inf
    r = mt / mg
    if n < 2:
        return r, math.inf
    resid = [ti - r * gi for ti, gi in zip(t, g)]
    mean_res = sum(resid) / n
    var = sum((x - mean_res) ** 2 for x in resid) / (n - 1)
    return r, math.sqrt(var / n) / abs(mg)


def curvature_dominated(global_batch: int, b_simple_value: float | None, factor: float) -> bool:
    """True when B > ``factor`` · B_simple (``factor`` 0 = never): past the critical batch
    (McCandlish et al. 2018, section 2.3), the curvature-dominated regime of Smith, Elsen & De 2020."""
    if factor <= 0 or b_simple_value is None or not math.isfinite(b_simple_value) or b_simple_value <= 0:
        return False
    return global_batch > factor * b_simple_value
