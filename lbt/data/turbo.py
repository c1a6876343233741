"""The fast JPEG path of ImageNet training (``dataset.decoder = "turbo"``, docs/data.md).

libjpeg-turbo through `simplejpeg <https://pypi.org/project/simplejpeg/>`_ decodes straight into
a NumPy array (row-limited and DCT-scaled as on the PIL path, without PIL's Python-level feeding
and its 4-byte-per-pixel image), and OpenCV's SIMD ``cv2.resize`` (bilinear) resizes the crop.
Both come with ``pip install 'lbt[jpeg]'``; ``dataset.decoder = "auto"`` uses them when both
import and PIL otherwise. The pixels are a pure function of the JPEG bytes, the crop and the two
libraries' versions.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from lbt.errors import ConfigError

DECODERS = ("auto", "turbo", "pil")
INSTALL_HINT = "pip install 'lbt[jpeg]' (simplejpeg and opencv-python-headless)"

# libjpeg's warning when decoding stops before the end of the scan because the frame height was
# lowered (jpeg_finish_decompress skips the rest): every requested row is decoded by then.
_STOPPED_EARLY = "extraneous bytes before marker"
# libjpeg's warning for a file that ends inside the scan: a corrupt example.
_TRUNCATED = "Premature end of JPEG file"
_CMYK = ("CMYK", "YCCK")


@functools.cache
def _modules() -> tuple[Any, Any] | None:
    """``(simplejpeg, cv2)``, or None if either does not import."""
    try:
        import cv2
        import simplejpeg
    except ImportError:
        return None
    # One image per call: the parallelism comes from the decode workers (or grain's threads).
    cv2.setNumThreads(1)
    return simplejpeg, cv2


def available() -> bool:
    """Whether simplejpeg and OpenCV are installed."""
    return _modules() is not None


def versions() -> dict[str, str]:
    """The versions of the libraries the turbo path uses (empty if they are missing)."""
    mods = _modules()
    if mods is None:
        return {}
    simplejpeg, cv2 = mods
    return {"simplejpeg": str(simplejpeg.__version__), "opencv": str(cv2.__version__)}


def resolve(decoder: str) -> str:
    """``dataset.decoder`` -> the path to use: ``"turbo"`` or ``"pil"`` (``auto`` = turbo when
    its libraries are installed). Raises :class:`ConfigError` for an unknown value or an
    explicit ``turbo`` without the libraries."""
    if decoder not in DECODERS:
        raise ConfigError("dataset.decoder", f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    if decoder == "pil":
        return "pil"
    if available():
        return "turbo"
    if decoder == "turbo":
        raise ConfigError("dataset.decoder", f"'turbo' needs simplejpeg and OpenCV: {INSTALL_HINT}, or use 'pil'")
    return "pil"


def decode(data: bytes, rows: int, width: int, scale: int, lowered: bool) -> tuple[np.ndarray, int]:
    """RGB uint8 pixels of the JPEG ``data`` (``rows`` x ``width`` in its frame header; ``lowered``:
    that height was lowered to stop decoding early) at DCT scale ``1/scale`` if libjpeg offers it.
    Returns ``(image, applied scale)``; raises ValueError for a corrupt or truncated file."""
    simplejpeg = _modules()[0]
    want = (-(-rows // scale), -(-width // scale))
    h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data, min_height=want[0], min_width=want[1])
    if (h, w) != want:  # libjpeg picked another factor (tiny images): decode at full scale
        scale, (h, w) = 1, (rows, width)
    if colorspace in _CMYK:  # converted from a 4-channel intermediate: no output buffer
        return simplejpeg.decode_jpeg(data, "RGB", min_height=h, min_width=w, strict=False), scale
    out = np.empty((h, w, 3), np.uint8)
    try:
        return simplejpeg.decode_jpeg(data, "RGB", min_height=h, min_width=w, buffer=out, strict=True), scale
    except ValueError as e:
        why = str(e)
        if lowered and _STOPPED_EARLY in why:
            return out, scale
        if _TRUNCATED in why:
            raise
    # Another libjpeg warning (e.g. a corrupt data segment), which PIL and tf.data accept too.
    return simplejpeg.decode_jpeg(data, "RGB", min_height=h, min_width=w, buffer=out, strict=False), scale


def resize(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """``cv2.resize`` of ``image[top:bottom, left:right]`` (``box`` = left, top, right, bottom) to
    ``size`` x ``size``: bilinear (pixel-centre aligned, edges replicated, no antialiasing) while
    both sides shrink by less than 2, as after DCT scaling; else OpenCV's area average
    (``INTER_AREA``), which does not skip pixels."""
    cv2 = _modules()[1]
    left, top, right, bottom = box
    shrink = max(right - left, bottom - top) >= 2 * size
    method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image[top:bottom, left:right], (size, size), interpolation=method)


def flip(image: np.ndarray) -> np.ndarray:
    """``image[:, ::-1]`` as a new contiguous array (``cv2.flip``: the crop is then copied into
    the batch with one memcpy instead of a strided copy)."""
    return _modules()[1].flip(image, 1)
