"""ImageNet input path: lbt's decode + augmentation per core, its scaling with decode workers, and
the tf.data anchor of Flax's ImageNet example, side by side.

Data: synthetic photo-like JPEGs of ImageNet's typical size (500x375, quality 90, about 90 KB
each: smooth gradients and texture, :func:`lbt.testing.fake_tfds.natural_pixels`), written as a
tfds ``imagenet2012``-shaped ``array_record`` dataset by
:func:`lbt.testing.fake_tfds.write_fake_imagenet2012`.

* **lbt**: the real training path, ``load_splits(config)`` (``dataset.name=imagenet2012``, the
  recipe's 224 crop) and ``TrainStream.local_microbatch`` (order, array_record read, tf.Example
  parse, row-limited JPEG decode, random resized crop, flip; uint8 out, normalised on the device),
  with ``dataset.decode_workers`` = 1 and 2 worker processes and ``dataset.decoder`` = ``--decoder``
  (default ``auto``: ``turbo``, i.e. simplejpeg + OpenCV, where ``lbt[jpeg]`` is installed).
* **tf.data anchor** (needs TensorFlow: ``pip install 'lbt[prepare]'``): Flax's ImageNet
  ``preprocess_for_train``, i.e. ``tf.image.sample_distorted_bounding_box`` (area 8-100%, ratio
  3/4-4/3, 10 attempts) + ``tf.image.decode_and_crop_jpeg`` (only the crop window is decoded),
  bicubic resize to 224, random flip, in ``tf.data`` with ``num_parallel_calls`` = private thread
  pool = 1 or 2 and intra-op parallelism 1. It reads the same JPEG bytes from memory (no record
  read or parse: in the anchor's favour). Normalisation is left out on both sides (lbt does it on
  the device).
* **kernels**: one image at a time in this process, no pipeline: PIL full decode + crop (lbt's
  first path), PIL row-limited decode + crop (``decoder=pil``) and lbt's crop with the decoder
  the run uses (``lbt_row_limited_crop``).

Per core = images per CPU second: the CPU time of this process (all its threads) plus that of the
decode workers, so other jobs on a shared host inflate it far less than wall-clock rates. The
cases are interleaved over ``--reps`` repetitions in a rotating order and each figure is the
median. ``scaling_efficiency`` = wall images/s with 2 workers / (2 x with 1).
``ratio_per_core_vs_tfdata`` = lbt per core / anchor per core (1 worker each; None without
TensorFlow, with ``tfdata.skipped`` saying why). ``host_projection`` is per core x N x the
measured efficiency, for a few core counts N. Prints one JSON line.

    python benchmarks/imagenet_input.py [--quick] [--no-anchor] [--decoder auto|turbo|pil]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CROP = 224
MICROBATCH = 64
WORKER_COUNTS = (1, 2)
PROJECT_CORES = (8, 32, 96)


def _config(data_dir: str, workers: int, decoder: str = "auto"):
    from lbt.config import base_config

    c = base_config()
    c.name = "bench_imagenet_input"
    c.dataset.name = "imagenet2012"
    c.dataset.data_dir = data_dir
    c.dataset.image_size = CROP
    c.dataset.decode_workers = workers
    c.dataset.decoder = decoder
    c.train.global_microbatch = MICROBATCH
    return c


class LbtCase:
    """TrainStream over the real imagenet2012 path with ``workers`` decode processes."""

    def __init__(self, data_dir: str, workers: int, microbatch: int, decoder: str):
        from lbt.data.pipeline import TrainStream
        from lbt.data.registry import load_splits

        config = _config(data_dir, workers, decoder)
        self.source = load_splits(config).train
        self.stream = TrainStream(self.source, config.seed, microbatch, raw=True)
        self.microbatch = microbatch
        self.position = 0

    def warm(self) -> None:
        for _ in range(2):  # start the workers, and let every one report its CPU time once
            self.stream.local_microbatch(self.position)
            self.position += self.microbatch

    def run(self, batches: int) -> tuple[int, float, float]:
        cpu0, w0, t0 = time.process_time(), self.source.decode_worker_cpu_s(), time.perf_counter()
        for _ in range(batches):
            images, _ = self.stream.local_microbatch(self.position)
            assert images.shape == (self.microbatch, CROP, CROP, 3)
            self.position += self.microbatch
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0 + self.source.decode_worker_cpu_s() - w0
        return batches * self.microbatch, wall, cpu


class TfCase:
    """Flax's ImageNet train preprocessing in tf.data with ``workers`` threads."""

    def __init__(self, jpegs: list[bytes], workers: int, microbatch: int):
        import tensorflow as tf

        self.tf = tf
        bbox = tf.constant([0.0, 0.0, 1.0, 1.0], dtype=tf.float32, shape=[1, 1, 4])

        def center_crop(image_bytes):  # Flax's _decode_and_center_crop
            shape = tf.io.extract_jpeg_shape(image_bytes)
            h, w = shape[0], shape[1]
            padded = tf.cast(
                (CROP / (CROP + 32)) * tf.cast(tf.minimum(h, w), tf.float32), tf.int32
            )  # CROP_PADDING = 32
            oh, ow = ((h - padded) + 1) // 2, ((w - padded) + 1) // 2
            window = tf.stack([oh, ow, padded, padded])
            image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
            return tf.image.resize([image], [CROP, CROP], method=tf.image.ResizeMethod.BICUBIC)[0]

        def preprocess(image_bytes):  # Flax's preprocess_for_train, without the normalisation
            shape = tf.io.extract_jpeg_shape(image_bytes)
            begin, size, _ = tf.image.sample_distorted_bounding_box(
                shape,
                bounding_boxes=bbox,
                min_object_covered=0.1,
                aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
                area_range=(0.08, 1.0),
                max_attempts=10,
                use_image_if_no_bounding_boxes=True,
            )
            oy, ox, _ = tf.unstack(begin)
            th, tw, _ = tf.unstack(size)
            image = tf.image.decode_and_crop_jpeg(image_bytes, tf.stack([oy, ox, th, tw]), channels=3)
            bad = tf.reduce_sum(tf.cast(tf.equal(shape, tf.shape(image)), tf.int32)) >= 3
            image = tf.cond(
                bad,
                lambda: center_crop(image_bytes),
                lambda: tf.image.resize([image], [CROP, CROP], method=tf.image.ResizeMethod.BICUBIC)[0],
            )
            image = tf.reshape(image, [CROP, CROP, 3])
            return tf.image.random_flip_left_right(image)

        ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat().map(preprocess, num_parallel_calls=workers)
        ds = ds.batch(microbatch, drop_remainder=True)
        options = tf.data.Options()
        options.threading.private_threadpool_size = workers
        options.threading.max_intra_op_parallelism = 1
        options.deterministic = True
        options.autotune.enabled = False
        self.ds = ds.with_options(options)
        self.microbatch = microbatch

    def warm(self) -> None:
        self.run(1)

    def run(self, batches: int) -> tuple[int, float, float]:
        # A fresh iterator per measurement, closed after it: no background thread runs ahead
        # (or burns this process's CPU) while another case is measured.
        cpu0, t0 = time.process_time(), time.perf_counter()
        it = iter(self.ds.take(batches))
        for images in it:
            assert images.numpy().shape == (self.microbatch, CROP, CROP, 3)
        del it
        return batches * self.microbatch, time.perf_counter() - t0, time.process_time() - cpu0


