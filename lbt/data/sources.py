"""In-memory sources: scikit-learn digits (the offline default) and any .npz of images/labels.

A source gives random access by dataset index (the :class:`lbt.data.types.Source` protocol).
``get(indices, positions, train)`` returns preprocessed float32 images ``[n, H, W, C]`` and int32
labels. ``positions`` are the global example positions; sources that augment derive their
randomness from (seed, position) so the result is exact on resume.

An npz is validated at load (shapes, dtypes, label range, finite pixels, split sizes): each
problem is one :class:`ConfigError` on ``dataset.path`` that says how to fix the file.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np

from lbt.data.preprocess import apply_lut, normalization_lut
from lbt.data.types import Splits, split_sizes
from lbt.errors import ConfigError

MIN_SPLIT_EXAMPLES = 2
"""The fewest examples a holdout train or test split may have."""

_NPZ_HINT = "write it with np.savez(path, images=images, labels=labels)"


@dataclasses.dataclass
class ArraySource:
    """In-memory images with random access. ``images`` are the wire values: uint8 pixels (with
    ``lut`` mapping them to normalised float32) or float32 already normalised (``lut`` None)."""

    images: np.ndarray  # uint8 or float32 [N, H, W, C]
    labels: np.ndarray  # int32 [N]
    num_classes: int
    lut: np.ndarray | None = None  # float32 [C, 256] for uint8 images

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def corrupt_count(self) -> int:
        """Always 0: in-memory arrays have no corrupt examples."""
        return 0

    @property
    def input_lut(self) -> np.ndarray | None:
        return self.lut

    def get(self, indices: np.ndarray, positions: np.ndarray | None = None, train: bool = True):
        images = self.images[indices]
        return (apply_lut(images, self.lut) if self.lut is not None else images), self.labels[indices]

    def get_with_mask(self, indices: np.ndarray, positions: np.ndarray | None = None, train: bool = True):
        """:meth:`get` plus an all-True mask (nothing is ever replaced)."""
        images, labels = self.get(indices, positions, train)
        return images, labels, np.ones(labels.shape[0], dtype=bool)

    def get_raw(self, indices: np.ndarray, positions: np.ndarray | None = None, train: bool = True):
        return self.images[indices], self.labels[indices], np.ones(len(indices), dtype=bool)


def _holdout(
    images: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int, num_classes: int, name: str
) -> Splits:
    """Deterministic shuffled train/test split, normalised with train-split statistics."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("dataset.test_fraction", f"must be in (0, 1), got {test_fraction}")
    pixels = images[..., None] if images.ndim == 3 else images
    images = pixels.astype(np.float32)
    n_train, _ = split_sizes(len(labels), test_fraction)
    perm = np.random.default_rng(seed).permutation(len(labels))
    tr, te = perm[:n_train], perm[n_train:]
    mean = images[tr].mean(axis=(0, 1, 2), keepdims=True)
    std = images[tr].std(axis=(0, 1, 2), keepdims=True) + 1e-6
    labels = labels.astype(np.int32)
    if _is_uint8_valued(pixels):  # e.g. digits (0..16), MNIST: uint8 on the wire, normalised on device
        wire, lut = pixels.astype(np.uint8), normalization_lut(mean, std)
    else:
        wire, lut = (images - mean) / std, None
    return Splits(
        ArraySource(np.ascontiguousarray(wire[tr]), labels[tr], num_classes, lut),
        ArraySource(np.ascontiguousarray(wire[te]), labels[te], num_classes, lut),
        name,
    )


def _is_uint8_valued(pixels: np.ndarray) -> bool:
    """True if every pixel is an integer in [0, 255] (so uint8 represents it exactly)."""
    if pixels.dtype == np.uint8:
        return True
    if pixels.dtype.kind not in "iuf" or pixels.size == 0:
        return False
    return bool(pixels.min() >= 0 and pixels.max() <= 255 and np.all(np.floor(pixels) == pixels))


