"""The data order as a pure function of (seed, epoch, position), on the in-memory digits source.

Resume at examples_seen = p yields exactly the uninterrupted stream (across epoch boundaries),
and the per-process slices of 1, 2 and 4 processes concatenate to the same global microbatch.
"""

from __future__ import annotations

import numpy as np
import pytest

from lbt.data.order import epoch_permutation, example_indices, process_slice
from lbt.data.pipeline import TrainStream, eval_batches
from lbt.data.registry import DATASETS, get_dataset_size, train_size
from lbt.data.sources import load_digits_splits
from lbt.errors import ConfigError


@pytest.fixture(scope="module")
def digits():
    return load_digits_splits()


def test_order_is_a_fresh_permutation_each_epoch():
    n = 101
    p0, p1 = epoch_permutation(5, 0, n), epoch_permutation(5, 1, n)
    assert sorted(p0.tolist()) == sorted(p1.tolist()) == list(range(n))
    assert not np.array_equal(p0, p1)
    assert not np.array_equal(p0, epoch_permutation(6, 0, n))  # the seed matters
    idx = example_indices(5, n, 0, 3 * n)
    np.testing.assert_array_equal(idx[:n], p0)
    np.testing.assert_array_equal(idx[n : 2 * n], p1)
    # Position p alone determines the example, whatever window it is asked in.
    for p in (0, 57, n - 1, n, 2 * n + 3):
        assert example_indices(5, n, p, 1)[0] == idx[p]
        assert example_indices(5, n, p - min(p, 7), 20)[min(p, 7)] == idx[p]


def test_resume_across_epoch_boundary_matches_uninterrupted(digits):
    n, M = len(digits.train), 64
    assert n == 1438 == get_dataset_size("digits")
    stream = TrainStream(digits.train, seed=1, microbatch=M)
    it = stream.iterate(0, prefetch=3)
    full = [next(it) for _ in range(26)]  # 1664 examples: crosses the epoch boundary at 1438
    it.close()
    p = 20 * M  # resume at 1280; the microbatch at 1408 spans the epoch boundary
    it = TrainStream(digits.train, seed=1, microbatch=M).iterate(p, prefetch=3)
    for (pa, (xa, ya)), (pb, (xb, yb)) in zip(full[20:], it):
        assert pa == pb
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    it.close()
    # The boundary microbatch holds the last 30 of epoch 0 and the first 34 of epoch 1.
    boundary = full[22][1][1]
    want = np.concatenate([epoch_permutation(1, 0, n)[-30:], epoch_permutation(1, 1, n)[:34]])
    np.testing.assert_array_equal(boundary, digits.train.labels[want])


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_concatenate_to_global_microbatch(digits, process_count):
    M = 64
    one = TrainStream(digits.train, seed=1, microbatch=M)
    parts = [
        TrainStream(digits.train, 1, M, process_index=i, process_count=process_count) for i in range(process_count)
    ]
    for pos in (0, 1408, 1472, 5 * 1438 - 3):  # incl. microbatches across epoch boundaries
        x, y = one.local_microbatch(pos)
        slices = [s.local_microbatch(pos) for s in parts]
        assert all(sx.shape[0] == M // process_count for sx, _ in slices)
        np.testing.assert_array_equal(np.concatenate([sx for sx, _ in slices]), x)
        np.testing.assert_array_equal(np.concatenate([sy for _, sy in slices]), y)
    assert [process_slice(M, i, process_count) for i in range(process_count)][-1][1] == M


def test_eval_counts_every_example_once(digits):
    test = digits.test
    n = len(test)
    assert n == 359 == DATASETS["digits"].num_test
    for P in (1, 2):
        rows = [list(eval_batches(test, 64, i, P)) for i in range(P)]
        masks = np.concatenate([np.concatenate([b[2] for b in batch]) for batch in zip(*rows)])
        ys = np.concatenate([np.concatenate([b[1] for b in batch]) for batch in zip(*rows)])
        assert masks.shape == (6 * 64,) and masks.sum() == n  # 5 full batches + 39 padded to 64
        np.testing.assert_array_equal(ys[:n], test.labels)  # in order, each once
        # A classifier right only on the last, partial batch scores exactly its share of the split.
        right = (np.arange(len(ys)) >= 5 * 64).astype(np.float32)
        assert (right * masks).sum() / masks.sum() == (n - 5 * 64) / n


def test_unknown_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="dataset.name"):
        get_dataset_size("mnist_typo")
    assert get_dataset_size("cifar10") == 50_000 and DATASETS["cifar10"].image_shape == (32, 32, 3)
    assert get_dataset_size("imagenet2012") == 1_281_167 and DATASETS["imagenet2012"].num_classes == 1000


def test_train_size_of_in_memory_datasets_is_the_registry_n():
    from lbt.config import base_config

    c = base_config()
    assert c.dataset.name == "digits" and train_size(c) == 1438
    c.dataset.test_fraction = 0.5
    assert train_size(c) == 899
    c.dataset.name = "cifar10"
    assert get_dataset_size("cifar10", c) == 50_000  # the table's N; train_size reads the prepared split
