"""A fake ``gs://`` object store for tests: etils.epath paths kept in a local directory.

``with fake_gcs(root) as store:`` makes ``epath.Path("gs://bucket/x")`` go through a backend
built on epath's own local-filesystem backend that stores ``root/bucket/x``, and that refuses
what object storage cannot do: opening an object for appending or updating (modes ``a`` and
``+``). So lbt's object-storage code path (:mod:`lbt.storage`) runs unchanged through epath,
offline. What it does not model: GCS latency, eventual listing, request failures and retries,
and orbax's TensorStore writes (those use TensorStore's own GCS driver, not epath; tests point
orbax at :meth:`FakeGcs.local` instead).

epath offers no in-memory filesystem of its own (``epath.testing.mock_epath`` replaces the local
backend only, and ``gs://`` goes to ``tf.io.gfile`` whenever TensorFlow is installed), hence this.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from etils.epath import backend as backend_lib
from etils.epath import gpath

PREFIX = "gs://"


class FakeGcs(backend_lib._OsPathBackend):  # epath's local backend, reused
    """An epath backend for ``gs://`` paths, stored under ``root`` (see the module docstring).
    ``opened``: the modes in which objects were opened, for tests of the no-append rule."""

    def __init__(self, root: str | Path):
        self.root = str(root)
        self.opened: list[tuple[str, str]] = []

    def local(self, path: object) -> str:
        """The local file that stores the object ``gs://...`` ``path``."""
        p = os.fspath(path)
        if not p.startswith(PREFIX):
            raise ValueError(f"not a gs:// path: {p!r}")
        return os.path.join(self.root, p[len(PREFIX) :])

    def _remote(self, local: object) -> str:
        return PREFIX + os.path.relpath(os.fspath(local), self.root)

    def open(self, path, mode):  # type: ignore[override]
        if "a" in mode or "+" in mode:
            raise io.UnsupportedOperation(f"{path}: objects cannot be opened with mode {mode!r} (no appends)")
        self.opened.append((os.fspath(path), mode))
        return super().open(self.local(path), mode)

    def exists(self, path):  # type: ignore[override]
        return super().exists(self.local(path))

    def isdir(self, path):  # type: ignore[override]
        return super().isdir(self.local(path))

    def listdir(self, path):  # type: ignore[override]
        return super().listdir(self.local(path))

    def glob(self, path):  # type: ignore[override]
        return [self._remote(p) for p in super().glob(self.local(path))]

    def walk(self, top, *, top_down=True, on_error=None):  # type: ignore[override]
        for root, dirs, files in super().walk(self.local(top), top_down=top_down, on_error=on_error):
            yield self._remote(root), dirs, files

    def makedirs(self, path, *, exist_ok=False, mode=None):  # type: ignore[override]
        return super().makedirs(self.local(path), exist_ok=exist_ok, mode=mode)

    def mkdir(self, path, *, exist_ok=False, mode=None):  # type: ignore[override]
        return super().mkdir(self.local(path), exist_ok=exist_ok, mode=mode)

    def rmtree(self, path):  # type: ignore[override]
        return super().rmtree(self.local(path))

    def remove(self, path):  # type: ignore[override]
        return super().remove(self.local(path))

    def rename(self, path, dst):  # type: ignore[override]
        return super().rename(self.local(path), self.local(dst))

    def replace(self, path, dst):  # type: ignore[override]
        return super().replace(self.local(path), self.local(dst))

    def copy(self, path, dst, overwrite):  # type: ignore[override]
        return super().copy(self.local(path), self.local(dst), overwrite)

    def stat(self, path):  # type: ignore[override]
        return super().stat(self.local(path))


@contextlib.contextmanager
def fake_gcs(root: str | Path) -> Iterator[FakeGcs]:
    """Route every ``epath.Path("gs://...")`` to a :class:`FakeGcs` under ``root`` while active."""
    store = FakeGcs(root)

    def pick(self: gpath._GPath) -> backend_lib.Backend:
        return store if self._uri_scheme == "gs" else backend_lib.os_backend

    with mock.patch.object(gpath._GPath, "_backend", property(pick)):
        yield store
