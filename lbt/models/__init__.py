"""Model registry. Every model takes a ``norm`` layer factory (ghost BN in training)."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lbt.parallel.ghost_bn import GhostBatchNorm, ghost_layout
from lbt.parallel.mesh import DATA

# name -> (module, factory function name)
MODELS: dict[str, tuple[str, str]] = {
    "cnn": ("lbt.models.cnn", "SmallCNN"),
    "resnet18": ("lbt.models.resnet", "ResNet18"),
    "resnet50": ("lbt.models.resnet", "ResNet50"),
    "wrn16_4": ("lbt.models.wrn", "WRN16_4"),
    "inception_resnet_v2": ("lbt.models.inception_resnet_v2", "InceptionResNetV2"),
}


def create_model(config, num_classes: int, norm: Callable[..., nn.Module], dtype: Any) -> nn.Module:
    """Instantiate ``config.model.name`` with the given norm layer factory and compute dtype."""
    module_name, attr = MODELS[config.model.name]
    cls = getattr(importlib.import_module(module_name), attr)
    kwargs: dict[str, Any] = dict(num_classes=num_classes, norm=norm, dtype=dtype)
    if config.model.name == "cnn":
        kwargs["width"] = config.model.width
    else:
        kwargs["zero_init_last_bn"] = config.model.zero_init_last_bn
    return cls(**kwargs)


def compute_dtype(config) -> Any:
    """The compute dtype of ``config.model.dtype`` (params and accumulators stay float32)."""
    return jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32


def build_model(config, num_classes: int, num_devices: int) -> nn.Module:
    """``config``'s model with ghost BN wired to the ``data`` axis of ``num_devices`` devices."""
    ghost, _ = ghost_layout(config.model.ghost_batch_size, config.train.global_microbatch, num_devices)
    norm = functools.partial(
        GhostBatchNorm,
        ghost_size=ghost,
        axis_name=DATA,
        num_devices=num_devices,
        momentum=config.model.bn_momentum,
        epsilon=config.model.bn_epsilon,
        dtype=compute_dtype(config),
    )
    return create_model(config, num_classes, norm, compute_dtype(config))