class KernelCase:
    """One image at a time in this process: ``fn(jpeg, position)``."""

    def __init__(self, jpegs: list[bytes], fn):
        self.jpegs, self.fn, self.position = jpegs, fn, 0

    def warm(self) -> None:
        self.fn(self.jpegs[0], 0)

    def run(self, batches: int) -> tuple[int, float, float]:
        n = len(self.jpegs)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for k in range(n):
            self.fn(self.jpegs[k], self.position + k)
        self.position += n
        return n, time.perf_counter() - t0, time.process_time() - cpu0


def _full_decode_crop(jpeg: bytes, position: int):
    from lbt.data import preprocess as pp
    from lbt.data.tfds_sources import decode_image

    return pp.imagenet_train_u8(decode_image(jpeg), pp.example_rng(0, position), CROP)


def _crop_with(decoder: str):
    """lbt's crop of one JPEG with ``decoder`` ("pil" or "turbo")."""
    from lbt.data import preprocess as pp

    def crop(jpeg: bytes, position: int):
        return pp.imagenet_train_u8_jpeg(jpeg, pp.example_rng(0, position), CROP, decoder)

    return crop


def _tf_status(disabled: bool) -> tuple[bool, str | None, str | None]:
    if disabled:
        return False, None, "disabled by --no-anchor"
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf
    except ImportError:
        return False, None, "tensorflow is not installed (pip install 'lbt[prepare]'); anchor skipped"
    return True, tf.__version__, None


