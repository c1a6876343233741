"""Microbatch accumulation with one gradient reduction per optimizer step (docs/design.md,
semantics 2-3).

Two jitted ``shard_map`` programs with fixed shapes serve every batch size:

* ``accum(state, acc, images, labels)``: each device adds the float32 gradient of its b = M / D
  examples to its own accumulator. No collective, except the small channel-sum psums of
  cross-replica ghost BN when G > b.
* ``final(state, acc, images, labels, k, lr, momentum)``: the last microbatch's gradient, added
  to the accumulator as ``accum`` does, then the one reduction of the step (gradients,
  BN-statistic increments and loss), division by k, the optax update. It returns the new state,
  fresh zero accumulators (reusing the donated buffers) and the step's metrics.

An optimizer step with global batch B = k * M runs ``accum`` k - 1 times and ``final`` once (one
program at k = 1), so growing the batch compiles nothing new. Because the reduction sits in the
same program as the last backward pass, XLA may overlap the two on GPU/TPU.

The reduction's layout is ``reduction``: ``"flat"`` ravels everything into one float32 vector and
does one ``pmean`` (XLA:CPU performs one rendezvous per operand, so one operand is cheapest there);
``"per_leaf"`` does a ``pmean`` per leaf, so XLA can start each gradient's all-reduce as soon as it
exists and combine them into one variadic all-reduce of the same bytes (the usual choice on
accelerators). Both give identical results. ``apply`` (the reduction and update alone) is kept as
the reference the tests compare ``final`` with.

The gradient noise scale (McCandlish et al. 2018, appendix A.1) is measured for free with
``measure_noise=True``: before the reduction each device takes |A_d|^2, the squared norm of its
accumulated gradient over its k b examples (:func:`_sq_norm`), and that scalar rides in the step's
one reduction as one more element (``flat``) or one more scalar operand (``per_leaf``). ``final``
returns ``grad_sq_device`` (the mean over devices of |A_d|^2 / k^2) and ``grad_sq_big`` (the
squared norm of the all-reduced gradient over B) in its metrics; with ``microbatch_norms`` (the
``microbatches`` estimator) each ``accum`` call also adds |g_i|^2 of its microbatch (b examples)
to a per-device scalar, returned as ``grad_sq_micro``. With ``noise_every`` = n > 1 the norms are
taken only on the steps that complete a multiple of n (a ``lax.cond``; the others add 0 and
return ``noise_measured`` false), with the same reduction. The loop turns them into |G|^2, tr(Σ)
and B_simple (``lbt.train.noise_scale``, ``lbt.schedules.noise``).

Input images arrive as the source's wire dtype (uint8 for image data) and are normalised on the
device by a lookup table (``input_lut``, float32 ``[C, 256]``), which reproduces the host
normalisation bit for bit. Non-finite steps are skipped on device (parameters and optimizer
state are left unchanged) and reported in the metrics, for the loop's policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from lbt.parallel.mesh import DATA, data_sharded, replicated
from lbt.train.losses import cross_entropy
from lbt.train.state import TrainState

REDUCTIONS = ("flat", "per_leaf")


@dataclasses.dataclass
class TrainPrograms:
    """The jitted programs of one run, built for a fixed mesh and microbatch."""

    accum: Callable
    final: Callable
    apply: Callable
    evaluate: Callable
    zeros_acc: Callable
    zeros_eval: Callable


def normalize_on_device(images: jax.Array, lut: np.ndarray | None) -> jax.Array:
    """Float32 images from the wire dtype: ``lut[c, v]`` for uint8 pixel v of channel c (the host's
    normalisation, precomputed per value, so the result is bit-identical); float32 as is."""
    if lut is None:
        return images.astype(jnp.float32)
    table = jnp.asarray(lut, jnp.float32)
    channels = jnp.arange(table.shape[0], dtype=jnp.int32)
    return table[channels, images.astype(jnp.int32)]


def _pmean(tree: Any, reduction: str) -> Any:
    """The mean over the data axis: one flat vector, or one pmean per leaf."""
    if reduction == "flat":
        flat, unravel = ravel_pytree(tree)
        return unravel(jax.lax.pmean(flat, DATA))
    return jax.tree.map(lambda a: jax.lax.pmean(a, DATA), tree)


#: Leaves with at most this many elements are concatenated before their squared norm is taken.
SMALL_LEAF = 4096


def _sq_norm(tree: Any) -> jax.Array:
    """Σ of the squares of every element of ``tree``, in float32, local (no collective).

    Each large leaf gets its own reduction (XLA fuses it with the code that produced the leaf);
    the small leaves (biases, BN scales) are concatenated first, so that they cost one reduction,
    not one each. Measured on the digits CNN's ``final`` at k = 1 (docs/benchmarks.md): one
    concatenation of every leaf costs a copy of the gradient, one reduction per leaf costs ~20
    more XLA ops, which on XLA:CPU's simulated devices is what a small program's time is made of.
    """
    leaves = [a.astype(jnp.float32).ravel() for a in jax.tree.leaves(tree)]
    big = [a for a in leaves if a.size > SMALL_LEAF]
    small = [a for a in leaves if a.size <= SMALL_LEAF]
    parts = [jnp.vdot(a, a) for a in big]
    if small:
        flat = jnp.concatenate(small)
        parts.append(jnp.vdot(flat, flat))
    return sum(parts, jnp.zeros((), jnp.float32))


def _step_bodies(
    model: Any,
    tx: optax.GradientTransformation,
    num_classes: int,
    mu: float,
    label_smoothing: float,
    reduction: str,
    lut: np.ndarray | None,
    measure_noise: bool = False,
    microbatch_norms: bool = False,
    noise_every: int = 1,
):
    """The per-device bodies of ``accum``, ``final`` and ``apply`` (run inside ``shard_map``)."""

    def measured(state: TrainState) -> jax.Array:
        """Whether this step takes the norms: the step it completes, ``state.step + 1`` (the step
        number in metrics.jsonl), is a multiple of ``noise_every``, as TensorBoard's points are of
        ``train.log_every_steps``."""
        return (state.step + 1) % noise_every == 0

    def measured_sq_norm(state: TrainState, grads) -> jax.Array:
        """:func:`_sq_norm` of ``grads`` on a measured step, else 0 without reading them
        (``lax.cond`` runs one branch)."""
        if noise_every == 1:
            return _sq_norm(grads)
        zero = lambda g: jnp.zeros((), jnp.float32)  # noqa: E731
        return jax.lax.cond(measured(state), _sq_norm, zero, grads)

    def local_grads(state: TrainState, images, labels):
        x = normalize_on_device(images, lut)

        def loss_fn(params):
            logits, new_vars = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
            )
            loss = cross_entropy(logits, labels, num_classes, label_smoothing).mean()
            return loss, new_vars["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        # EMA increment of this microbatch: new = mu * r0 + (1 - mu) * s  ->  (1 - mu) * s
        inc = jax.tree.map(lambda n, r: n - mu * r, new_stats, state.batch_stats)
        return loss, grads, inc

    def add_microbatch(state: TrainState, acc, images, labels, norms: bool):
        loss, grads, inc = local_grads(state, images, labels)
        f32 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float32)[None], t)  # noqa: E731
        grads, inc = f32(grads), f32(inc)
        out = {
            "grads": jax.tree.map(jnp.add, acc["grads"], grads),
            # sequential EMA over the k microbatches: A <- mu * A + (1 - mu) * s_i
            "stats": jax.tree.map(lambda a, i: mu * a + i, acc["stats"], inc),
            "loss": acc["loss"] + loss.astype(jnp.float32)[None],
        }
        if "sq" in acc:  # |g_i|^2 of this device's microbatch gradient (only in accum: final's is not needed)
            out["sq"] = acc["sq"] + measured_sq_norm(state, grads)[None] if norms else acc["sq"]
        return out

    def accum_body(state: TrainState, acc, images, labels):
        return add_microbatch(state, acc, images, labels, microbatch_norms)

    def apply_body(state: TrainState, acc, k, lr, momentum):
        local = jax.tree.map(lambda a: a[0], acc)
        if measure_noise:  # |A_d|^2: this device's gradient sum over its k microbatches (k b examples)
            local["sqd"] = measured_sq_norm(state, local["grads"])
        mean = _pmean(local, reduction)  # the one reduction of the step
        kf = k.astype(jnp.float32)
        grads = jax.tree.map(lambda g: g / kf, mean["grads"])
        loss = mean["loss"] / kf
        grad_norm = optax.tree.norm(grads)
        noise = {}
        if measure_noise:  # McCandlish et al. 2018, A.1: squared norms at k b = B / D and at B
            noise = {"grad_sq_device": mean["sqd"] / (kf * kf), "grad_sq_big": jnp.square(grad_norm)}
            if noise_every > 1:  # the steps whose norms were taken (the others report 0)
                noise["noise_measured"] = measured(state)
            if microbatch_norms:  # the mean |g_i|^2 of the first k - 1 microbatches (b examples)
                noise["grad_sq_micro"] = mean["sq"] / jnp.maximum(kf - 1.0, 1.0)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        opt_state = state.opt_state
        opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
        opt_state.hyperparams["momentum"] = jnp.asarray(momentum, jnp.float32)
        updates, new_opt = tx.update(grads, opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        decay = jnp.power(jnp.float32(mu), kf)
        new_stats = jax.tree.map(lambda r, a: decay * r + a, state.batch_stats, mean["stats"])
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = TrainState(
            params=keep(new_params, state.params),
            batch_stats=keep(new_stats, state.batch_stats),
            opt_state=keep(new_opt, opt_state),
            step=state.step + finite.astype(state.step.dtype),
        )
        metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, **noise}
        return new_state, jax.tree.map(jnp.zeros_like, acc), metrics

    def final_body(state: TrainState, acc, images, labels, k, lr, momentum):
        # the last microbatch's |g_k|^2 is not added: the first k - 1 give the same expectation
        return apply_body(state, add_microbatch(state, acc, images, labels, False), k, lr, momentum)

    return accum_body, final_body, apply_body


def build_programs(
    model: Any,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    num_classes: int,
    bn_momentum: float,
    label_smoothing: float = 0.0,
    reduction: str = "flat",
    input_lut: np.ndarray | None = None,
    measure_noise: bool = False,
    microbatch_norms: bool = False,
    noise_every: int = 1,
) -> TrainPrograms:
    """Build ``accum``, ``final``, ``apply``, ``evaluate`` and the zero factories for ``model``
    (``measure_noise``: the squared norms of the gradient noise scale in ``final``'s metrics)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    n_dev = mesh.devices.size
    rep, shard = replicated(mesh), data_sharded(mesh)
    bodies = _step_bodies(
        model,
        tx,
        num_classes,
        float(bn_momentum),
        label_smoothing,
        reduction,
        input_lut,
        measure_noise,
        measure_noise and microbatch_norms,
        int(noise_every),
    )
    accum_body, final_body, apply_body = bodies
    batch = (P(DATA), P(DATA))  # images, labels
    step_out = (P(), P(DATA), P())  # state, zeroed accumulators, metrics
    accum = jax.jit(
        jax.shard_map(accum_body, mesh=mesh, in_specs=(P(), P(DATA), *batch), out_specs=P(DATA), check_vma=False),
        donate_argnums=(1,),
    )
    final = jax.jit(
        jax.shard_map(
            final_body, mesh=mesh, in_specs=(P(), P(DATA), *batch, P(), P(), P()), out_specs=step_out, check_vma=False
        ),
        donate_argnums=(0, 1),
    )
    apply = jax.jit(
        jax.shard_map(
            apply_body, mesh=mesh, in_specs=(P(), P(DATA), P(), P(), P()), out_specs=step_out, check_vma=False
        ),
        donate_argnums=(0, 1),
    )

    def eval_fn(state: TrainState, images, labels, mask, totals):
        x = normalize_on_device(images, input_lut)
        logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
        loss = cross_entropy(logits, labels, num_classes)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        batch_sums = {"correct": (correct * mask).sum(), "loss": (loss * mask).sum(), "count": mask.sum()}
        return jax.tree.map(jnp.add, totals, batch_sums)

    # The sums stay on the device; the loop reads them once per eval.
    evaluate = jax.jit(eval_fn, in_shardings=(rep, shard, shard, shard, rep), out_shardings=rep, donate_argnums=(4,))
    zero = lambda: jnp.zeros((), jnp.float32)  # noqa: E731
    zeros_eval = jax.jit(lambda: {"correct": zero(), "loss": zero(), "count": zero()}, out_shardings=rep)

    def make_zeros(state: TrainState):
        z = lambda t: jax.tree.map(lambda a: jnp.zeros((n_dev,) + a.shape, jnp.float32), t)  # noqa: E731
        acc = {"grads": z(state.params), "stats": z(state.batch_stats), "loss": jnp.zeros((n_dev,), jnp.float32)}
        if measure_noise and microbatch_norms:
            acc["sq"] = jnp.zeros((n_dev,), jnp.float32)
        return acc

    # The initial accumulators carry accum's output sharding, or accum would compile twice.
    zeros_acc = jax.jit(make_zeros, out_shardings=shard)
    return TrainPrograms(accum, final, apply, evaluate, zeros_acc, zeros_eval)
