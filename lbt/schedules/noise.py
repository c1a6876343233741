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
    batch sizes, and the simple noise scale B_simple = tr(Σ) / |G|^2.
"""

from __future__ import annotations


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
