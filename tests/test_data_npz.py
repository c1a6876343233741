"""npz inputs are validated at load: each bad file is one ConfigError on ``dataset.path``."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lbt.config import base_config
from lbt.data.registry import get_dataset_size, load_splits
from lbt.data.sources import ArraySource, load_npz_splits
from lbt.data.types import split_sizes
from lbt.errors import ConfigError

N = 20


def _images(n: int = N, shape=(4, 4), dtype=np.uint8) -> np.ndarray:
    return (np.arange(n * int(np.prod(shape))).reshape(n, *shape) % 251).astype(dtype)


def _labels(n: int = N) -> np.ndarray:
    return np.arange(n) % 3


def _savez(**arrays) -> Callable[[Path], None]:
    return lambda p: np.savez(p, **arrays)


def _nan_pixel(p: Path) -> None:
    images = _images(dtype=np.float32)
    images[7, 2, 1] = np.nan
    np.savez(p, images=images, labels=_labels())


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=_images(), labels=_labels())
    return buf.getvalue()


BAD: dict[str, tuple[Callable[[Path], None], str]] = {
    "labels_n_by_1": (_savez(images=_images(), labels=_labels()[:, None]), "must be 1-D"),
    "negative_labels": (_savez(images=_images(), labels=_labels() - 1), "found -1"),
    "float_labels": (_savez(images=_images(), labels=_labels().astype(np.float32)), "integer class ids"),
    "nan_pixel": (_nan_pixel, "1 of 20 images hold non-finite pixels (NaN or inf), first example 7"),
    "inf_pixel": (_savez(images=np.full((N, 4, 4), np.inf, np.float64), labels=_labels()), "non-finite"),
    "empty_npz": (_savez(), "lacks arrays ['images', 'labels']"),
    "missing_labels": (_savez(images=_images()), "lacks arrays ['labels']"),
    "no_examples": (
        _savez(images=np.zeros((0, 4, 4), np.uint8), labels=np.zeros((0,), np.int64)),
        "holds no examples",
    ),
    "not_an_npz": (lambda p: p.write_text("label,pixel\n1,2\n"), "is not a readable .npz"),
    "a_single_npy": (lambda p: p.write_bytes(_npy_bytes(_images())), "a single .npy array"),
    "truncated_zip": (lambda p: p.write_bytes(_npz_bytes()[:-30]), "is not a readable .npz"),
    "images_1d": (_savez(images=np.arange(N, dtype=np.uint8), labels=_labels()), "must be [N, H, W] or [N, H, W, C]"),
    "images_2d": (_savez(images=_images(shape=(16,)), labels=_labels()), "must be [N, H, W] or [N, H, W, C]"),
    "images_5d": (_savez(images=_images(shape=(2, 2, 2, 1)), labels=_labels()), "must be [N, H, W] or [N, H, W, C]"),
    "bool_pixels": (_savez(images=_images() > 3, labels=_labels()), "pixels must be integers or floats"),
    "count_mismatch": (_savez(images=_images(N - 1), labels=_labels()), "19 images but 20 labels"),
    "too_few_examples": (_savez(images=_images(3), labels=_labels(3)), "too few examples (3)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_npz_is_one_config_error_on_dataset_path(case, tmp_path):
    write, phrase = BAD[case]
    path = tmp_path / f"{case}.npz"
    write(path)
    with pytest.raises(ConfigError) as info:
        load_npz_splits(str(path), 0.2, 0)
    assert info.value.field == "dataset.path"
    assert phrase in info.value.message
    assert "\n" not in str(info.value) and str(info.value).startswith("config.dataset.path: ")


def _config(path: str, test_fraction: float = 0.2):
    c = base_config()
    c.dataset.name = "npz"
    c.dataset.path = path
    c.dataset.test_fraction = test_fraction
    return c


@pytest.mark.parametrize(
    "case, phrase",
    [
        ("not_an_npz", "is not a readable .npz"),
        ("missing_labels", "lacks arrays ['labels']"),
        ("labels_n_by_1", "must be 1-D"),
        ("no_examples", "holds no examples"),
        ("too_few_examples", "too few examples"),
    ],
)
def test_get_dataset_size_of_a_bad_npz_is_a_config_error(case, phrase, tmp_path):
    path = tmp_path / f"{case}.npz"
    BAD[case][0](path)
    with pytest.raises(ConfigError) as info:
        get_dataset_size("npz", _config(str(path)))
    assert info.value.field == "dataset.path" and phrase in info.value.message


def test_missing_path_and_missing_file(tmp_path):
    for path, phrase in [("", "needs --config.dataset.path"), (str(tmp_path / "nope.npz"), "no file at")]:
        with pytest.raises(ConfigError, match=phrase) as info:
            load_splits(_config(path))
        assert info.value.field == "dataset.path"
        with pytest.raises(ConfigError, match=phrase):
            get_dataset_size("npz", _config(path))


def test_good_npz_loads(tmp_path):
    path = tmp_path / "good.npz"
    labels = np.array([0, 4, 1, 2] * 5, np.uint8)  # 5 classes (max + 1), uint8 as in mnist10k.npz
    np.savez(path, images=_images(), labels=labels)
    splits = load_splits(_config(str(path), 0.25))
    n_train, n_test = split_sizes(N, 0.25)
    assert (len(splits.train), len(splits.test), splits.num_classes, splits.name) == (n_train, n_test, 5, "npz")
    assert get_dataset_size("npz", _config(str(path), 0.25)) == n_train == 15
    assert isinstance(splits.train, ArraySource) and splits.train.image_shape == (4, 4, 1)
    x, y, ok = splits.test.get_with_mask(np.arange(n_test), None, False)
    assert x.dtype == np.float32 and y.dtype == np.int32 and ok.all()
    assert sorted(np.concatenate([splits.train.labels, y]).tolist()) == sorted(labels.tolist())
    assert np.isfinite(splits.train.images).all() and splits.train.corrupt_count == 0
    # Float pixels (finite) with a channel axis are fine too.
    np.savez(path, images=_images(shape=(4, 4, 2), dtype=np.float64), labels=labels.astype(np.int64))
    assert load_splits(_config(str(path))).train.image_shape == (4, 4, 2)


def test_bad_test_fraction_still_names_its_own_field(tmp_path):
    path = tmp_path / "good.npz"
    np.savez(path, images=_images(), labels=_labels())
    for frac in (0.0, 1.0):
        with pytest.raises(ConfigError) as info:
            load_splits(_config(str(path), frac))
        assert info.value.field == "dataset.test_fraction"
        with pytest.raises(ConfigError) as info:
            get_dataset_size("npz", _config(str(path), frac))
        assert info.value.field == "dataset.test_fraction"
