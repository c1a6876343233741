"""The ImageNet input path: decode workers, row-limited / DCT-scaled JPEG decoding on the PIL and
turbo paths (``dataset.decoder``), determinism, ``dataset.decode_workers`` / ``dataset.decoder``
validation, and ``benchmarks/imagenet_input.py``.

The datasets are tiny tfds ``imagenet2012``-shaped array_record files written by
:func:`lbt.testing.fake_tfds.write_fake_imagenet2012` (no TensorFlow, no network).
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")
pytest.importorskip("array_record")

from PIL import Image  # noqa: E402

from lbt.config import base_config, validate  # noqa: E402
from lbt.data import preprocess as pp  # noqa: E402
from lbt.data import tfds_sources, turbo  # noqa: E402
from lbt.data.pipeline import TrainStream  # noqa: E402
from lbt.data.registry import load_splits  # noqa: E402
from lbt.errors import ConfigError  # noqa: E402
from lbt.testing.fake_tfds import encode_image, natural_pixels, write_fake_imagenet2012  # noqa: E402

N_TRAIN, CROP, CORRUPT_KEY = 30, 32, 4
needs_turbo = pytest.mark.skipif(not turbo.available(), reason="simplejpeg / OpenCV not installed (lbt[jpeg])")
DECODERS = ["pil", pytest.param("turbo", marks=needs_turbo)]


def _shape(key: int) -> tuple[int, int]:
    """Mixed sizes: most crops resize at full scale, the large ones decode at 1/2 or 1/4."""
    return [(48, 64), (75, 100), (150, 90), (300, 260), (41, 37)][key % 5]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = write_fake_imagenet2012(
        tmp_path_factory.mktemp("imagenet"), N_TRAIN, 4, _shape, corrupt_train_keys=(CORRUPT_KEY,)
    )
    yield d
    tfds_sources.shutdown_decode_workers()


def _config(data_dir, workers=0, **dataset):
    c = base_config()
    c.dataset.name = "imagenet2012"
    c.dataset.data_dir = data_dir
    c.dataset.image_size = CROP
    c.dataset.decode_workers = workers
    for k, v in dataset.items():
        c.dataset[k] = v
    return c


def _inline(data_dir, split="train", on_corrupt="skip", decoder="pil"):
    ds = tfds_sources.open_data_source("imagenet2012", split, data_dir)
    pre = pp.Preprocessor("imagenet", CROP, decoder=decoder)
    return tfds_sources.TfdsSource(
        ds, name="imagenet2012", split=split, preprocessor=pre, on_corrupt=on_corrupt, decode_workers=0
    )


def _batches(source, positions=(0, 24, 48)):
    """Microbatches of 12 as the trainer asks for them (the second crosses the epoch boundary)."""
    stream = TrainStream(source, 0, 12, raw=True)
    return [stream.local_microbatch(p) for p in positions]


@pytest.mark.parametrize("decoder", DECODERS)
def test_same_batches_for_inline_and_1_or_2_workers_and_after_restart(data_dir, decoder):
    ref_src = _inline(data_dir, decoder=decoder)
    ref = _batches(ref_src)
    ref_eval = ref_src.get_raw(np.arange(N_TRAIN), None, False)
    assert ref_src.corrupt_count == 1
    for workers in (1, 2):
        src = load_splits(_config(data_dir, workers, on_corrupt="skip", decoder=decoder)).train
        assert src.decode_workers == workers and src.preprocessor.decoder == decoder
        for (a_img, a_lab), (b_img, b_lab) in zip(ref, _batches(src)):
            np.testing.assert_array_equal(a_img, b_img)
            np.testing.assert_array_equal(a_lab, b_lab)
        for a, b in zip(ref_eval, src.get_raw(np.arange(N_TRAIN), None, False)):
            np.testing.assert_array_equal(a, b)
        assert src.corrupt_ids == ref_src.corrupt_ids  # reported by the workers, counted here
        assert src.decode_worker_cpu_s() > 0
    # a restarted source (fresh worker processes): the same batches again
    tfds_sources.shutdown_decode_workers()
    src = load_splits(_config(data_dir, 2, on_corrupt="skip", decoder=decoder)).train
    for (a_img, _), (b_img, _) in zip(ref, _batches(src)):
        np.testing.assert_array_equal(a_img, b_img)


@needs_turbo
def test_turbo_and_pil_differ_by_a_few_levels_and_share_the_eval_path(data_dir):
    """The two decoders take the same crops (a few levels apart: resize filters) and the same eval
    pixels (eval decodes and resizes with PIL on both)."""
    pil, fast = _inline(data_dir, decoder="pil"), _inline(data_dir, decoder="turbo")
    a, b = pil.get_raw(np.arange(N_TRAIN), np.arange(N_TRAIN), True), fast.get_raw(np.arange(N_TRAIN), None, True)
    np.testing.assert_array_equal(a[1], b[1])
    diff = np.abs(a[0].astype(np.int16) - b[0].astype(np.int16))
    assert 0 < diff.mean() < 4.0, diff.mean()
    for x, y in zip(pil.get_raw(np.arange(N_TRAIN), None, False), fast.get_raw(np.arange(N_TRAIN), None, False)):
        np.testing.assert_array_equal(x, y)
    c = _config(data_dir, decoder="auto")
    assert tfds_sources.decoder_for(c, "imagenet") == "turbo" and tfds_sources.decoder_for(c, "cifar") == "pil"


def test_corrupt_example_error_crosses_the_worker_process(data_dir):
    src = load_splits(_config(data_dir, 1)).train
    (bad,) = _inline_corrupt(data_dir)
    with pytest.raises(tfds_sources.CorruptExampleError) as e:
        src.get_raw(np.array([bad]), np.array([0]), True)
    assert e.value.index == bad and f"imagenet2012/train[{bad}]" in str(e.value)
    again = pickle.loads(pickle.dumps(e.value))
    assert str(again) == str(e.value) and again.index == bad


def test_a_worker_outlives_a_sigterm_to_the_process_group(data_dir):
    """The trainer handles SIGTERM (checkpoint, then exit); its workers keep serving meanwhile."""
    import os
    import signal

    src = load_splits(_config(data_dir, 1, on_corrupt="skip")).train
    first = src.get_raw(np.arange(6), np.arange(6), True)[0]
    (pid,) = src._worker_cpu
    os.kill(pid, signal.SIGTERM)
    np.testing.assert_array_equal(src.get_raw(np.arange(6), np.arange(6), True)[0], first)
    assert list(src._worker_cpu) == [pid]
    tfds_sources.shutdown_decode_workers()  # that worker exits WORKER_TERM_GRACE_S after the signal


def _inline_corrupt(data_dir) -> set[int]:
    src = _inline(data_dir)
    src.get_raw(np.arange(N_TRAIN), None, False)
    return src.corrupt_ids


def test_cifar10_with_a_decode_worker_matches_inline(tmp_path):
    from lbt.testing.fake_tfds import write_fake_cifar10

    d = write_fake_cifar10(tmp_path, 20, 4, corrupt_train_keys=(3,))
    c = base_config()
    c.dataset.name, c.dataset.data_dir, c.dataset.on_corrupt = "cifar10", d, "skip"
    inline = load_splits(c).train
    assert inline.decode_workers == 0  # auto: CIFAR decodes in the calling process
    c.dataset.decode_workers = 1
    worker = load_splits(c).train
    for a, b in zip(
        inline.get_raw(np.arange(20), np.arange(40, 60)), worker.get_raw(np.arange(20), np.arange(40, 60))
    ):
        np.testing.assert_array_equal(a, b)
    assert worker.corrupt_ids == inline.corrupt_ids and len(worker.corrupt_ids) == 1


def test_auto_decode_workers():
    cores = tfds_sources.available_cores()
    assert tfds_sources.auto_decode_workers("cifar") == 0
    assert tfds_sources.auto_decode_workers("imagenet") == (cores if cores > 1 else 0)


@pytest.mark.slow
def test_trainer_runs_the_fake_imagenet2012(data_dir, tmp_path):
    """The Trainer on the real imagenet2012 path (decode workers, the auto decoder): one epoch."""
    from lbt.train.loop import Trainer

    c = _config(data_dir, 1, on_corrupt="skip")
    c.model.width, c.model.ghost_batch_size = 4, 2
    c.train.global_microbatch, c.train.progress, c.train.eval_every_epochs = 16, False, 0.0
    c.schedule.epochs, c.schedule.global_batch = 1.0, 16
    c.schedule.lr.name, c.schedule.lr.milestones, c.schedule.batch.mode = "constant", (), "decay_lr"
    summary = Trainer(c, tmp_path).run()
    assert summary["examples_seen"] >= N_TRAIN and summary["corrupt_examples_skipped"]["train"] == 1
    assert 0.0 <= summary["final_eval_accuracy"] <= 1.0


def test_decoder_validation_and_fallback(data_dir, monkeypatch):
    c = base_config()
    c.dataset.decoder = "simd"
    with pytest.raises(ConfigError) as e:
        validate(c, num_devices=1, num_train=1438)
    assert e.value.field == "dataset.decoder" and "auto, turbo, pil" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_splits(_config(data_dir, decoder="simd"))
    assert e.value.field == "dataset.decoder"
    assert turbo.resolve("pil") == "pil"
    with pytest.raises(ValueError, match="unknown decoder"):
        pp.Preprocessor("imagenet", 24, decoder="auto")
    monkeypatch.setattr(turbo, "_modules", lambda: None)  # simplejpeg / OpenCV not installed
    assert not turbo.available() and turbo.versions() == {} and turbo.resolve("auto") == "pil"
    assert load_splits(_config(data_dir)).train.preprocessor.decoder == "pil"
    with pytest.raises(ConfigError) as e:
        load_splits(_config(data_dir, decoder="turbo"))
    assert e.value.field == "dataset.decoder" and "lbt[jpeg]" in str(e.value)


def test_decode_workers_validation(data_dir):
    c = base_config()
    c.dataset.decode_workers = -1
    with pytest.raises(ConfigError) as e:
        validate(c, num_devices=1, num_train=1438)
    assert e.value.field == "dataset.decode_workers" and "config.dataset.decode_workers" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_splits(_config(data_dir, -2))
    assert e.value.field == "dataset.decode_workers"
    c.dataset.decode_workers = 3
    validate(c, num_devices=1, num_train=1438)  # any count >= 0 is fine


# ---------------------------------------------------------------------------------------------
# Decoding only what the crop needs


def _jpeg(key, shape, **options):
    return encode_image(natural_pixels(key, (*shape, 3)), "JPEG", quality=90, **options)


def test_jpeg_frame_reads_the_header():
    for shape, options, sequential in (((75, 100), {}, True), ((64, 48), {"progressive": True}, False)):
        frame = pp.jpeg_frame(_jpeg(1, shape, **options))
        assert frame is not None and frame[:2] == shape and frame[4] is sequential
        assert frame[2] == 16  # 4:2:0 chroma: MCUs of 16 rows
    grey = encode_image(natural_pixels(2, (40, 30, 3))[..., 0], "JPEG")
    assert pp.jpeg_frame(grey)[:3] == (40, 30, 8)
    assert pp.jpeg_frame(encode_image(natural_pixels(3, (8, 8, 3)), "PNG")) is None
    assert pp.jpeg_frame(b"\xff\xd8\xff") is None and pp.jpeg_frame(b"") is None


def test_row_limited_decode_equals_full_decode():
    """Where no DCT scaling applies, decoding only down to the crop gives the very same pixels."""
    for key, shape in enumerate(((375, 500), (100, 75), (57, 91))):
        for options in ({}, {"progressive": True}):
            data = _jpeg(key, shape, **options)
            full = tfds_sources.decode_image(data)
            for position in range(25):
                want = pp.imagenet_train_u8(full, pp.example_rng(7, position), 224)
                got = pp.imagenet_train_u8_jpeg(data, pp.example_rng(7, position), 224)
                np.testing.assert_array_equal(got, want)


@needs_turbo
def test_turbo_row_limited_decode_equals_its_full_decode():
    """turbo: decoding only down to the crop (libjpeg stops early) gives the crop of a full decode."""
    for key, shape in enumerate(((375, 500), (100, 75), (57, 91))):
        for options in ({}, {"progressive": True}):
            data = _jpeg(key, shape, **options)
            full = tfds_sources.decode_image(data)  # PIL and simplejpeg share libjpeg-turbo's IDCT
            for position in range(25):
                want = pp.imagenet_train_u8(full, pp.example_rng(7, position), 224, "turbo")
                got = pp.imagenet_train_u8_jpeg(data, pp.example_rng(7, position), 224, "turbo")
                assert got.shape == (224, 224, 3)
                np.testing.assert_array_equal(got, want)
    # the decoded rows themselves: row-limited = the top of the full decode
    data = _jpeg(0, (375, 500))
    frame = pp.jpeg_frame(data)
    limited, rows = pp.limit_rows(data, frame, 100)
    assert rows == 128 and pp.jpeg_frame(limited)[0] == 128
    img, scale = turbo.decode(limited, rows, 500, 1, True)
    assert scale == 1 and img.shape == (128, 500, 3)
    np.testing.assert_array_equal(img[:100], tfds_sources.decode_image(data)[:100])  # rows above `bottom`


def _smooth_jpeg(shape: tuple[int, int]) -> bytes:
    """A JPEG of slow gradients: resize filters and sub-pixel box shifts change it by < 1 level."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    rgb = np.stack([x / shape[1], y / shape[0], 0.5 + 0.4 * np.sin(x / 90.0 + y / 130.0)], -1)
    return encode_image((rgb * 230 + 10).astype(np.uint8), "JPEG", quality=95)


