"""The training state and its initialisation (a pure function of the seed)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from lbt.parallel.mesh import replicated


@flax.struct.dataclass
class TrainState:
    """Replicated training state. ``step`` counts optimizer steps applied."""

    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array


def initial_state(model: Any, tx: optax.GradientTransformation, image_shape: tuple[int, ...], seed: int) -> TrainState:
    """The initial params, BN statistics and optimizer state (a pure function of the seed)."""
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    return TrainState(params=params, batch_stats=stats, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))


def init_state_fn(
    model: Any, tx: optax.GradientTransformation, mesh: Mesh, image_shape: tuple[int, ...], seed: int
) -> Callable[[], TrainState]:
    """A jitted ``() -> TrainState``: :func:`initial_state` replicated over ``mesh``. Keep it and
    call it again (a rollback to the start) to reuse its compiled program."""
    return jax.jit(
        functools.partial(initial_state, model, tx, tuple(image_shape), seed), out_shardings=replicated(mesh)
    )


def init_state(
    model: Any, tx: optax.GradientTransformation, mesh: Mesh, image_shape: tuple[int, ...], seed: int
) -> TrainState:
    """:func:`initial_state`, replicated over ``mesh`` (the same on every process)."""
    return init_state_fn(model, tx, mesh, image_shape, seed)()


def abstract_state(
    model: Any, tx: optax.GradientTransformation, mesh: Mesh, image_shape: tuple[int, ...], seed: int
) -> Any:
    """Shapes, dtypes and (replicated) shardings of the state, for restoring checkpoints."""
    shapes = jax.eval_shape(lambda: initial_state(model, tx, image_shape, seed))
    rep = replicated(mesh)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), shapes)
