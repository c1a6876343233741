"""The tfds + grain input path, offline: tiny array_record datasets written in the test.

The cifar10 fixtures come from :func:`lbt.testing.fake_tfds.write_fake_cifar10` (shared with
``benchmarks/input_pipeline.py``), the imagenet2012 one from a builder here; both builders have
the *same name, version and features* as the real tfds builders (Image features holding PNG /
JPEG bytes), so ``lbt.data.registry.load_splits`` opens them through the real
``tfds.data_source`` path.
No TensorFlow is needed: the images are passed to tfds as already-encoded bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")

from lbt.config import base_config  # noqa: E402
from lbt.data import preprocess as pp  # noqa: E402
from lbt.data import tfds_sources  # noqa: E402
from lbt.data.order import example_indices  # noqa: E402
from lbt.data.pipeline import TrainStream, eval_batches  # noqa: E402
from lbt.data.registry import DATASETS, load_splits  # noqa: E402
from lbt.data.types import Source  # noqa: E402
from lbt.errors import ConfigError  # noqa: E402
from lbt.testing.fake_tfds import synthetic_pixels, write_fake_cifar10, write_fake_imagenet2012  # noqa: E402

N_TRAIN, N_TEST = 37, 13  # the fake cifar10 (lbt.testing.fake_tfds); train example 5 is corrupt in corrupt_dir


class _TensorImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Already-decoded uint8 arrays (Tensor feature) instead of encoded images."""

    name = "lbt_test_tensor_images"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(9)}

    def _generate_examples(self, n):
        for k in range(n):
            yield k, {"image": synthetic_pixels(k, (32, 32, 3)), "label": k % 10}


