"""Pure NumPy (+ PIL for resizing) preprocessing for CIFAR-10 and ImageNet.

Every random choice of an augmentation comes from :func:`example_rng` ``(seed, position)``, where
``position`` is the global example position (= examples seen before it). The same position
always gives the same crop and flip, so a resumed run sees exactly the pixels an uninterrupted
run would have seen, whatever the process count or prefetch depth.

Inputs are ``uint8`` images ``[H, W, 3]``; outputs are ``float32`` ``[S, S, 3]`` normalised per
channel: ``(x / 255 - mean) / std``.

CIFAR-10 train: pad 4 pixels on each side with **zeros in pixel space** (black, as in He et al.
2016 and torchvision ``RandomCrop(32, padding=4)``), take a random 32x32 crop (offsets uniform in
0..8), flip horizontally with probability 1/2, normalise. Eval: normalise only.

ImageNet train: Inception-style random resized crop (area 8%-100% of the image, aspect ratio
log-uniform in [3/4, 4/3], 10 attempts, then a center-crop fallback, as torchvision's
``RandomResizedCrop`` / ``tf.image.sample_distorted_bounding_box``), resized to ``size`` x ``size``
with bilinear PIL resampling, flip with probability 1/2, normalise. Eval: resize the shorter side
to ``round(size / 0.875)`` (256 for 224, 342 for 299), center crop ``size`` x ``size``, normalise.

ImageNet train from JPEG bytes (:func:`imagenet_train_u8_jpeg`, the path training takes) decodes
only what the crop needs. The crop is drawn from the size in the JPEG header, before decoding
(the same draws as :func:`imagenet_train_u8`), then

* **rows**: a baseline JPEG is decoded only down to the crop's bottom edge plus one MCU row (its
  frame header's height is lowered), which gives bit-identical crop pixels to a full decode;
* **DCT scaling** (PIL draft mode): a crop that is at least 2, 4 or 8 times ``size`` on both
  sides is decoded at 1/2, 1/4 or 1/8 scale by libjpeg and the crop box scaled by the same
  factor, so the final resize still only downscales. This changes the pixels against a full
  decode (libjpeg's scaled IDCT instead of PIL's filter over the first factor); it is a pure
  function of the bytes and the crop, hence of (seed, position).

Two implementations (``decoder``, from ``dataset.decoder``): ``"pil"`` decodes with PIL and
resizes with PIL's antialiased bilinear filter; ``"turbo"`` (:mod:`lbt.data.turbo`) decodes with
libjpeg-turbo (simplejpeg) and resizes the crop with OpenCV's SIMD bilinear ``cv2.resize``
(no antialiasing while both sides shrink by less than 2, else an area average), about 1.5x
faster per image. Their pixels differ by a few levels; each is a pure function of (seed,
position) and of its libraries' versions. The eval path uses PIL in both cases.
"""

from __future__ import annotations

import io
import math

import numpy as np

# Per-channel statistics of the CIFAR-10 training set on the [0, 1] scale (the exact std, not the
# often-copied (0.2023, 0.1994, 0.2010)).
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)
# ImageNet statistics (as in torchvision / the Flax and big_vision examples).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

CIFAR_PAD = 4
CROP_AREA = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
EVAL_CROP_FRACTION = 0.875

# Tag mixed into the per-example seed so augmentation streams never collide with other users of
# ``default_rng([seed, ...])`` in the code base.
_AUGMENT_STREAM = 0x6C6274  # "lbt"


