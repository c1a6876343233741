"""CIFAR-10 and ImageNet from TFDS ``array_record`` files: random access with tfds + grain.

``tfds.data_source(name, split=..., data_dir=...)`` opens a prepared ``array_record`` dataset for
random access without TensorFlow. We read the raw records and decode them ourselves
(``features.deserialize_example_np`` with the image left encoded, then PIL), so that

* encoded images (Image features: PNG/JPEG bytes, as in the real cifar10 and imagenet2012
  builders) and already-decoded arrays (Tensor features) are both handled;
* a corrupt example is caught per example and named by (dataset, split, index).

Where grain is used, and why (see docs/data.md): ``grain.MapDataset.source(data_source)`` is the
random-access layer (dataset index -> record), and a batch request decoded in the calling process
is a small ``grain.MapDataset`` of ``(index, position)`` pairs mapped through decode + preprocess
(in ``num_threads`` grain threads, in order). grain does **not** choose the order: the trainer asks
for examples by global position, and the dataset index of each position is the pure function in
:mod:`lbt.data.order`. Augmentation randomness is a function of (seed, position)
(:mod:`lbt.data.preprocess`), so a batch is identical on resume and for any process count.

Decode workers (``dataset.decode_workers``): decoding and augmentation run in a pool of spawned
worker processes, shared by the sources of this process, so they scale past the GIL. Each request
is split into chunks of ``(slot, index, position)``; a worker reads its chunk's records, decodes
and crops them, and writes the uint8 crops into a shared
memory block of the request at their slots; the labels, the ok flags and the corrupt examples met
come back with the chunk's result. Every example depends only on (record, seed, position), so the
batch is the same for any worker count, chunking or completion order (tested).
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import pickle
import signal
import threading
import time
import uuid
from collections import OrderedDict
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
        self.cause = str(cause)
        super().__init__(
            f"corrupt example {dataset}/{split}[{index}] (dataset {dataset!r}, split {split!r}, index {index}): "
            f"{cause}. Re-prepare the dataset, or set --config.dataset.on_corrupt=skip to replace corrupt "
            "examples by the next good one (they are counted)."
        )

    def __reduce__(self):  # raised in a decode worker, re-raised in the trainer
        return (type(self), (self.dataset, self.split, self.index, self.cause))


def prepare_hint(name: str, data_dir: str | None) -> str:
    """How to prepare ``name`` as array_record files in ``data_dir``."""
    d = data_dir or "~/tensorflow_datasets"
    if name == "imagenet2012":
        return (
            f"ImageNet needs a manual download: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
            f"(from https://image-net.org/download-images) into {d}/downloads/manual, then on a machine with "
            f"TensorFlow (pip install 'lbt[prepare]', which adds tensorflow-cpu) run "
            f"`tfds build imagenet2012 --file_format=array_record --data_dir={d}`, and pass "
            f"--config.dataset.data_dir={d} (see docs/data.md)"
        )
    return (
        f"prepare it once on a machine with internet and TensorFlow (pip install 'lbt[prepare]', which adds "
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


def encoded_bytes(value: Any) -> bytes | None:
    """The encoded image bytes held by a feature value, or None for a decoded array."""
    if isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind == "S":
        value = value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return None


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


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def auto_decode_workers(kind: str) -> int:
    """``dataset.decode_workers = 0`` (auto): one worker process per available core for ImageNet
    (JPEG decoding dominates), none for CIFAR (tiny PNGs)."""
    cores = available_cores()
    return cores if kind == "imagenet" and cores > 1 else 0


def _varint(buf, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint in tf.train.Example")


def _fields(buf, lo: int, hi: int):
    """``(field number, wire type, value or (start, end))`` of the protobuf message ``buf[lo:hi]``."""
    i = lo
    while i < hi:
        tag, i = _varint(buf, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield field, wire, value
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > hi:
                raise ValueError("truncated tf.train.Example")
            yield field, wire, (i, i + n)
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} in tf.train.Example")
    if i != hi:
        raise ValueError("truncated tf.train.Example")


def _feature_value(buf, lo: int, hi: int) -> bytes | int:
    """The first value of a ``tf.train.Feature``: bytes of a bytes_list, int of an int64_list."""
    for kind, wire, span in _fields(buf, lo, hi):
        if wire != 2:
            continue
        for field, fwire, value in _fields(buf, *span):
            if field != 1:
                continue
            if kind == 1 and fwire == 2:  # BytesList.value
                return bytes(buf[value[0] : value[1]])
            if kind == 3:  # Int64List.value, unpacked or packed
                v = value if fwire == 0 else _varint(buf, value[0])[0]
                return v - (1 << 64) if v >= 1 << 63 else v
        raise ValueError("empty feature in tf.train.Example")
    raise ValueError("feature of an unsupported kind in tf.train.Example")


def parse_example(record: bytes, keys: Sequence[str]) -> tuple[Any, ...]:
    """The values of the features ``keys`` of a serialized ``tf.train.Example``: the first bytes of
    a bytes_list (an encoded image), or the first int of an int64_list (a label), as tfds stores
    them. A few microseconds and no TensorFlow or tfds; a missing key raises ValueError."""
    buf = memoryview(record)
    found: dict[str, bytes | int] = {}
    for field, wire, span in _fields(buf, 0, len(buf)):
        if field != 1 or wire != 2:  # Example.features
            continue
        for entry, ewire, espan in _fields(buf, *span):  # Features.feature map entries
            if entry != 1 or ewire != 2:
                continue
            name = value = None
            for f, w, v in _fields(buf, *espan):
                if f == 1 and w == 2:
                    name = bytes(buf[v[0] : v[1]]).decode()
                elif f == 2 and w == 2:
                    value = v
            if name in keys and value is not None:
                found[name] = _feature_value(buf, *value)
    missing = [k for k in keys if k not in found]
    if missing:
        raise ValueError(f"tf.train.Example has no feature {missing[0]!r}")
    return tuple(found[k] for k in keys)


class TfdsSource:
    """A tfds split as a :class:`lbt.data.types.Source`: ``get(indices, positions, train)``.

    ``seed`` (the run seed) and the global ``positions`` passed to :meth:`get` determine the
    augmentation of each example. ``corrupt_count`` is the number of distinct corrupt examples met
    so far (``on_corrupt='skip'``); ``corrupt_ids`` holds their dataset indices.

    ``decode_workers``: None = auto (:func:`auto_decode_workers`), 0 = decode in the calling
    process (in ``num_threads`` grain threads), N = in a pool of N worker processes. The pixels
    are the same in every case.
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
        decode_workers: int | None = None,
        image_key: str = "image",
        label_key: str = "label",
    ):
        import grain
        import tensorflow_datasets as tfds

        if on_corrupt not in ON_CORRUPT:
            raise ConfigError("dataset.on_corrupt", f"unknown policy {on_corrupt!r}; choose error or skip")
        if decode_workers is not None and int(decode_workers) < 0:
            raise ConfigError("dataset.decode_workers", f"must be >= 0 (0 = auto), got {decode_workers}")
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
        # In-process decoding: JPEGs decode in grain threads; small PNGs / arrays are faster inline.
        self.num_threads = (8 if preprocessor.kind == "imagenet" else 0) if num_threads is None else int(num_threads)
        self.decode_workers = auto_decode_workers(preprocessor.kind) if decode_workers is None else int(decode_workers)
        self.corrupt_ids: set[int] = set()
        self._lock = threading.Lock()
        self._n = len(data_source)
        self._events: list[tuple[int, str]] | None = None  # set in a decode worker: report, don't log
        self._key = uuid.uuid4().hex  # names this source's state in the decode workers
        self._spec: bytes | None = None
        self._worker_cpu: dict[int, float] = {}

    def __len__(self) -> int:
        return self._n

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.preprocessor.output_shape

    @property
    def corrupt_count(self) -> int:
        return len(self.corrupt_ids)

    # -----------------------------------------------------------------------------------------
    def _decode(self, record: Any, position: int, train: bool) -> tuple[np.ndarray, int]:
        """(preprocessed uint8 image, label) of one raw record; any failure raises (the caller
        names it). Training crops of JPEGs decode only what the crop needs
        (:meth:`Preprocessor.train_u8_encoded`)."""
        value, label = self._parse(record)
        pre = self.preprocessor
        out = None
        if train:
            data = encoded_bytes(value)
            if data is not None:
                out = pre.train_u8_encoded(data, self.seed, position)
        if out is None:
            image = pre.check(decode_image(value))
            out = pre.train_u8(image, self.seed, position) if train else pre.eval_u8(image)
        if out.shape != pre.output_shape and pre.kind == "imagenet":
            raise ValueError(f"preprocessed image has shape {out.shape}, expected {pre.output_shape}")
        label = int(np.asarray(label))
        if self.num_classes and not 0 <= label < self.num_classes:
            raise ValueError(f"label {label} outside [0, {self.num_classes})")
        return out, label

    def _parse(self, record: Any) -> tuple[Any, Any]:
        """(image feature value, label) of a raw record, through the tfds features."""
        if isinstance(record, dict):  # a source that already deserialized (e.g. a mock)
            example = record
        else:
            example = self._features.deserialize_example_np(record, decoders=self._decoders)
        return example[self._image_key], example[self._label_key]

    def _read(self, index: int) -> Any:
        return self._records[int(index)]

    def _good_example(
        self, index: int, position: int, train: bool, record: Any = None
    ) -> tuple[np.ndarray, int, bool]:
        """``(image, label, ok)`` of ``index`` at ``position``; on failure raise (error) or walk to
        the next good index (skip), with the augmentation of ``position`` and ``ok=False``."""
        try:
            return (*self._decode(self._read(index) if record is None else record, position, train), True)
        except Exception as e:
            if self.on_corrupt == "error":
                raise CorruptExampleError(self.name, self.split, index, f"{type(e).__name__}: {e}") from e
            first_error = e
        self._mark_corrupt(index, first_error)
        for step in range(1, self._n):
            j = (index + step) % self._n
            try:
                return (*self._decode(self._read(j), position, train), False)
            except Exception as e:
                self._mark_corrupt(j, e)
        raise CorruptExampleError(
            self.name, self.split, index, f"every example of the split is corrupt ({first_error})"
        )

    def _mark_corrupt(self, index: int, error: BaseException | str) -> None:
        what = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        with self._lock:
            new = index not in self.corrupt_ids
            self.corrupt_ids.add(int(index))
            if self._events is not None:  # in a decode worker: the trainer's source logs and counts
                self._events.append((int(index), what))
                return
        if new:
            log.warning(
                "skipping corrupt example %s/%s[%d] (%s); replaced by the next good index (%d corrupt so far)",
                self.name,
                self.split,
                index,
                what,
                self.corrupt_count,
            )

    def _load(self, request: tuple[int, int, bool, Any]) -> tuple[np.ndarray, int, bool]:
        index, position, train, record = request
        return self._good_example(index, position, train, record)

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
        if self.decode_workers > 0 and indices:
            return self._get_raw_workers(indices, positions, bool(train))
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

    # -----------------------------------------------------------------------------------------
    # Decode worker processes

    def _worker_spec(self) -> bytes:
        """What a decode worker needs to rebuild this source (pickled once, a few hundred bytes).

        For a tfds array_record source of raw records with an encoded image and an integer label
        (cifar10, imagenet2012) the worker gets the underlying ``array_record`` data source and
        parses the ``tf.train.Example`` records itself (:func:`parse_example`), so it imports
        neither tfds nor grain (about 50 MB and a fraction of a second per worker instead of
        about 230 MB and seconds). Any other source travels whole and is parsed by tfds."""
        if self._spec is None:
            light = self._light_records()
            self._spec = pickle.dumps(
                {
                    "records": self._source if light is None else light,
                    "parse": "tfds" if light is None else "example",
                    "name": self.name,
                    "split": self.split,
                    "preprocessor": self.preprocessor,
                    "seed": self.seed,
                    "on_corrupt": self.on_corrupt,
                    "image_key": self._image_key,
                    "label_key": self._label_key,
                    "num_classes": self.num_classes,
                    "length": self._n,
                }
            )
        return self._spec

    def _light_records(self):
        """The ``array_record`` data source under a tfds raw-record source whose image is an
        encoded Image feature and whose label is an integer scalar, else None."""
        import tensorflow_datasets as tfds

        inner = getattr(self._source, "data_source", None)
        raw = getattr(self._source, "deserialize_method", None) == tfds.decode.DeserializeMethod.RAW_BYTES
        label = self._features[self._label_key]
        int_label = isinstance(label, tfds.features.ClassLabel) or (
            isinstance(label, tfds.features.Tensor)
            and label.shape == ()
            and np.dtype(getattr(label, "np_dtype", object)).kind in "iu"
        )
        if inner is None or not raw or self._decoders is None or not int_label:
            return None
        if len(inner) != self._n:
            return None
        return inner

    def _get_raw_workers(self, indices: list[int], positions: list[int], train: bool):
        from concurrent.futures.process import BrokenProcessPool
        from multiprocessing import shared_memory

        n, workers = len(indices), self.decode_workers
        shape = (n, *self.image_shape)
        # ~4 chunks per worker balance uneven images; a chunk is one task.
        chunk = max(1, -(-n // (4 * workers)))
        shm = shared_memory.SharedMemory(create=True, size=int(np.prod(shape)))
        try:
            spec = self._worker_spec()
            labels = np.empty((n,), np.int32)
            ok = np.empty((n,), bool)
            futures = []
            try:
                pool = _decode_pool(workers)
                for lo in range(0, n, chunk):
                    tasks = [(k, indices[k], positions[k], train) for k in range(lo, min(n, lo + chunk))]
                    futures.append(pool.submit(_worker_decode, self._key, spec, shm.name, shape, tasks))
                for f in futures:
                    slots, labs, oks, events, pid, cpu = f.result()
                    labels[slots] = labs
                    ok[slots] = oks
                    self._worker_cpu[pid] = cpu
                    for index, what in events:
                        self._mark_corrupt(index, what)
            except BrokenProcessPool as e:
                _drop_pool(workers)
                raise TrainingError(
                    f"a decode worker process of {self.name}/{self.split} died ({e}). If it died at start, the "
                    "main script re-ran in it (workers are spawned): guard the script's entry point with "
                    "`if __name__ == '__main__':`. Otherwise it may have run out of memory: lower "
                    f"--config.dataset.decode_workers (now {workers})"
                ) from e
            finally:
                for f in futures:
                    f.cancel()
            images = np.ndarray(shape, np.uint8, buffer=shm.buf).copy()
        finally:
            shm.close()
            shm.unlink()
        return images, labels, ok

    def decode_worker_cpu_s(self) -> float:
        """CPU seconds used so far by the decode workers that served this source (their whole
        process time, at their latest result); for benchmarks."""
        return float(sum(self._worker_cpu.values()))


# ---------------------------------------------------------------------------------------------
# The pool of decode worker processes, one per worker count, shared by the sources of a process.

_POOLS: dict[int, Any] = {}
_POOLS_LOCK = threading.Lock()


def _decode_pool(workers: int):
    """The process pool of ``workers`` spawned decode workers (started on first use)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: the trainer process runs JAX's threads.
            ctx = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init)
            _POOLS[workers] = pool
        return pool


def _drop_pool(workers: int) -> None:
    with _POOLS_LOCK:
        pool = _POOLS.pop(workers, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def shutdown_decode_workers() -> None:
    """Stop every decode worker process of this process (they restart on the next request)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown_decode_workers)

# In a decode worker: the sources it has rebuilt (by key) and the shared memory blocks attached.
_WORKER_SOURCES: OrderedDict[str, TfdsSource] = OrderedDict()
_WORKER_MAX_SOURCES = 8


WORKER_PARENT_POLL_S = 1.0
"""How often a decode worker checks that the process that started it is still alive."""
WORKER_TERM_GRACE_S = 30.0
"""How long a decode worker keeps serving after a SIGTERM while its trainer is alive."""


def _worker_init() -> None:
    # Ctrl-C and a scheduler's SIGTERM may reach the whole process group. The trainer handles
    # them (SIGTERM: a checkpoint at the next synchronised step, then exit, which shuts the pool
    # down), so a worker ignores SIGINT and outlives a SIGTERM by up to WORKER_TERM_GRACE_S while
    # its trainer is alive. A worker whose trainer died (e.g. SIGKILL) exits within a poll.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("absl").setLevel(logging.ERROR)
    parent = os.getppid()
    deadline: list[float] = []

    def on_term(signum, frame) -> None:
        if not deadline:
            deadline.append(time.monotonic() + WORKER_TERM_GRACE_S)

    signal.signal(signal.SIGTERM, on_term)

    def watch() -> None:
        while os.getppid() == parent and not (deadline and time.monotonic() > deadline[0]):
            time.sleep(WORKER_PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="lbt-decode-watch").start()


def _worker_source(key: str, spec: bytes) -> TfdsSource:
    """The source ``key`` rebuilt in this worker from its spec (:meth:`TfdsSource._worker_spec`):
    a bare TfdsSource holding just what decoding needs (no tfds or grain import on the light path)."""
    src = _WORKER_SOURCES.get(key)
    if src is None:
        spec = pickle.loads(spec)
        src = TfdsSource.__new__(TfdsSource)
        src.name, src.split = spec["name"], spec["split"]
        src.preprocessor = spec["preprocessor"]
        src.seed, src.on_corrupt = spec["seed"], spec["on_corrupt"]
        src.num_classes, src._n = spec["num_classes"], spec["length"]
        src._image_key, src._label_key = spec["image_key"], spec["label_key"]
        src._source = src._records = spec["records"]
        src.corrupt_ids, src._lock, src._events = set(), threading.Lock(), []
        if spec["parse"] == "example":
            keys = (src._image_key, src._label_key)
            src._parse = lambda record: parse_example(record, keys)
        else:  # a whole tfds data source: its features parse the records
            import tensorflow_datasets as tfds

            src._features = src._source.dataset_info.features
            image_feature = src._features[src._image_key]
            src._decoders = (
                {src._image_key: tfds.decode.SkipDecoding()}
                if isinstance(image_feature, tfds.features.Image)
                else None
            )
        _WORKER_SOURCES[key] = src
        while len(_WORKER_SOURCES) > _WORKER_MAX_SOURCES:
            _WORKER_SOURCES.popitem(last=False)
    return src


def _worker_decode(
    key: str, spec: bytes, shm_name: str, shape: tuple[int, ...], tasks: list[tuple[int, int, int, bool]]
):
    """Decode one chunk ``[(slot, index, position, train), ...]`` in a worker process: crops into
    the shared block ``shm_name`` at their slots; returns ``(slots, labels, oks, corrupt events,
    pid, process CPU seconds)``."""
    from multiprocessing import shared_memory

    src = _worker_source(key, spec)
    slots, labels, oks = [], [], []
    shm = shared_memory.SharedMemory(name=shm_name)
    try:
        out = np.ndarray(shape, np.uint8, buffer=shm.buf)
        for slot, index, position, train in tasks:
            # One record at a time: array_record's batched read costs about 3x the CPU per record
            # here (it fans out to a thread pool), and the workers already read in parallel.
            img, label, good = src._good_example(index, position, train)
            out[slot] = img
            slots.append(slot)
            labels.append(label)
            oks.append(good)
        del out
    finally:
        shm.close()
    events, src._events = src._events, []
    return slots, labels, oks, events, os.getpid(), time.process_time()


def image_size_for(config) -> int:
    """``config.dataset.image_size``, or the model default (299 for inception_resnet_v2, else 224)."""
    size = int(config.dataset.image_size)
    if size:
        return size
    return 299 if config.model.name == "inception_resnet_v2" else 224


def decoder_for(config, kind: str) -> str:
    """``config.dataset.decoder`` resolved (:func:`lbt.data.turbo.resolve`): the ImageNet training
    crop's implementation, ``"turbo"`` or ``"pil"`` (CIFAR-10 always ``"pil"``)."""
    from lbt.data import turbo

    decoder = turbo.resolve(str(config.dataset.get("decoder", "auto")))
    if kind != "imagenet":
        return "pil"
    if decoder not in _DECODER_LOGGED:
        _DECODER_LOGGED.add(decoder)
        libs = ", ".join(f"{k} {v}" for k, v in turbo.versions().items()) if decoder == "turbo" else ""
        hint = f" ({libs})" if libs else f" (for the faster 'turbo' path: {turbo.INSTALL_HINT})"
        log.info("ImageNet training crops: dataset.decoder=%s%s", decoder, hint)
    return decoder


_DECODER_LOGGED: set[str] = set()


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
    workers = int(config.dataset.get("decode_workers", 0))
    if workers < 0:
        raise ConfigError(
            "dataset.decode_workers", f"must be >= 0 (0 = auto, one per core for ImageNet), got {workers}"
        )
    decoder = decoder_for(config, kind)
    data_source = open_data_source(info.name, split, config.dataset.data_dir or None)
    pre = Preprocessor(kind, size, augment=bool(config.dataset.augment), decoder=decoder)
    return TfdsSource(
        data_source,
        name=info.name,
        split=split,
        preprocessor=pre,
        seed=int(config.seed),
        on_corrupt=on_corrupt,
        decode_workers=workers or None,
    )


def load_tfds_splits(config, info: DatasetInfo) -> Splits:
    """Train and eval sources of the tfds dataset ``info`` (its ``train_split`` / ``eval_split``)."""
    return Splits(open_split(config, info, info.train_split), open_split(config, info, info.eval_split), info.name)
