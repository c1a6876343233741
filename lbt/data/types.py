"""The data types every part of :mod:`lbt.data` shares: dataset entries, sources and splits.

This module imports nothing else from :mod:`lbt.data`, so the loaders (``sources``,
``tfds_sources``) and the registry can all import it without an import cycle.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """One dataset of the registry: sizes, classes, image shape and how to load it.

    ``train_split``, ``eval_split`` and ``preprocess`` (the :class:`lbt.data.preprocess.Preprocessor`
    kind) are used by tfds datasets only.
    """

    name: str
    num_train: int  # N; 0 = read from the data (npz)
    num_test: int
    num_classes: int
    image_shape: tuple[int, int, int]
    source: str  # "sklearn" | "npz" | "tfds"
    train_split: str = ""
    eval_split: str = ""
    preprocess: str = ""  # "cifar" | "imagenet"


def split_sizes(total: int, test_fraction: float) -> tuple[int, int]:
    """(train, test) sizes of a deterministic holdout split."""
    n_test = int(round(total * test_fraction))
    return total - n_test, n_test


@runtime_checkable
class Source(Protocol):
    """Random access to a split by dataset index.

    ``positions`` are the global example positions (= examples seen before each); a source that
    augments derives its randomness from (seed, position), so a batch is exact on resume. Without
    ``positions`` the indices serve as positions.
    """

    num_classes: int

    def __len__(self) -> int: ...

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(H, W, C)`` of the images :meth:`get` returns."""
        ...

    @property
    def corrupt_count(self) -> int:
        """Distinct corrupt examples met and skipped so far (0 for in-memory arrays)."""
        ...

    def get(
        self, indices: np.ndarray, positions: np.ndarray | None = None, train: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """float32 images ``[n, H, W, C]`` and int32 labels ``[n]`` of ``indices``."""
        ...

    def get_with_mask(
        self, indices: np.ndarray, positions: np.ndarray | None = None, train: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`get` plus a bool ``[n]`` mask, False where a corrupt example was replaced."""
        ...

    @property
    def input_lut(self) -> np.ndarray | None:
        """float32 ``[C, 256]``: ``input_lut[c, v]`` is the normalised value of uint8 pixel ``v`` of
        channel ``c``, exactly as :meth:`get` computes it; None if :meth:`get_raw` gives float32
        images that are already normalised."""
        ...

    def get_raw(
        self, indices: np.ndarray, positions: np.ndarray | None = None, train: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`get_with_mask` with the images in the wire dtype: uint8 before normalisation when
        :attr:`input_lut` is set (``get`` = ``input_lut`` applied to these), else float32."""
        ...


@dataclasses.dataclass
class Splits:
    """The train and test (eval) sources of one dataset."""

    train: Source
    test: Source
    name: str

    @property
    def num_classes(self) -> int:
        return self.train.num_classes
