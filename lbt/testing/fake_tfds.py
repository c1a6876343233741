"""A fake tfds ``cifar10`` written as ``array_record``: offline tests and benchmarks.

The builder has the *same name, version and features* as tfds' ``cifar10`` (``id`` Text,
``image`` Image(32, 32, 3) holding PNG bytes, ``label`` ClassLabel(10)), so
:func:`lbt.data.registry.load_splits` opens it through the real ``tfds.data_source`` path.
No TensorFlow and no network are needed: the images are handed to tfds already encoded.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

TEST_KEY_OFFSET = 10_000
"""Test example ``k`` has key (and pixel seed key) ``TEST_KEY_OFFSET + k``; train example ``k`` has ``k``."""

CORRUPT_BYTES = b"this is not a PNG"


def synthetic_pixels(key: int, shape: Sequence[int]) -> np.ndarray:
    """Deterministic uniform uint8 pixels of ``shape`` for example ``key``."""
    return np.random.default_rng(1000 + key).integers(0, 256, size=tuple(shape), dtype=np.uint8)


def encode_image(array: np.ndarray, fmt: str = "PNG") -> bytes:
    """``array`` (uint8, HxW or HxWxC) encoded by PIL as ``fmt`` (e.g. "PNG", "JPEG")."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def write_fake_cifar10(
    data_dir: str | Path,
    n_train: int,
    n_test: int,
    corrupt_train_keys: Collection[int] = (),
) -> str:
    """Write a fake ``cifar10`` (version 3.0.2) ``array_record`` dataset into ``data_dir``.

    Split ``train`` has ``n_train`` and ``test`` has ``n_test`` examples. Example ``k`` of a split
    has ``id`` ``f"{split}_{k}"``, label ``k % 10`` and the PNG of
    ``synthetic_pixels(key, (32, 32, 3))``, with ``key = k`` for train and
    ``TEST_KEY_OFFSET + k`` for test. Train examples with ``k`` in ``corrupt_train_keys`` hold
    :data:`CORRUPT_BYTES` (not a PNG) instead. Needs ``tensorflow_datasets`` and ``array_record``.
    Returns ``str(data_dir)``, for ``config.dataset.data_dir``.
    """
    import tensorflow_datasets as tfds

    corrupt = frozenset(corrupt_train_keys)

    class Cifar10(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "cifar10"
        VERSION = tfds.core.Version("3.0.2")
        # No code path, hence no checksums file to look up. (tfds derives it from __module__;
        # for a builder in a package it touches `importlib_resources`, which tfds only
        # requires on Python < 3.9.)
        code_path = None

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "id": tfds.features.Text(),
                        "image": tfds.features.Image(shape=(32, 32, 3)),
                        "label": tfds.features.ClassLabel(num_classes=10),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples("train", n_train),
                "test": self._generate_examples("test", n_test),
            }

        def _generate_examples(self, split, n):
            for k in range(n):
                key = k if split == "train" else TEST_KEY_OFFSET + k
                bad = split == "train" and k in corrupt
                data = CORRUPT_BYTES if bad else encode_image(synthetic_pixels(key, (32, 32, 3)), "PNG")
                yield key, {"id": f"{split}_{k}", "image": io.BytesIO(data), "label": k % 10}

    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # tfds logs every step of download_and_prepare
    try:
        Cifar10(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    finally:
        absl_logger.setLevel(level)
    return str(data_dir)