def _jpegs(data_dir: str) -> list[bytes]:
    from lbt.data.tfds_sources import open_data_source, parse_example

    records = open_data_source("imagenet2012", "train", data_dir).data_source
    return [parse_example(records[i], ("image",))[0] for i in range(len(records))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a few images and one repetition (the test's mode)")
    ap.add_argument("--no-anchor", action="store_true", help="skip the tf.data anchor even if TensorFlow is installed")
    ap.add_argument("--images", type=int, default=None, help="synthetic JPEGs in the dataset (default 256, quick 32)")
    ap.add_argument("--batches", type=int, default=None, help="microbatches per measurement (default 6, quick 1)")
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 5, quick 1)")
    ap.add_argument("--decoder", default="auto", help="dataset.decoder of the lbt cases: auto | turbo | pil")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    n_images = args.images or (32 if args.quick else 256)
    batches = args.batches or (1 if args.quick else 6)
    reps = args.reps or (1 if args.quick else 5)
    microbatch = 32 if args.quick else MICROBATCH
    tf_ok, tf_version, tf_skipped = _tf_status(args.no_anchor)
    load0 = os.getloadavg()

    from lbt.data import turbo
    from lbt.data.tfds_sources import available_cores, shutdown_decode_workers
    from lbt.testing.fake_tfds import IMAGENET_SHAPE, write_fake_imagenet2012

    decoder = turbo.resolve(args.decoder)

    with tempfile.TemporaryDirectory() as tmp:
        print(f"[imagenet_input] writing {n_images} synthetic JPEGs", file=sys.stderr, flush=True)
        with contextlib.redirect_stdout(sys.stderr):  # tfds prints its progress: keep stdout one JSON line
            data_dir = write_fake_imagenet2012(Path(tmp) / "tfds", n_images, 2)
        jpegs = _jpegs(data_dir)
        cases: dict[str, object] = {f"lbt_w{w}": LbtCase(data_dir, w, microbatch, decoder) for w in WORKER_COUNTS}
        if tf_ok:
            cases.update({f"tfdata_w{w}": TfCase(jpegs, w, microbatch) for w in WORKER_COUNTS})
        cases["kernel_pil_full_decode"] = KernelCase(jpegs, _full_decode_crop)
        cases["kernel_pil_row_limited"] = KernelCase(jpegs, _crop_with("pil"))
        if decoder != "pil":
            cases["kernel_lbt_row_limited"] = KernelCase(jpegs, _crop_with(decoder))
        print(f"[imagenet_input] warming {len(cases)} cases", file=sys.stderr, flush=True)
        for case in cases.values():
            case.warm()
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        names = list(cases)
        for rep in range(reps):
            print(f"[imagenet_input] repetition {rep + 1}/{reps}", file=sys.stderr, flush=True)
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                n, wall, cpu = cases[name].run(batches)
                runs[name].append((n / wall, n / max(cpu, 1e-9)))
        shutdown_decode_workers()

    def summary(name: str) -> dict[str, float]:
        walls, cpus = zip(*runs[name])
        return {
            "images_per_s": round(statistics.median(walls), 1),
            "images_per_cpu_s": round(statistics.median(cpus), 1),
        }

    res = {name: summary(name) for name in runs}

    def side(prefix: str):
        if f"{prefix}_w1" not in res:
            return None
        w = {str(k): res[f"{prefix}_w{k}"] for k in WORKER_COUNTS}
        eff = w["2"]["images_per_s"] / (2 * w["1"]["images_per_s"])
        return {"workers": w, "per_core": w["1"]["images_per_cpu_s"], "scaling_efficiency": round(eff, 3)}

    lbt, tfd = side("lbt"), side("tfdata")
    ratio = round(lbt["per_core"] / tfd["per_core"], 3) if tfd else None
    eff = min(1.0, lbt["scaling_efficiency"])
    out = {
        "benchmark": "imagenet_input",
        "date": datetime.date.today().isoformat(),
        "cpu_cores": os.cpu_count(),
        "available_cores": available_cores(),
        "loadavg_1m": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
        "images": n_images,
        "image_hw": list(IMAGENET_SHAPE),
        "jpeg_quality": 90,
        "mean_jpeg_kb": round(sum(map(len, jpegs)) / len(jpegs) / 1000, 1),
        "crop": CROP,
        "microbatch": microbatch,
        "batches_per_measurement": batches,
        "reps": reps,
        "decoder": decoder,
        "decoder_libraries": turbo.versions() if decoder == "turbo" else {},
        "lbt": lbt,
        "tfdata": tfd if tfd else {"skipped": tf_skipped},
        "tf_version": tf_version,
        "ratio_per_core_vs_tfdata": ratio,
        "ratio_wall_vs_tfdata": (
            {
                str(k): round(lbt["workers"][str(k)]["images_per_s"] / tfd["workers"][str(k)]["images_per_s"], 3)
                for k in WORKER_COUNTS
            }
            if tfd
            else None
        ),
        "kernels_per_core": {
            "pil_full_decode_crop": res["kernel_pil_full_decode"]["images_per_cpu_s"],
            "pil_row_limited_crop": res["kernel_pil_row_limited"]["images_per_cpu_s"],
            "lbt_row_limited_crop": res.get("kernel_lbt_row_limited", res["kernel_pil_row_limited"])[
                "images_per_cpu_s"
            ],
        },
        "host_projection": {
            "formula": "lbt per_core x N x min(1, scaling_efficiency)",
            "images_per_s": {str(n): round(lbt["per_core"] * n * eff) for n in PROJECT_CORES},
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