def _build(builder_cls, data_dir) -> str:
    builder_cls(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return str(data_dir)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_fake_cifar10(tmp_path_factory.mktemp("cifar"), N_TRAIN, N_TEST)


@pytest.fixture(scope="module")
def corrupt_dir(tmp_path_factory):
    return write_fake_cifar10(tmp_path_factory.mktemp("cifar_corrupt"), N_TRAIN, N_TEST, corrupt_train_keys=(5,))


def _config(data_dir, name="cifar10", **dataset):
    c = base_config()
    c.seed = 3
    c.dataset.name = name
    c.dataset.data_dir = str(data_dir)
    for k, v in dataset.items():
        c.dataset[k] = v
    return c


@pytest.fixture(scope="module")
def cifar(cifar_dir):
    return load_splits(_config(cifar_dir))


# ---------------------------------------------------------------------------------------------
# (1) order: resume at examples_seen = p, 1 and 2 processes


def test_real_tfds_source_shapes(cifar):
    assert isinstance(cifar.train, tfds_sources.TfdsSource)
    assert (len(cifar.train), len(cifar.test), cifar.num_classes) == (N_TRAIN, N_TEST, 10)
    assert cifar.train.image_shape == (32, 32, 3)
    images, labels = cifar.train.get(np.array([0, 5]), np.array([0, 1]), True)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.float32
    assert labels.dtype == np.int32 and set(labels.tolist()) <= set(range(10))
    assert "tensorflow" not in sys.modules  # the whole read path runs without TensorFlow


def test_resume_and_process_slices_match_uninterrupted(cifar):
    M = 8
    full = TrainStream(cifar.train, seed=3, microbatch=M)
    it = full.iterate(0, prefetch=2)
    uninterrupted = [next(it) for _ in range(11)]  # 88 examples: past two epoch boundaries (37, 74)
    it.close()
    assert [p for p, _ in uninterrupted] == list(range(0, 88, M))

    p = 32  # the microbatch at 32 holds positions 32..39 and crosses the epoch boundary at 37
    resumed = TrainStream(cifar.train, seed=3, microbatch=M)  # a fresh stream: no iterator state
    it = resumed.iterate(p, prefetch=2)
    for (pos_a, (xa, ya)), (pos_b, (xb, yb)) in zip(uninterrupted[p // M :], it):
        assert pos_a == pos_b
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    it.close()

    # 2 processes: the two process slices, concatenated, are the 1-process microbatch.
    halves = [TrainStream(cifar.train, seed=3, microbatch=M, process_index=i, process_count=2) for i in range(2)]
    for pos, (x, y) in uninterrupted[3:6]:
        parts = [h.local_microbatch(pos) for h in halves]
        assert parts[0][0].shape == (M // 2, 32, 32, 3)
        np.testing.assert_array_equal(np.concatenate([q[0] for q in parts]), x)
        np.testing.assert_array_equal(np.concatenate([q[1] for q in parts]), y)

    # The labels follow the pure order function of lbt.data.order.
    idx = example_indices(3, N_TRAIN, 32, M)
    _, want = cifar.train.get(idx, np.arange(32, 40), False)
    np.testing.assert_array_equal(uninterrupted[4][1][1], want)


def test_registry_entry_drives_the_tfds_loader(cifar_dir, cifar):
    info = DATASETS["cifar10"]
    assert (info.source, info.train_split, info.eval_split, info.preprocess) == ("tfds", "train", "test", "cifar")
    assert DATASETS["imagenet2012"].eval_split == "validation" and DATASETS["imagenet2012"].preprocess == "imagenet"
    # The loader takes the splits from the entry it is given, not from a table of its own.
    swapped = tfds_sources.load_tfds_splits(_config(cifar_dir), dataclasses.replace(info, eval_split="train"))
    assert (swapped.name, len(swapped.train), len(swapped.test)) == ("cifar10", N_TRAIN, N_TRAIN)
    # Both splits implement the Source protocol, masks included.
    for src in (cifar.train, cifar.test):
        assert isinstance(src, Source) and src.corrupt_count == 0
    x, y, ok = cifar.test.get_with_mask(np.arange(3), None, False)
    assert x.shape == (3, 32, 32, 3) and ok.tolist() == [True] * 3
    np.testing.assert_array_equal(y, cifar.test.get(np.arange(3), None, False)[1])


# ---------------------------------------------------------------------------------------------
# (2) augmentation is a function of (seed, position)


def test_augmentation_is_function_of_seed_and_position(cifar_dir, cifar):
    src = cifar.train
    a, _ = src.get(np.array([4, 4]), np.array([100, 100]), True)
    np.testing.assert_array_equal(a[0], a[1])
    other = load_splits(_config(cifar_dir)).train  # a new source (e.g. after a restart)
    b, _ = other.get(np.array([4]), np.array([100]), True)
    np.testing.assert_array_equal(a[0], b[0])

    positions = np.arange(200, 210)
    many, _ = src.get(np.full(10, 4), positions, True)
    distinct = {hashlib.sha1(m.tobytes()).hexdigest() for m in many}
    assert len(distinct) >= 8  # 162 crop/flip combinations: ten positions give (almost) all distinct
    eval_img, _ = src.get(np.array([4]), None, False)
    # A different run seed changes the crops at the same positions.
    reseeded = load_splits(_config(cifar_dir)).train
    reseeded.seed = 4
    c, _ = reseeded.get(np.full(10, 4), positions, True)
    assert sum(not np.array_equal(x, y) for x, y in zip(many, c)) >= 8
    # augment=False: train equals eval.
    plain = load_splits(_config(cifar_dir, augment=False)).train
    d, _ = plain.get(np.array([4]), np.array([200]), True)
    np.testing.assert_array_equal(d[0], eval_img[0])


# ---------------------------------------------------------------------------------------------
# (3) eval covers the split exactly once, last partial batch padded and masked


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_split_once_with_padded_last_batch(cifar, process_count):
    test = cifar.test
    images, labels = test.get(np.arange(N_TEST), None, False)
    key = lambda img: hashlib.sha1(img.tobytes()).hexdigest()  # noqa: E731
    index_of = {key(img): i for i, img in enumerate(images)}
    assert len(index_of) == N_TEST
    right = {0, 3, 4, 9, 12}  # the fake model is right exactly on these dataset indices

    def model(batch):
        idx = [index_of[key(img)] for img in batch]
        return np.array([labels[i] if i in right else (labels[i] + 1) % 10 for i in idx]), idx

    M = 8
    correct = count = 0.0
    seen: list[int] = []
    batches = list(zip(*[list(eval_batches(test, M, i, process_count)) for i in range(process_count)]))
    assert len(batches) == 2  # 8 + 5 (padded to 8)
    for parts in batches:
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        mask = np.concatenate([p[2] for p in parts])
        assert x.shape == (M, 32, 32, 3)
        pred, idx = model(x)
        correct += float(((pred == y) * mask).sum())
        count += float(mask.sum())
        seen += [i for i, m in zip(idx, mask) if m]
    assert count == N_TEST
    assert sorted(seen) == list(range(N_TEST))
    assert correct / count == len(right) / N_TEST
    assert batches[-1][-1][2][-1] == 0.0  # the padding is masked


# ---------------------------------------------------------------------------------------------
# (4) corrupt examples


def _find_corrupt(src) -> int:
    bad = []
    for i in range(len(src)):
        try:
            src.get(np.array([i]), None, False)
        except tfds_sources.CorruptExampleError as e:
            assert e.index == i
            bad.append(i)
    assert len(bad) == 1
    return bad[0]


def test_corrupt_example_error_names_the_example(corrupt_dir):
    src = load_splits(_config(corrupt_dir)).train
    bad = _find_corrupt(src)
    with pytest.raises(tfds_sources.CorruptExampleError) as info:
        src.get(np.array([0, bad, 1]), np.array([0, 1, 2]), True)
    msg = str(info.value)
    assert f"cifar10/train[{bad}]" in msg and "on_corrupt=skip" in msg
    # ... and it surfaces through the prefetching train stream.
    pos = int(np.flatnonzero(example_indices(3, N_TRAIN, 0, N_TRAIN) == bad)[0])
    it = TrainStream(src, seed=3, microbatch=8).iterate(pos // 8 * 8)
    with pytest.raises(tfds_sources.CorruptExampleError, match=rf"index {bad}\b"):
        next(it)


def test_corrupt_example_skip_replaces_by_next_good_and_counts(corrupt_dir):
    src = load_splits(_config(corrupt_dir, on_corrupt="skip")).train
    bad = _find_corrupt(load_splits(_config(corrupt_dir)).train)
    assert src.corrupt_count == 0
    x, y = src.get(np.array([bad, bad]), np.array([7, 7]), True)
    want_x, want_y = src.get(np.array([(bad + 1) % N_TRAIN]), np.array([7]), True)
    np.testing.assert_array_equal(x[0], want_x[0])
    np.testing.assert_array_equal(x[1], want_x[0])
    assert y[0] == want_y[0]
    assert src.corrupt_count == 1 and src.corrupt_ids == {bad}
    # A whole epoch through the stream works and still counts the one corrupt example once.
    stream = TrainStream(src, seed=3, microbatch=8)
    for pos in range(0, 40, 8):
        stream.local_microbatch(pos)
    assert src.corrupt_count == 1


def test_corrupt_example_skip_is_masked_out_of_eval(corrupt_dir):
    src = load_splits(_config(corrupt_dir, on_corrupt="skip")).train  # the corrupt split, as eval data
    bad = _find_corrupt(load_splits(_config(corrupt_dir)).train)
    masks = np.concatenate([m for _, _, m in eval_batches(src, 8)])
    assert masks.shape == (40,) and masks.sum() == N_TRAIN - 1  # counted nowhere, not twice
    assert masks[bad] == 0.0 and masks[N_TRAIN:].sum() == 0.0
    assert src.corrupt_count == 1


def _train_config(data_dir, **dataset):
    c = _config(data_dir, **dataset)
    c.model.width = 4
    c.model.ghost_batch_size = 2
    c.train.global_microbatch = 16
    c.train.progress = False
    c.train.eval_every_epochs = 0.0
    c.train.log_every_steps = 1
    s = c.schedule
    s.epochs = 2.0
    s.global_batch = 16
    s.lr.name = "constant"
    s.lr.milestones = ()
    s.batch.mode = "decay_lr"
    return c


@pytest.mark.slow
def test_trainer_runs_mock_cifar10_and_reports_skipped(corrupt_dir, tmp_path):
    """The Trainer on the real tfds path: 2 epochs of a mock cifar10 with one corrupt example."""
    from lbt.data.registry import train_size
    from lbt.train.loop import Trainer
    from lbt.train.metrics import read_jsonl

    config = _train_config(corrupt_dir, on_corrupt="skip")
    assert train_size(config) == N_TRAIN  # the prepared split's size, read from its metadata
    summary = Trainer(config, tmp_path).run()
    assert summary["examples_seen"] >= 2 * N_TRAIN and summary["devices"] == 8
    assert summary["corrupt_examples_skipped"] == {"train": 1, "test": 0}
    records = read_jsonl(tmp_path / "metrics.jsonl")
    train = [r for r in records if "split" not in r and "event" not in r]
    assert train[-1]["corrupt_skipped"] == 1 and np.isfinite(train[-1]["loss"])
    evals = [r for r in records if r.get("split") == "test"]
    assert evals[-1]["count"] == N_TEST and evals[-1]["corrupt_skipped"] == 0
    assert 0.0 <= summary["final_eval_accuracy"] <= 1.0


# ---------------------------------------------------------------------------------------------
# (5) missing / unprepared data


def test_missing_data_dir_raises_config_error_with_hint(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_splits(_config(tmp_path / "nope"))
    assert info.value.field == "dataset.data_dir"
    msg = str(info.value)
    assert "tfds build cifar10 --file_format=array_record" in msg and "lbt[prepare]" in msg

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="not prepared") as info:
        load_splits(_config(empty))
    assert info.value.field == "dataset.data_dir"

    with pytest.raises(ConfigError) as info:
        load_splits(_config(empty, name="imagenet2012"))
    msg = str(info.value)
    assert "ILSVRC2012_img_train.tar" in msg and "downloads/manual" in msg and "lbt[prepare]" in msg


# ---------------------------------------------------------------------------------------------
# Decoded arrays (Tensor features) and ImageNet JPEGs of varying size


def test_decoded_array_records(tmp_path):
    data_dir = _build(_TensorImages, tmp_path)
    ds = tfds_sources.open_data_source("lbt_test_tensor_images", "train", data_dir)
    src = tfds_sources.TfdsSource(
        ds, name="lbt_test_tensor_images", split="train", preprocessor=pp.Preprocessor("cifar"), seed=0
    )
    x, y = src.get(np.arange(9), None, False)
    want = {hashlib.sha1(pp.cifar_eval(synthetic_pixels(k, (32, 32, 3))).tobytes()).hexdigest() for k in range(9)}
    assert {hashlib.sha1(img.tobytes()).hexdigest() for img in x} == want


def test_imagenet_path(tmp_path):
    # six train and five validation JPEGs of different sizes (the loader resizes each one)
    data_dir = write_fake_imagenet2012(tmp_path, 6, 5, shape=lambda key: (30 + 3 * (key % 6), 44 - 2 * (key % 6)))
    splits = load_splits(_config(data_dir, name="imagenet2012", image_size=24))
    assert (len(splits.train), len(splits.test), splits.num_classes) == (6, 5, 1000)
    assert splits.train.image_shape == (24, 24, 3)
    x, y = splits.train.get(np.arange(6), np.arange(6), True)
    assert x.shape == (6, 24, 24, 3) and x.dtype == np.float32
    assert sorted(y.tolist()) == [0, 7, 14, 21, 28, 35]
    x2, _ = splits.train.get(np.arange(6), np.arange(6), True)  # threaded grain read, same pixels
    np.testing.assert_array_equal(x, x2)
    e, _ = splits.test.get(np.arange(5), None, False)
    assert e.shape == (5, 24, 24, 3)
    c = _config(data_dir, name="imagenet2012")
    c.model.name = "inception_resnet_v2"
    assert tfds_sources.image_size_for(c) == 299
    c.model.name = "resnet50"
    assert tfds_sources.image_size_for(c) == 224


# ---------------------------------------------------------------------------------------------
# (6) preprocessing, exact against a hand computation


class _FixedRng:
    """Stands in for a Generator: fixed crop offsets and flip draw."""

    def __init__(self, offsets, flip_draw):
        self.offsets, self.flip_draw = offsets, flip_draw

    def integers(self, lo, hi, size=None):
        assert (lo, hi, size) == (0, 9, 2)
        return np.array(self.offsets)

    def random(self):
        return self.flip_draw


def _norm(value, c, mean, std):
    return (value / 255.0 - float(mean[c])) / float(std[c])


def test_cifar_preprocessing_exact():
    img = (np.arange(32 * 32 * 3).reshape(32, 32, 3) % 251).astype(np.uint8)
    ev = pp.cifar_eval(img)
    assert ev.shape == (32, 32, 3) and ev.dtype == np.float32
    for r, col, c in [(0, 0, 0), (5, 17, 1), (31, 31, 2)]:
        assert ev[r, col, c] == pytest.approx(_norm(int(img[r, col, c]), c, pp.CIFAR_MEAN, pp.CIFAR_STD), abs=1e-6)
    assert ev[0, 0, 0] == pytest.approx((0 / 255 - 0.4914) / 0.2470, abs=1e-6)

    # Crop at (dy, dx) = (0, 8) of the zero-padded image, then flipped (draw 0.2 < 0.5).
    tr = pp.cifar_train(img, _FixedRng([0, 8], 0.2))
    assert tr.shape == (32, 32, 3) and tr.dtype == np.float32
    # Output column j after the flip is crop column 31 - j = padded column 39 - j = image column 35 - j.
    for c in range(3):
        # rows 0..3 come from the zero padding: black normalised.
        assert tr[0, 10, c] == pytest.approx(_norm(0, c, pp.CIFAR_MEAN, pp.CIFAR_STD), abs=1e-6)
        # columns 0..3 come from the right padding (image column 35 - j >= 32).
        assert tr[10, 2, c] == pytest.approx(_norm(0, c, pp.CIFAR_MEAN, pp.CIFAR_STD), abs=1e-6)
        # row 4 + r, column j -> image[r, 35 - j]
        assert tr[4 + 7, 9, c] == pytest.approx(_norm(int(img[7, 26, c]), c, pp.CIFAR_MEAN, pp.CIFAR_STD), abs=1e-6)
    # No flip (draw 0.7), crop at (4, 4) = the original image.
    np.testing.assert_array_equal(pp.cifar_train(img, _FixedRng([4, 4], 0.7)), ev)


def test_imagenet_preprocessing_shapes_and_values():
    rgb = np.array([200, 100, 50], np.uint8)
    flat = np.broadcast_to(rgb, (40, 60, 3)).copy()
    want = [(rgb[c] / 255.0 - pp.IMAGENET_MEAN[c]) / pp.IMAGENET_STD[c] for c in range(3)]
    for out in (pp.imagenet_eval(flat, 16), pp.imagenet_train(flat, pp.example_rng(0, 5), 16)):
        assert out.shape == (16, 16, 3) and out.dtype == np.float32
        np.testing.assert_allclose(out.reshape(-1, 3), np.broadcast_to(want, (256, 3)), atol=1e-5)
    assert pp.eval_resize_size(224) == 256 and pp.eval_resize_size(299) == 342
    gray = np.zeros((20, 30), np.uint8)
    assert pp.imagenet_eval(gray, 8).shape == (8, 8, 3)
    for pos in range(50):
        top, left, h, w = pp.sample_crop(90, 120, pp.example_rng(1, pos))
        assert 0 <= top and top + h <= 90 and 0 <= left and left + w <= 120
        assert 0.08 * 90 * 120 * 0.9 <= h * w <= 90 * 120
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # Same (seed, position) -> the same crop; the generator depends on both.
    a = pp.imagenet_train(synthetic_pixels(0, (40, 60, 3)), pp.example_rng(2, 9), 16)
    np.testing.assert_array_equal(a, pp.imagenet_train(synthetic_pixels(0, (40, 60, 3)), pp.example_rng(2, 9), 16))
    assert not np.array_equal(a, pp.imagenet_train(synthetic_pixels(0, (40, 60, 3)), pp.example_rng(2, 10), 16))
