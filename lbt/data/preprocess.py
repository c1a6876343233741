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
"""

from __future__ import annotations

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


def imagenet_train_u8(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """:func:`imagenet_train` before the normalisation (uint8)."""
    image = as_rgb(image)
    top, left, h, w = sample_crop(image.shape[0], image.shape[1], rng)
    out = _resize(image, (size, size), box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return out


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

    ``kind`` is ``"cifar"`` or ``"imagenet"``; ``augment=False`` makes ``train`` equal ``eval``.
    """

    def __init__(self, kind: str, image_size: int = 0, augment: bool = True):
        if kind not in ("cifar", "imagenet"):
            raise ValueError(f"unknown preprocessing {kind!r}")
        self.kind = kind
        self.augment = augment
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
        return imagenet_train_u8(image, rng, self.image_size)

    def eval_u8(self, image: np.ndarray) -> np.ndarray:
        if self.kind == "cifar":
            return image
        return imagenet_eval_u8(image, self.image_size)

    def train(self, image: np.ndarray, seed: int, position: int) -> np.ndarray:
        return normalize(self.train_u8(image, seed, position), *self.mean_std)

    def eval(self, image: np.ndarray) -> np.ndarray:
        return normalize(self.eval_u8(image), *self.mean_std)
