"""Resource stores: the :class:`~isthmus.store.base.ResourceStore` protocol and its backends."""

from __future__ import annotations

import os

from isthmus.store.base import ResourceStore

__all__ = ["ResourceStore", "open_store"]

_USAGE = "use 'memory', 'sqlite:PATH' or 'sqlite:///PATH'"


def open_store(spec: str) -> ResourceStore:
    """The store named by ``spec`` (not started yet).

    * ``memory`` -- :class:`~isthmus.store.memory.MemoryStore`;
    * ``sqlite:PATH`` -- :class:`~isthmus.store.sql.SqlStore` in the SQLite file PATH (relative to the working
      directory unless absolute; ``~`` is expanded; the parent directory is created on start);
    * ``sqlite:///PATH`` -- the same, in SQLAlchemy's spelling: ``sqlite:///data/x.db`` is relative,
      ``sqlite:////var/lib/x.db`` absolute.

    Raises ValueError for anything else.
    """
    if spec == "memory":
        from isthmus.store.memory import MemoryStore

        return MemoryStore()
    if spec.startswith("sqlite:"):
        path = spec.removeprefix("sqlite:")
        if path.startswith("//"):
            if not path.startswith("///"):
                raise ValueError(f"invalid store {spec!r}: a SQLite URL has three slashes; {_USAGE}")
            path = path.removeprefix("///")
        if not path.strip():
            raise ValueError(f"invalid store {spec!r}: the SQLite store needs a file path; {_USAGE}")
        from isthmus.store.sql import SqlStore

        return SqlStore(f"sqlite+aiosqlite:///{os.path.expanduser(path)}")
    raise ValueError(f"unknown store {spec!r}: {_USAGE}")
