"""Dataset registry: each entry knows its N (train size), classes and image shape.

``get_dataset_size`` answers without loading the data, so ``lbt plan`` works offline.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_train: int  # N; 0 = read from the data (npz)
    num_test: int
    num_classes: int
    image_shape: tuple[int, int, int]
    source: str  # "sklearn" | "npz" | "tfds"


DIGITS_TOTAL = 1797

DATASETS: dict[str, DatasetInfo] = {
    # scikit-learn's 1,797 8x8 digits, split 80/20 deterministically (test_fraction=0.2).
    "digits": DatasetInfo("digits", 1438, 359, 10, (8, 8, 1), "sklearn"),
    # Any .npz of `images` and `labels` (e.g. 10k MNIST): sizes are read from the file.
    "npz": DatasetInfo("npz", 0, 0, 0, (0, 0, 0), "npz"),
    "cifar10": DatasetInfo("cifar10", 50_000, 10_000, 10, (32, 32, 3), "tfds"),
    "imagenet2012": DatasetInfo("imagenet2012", 1_281_167, 50_000, 1000, (224, 224, 3), "tfds"),
}


def split_sizes(total: int, test_fraction: float) -> tuple[int, int]:
    """(train, test) sizes of a deterministic holdout split."""
    n_test = int(round(total * test_fraction))
    return total - n_test, n_test


def get_dataset_size(name: str, config=None) -> int:
    """N, the number of training examples, without loading the data (npz reads only the header)."""
    from lbt.errors import ConfigError

    if name not in DATASETS:
        raise ConfigError("dataset.name", f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    info = DATASETS[name]
    if name == "digits":
        frac = 0.2 if config is None else float(config.dataset.test_fraction)
        return split_sizes(DIGITS_TOTAL, frac)[0]
    if name == "npz":
        if config is None or not config.dataset.path:
            raise ConfigError("dataset.path", "the npz dataset needs --config.dataset.path=FILE.npz")
        with np.load(config.dataset.path, mmap_mode="r") as f:
            total = int(f["labels"].shape[0])
        return split_sizes(total, float(config.dataset.test_fraction))[0]
    return info.num_train