def apply_lut(images: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """float32 ``lut[c, v]`` for each uint8 pixel ``v`` of channel ``c`` of ``images [..., C]``."""
    return lut[np.arange(lut.shape[0]), images]


def normalization_lut(mean: np.ndarray, std: np.ndarray, scale: float | None = None) -> np.ndarray:
    """float32 ``[C, 256]`` table of ``((v [* scale]) - mean[c]) / std[c]`` for v = 0..255, computed
    with the same float32 operations as the per-pixel normalisation, so it is bit-identical."""
    v = np.arange(256, dtype=np.float32)[None, :]
    if scale is not None:
        v = v * np.float32(scale)
    mean = np.asarray(mean, np.float32).reshape(-1, 1)
    std = np.asarray(std, np.float32).reshape(-1, 1)
    return ((v - mean) / std).astype(np.float32, copy=False)


def example_rng(seed: int, position: int) -> np.random.Generator:
    """The random generator of the example at global ``position`` in a run with ``seed``."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(position), _AUGMENT_STREAM])


def lut_for(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The :func:`normalization_lut` of :func:`normalize` (``x / 255``, then mean and std)."""
    return normalization_lut(mean, std, scale=1.0 / 255.0)


def normalize(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``uint8 [H, W, C]`` -> ``float32 (x / 255 - mean) / std``."""
    x = image.astype(np.float32) * np.float32(1.0 / 255.0)
    return ((x - mean) / std).astype(np.float32, copy=False)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """``uint8 [H, W, 3]`` from a grayscale ``[H, W]`` / ``[H, W, 1]`` or RGBA ``[H, W, 4]`` array."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"expected an image [H, W, C], got shape {image.shape}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif image.shape[-1] == 4:
        image = image[..., :3]
    elif image.shape[-1] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    return image


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def cifar_train(image: np.ndarray, rng: np.random.Generator, pad: int = CIFAR_PAD) -> np.ndarray:
    """Zero-pad ``pad`` pixels, random crop back to the input size, random flip, normalise."""
    return normalize(cifar_train_u8(image, rng, pad), CIFAR_MEAN, CIFAR_STD)


def cifar_train_u8(image: np.ndarray, rng: np.random.Generator, pad: int = CIFAR_PAD) -> np.ndarray:
    """:func:`cifar_train` before the normalisation (uint8)."""
    h, w, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="constant", constant_values=0)
    dy, dx = (int(v) for v in rng.integers(0, 2 * pad + 1, size=2))
    crop = padded[dy : dy + h, dx : dx + w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return crop


def cifar_eval(image: np.ndarray) -> np.ndarray:
    return normalize(image, CIFAR_MEAN, CIFAR_STD)


# ---------------------------------------------------------------------------------------------
# ImageNet


def sample_crop(
    height: int, width: int, rng: np.random.Generator, area_range=CROP_AREA, ratio_range=CROP_RATIO, attempts: int = 10
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of an Inception-style random crop (torchvision RandomResizedCrop)."""
    area = height * width
    log_lo, log_hi = math.log(ratio_range[0]), math.log(ratio_range[1])
    for _ in range(attempts):
        target = area * rng.uniform(area_range[0], area_range[1])
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: the largest center crop whose aspect ratio is inside ratio_range.
    in_ratio = width / height
    if in_ratio < ratio_range[0]:
        w, h = width, int(round(width / ratio_range[0]))
    elif in_ratio > ratio_range[1]:
        h, w = height, int(round(height * ratio_range[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _resize(
    image: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int] | None = None, resample: str = "bilinear"
) -> np.ndarray:
    """PIL resize of ``image`` (optionally of the crop ``box`` = (left, top, right, bottom)) to (w, h)."""
    from PIL import Image

    method = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[resample]
    pil = Image.fromarray(image)
    return np.asarray(pil.resize(size, resample=method, box=box))


def imagenet_train(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Random resized crop to ``size`` x ``size``, random flip, normalise."""
    return normalize(imagenet_train_u8(image, rng, size), IMAGENET_MEAN, IMAGENET_STD)


def imagenet_train_u8(image: np.ndarray, rng: np.random.Generator, size: int, decoder: str = "pil") -> np.ndarray:
    """:func:`imagenet_train` before the normalisation (uint8); ``decoder`` picks the resize."""
    image = as_rgb(image)
    top, left, h, w = sample_crop(image.shape[0], image.shape[1], rng)
    if decoder == "turbo":
        from lbt.data import turbo

        out = turbo.resize(image, (left, top, left + w, top + h), size)
        return turbo.flip(out) if rng.random() < 0.5 else out
    out = _resize(image, (size, size), box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return out


# JPEG start-of-frame markers (SOF0-SOF15 except DHT C4, JPG C8 and DAC CC).
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Sequential Huffman frames (baseline, extended): one scan, rows in order, so the frame height can
# be lowered to stop decoding early.
_JPEG_SEQUENTIAL = frozenset({0xC0, 0xC1})
DCT_SCALES = (8, 4, 2)


def jpeg_frame(data: bytes) -> tuple[int, int, int, int, bool] | None:
    """``(height, width, mcu_height, height_offset, sequential)`` from a JPEG's frame header.

    ``height_offset`` is the byte offset of the 16-bit height field; ``sequential`` is True for
    baseline / extended Huffman frames. None if ``data`` is not a JPEG whose frame header comes
    before its first scan (the caller then decodes the image fully)."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # parameterless markers
            i += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # SOI / EOI / SOS before any frame header
            return None
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _JPEG_SOF:
            s = i + 4
            if s + 6 > n:
                return None
            height = (data[s + 1] << 8) | data[s + 2]
            width = (data[s + 3] << 8) | data[s + 4]
            components = data[s + 5]
            if height == 0 or width == 0 or components == 0 or s + 6 + 3 * components > n:
                return None  # height 0: defined later by a DNL marker
            v_max = max(data[s + 7 + 3 * k] & 0x0F for k in range(components)) or 1
            return height, width, 8 * v_max, s + 1, marker in _JPEG_SEQUENTIAL
        i += 2 + length
    return None


def dct_scale(crop_h: int, crop_w: int, size: int) -> int:
    """The largest libjpeg DCT scale factor (8, 4, 2, else 1) that leaves a crop of
    ``crop_h`` x ``crop_w`` at least ``size`` on both sides, so the final resize only downscales."""
    for s in DCT_SCALES:
        if crop_h >= s * size and crop_w >= s * size:
            return s
    return 1


def limit_rows(data: bytes, frame, bottom: int) -> tuple[bytes, int]:
    """``(data, rows)``: the JPEG ``data`` with its frame height lowered to ``rows`` >= ``bottom``
    (a sequential frame only; else unchanged), so that a decoder stops after row ``rows``."""
    height, _, mcu, at, sequential = frame
    if not sequential:
        return data, height
    # One MCU row of margin past `bottom`: every row above it sees the same chroma upsampling
    # context as in a full decode, so its pixels are identical.
    rows = min(height, -(-(bottom + mcu) // mcu) * mcu)
    if rows < height:
        data = b"".join((data[:at], rows.to_bytes(2, "big"), data[at + 2 :]))
    return data, rows


def decode_jpeg_window(data: bytes, frame, bottom: int, scale: int):
    """PIL image of the JPEG ``data`` decoded down to row ``bottom`` (exclusive; more rows may be
    decoded) at DCT scale ``1/scale`` (draft mode). Returns ``(image, applied_scale)``; the image
    is RGB and starts at row 0 of the full image, in units of ``1/applied_scale`` pixels."""
    from PIL import JpegImagePlugin

    data, _ = limit_rows(data, frame, bottom)
    img = JpegImagePlugin.JpegImageFile(io.BytesIO(data))
    applied = 1
    if scale > 1:
        w, h = img.size
        img.draft("RGB", (max(1, w // scale), max(1, h // scale)))
        applied = int(img.decoderconfig[0]) if img.decoderconfig else 1
    img.load()
    if img.mode != "RGB":  # grey (as as_rgb: the channel repeated), CMYK
        img = img.convert("RGB")
    return img, applied


def imagenet_train_u8_jpeg(
    data: bytes, rng: np.random.Generator, size: int, decoder: str = "pil"
) -> np.ndarray | None:
    """:func:`imagenet_train_u8` of the JPEG ``data`` (bytes), decoding only what the crop needs
    (module docstring), or None if ``data`` is not a JPEG with a readable frame header."""
    from PIL import Image

    frame = jpeg_frame(data)
    if frame is None:
        return None
    top, left, h, w = sample_crop(frame[0], frame[1], rng)
    scale = dct_scale(h, w, size)
    if decoder == "turbo":
        from lbt.data import turbo

        out = _turbo_crop(data, frame, (top, left, h, w), scale, size)
        return turbo.flip(out) if rng.random() < 0.5 else out
    # The resize filter reaches about (crop / size) pixels past the box edge: decode those rows too.
    img, s = decode_jpeg_window(data, frame, top + h + -(-h // size) + 2 * scale, scale)
    box = (left / s, top / s, (left + w) / s, (top + h) / s)
    img = img.resize((size, size), resample=Image.BILINEAR, box=box)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img)


def _turbo_crop(data: bytes, frame, crop: tuple[int, int, int, int], scale: int, size: int) -> np.ndarray:
    """The ``crop`` = (top, left, h, w) of the JPEG ``data`` resized to ``size`` on the turbo path:
    rows down to the crop's bottom edge, at DCT scale 1/``scale``, the box rounded to that scale."""
    from lbt.data import turbo

    top, left, h, w = crop
    limited, rows = limit_rows(data, frame, top + h)
    img, s = turbo.decode(limited, rows, frame[1], scale, rows < frame[0])
    ih, iw = img.shape[:2]
    x0, y0 = min(iw - 1, (left + s // 2) // s), min(ih - 1, (top + s // 2) // s)
    x1 = min(iw, max(x0 + 1, (left + w + s // 2) // s))
    y1 = min(ih, max(y0 + 1, (top + h + s // 2) // s))
    return turbo.resize(img, (x0, y0, x1, y1), size)


def eval_resize_size(size: int) -> int:
    """The shorter side before the eval center crop: 256 for 224, 342 for 299."""
    return int(round(size / EVAL_CROP_FRACTION))


def imagenet_eval(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size / 0.875``, center crop ``size`` x ``size``, normalise."""
    return normalize(imagenet_eval_u8(image, size), IMAGENET_MEAN, IMAGENET_STD)


def imagenet_eval_u8(image: np.ndarray, size: int) -> np.ndarray:
    """:func:`imagenet_eval` before the normalisation (uint8)."""
    image = as_rgb(image)
    h, w = image.shape[:2]
    short = eval_resize_size(size)
    if h <= w:
        nh, nw = short, max(short, int(round(w * short / h)))
    else:
        nh, nw = max(short, int(round(h * short / w))), short
    resized = _resize(image, (nw, nh))
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[top : top + size, left : left + size]


# ---------------------------------------------------------------------------------------------
# Dispatch


class Preprocessor:
    """The preprocessing of one dataset: ``train(image, seed, position)`` and ``eval(image)``.

    ``kind`` is ``"cifar"`` or ``"imagenet"``; ``augment=False`` makes ``train`` equal ``eval``;
    ``decoder`` (``"pil"`` or ``"turbo"``) is the ImageNet training crop's implementation.
    """

    def __init__(self, kind: str, image_size: int = 0, augment: bool = True, decoder: str = "pil"):
        if kind not in ("cifar", "imagenet"):
            raise ValueError(f"unknown preprocessing {kind!r}")
        if decoder not in ("pil", "turbo"):
            raise ValueError(f"unknown decoder {decoder!r}; resolve 'auto' with lbt.data.turbo.resolve")
        self.kind = kind
        self.augment = augment
        self.decoder = decoder
        self.image_size = 32 if kind == "cifar" else (image_size or 224)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def check(self, image: np.ndarray) -> np.ndarray:
        """Validate (and convert to RGB uint8) a decoded image; raises ValueError if unusable."""
        image = as_rgb(image)
        if self.kind == "cifar" and image.shape != (32, 32, 3):
            raise ValueError(f"expected a 32x32x3 CIFAR image, got shape {image.shape}")
        if min(image.shape[:2]) < 1:
            raise ValueError(f"empty image of shape {image.shape}")
        return image

    @property
    def lut(self) -> np.ndarray:
        """float32 ``[3, 256]``: the normalised value of each uint8 pixel value, per channel."""
        return lut_for(*self.mean_std)

    @property
    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        return (CIFAR_MEAN, CIFAR_STD) if self.kind == "cifar" else (IMAGENET_MEAN, IMAGENET_STD)

    def train_u8(self, image: np.ndarray, seed: int, position: int) -> np.ndarray:
        """The augmented crop, uint8 (normalised by :meth:`train`, or on the device)."""
        if not self.augment:
            return self.eval_u8(image)
        rng = example_rng(seed, position)
        if self.kind == "cifar":
            return cifar_train_u8(image, rng)
        return imagenet_train_u8(image, rng, self.image_size, self.decoder)

    def train_u8_encoded(self, data: bytes, seed: int, position: int) -> np.ndarray | None:
        """:meth:`train_u8` straight from encoded bytes where that saves work (ImageNet JPEGs:
        :func:`imagenet_train_u8_jpeg`), else None (decode fully, then :meth:`train_u8`)."""
        if self.kind != "imagenet" or not self.augment:
            return None
        return imagenet_train_u8_jpeg(data, example_rng(seed, position), self.image_size, self.decoder)

    def eval_u8(self, image: np.ndarray) -> np.ndarray:
        if self.kind == "cifar":
            return image
        return imagenet_eval_u8(image, self.image_size)

    def train(self, image: np.ndarray, seed: int, position: int) -> np.ndarray:
        return normalize(self.train_u8(image, seed, position), *self.mean_std)

    def eval(self, image: np.ndarray) -> np.ndarray:
        return normalize(self.eval_u8(image), *self.mean_std)
