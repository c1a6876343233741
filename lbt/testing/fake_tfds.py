"""Fake tfds ``cifar10`` and ``imagenet2012`` written as ``array_record``: offline tests and benchmarks.

Each builder has the *same name, version and features* as tfds' own (``cifar10``: ``id`` Text,
``image`` Image(32, 32, 3) holding PNG bytes, ``label`` ClassLabel(10); ``imagenet2012``:
``file_name`` Text, ``image`` Image(None, None, 3) holding JPEG bytes, ``label``
ClassLabel(1000)), so :func:`lbt.data.registry.load_splits` opens it through the real
``tfds.data_source`` path. No TensorFlow and no network are needed: the images are handed to tfds
already encoded.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np

TEST_KEY_OFFSET = 10_000
"""Test example ``k`` has key (and pixel seed key) ``TEST_KEY_OFFSET + k``; train example ``k`` has ``k``."""

CORRUPT_BYTES = b"this is not a PNG"


def synthetic_pixels(key: int, shape: Sequence[int]) -> np.ndarray:
    """Deterministic uniform uint8 pixels of ``shape`` for example ``key``."""
    return np.random.default_rng(1000 + key).integers(0, 256, size=tuple(shape), dtype=np.uint8)


def encode_image(array: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    """``array`` (uint8, HxW or HxWxC) encoded by PIL as ``fmt`` (e.g. "PNG", "JPEG"; ``options``
    such as ``quality=90`` go to PIL's writer)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **options)
    return buf.getvalue()


def natural_pixels(key: int, shape: Sequence[int]) -> np.ndarray:
    """Deterministic photo-like uint8 pixels ``[H, W, 3]`` for example ``key``: smooth colour
    gradients at several scales (bicubically upsampled Gaussian fields), fine texture and a little
    luminance noise. As a JPEG at quality 90 a 500x375 image is about 90 KB (ImageNet's JPEGs
    average about 110 KB), which uniform noise (:func:`synthetic_pixels`) would not be: its
    entropy-coded data, the bulk of the decode cost, is several times larger."""
    from PIL import Image

    h, w = int(shape[0]), int(shape[1])
    rng = np.random.default_rng(2000 + key)
    out = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((4, 90.0), (16, 40.0), (64, 25.0), (160, 25.0)):
        cw = max(2, min(cells, w))
        ch = max(2, min(cells * h // max(w, 1), h))
        field = rng.normal(0.0, 1.0, size=(ch, cw, 3)).astype(np.float32)
        for c in range(3):
            up = Image.fromarray(field[..., c], mode="F").resize((w, h), Image.BICUBIC)
            out[..., c] += amp * np.asarray(up)
    out += rng.normal(0.0, 8.0, size=(h, w, 1)).astype(np.float32)
    out += 128.0 + rng.uniform(-40.0, 40.0, size=3).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


IMAGENET_SHAPE = (375, 500)
"""ImageNet's most common image size (height, width)."""


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


def write_fake_imagenet2012(
    data_dir: str | Path,
    n_train: int,
    n_validation: int,
    shape: Sequence[int] | Callable[[int], Sequence[int]] | None = None,
    quality: int = 90,
    corrupt_train_keys: Collection[int] = (),
) -> str:
    """Write a fake ``imagenet2012`` (version 5.1.0) ``array_record`` dataset into ``data_dir``.

    Example ``k`` of a split has ``file_name`` ``f"{split}_{k}.JPEG"``, label ``(7 * k) % 1000``
    and the JPEG (``quality``) of ``natural_pixels(key, shape)``, with ``key = k`` for train and
    ``TEST_KEY_OFFSET + k`` for validation. ``shape`` is ``(height, width)``, default
    :data:`IMAGENET_SHAPE` (500x375); a callable ``shape(key)`` gives per-example sizes. Train
    examples with ``k`` in ``corrupt_train_keys`` hold :data:`CORRUPT_BYTES` instead. Needs
    ``tensorflow_datasets`` and ``array_record``; returns ``str(data_dir)``.
    """
    import tensorflow_datasets as tfds

    corrupt = frozenset(corrupt_train_keys)
    shape_of = shape if callable(shape) else (lambda key: tuple(shape or IMAGENET_SHAPE))

    class Imagenet2012(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "imagenet2012"
        VERSION = tfds.core.Version("5.1.0")
        code_path = None  # as for Cifar10 above

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "file_name": tfds.features.Text(),
                        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                        "label": tfds.features.ClassLabel(num_classes=1000),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples("train", n_train),
                "validation": self._generate_examples("validation", n_validation),
            }

        def _generate_examples(self, split, n):
            for k in range(n):
                key = k if split == "train" else TEST_KEY_OFFSET + k
                if split == "train" and k in corrupt:
                    data = CORRUPT_BYTES
                else:
                    h, w = shape_of(key)[:2]
                    data = encode_image(natural_pixels(key, (h, w, 3)), "JPEG", quality=quality)
                yield key, {"file_name": f"{split}_{k}.JPEG", "image": io.BytesIO(data), "label": (7 * k) % 1000}

    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        Imagenet2012(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    finally:
        absl_logger.setLevel(level)
    return str(data_dir)
