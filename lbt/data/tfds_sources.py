"""CIFAR-10 and ImageNet from TFDS ``array_record`` files: random access with tfds + grain.

``tfds.data_source(name, split=..., data_dir=...)`` opens a prepared ``array_record`` dataset for
random access without TensorFlow. We read the raw records and decode them ourselves
(``features.deserialize_example_np`` with the image left encoded, then PIL), so that

* encoded images (Image features: PNG/JPEG bytes, as in the real cifar10 and imagenet2012
  builders) and already-decoded arrays (Tensor features) are both handled;
* a corrupt example is caught per example and named by (dataset, split, index).

Where grain is used, and why (see docs/data.md): ``grain.MapDataset.source(data_source)`` is the
random-access layer (dataset index -> record), and each batch request is a small
``grain.MapDataset`` of ``(index, position)`` pairs mapped through decode + preprocess; for
decode-heavy data (ImageNet JPEGs) it runs with ``to_iter_dataset(ReadOptions(num_threads=...))``
so PIL decodes in parallel threads, in order. grain does **not** choose the order: the trainer asks
for examples by global position, and the dataset index of each position is the pure function in
:mod:`lbt.data.order`. Augmentation randomness is a function of (seed, position)
(:mod:`lbt.data.preprocess`), so a batch is identical on resume and for any process count.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lbt.data.preprocess import Preprocessor, apply_lut
from lbt.data.types import DatasetInfo, Splits
from lbt.errors import ConfigError, TrainingError

log = logging.getLogger("lbt")

ON_CORRUPT = ("error", "skip")


class CorruptExampleError(TrainingError):
    """An example that cannot be read or decoded (with ``dataset.on_corrupt='error'``)."""

    def __init__(self, dataset: str, split: str, index: int, cause: BaseException | str):
        self.dataset, self.split, self.index = dataset, split, int(index)
        super().__init__(
            f"corrupt example {dataset}/{split}[{index}] (dataset {dataset!r}, split {split!r}, index {index}): "
            f"{cause}. Re-prepare the dataset, or set --config.dataset.on_corrupt=skip to replace corrupt "
            "examples by the next good one (they are counted)."
        )


def prepare_hint(name: str, data_dir: str | None) -> str:
    """How to prepare ``name`` as array_record files in ``data_dir``."""
    d = data_dir or "~/tensorflow_datasets"
    if name == "imagenet2012":
        return (
            f"ImageNet needs a manual download: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
            f"(from https://image-net.org/download-images) into {d}/downloads/manual, then on a machine with "
            f"TensorFlow (pip install 'lbt[imagenet]', which adds tensorflow-cpu) run "
            f"`tfds build imagenet2012 --file_format=array_record --data_dir={d}`, and pass "
            f"--config.dataset.data_dir={d} (see docs/data.md)"
        )
    return (
        f"prepare it once on a machine with internet and TensorFlow (pip install 'lbt[imagenet]', which adds "
        f"tensorflow-cpu): `tfds build {name} --file_format=array_record --data_dir={d}` (or "
        f"`python -m tensorflow_datasets.scripts.download_and_prepare --datasets={name} "
        f"--file_format=array_record --data_dir={d}`), copy {d} to the training machines and pass "
        f"--config.dataset.data_dir={d} (see docs/data.md)"
    )


def open_data_source(name: str, split: str, data_dir: str | None):
    """``tfds.data_source`` of raw records, or a :class:`ConfigError` saying how to prepare it."""
    import tensorflow_datasets as tfds

    data_dir = _prepared_builder(name, split, data_dir)[1]
    return tfds.data_source(
        name,
        split=split,
        data_dir=data_dir,
        download=False,
        deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES,
    )


def prepared_split_size(name: str, split: str, data_dir: str | None) -> int:
    """The number of examples of a prepared split, from its metadata (no record is read)."""
    builder, _ = _prepared_builder(name, split, data_dir)
    return int(builder.info.splits[split].num_examples)


def _prepared_builder(name: str, split: str, data_dir: str | None):
    """``(builder, data_dir)`` of a prepared array_record dataset with ``split``, or a
    :class:`ConfigError` saying how to prepare it."""
    import tensorflow_datasets as tfds

    if data_dir and "://" not in data_dir and not Path(data_dir).expanduser().is_dir():
        raise ConfigError("dataset.data_dir", f"no directory {data_dir!r} for {name}; {prepare_hint(name, data_dir)}")
    data_dir = str(Path(data_dir).expanduser()) if data_dir and "://" not in data_dir else data_dir
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except Exception as e:  # e.g. an unreadable dataset_info.json
        raise ConfigError(
            "dataset.data_dir",
            f"cannot open {name} in {data_dir or 'the tfds default dir'} ({e}); {prepare_hint(name, data_dir)}",
        ) from e
    if not prepared:
        raise ConfigError(
            "dataset.data_dir",
            f"{name} is not prepared in {data_dir or 'the tfds default data dir'} (no {builder.data_path}); {prepare_hint(name, data_dir)}",
        )
    fmt = builder.info.file_format
    if fmt is None or getattr(fmt, "value", str(fmt)) != "array_record":
        raise ConfigError(
            "dataset.data_dir",
            f"{name} in {builder.data_path} is stored as {getattr(fmt, 'value', fmt)}; random access needs array_record. "
            f"Convert it with `tfds convert_format --dataset_dir={builder.data_path} --out_file_format=array_record` "
            f"or rebuild: {prepare_hint(name, data_dir)}",
        )
    if split not in builder.info.splits:
        raise ConfigError(
            "dataset.data_dir",
            f"{name} in {builder.data_path} has no split {split!r} (has {list(builder.info.splits)}); {prepare_hint(name, data_dir)}",
        )
    return builder, data_dir


def decode_image(value: Any) -> np.ndarray:
    """A uint8 image array from encoded bytes (PNG/JPEG/...) or an already-decoded array."""
    if isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind == "S":
        value = value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        from PIL import Image

        with Image.open(io.BytesIO(bytes(value))) as img:
            img.load()
            if img.mode not in ("RGB", "L"):
                img = img.convert("RGB")
            return np.asarray(img)
    arr = np.asarray(value)
    if arr.dtype != np.uint8:
        if arr.dtype.kind in "iu" and arr.size and arr.min() >= 0 and arr.max() <= 255:
            arr = arr.astype(np.uint8)
        else:
            raise ValueError(f"image array has dtype {arr.dtype}; expected uint8 pixels")
    return arr


class TfdsSource:
    """A tfds split as a :class:`lbt.data.types.Source`: ``get(indices, positions, train)``.

    ``seed`` (the run seed) and the global ``positions`` passed to :meth:`get` determine the
    augmentation of each example. ``corrupt_count`` is the number of distinct corrupt examples met
    so far (``on_corrupt='skip'``); ``corrupt_ids`` holds their dataset indices.
    """

    def __init__(
        self,
        data_source,
        *,
        name: str,
        split: str,
        preprocessor: Preprocessor,
        seed: int = 0,
        on_corrupt: str = "error",
        num_threads: int | None = None,
        image_key: str = "image",
        label_key: str = "label",
    ):
        import grain
        import tensorflow_datasets as tfds

        if on_corrupt not in ON_CORRUPT:
            raise ConfigError("dataset.on_corrupt", f"unknown policy {on_corrupt!r}; choose error or skip")
        self.name, self.split = name, split
        self.preprocessor = preprocessor
        self._lut = preprocessor.lut
        self.seed = int(seed)
        self.on_corrupt = on_corrupt
        self._source = data_source
        self._grain = grain
        self._records = grain.MapDataset.source(data_source)  # dataset index -> raw record
        features = data_source.dataset_info.features
        self._features = features
        self._image_key, self._label_key = image_key, label_key
        image_feature = features[image_key]
        self._decoders = (
            {image_key: tfds.decode.SkipDecoding()} if isinstance(image_feature, tfds.features.Image) else None
        )
        label_feature = features[label_key]
        self.num_classes = int(getattr(label_feature, "num_classes", 0) or 0)
        # Decode-heavy data (JPEG) decodes in grain threads; small PNGs / arrays are faster inline.
        self.num_threads = (8 if preprocessor.kind == "imagenet" else 0) if num_threads is None else int(num_threads)
        self.corrupt_ids: set[int] = set()
        self._lock = threading.Lock()
        self._n = len(data_source)

    def __len__(self) -> int:
        return self._n

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.preprocessor.output_shape

    @property
    def corrupt_count(self) -> int:
        return len(self.corrupt_ids)

    # -----------------------------------------------------------------------------------------
    def _decode(self, record: Any, index: int) -> tuple[np.ndarray, int]:
        """(uint8 image, label) of one raw record; any failure raises (the caller names it)."""
        if isinstance(record, dict):  # a source that already deserialized (e.g. a mock)
            example = record
        else:
            example = self._features.deserialize_example_np(record, decoders=self._decoders)
        image = self.preprocessor.check(decode_image(example[self._image_key]))
        label = int(np.asarray(example[self._label_key]))
        if self.num_classes and not 0 <= label < self.num_classes:
            raise ValueError(f"label {label} outside [0, {self.num_classes})")
        return image, label

    def _read(self, index: int) -> Any:
        return self._records[int(index)]

    def _good_example(self, index: int, record: Any = None) -> tuple[np.ndarray, int, bool]:
        """``(image, label, ok)`` of ``index``; on failure raise (error) or walk to the next good
        index (skip), with ``ok=False`` marking the replacement."""
        try:
            return (*self._decode(self._read(index) if record is None else record, index), True)
        except Exception as e:
            if self.on_corrupt == "error":
                raise CorruptExampleError(self.name, self.split, index, f"{type(e).__name__}: {e}") from e
            first_error = e
        self._mark_corrupt(index, first_error)
        for step in range(1, self._n):
            j = (index + step) % self._n
            try:
                return (*self._decode(self._read(j), j), False)
            except Exception as e:
                self._mark_corrupt(j, e)
        raise CorruptExampleError(
            self.name, self.split, index, f"every example of the split is corrupt ({first_error})"
        )

    def _mark_corrupt(self, index: int, error: BaseException) -> None:
        with self._lock:
            new = index not in self.corrupt_ids
            self.corrupt_ids.add(int(index))
        if new:
            log.warning(
                "skipping corrupt example %s/%s[%d] (%s: %s); replaced by the next good index (%d corrupt so far)",
                self.name,
                self.split,
                index,
                type(error).__name__,
                error,
                self.corrupt_count,
            )

    def _load(self, request: tuple[int, int, bool, Any]) -> tuple[np.ndarray, int, bool]:
        index, position, train, record = request
        image, label, ok = self._good_example(index, record)
        pre = self.preprocessor
        out = pre.train_u8(image, self.seed, position) if train else pre.eval_u8(image)
        return out, label, ok

    def _read_batch(self, indices: Sequence[int]) -> list[Any]:
        """Raw records of ``indices`` in one array_record batch read; ``None`` = read one by one."""
        getitems = getattr(self._source, "__getitems__", None)
        if getitems is None:
            return [None] * len(indices)
        try:
            records = list(getitems(list(indices)))
        except Exception:  # locate the bad record(s) with single reads in _good_example
            return [None] * len(indices)
        if len(records) != len(indices):
            return [None] * len(indices)
        return records

    def get(self, indices: np.ndarray, positions: np.ndarray | None = None, train: bool = True):
        """Preprocessed float32 images ``[n, H, W, 3]`` and int32 labels ``[n]`` of ``indices``."""
        images, labels, _ = self.get_with_mask(indices, positions, train)
        return images, labels

    def get_with_mask(self, indices: np.ndarray, positions: np.ndarray | None = None, train: bool = True):
        """:meth:`get` plus a bool ``[n]`` mask, False where a corrupt example was replaced (skip).

        Eval uses the mask so that a skipped example counts nowhere (not twice)."""
        images, labels, ok = self.get_raw(indices, positions, train)
        return apply_lut(images, self._lut), labels, ok

    @property
    def input_lut(self) -> np.ndarray:
        return self._lut

    def get_raw(self, indices: np.ndarray, positions: np.ndarray | None = None, train: bool = True):
        """:meth:`get_with_mask` with uint8 images before normalisation (see :attr:`input_lut`)."""
        indices = [int(i) for i in np.asarray(indices).reshape(-1)]
        if positions is None:
            positions = indices
        positions = [int(p) for p in np.asarray(positions).reshape(-1)]
        records = self._read_batch(indices)
        requests = [(i, p, bool(train), r) for i, p, r in zip(indices, positions, records)]
        ds = self._grain.MapDataset.source(requests).map(self._load)
        if self.num_threads > 1 and len(requests) > 1:
            opts = self._grain.ReadOptions(
                num_threads=min(self.num_threads, len(requests)), prefetch_buffer_size=len(requests)
            )
            out = list(ds.to_iter_dataset(opts))
        else:
            out = [ds[k] for k in range(len(requests))]
        h, w, c = self.image_shape
        images = np.empty((len(out), h, w, c), np.uint8)
        labels = np.empty((len(out),), np.int32)
        ok = np.empty((len(out),), bool)
        for k, (img, lab, good) in enumerate(out):
            images[k] = img
            labels[k] = lab
            ok[k] = good
        return images, labels, ok


def image_size_for(config) -> int:
    """``config.dataset.image_size``, or the model default (299 for inception_resnet_v2, else 224)."""
    size = int(config.dataset.image_size)
    if size:
        return size
    return 299 if config.model.name == "inception_resnet_v2" else 224


def open_split(config, info: DatasetInfo, split: str) -> TfdsSource:
    """Split ``split`` of the tfds dataset ``info`` (a registry entry) as a :class:`TfdsSource`."""
    if info.source != "tfds":
        raise ConfigError("dataset.name", f"{info.name!r} is not a tfds dataset")
    on_corrupt = config.dataset.on_corrupt
    if on_corrupt not in ON_CORRUPT:
        raise ConfigError("dataset.on_corrupt", f"unknown policy {on_corrupt!r}; choose error or skip")
    kind = info.preprocess
    size = image_size_for(config) if kind == "imagenet" else 32
    if kind == "cifar" and int(config.dataset.image_size) not in (0, 32):
        raise ConfigError(
            "dataset.image_size", f"cifar10 images are 32x32; set 0 or 32, not {config.dataset.image_size}"
        )
    data_source = open_data_source(info.name, split, config.dataset.data_dir or None)
    pre = Preprocessor(kind, size, augment=bool(config.dataset.augment))
    return TfdsSource(
        data_source, name=info.name, split=split, preprocessor=pre, seed=int(config.seed), on_corrupt=on_corrupt
    )


def load_tfds_splits(config, info: DatasetInfo) -> Splits:
    """Train and eval sources of the tfds dataset ``info`` (its ``train_split`` / ``eval_split``)."""
    return Splits(open_split(config, info, info.train_split), open_split(config, info, info.eval_split), info.name)
