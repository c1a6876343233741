"""Workdirs on local filesystems and on object storage (``gs://``, ``s3://``, ``az://``).

A workdir is either a local path (also a mounted bucket, e.g. Cloud Storage FUSE at
``/gcs/<bucket>``), handled with :class:`pathlib.Path` exactly as before, or a URL of a scheme
that ``etils.epath`` supports, handled with :class:`etils.epath.Path` (on ``gs://`` through
``tf.io.gfile`` when TensorFlow is installed, else through ``fsspec``/``gcsfs``). orbax writes
checkpoints to such URLs itself; everything else lbt writes (``metrics.jsonl``, ``summary.json``,
``config.json``, TensorBoard events, ``curves.png``, ``eval_step*.json``) goes through the few
functions here. What object storage lacks, and what lbt does instead (docs/checkpointing.md,
"Workdirs on object storage"):

* no appends: ``metrics.jsonl`` is kept in memory and the whole object rewritten at each sync
  (:class:`lbt.train.metrics.ObjectMetricsWriter`); TensorBoard writes a local temporary
  directory that is copied up at each sync;
* no rename: an object write is already atomic (a reader sees the old or the new object);
* no locks: the workdir is not locked (one warning, :class:`lbt.train.workdir.WorkdirLock`).

Local paths never import epath: the local hot path is unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The URL schemes of etils.epath (``epath.gpath._URI_SCHEMES``, private), minus read-only ``hf://``.
SCHEMES = ("gs", "s3", "az")

AnyPath = Any  # pathlib.Path or etils.epath.Path (same API for what lbt uses)


def scheme(path: Any) -> str | None:
    """The URL scheme of ``path`` (``"gs"`` for ``gs://b/x``), or None for a local path."""
    text = str(path)
    head, sep, _ = text.partition("://")
    return head if sep and head.isalnum() else None


def is_remote(path: Any) -> bool:
    """True for a URL workdir (object storage), False for a local path (mounted buckets included)."""
    return scheme(path) is not None


def check_scheme(path: Any, flag: str = "--workdir") -> None:
    """Raise :class:`lbt.runtime.SetupError` for a URL whose scheme lbt cannot write."""
    s = scheme(path)
    if s is not None and s not in SCHEMES:
        from lbt.runtime import SetupError

        raise SetupError(
            f"{flag} {str(path)!r}: {s}:// is not supported; use a local path (also a bucket mounted with Cloud "
            f"Storage FUSE, e.g. /gcs/<bucket>/run) or one of {', '.join(x + '://' for x in SCHEMES)}"
        )


def as_path(path: Any) -> AnyPath:
    """``path`` as :class:`pathlib.Path` (local) or :class:`etils.epath.Path` (a URL; epath is
    imported only then). A path that already is one of them is returned as it is."""
    if not isinstance(path, (str, Path)) and hasattr(path, "read_bytes"):
        return path  # already an epath.Path (or another pathlib-like path)
    if is_remote(path):
        from etils import epath

        return epath.Path(str(path))
    return Path(path)


def write_bytes_atomic(path: Any, data: bytes) -> None:
    """Write ``data`` so a reader sees the old file or the new one, never a part.

    Local: a temp file in the same directory, ``fsync`` and ``os.replace`` (a failed write keeps
    the old file). Object storage: one object upload, which is atomic there.
    """
    import os

    path = as_path(path)
    if is_remote(path):
        path.write_bytes(data)
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_tree_up(local_dir: Path, dest: Any) -> int:
    """Copy every file under ``local_dir`` to the same relative path under ``dest`` (whole files,
    overwritten); returns the number of files copied. Used to mirror TensorBoard's local event
    files to a workdir on object storage."""
    dest = as_path(dest)
    n = 0
    for f in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
        target = dest / f.relative_to(local_dir).as_posix()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
        n += 1
    return n
