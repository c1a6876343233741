"""In-memory sources: scikit-learn digits (the offline default) and any .npz of images/labels.

A source gives random access by dataset index. ``get(indices, positions, train)`` returns
preprocessed float32 images ``[n, H, W, C]`` and int32 labels. ``positions`` are the global
example positions; sources that augment derive their randomness from (seed, position) so the
result is exact on resume.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from lbt.data.registry import DATASETS, split_sizes
from lbt.errors import ConfigError


@dataclasses.dataclass
class ArraySource:
    images: np.ndarray  # float32 [N, H, W, C], normalised
    labels: np.ndarray  # int32 [N]
    num_classes: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def get(self, indices: np.ndarray, positions: np.ndarray | None = None, train: bool = True):
        return self.images[indices], self.labels[indices]


@dataclasses.dataclass
class Splits:
    train: ArraySource
    test: ArraySource
    name: str

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def _holdout(images: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int, num_classes: int, name: str) -> Splits:
    """Deterministic shuffled train/test split, normalised with train-split statistics."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("dataset.test_fraction", f"must be in (0, 1), got {test_fraction}")
    images = images.astype(np.float32)
    if images.ndim == 3:
        images = images[..., None]
    n_train, _ = split_sizes(len(labels), test_fraction)
    perm = np.random.default_rng(seed).permutation(len(labels))
    tr, te = perm[:n_train], perm[n_train:]
    mean = images[tr].mean(axis=(0, 1, 2), keepdims=True)
    std = images[tr].std(axis=(0, 1, 2), keepdims=True) + 1e-6
    images = (images - mean) / std
    labels = labels.astype(np.int32)
    return Splits(
        ArraySource(np.ascontiguousarray(images[tr]), labels[tr], num_classes),
        ArraySource(np.ascontiguousarray(images[te]), labels[te], num_classes),
        name,
    )


def load_digits_splits(test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """scikit-learn's 1,797 8x8 digits (ships with the package, no download)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.reshape(-1, 8, 8, 1)
    return _holdout(images, d.target, test_fraction, seed, 10, "digits")


def load_npz_splits(path: str, test_fraction: float, seed: int) -> Splits:
    """Any .npz with ``images`` [N,H,W] or [N,H,W,C] and integer ``labels`` [N]."""
    if not path:
        raise ConfigError("dataset.path", "the npz dataset needs --config.dataset.path=FILE.npz")
    p = Path(path)
    if not p.is_file():
        raise ConfigError("dataset.path", f"no file at {path!r}; point it at a .npz with `images` and `labels`")
    with np.load(p) as f:
        missing = {"images", "labels"} - set(f.files)
        if missing:
            raise ConfigError("dataset.path", f"{path} lacks arrays {sorted(missing)}; it needs `images` and `labels`")
        images, labels = f["images"], f["labels"]
    if images.shape[0] != labels.shape[0]:
        raise ConfigError("dataset.path", f"{path}: {images.shape[0]} images but {labels.shape[0]} labels")
    num_classes = int(labels.max()) + 1
    return _holdout(images, labels, test_fraction, seed, num_classes, "npz")


def load_splits(config) -> Splits:
    """The train and test sources of ``config.dataset``."""
    name = config.dataset.name
    if name not in DATASETS:
        raise ConfigError("dataset.name", f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "digits":
        return load_digits_splits(config.dataset.test_fraction, config.dataset.split_seed)
    if name == "npz":
        return load_npz_splits(config.dataset.path, config.dataset.test_fraction, config.dataset.split_seed)
    from lbt.data import tfds_sources  # optional heavy path

    return tfds_sources.load_splits(config)
