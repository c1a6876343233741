"""Images travel as uint8 and are normalised on the device, bit-identical to the host float32 path."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lbt.config import base_config
from lbt.data.preprocess import CIFAR_MEAN, CIFAR_STD, Preprocessor, apply_lut, normalize
from lbt.data.sources import ArraySource, _holdout, load_digits_splits
from lbt.parallel.accumulate import normalize_on_device
from lbt.train.faults import Faults
from lbt.train.loop import Trainer


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, np.float32).tobytes()


def test_digits_are_uint8_on_the_wire_and_normalise_bit_identically():
    splits = load_digits_splits()
    src = splits.train
    assert src.get_raw(np.arange(4))[0].dtype == np.uint8 and src.input_lut.shape == (1, 256)
    idx = np.arange(len(src))
    raw, labels, ok = src.get_raw(idx)
    host, labels2 = src.get(idx)
    assert ok.all() and np.array_equal(labels, labels2)
    # the pre-uint8 formula: float32 pixels normalised by the train split's mean and std
    from sklearn.datasets import load_digits

    d = load_digits()
    ref = _holdout(d.images.reshape(-1, 8, 8, 1) + 0.5, d.target, 0.2, 0, 10, "x")  # not integer: float wire
    assert ref.train.input_lut is None and ref.train.get_raw(idx[:2])[0].dtype == np.float32
    x = d.images.reshape(-1, 8, 8, 1).astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(d.target))[: len(src)]
    mean = x[perm].mean(axis=(0, 1, 2), keepdims=True)
    std = x[perm].std(axis=(0, 1, 2), keepdims=True) + 1e-6
    assert _bits(host) == _bits(((x - mean) / std)[perm])
    device = jax.jit(lambda r: normalize_on_device(r, src.input_lut))(raw)
    assert _bits(np.asarray(device)) == _bits(host)


def test_cifar_lut_equals_the_per_image_normalisation():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    pre = Preprocessor("cifar")
    host = np.stack([normalize(im, CIFAR_MEAN, CIFAR_STD) for im in images])
    assert _bits(apply_lut(images, pre.lut)) == _bits(host)
    device = jax.jit(lambda r: normalize_on_device(r, pre.lut))(images)
    assert _bits(np.asarray(device)) == _bits(host)
    for position in range(8):  # augmented: the uint8 crop normalised == the old float32 train path
        assert _bits(apply_lut(pre.train_u8(images[position], 3, position), pre.lut)) == _bits(
            pre.train(images[position], 3, position)
        )


def test_float_sources_keep_the_float32_wire():
    src = ArraySource(np.full((4, 2, 2, 1), 0.25, np.float32), np.zeros(4, np.int32), 2)
    assert src.input_lut is None and src.get_raw(np.arange(4))[0].dtype == np.float32
    assert np.asarray(normalize_on_device(src.get_raw(np.arange(4))[0], None)).dtype == np.float32


@pytest.mark.slow
def test_uint8_wire_and_prefetch_train_bit_identically(tmp_path):
    """The whole run: uint8 wire + device normalisation + prefetch == float32 wire, no prefetch."""
    c = base_config()
    c.model.width = 8
    c.schedule.epochs = 2.0
    c.schedule.lr.milestones = (1.0,)
    c.train.progress = False
    c.train.eval_every_epochs = 1.0
    uint8 = Trainer(c, tmp_path / "u8").run()
    assert uint8["train_compilations"] == 2
    c.train.device_prefetch = 0
    never = Faults(nan_at=10**12)  # fault injection needs the float32 wire; this one never fires
    float32 = Trainer(c, tmp_path / "f32", faults=never).run()
    assert uint8["final_state_sha256"] == float32["final_state_sha256"]
    assert uint8["final_eval_accuracy"] == float32["final_eval_accuracy"]
