"""Model registry. Every model takes a ``norm`` layer factory (ghost BN in training)."""

from __future__ import annotations

import importlib
from typing import Any, Callable

import flax.linen as nn

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
