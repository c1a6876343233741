"""Dataset registry: the one table of datasets, and the one dispatcher that loads them.

Each entry knows its N (train size), test size, classes, image shape and source kind, and for tfds
datasets the train/eval split names and the preprocessing kind. ``get_dataset_size`` answers
without loading the data, so ``lbt plan`` works offline. The per-kind loaders
(:mod:`lbt.data.sources`, :mod:`lbt.data.tfds_sources`) are imported lazily and never import this
module back.
"""

from __future__ import annotations

from lbt.data.types import DatasetInfo, Splits, split_sizes
from lbt.errors import ConfigError

DIGITS_TOTAL = 1797

DATASETS: dict[str, DatasetInfo] = {
    # scikit-learn's 1,797 8x8 digits, split 80/20 deterministically (test_fraction=0.2).
    "digits": DatasetInfo("digits", 1438, 359, 10, (8, 8, 1), "sklearn"),
    # Any .npz of `images` and `labels` (e.g. 10k MNIST): sizes are read from the file.
    "npz": DatasetInfo("npz", 0, 0, 0, (0, 0, 0), "npz"),
    "cifar10": DatasetInfo("cifar10", 50_000, 10_000, 10, (32, 32, 3), "tfds", "train", "test", "cifar"),
    "imagenet2012": DatasetInfo(
        "imagenet2012", 1_281_167, 50_000, 1000, (224, 224, 3), "tfds", "train", "validation", "imagenet"
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name``, or a :class:`ConfigError` listing the known datasets."""
    if name not in DATASETS:
        raise ConfigError("dataset.name", f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def get_dataset_size(name: str, config=None) -> int:
    """N, the number of training examples, without loading the data (npz reads only ``labels``)."""
    info = dataset_info(name)
    if info.source == "sklearn":
        frac = 0.2 if config is None else float(config.dataset.test_fraction)
        return split_sizes(DIGITS_TOTAL, frac)[0]
    if info.source == "npz":
        from lbt.data.sources import npz_num_train

        if config is None:
            return npz_num_train("", 0.2)  # the ConfigError asking for dataset.path
        return npz_num_train(config.dataset.path, float(config.dataset.test_fraction))
    return info.num_train


def train_size(config) -> int:
    """N of the data ``config.dataset`` will train on, without loading it: for a tfds dataset
    the prepared split's size from its metadata (it may differ from the table, e.g. a subset),
    else :func:`get_dataset_size`."""
    info = dataset_info(config.dataset.name)
    if info.source == "tfds":
        from lbt.data.tfds_sources import prepared_split_size

        return prepared_split_size(info.name, info.train_split, config.dataset.data_dir or None)
    return get_dataset_size(config.dataset.name, config)


def load_splits(config) -> Splits:
    """The train and test sources of ``config.dataset``."""
    info = dataset_info(config.dataset.name)
    if info.source == "sklearn":
        from lbt.data.sources import load_digits_splits

        return load_digits_splits(config.dataset.test_fraction, config.dataset.split_seed)
    if info.source == "npz":
        from lbt.data.sources import load_npz_splits

        return load_npz_splits(config.dataset.path, config.dataset.test_fraction, config.dataset.split_seed)
    from lbt.data.tfds_sources import load_tfds_splits  # optional heavy path

    return load_tfds_splits(config, info)