def load_digits_splits(test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """scikit-learn's 1,797 8x8 digits (ships with the package, no download)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.reshape(-1, 8, 8, 1)
    return _holdout(images, d.target, test_fraction, seed, 10, "digits")


# ---------------------------------------------------------------------------------------------
# npz


def _read_npz(path: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the .npz at ``path``, or a :class:`ConfigError` on ``dataset.path``."""
    if not path:
        raise ConfigError("dataset.path", "the npz dataset needs --config.dataset.path=FILE.npz")
    p = Path(path)
    if not p.is_file():
        raise ConfigError("dataset.path", f"no file at {path!r}; point it at a .npz with `images` and `labels`")
    if not zipfile.is_zipfile(p):
        with open(p, "rb") as fh:
            what = "a single .npy array" if fh.read(6) == b"\x93NUMPY" else "not a zip archive"
        raise ConfigError("dataset.path", f"{path} is not a readable .npz ({what}); {_NPZ_HINT}")
    try:
        f = np.load(p, allow_pickle=False)
    except Exception as e:  # e.g. a truncated archive
        raise ConfigError(
            "dataset.path", f"{path} is not a readable .npz ({type(e).__name__}: {e}); {_NPZ_HINT}"
        ) from e
    with f:
        missing = set(keys) - set(f.files)
        if missing:
            raise ConfigError(
                "dataset.path", f"{path} lacks arrays {sorted(missing)}; it needs `images` and `labels`; {_NPZ_HINT}"
            )
        try:
            return {k: f[k] for k in keys}
        except Exception as e:  # a damaged member, or an object (pickled) array
            raise ConfigError(
                "dataset.path", f"cannot read the arrays of {path} ({type(e).__name__}: {e}); {_NPZ_HINT}"
            ) from e


def _check_labels(path: str, labels: np.ndarray) -> None:
    """``labels`` must be 1-D non-negative integers that fit int32."""
    if labels.ndim != 1:
        raise ConfigError(
            "dataset.path",
            f"{path}: labels have shape {labels.shape}; they must be 1-D [N] integer class ids (e.g. labels.reshape(-1))",
        )
    if labels.dtype.kind not in "iu":
        raise ConfigError(
            "dataset.path",
            f"{path}: labels are {labels.dtype}; they must be integer class ids 0..C-1 (e.g. labels.astype(np.int64))",
        )
    if labels.size and int(labels.min()) < 0:
        raise ConfigError("dataset.path", f"{path}: labels must be class ids >= 0; found {int(labels.min())}")
    if labels.size and int(labels.max()) >= np.iinfo(np.int32).max:
        raise ConfigError(
            "dataset.path", f"{path}: label {int(labels.max())} is out of range; class ids must be 0..C-1"
        )


def _check_images(path: str, images: np.ndarray, n_labels: int) -> None:
    """``images`` must be numeric ``[N, H, W]`` or ``[N, H, W, C]``, one per label, all finite."""
    if images.ndim not in (3, 4):
        raise ConfigError(
            "dataset.path",
            f"{path}: images have shape {images.shape}; they must be [N, H, W] or [N, H, W, C] "
            "(e.g. images.reshape(N, 28, 28) for flat 28x28 rows)",
        )
    if images.dtype.kind not in "iuf":
        raise ConfigError("dataset.path", f"{path}: images are {images.dtype}; pixels must be integers or floats")
    if images.shape[0] != n_labels:
        raise ConfigError("dataset.path", f"{path}: {images.shape[0]} images but {n_labels} labels; they must match")
    if n_labels == 0:
        raise ConfigError("dataset.path", f"{path} holds no examples (0 images and labels); {_NPZ_HINT}")
    if images.dtype.kind == "f":
        finite = np.isfinite(images).reshape(n_labels, -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise ConfigError(
                "dataset.path",
                f"{path}: {bad.size} of {n_labels} images hold non-finite pixels (NaN or inf), first example "
                f"{int(bad[0])}; fix or drop those examples",
            )


def check_split_sizes(path: str, total: int, test_fraction: float) -> int:
    """N (train size) of a holdout of ``total`` examples; a ConfigError if a split is too small."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("dataset.test_fraction", f"must be in (0, 1), got {test_fraction}")
    n_train, n_test = split_sizes(total, test_fraction)
    if min(n_train, n_test) < MIN_SPLIT_EXAMPLES:
        raise ConfigError(
            "dataset.path",
            f"{path}: too few examples ({total}) for a train/test split with test_fraction={test_fraction} "
            f"({n_train} train, {n_test} test; each needs >= {MIN_SPLIT_EXAMPLES}); use a larger file",
        )
    return n_train


def npz_num_train(path: str, test_fraction: float) -> int:
    """N of the npz at ``path`` from its ``labels`` alone (``images`` is not read)."""
    labels = _read_npz(path, ("labels",))["labels"]
    _check_labels(path, labels)
    if labels.shape[0] == 0:
        raise ConfigError("dataset.path", f"{path} holds no examples (0 labels); {_NPZ_HINT}")
    return check_split_sizes(path, int(labels.shape[0]), test_fraction)


def load_npz_splits(path: str, test_fraction: float, seed: int) -> Splits:
    """Any .npz with numeric ``images`` [N,H,W] or [N,H,W,C] and integer ``labels`` [N] (validated)."""
    arrays = _read_npz(path, ("images", "labels"))
    images, labels = arrays["images"], arrays["labels"]
    _check_labels(path, labels)
    _check_images(path, images, labels.shape[0])
    check_split_sizes(path, int(labels.shape[0]), test_fraction)
    num_classes = int(labels.max()) + 1
    return _holdout(images, labels, test_fraction, seed, num_classes, "npz")