@needs_turbo
def test_turbo_dct_scaled_decode_is_deterministic_and_close_to_full_decode():
    """DCT-scaled crops hit the same image region as full-scale ones (the box scaled, rounded to
    the decoded grid): on a smooth image they agree within a level or two."""
    data = _smooth_jpeg((375, 500))
    full = tfds_sources.decode_image(data)
    scaled = 0
    for position in range(40):
        _, _, h, w = pp.sample_crop(375, 500, pp.example_rng(1, position))
        got = pp.imagenet_train_u8_jpeg(data, pp.example_rng(1, position), 48, "turbo")
        np.testing.assert_array_equal(got, pp.imagenet_train_u8_jpeg(data, pp.example_rng(1, position), 48, "turbo"))
        want = pp.imagenet_train_u8(full, pp.example_rng(1, position), 48, "turbo")
        assert got.shape == want.shape == (48, 48, 3)
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        if pp.dct_scale(h, w, 48) > 1:
            scaled += 1
            assert diff.mean() < 1.5 and diff.max() < 16, (diff.mean(), diff.max())
        else:
            assert diff.max() == 0
    assert scaled >= 10
    img, scale = turbo.decode(data, 375, 500, 4, False)
    assert scale == 4 and img.shape == (94, 125, 3)


@needs_turbo
def test_turbo_grey_cmyk_and_corrupt_jpegs():
    grey = encode_image(natural_pixels(4, (60, 80, 3))[..., 0], "JPEG")
    full = tfds_sources.decode_image(grey)
    for position in range(5):
        want = pp.imagenet_train_u8(full, pp.example_rng(0, position), 24, "turbo")
        got = pp.imagenet_train_u8_jpeg(grey, pp.example_rng(0, position), 24, "turbo")
        np.testing.assert_array_equal(got, want)
    buf = io.BytesIO()
    Image.fromarray(natural_pixels(6, (60, 80, 3))).convert("CMYK").save(buf, "JPEG", quality=90)
    cmyk = buf.getvalue()
    got = pp.imagenet_train_u8_jpeg(cmyk, pp.example_rng(0, 0), 24, "turbo")
    want = pp.imagenet_train_u8_jpeg(cmyk, pp.example_rng(0, 0), 24, "pil")
    # simplejpeg's CMYK -> RGB is not PIL's formula: the same picture, other levels
    assert got.shape == want.shape == (24, 24, 3) and got.dtype == np.uint8
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9
    np.testing.assert_array_equal(got, pp.imagenet_train_u8_jpeg(cmyk, pp.example_rng(0, 0), 24, "turbo"))
    data = _jpeg(0, (375, 500))
    for bad in (data[: len(data) // 3], data[:600]):  # truncated inside the scan / the header
        with pytest.raises(ValueError):
            pp.imagenet_train_u8_jpeg(bad, pp.example_rng(0, 3), 224, "turbo")


def test_grey_jpeg_and_png_take_the_same_crops():
    grey = encode_image(natural_pixels(4, (60, 80, 3))[..., 0], "JPEG")
    full = tfds_sources.decode_image(grey)
    for position in range(5):
        want = pp.imagenet_train_u8(full, pp.example_rng(0, position), 24)
        np.testing.assert_array_equal(pp.imagenet_train_u8_jpeg(grey, pp.example_rng(0, position), 24), want)
    assert pp.imagenet_train_u8_jpeg(encode_image(full, "PNG"), pp.example_rng(0, 0), 24) is None
    assert pp.Preprocessor("imagenet", 24, augment=False).train_u8_encoded(grey, 0, 0) is None


def test_dct_scaled_decode_is_deterministic_and_close_to_full_decode():
    data = _jpeg(5, (375, 500))
    full = tfds_sources.decode_image(data)
    scaled = 0
    for position in range(40):
        rng = pp.example_rng(1, position)
        _, _, h, w = pp.sample_crop(375, 500, rng)
        got = pp.imagenet_train_u8_jpeg(data, pp.example_rng(1, position), 48)
        np.testing.assert_array_equal(got, pp.imagenet_train_u8_jpeg(data, pp.example_rng(1, position), 48))
        want = pp.imagenet_train_u8(full, pp.example_rng(1, position), 48)
        assert got.shape == want.shape == (48, 48, 3)
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        if pp.dct_scale(h, w, 48) > 1:
            scaled += 1
            assert diff.mean() < 3.0, diff.mean()  # libjpeg's scaled IDCT vs PIL's filter: a few levels
        else:
            assert diff.max() == 0
    assert scaled >= 10


def test_dct_scale_only_downscales():
    assert pp.dct_scale(447, 900, 224) == 1
    assert pp.dct_scale(448, 448, 224) == 2
    assert pp.dct_scale(900, 1800, 224) == 4
    assert pp.dct_scale(1792, 1792, 224) == 8 and pp.dct_scale(5000, 5000, 224) == 8


def test_parse_example_matches_tfds(data_dir):
    ds = tfds_sources.open_data_source("imagenet2012", "train", data_dir)
    features = ds.dataset_info.features
    for i in range(6):
        record = ds[i]
        want = features.deserialize_example_np(record, decoders={"image": tfds.decode.SkipDecoding()})
        image, label, name = tfds_sources.parse_example(record, ("image", "label", "file_name"))
        assert (image, label, name) == (want["image"], int(want["label"]), want["file_name"])
    with pytest.raises(ValueError, match="no feature 'nope'"):
        tfds_sources.parse_example(ds[0], ("nope",))
    with pytest.raises(ValueError):
        tfds_sources.parse_example(ds[0][:-7], ("image",))


def test_natural_pixels_look_like_a_photo():
    data = _jpeg(0, (375, 500))
    assert 60_000 < len(data) < 140_000  # ImageNet's JPEGs average about 110 KB
    assert Image.open(io.BytesIO(data)).size == (500, 375)
    np.testing.assert_array_equal(natural_pixels(3, (10, 12, 3)), natural_pixels(3, (10, 12, 3)))


# ---------------------------------------------------------------------------------------------
# benchmarks/imagenet_input.py


def _check_fields(d):
    assert d["benchmark"] == "imagenet_input" and d["date"] and d["cpu_cores"] >= 1
    assert d["image_hw"] == [375, 500] and d["jpeg_quality"] == 90 and d["crop"] == 224
    assert "ratio_per_core_vs_tfdata" in d
    lbt = d["lbt"]
    assert set(lbt["workers"]) == {"1", "2"} and lbt["per_core"] > 0 and lbt["scaling_efficiency"] > 0
    assert all(v["images_per_s"] > 0 and v["images_per_cpu_s"] > 0 for v in lbt["workers"].values())
    assert set(d["host_projection"]["images_per_s"]) == {"8", "32", "96"}
    assert d["kernels_per_core"]["lbt_row_limited_crop"] > 0


def test_benchmark_quick_without_the_anchor(run_benchmark):
    d = run_benchmark("imagenet_input.py", "--quick", "--no-anchor", "--images", "16", timeout=600)
    _check_fields(d)
    assert d["ratio_per_core_vs_tfdata"] is None and "skipped" in d["tfdata"]


def test_benchmark_says_when_tensorflow_is_missing(repo, monkeypatch):
    spec = importlib.util.spec_from_file_location("imagenet_input_bench", repo / "benchmarks" / "imagenet_input.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` raises ImportError
    ok, version, why = bench._tf_status(False)
    assert not ok and version is None and "tensorflow is not installed" in why and "lbt[prepare]" in why


@pytest.mark.slow
def test_benchmark_quick_with_the_tfdata_anchor(run_benchmark):
    pytest.importorskip("tensorflow")
    d = run_benchmark("imagenet_input.py", "--quick", timeout=600)
    _check_fields(d)
    assert d["ratio_per_core_vs_tfdata"] > 0 and d["tfdata"]["per_core"] > 0 and d["tf_version"]
