"""State stores: where deployments, the journal, locks, events and commands live.

``open_store`` reads the ``state`` setting of ``rollwave.yaml``: a path (a
SQLite file, relative to the spec file's directory) or, later, a
``postgresql://`` URL.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from rollwave.engine.ports import Store
from rollwave.errors import StoreError
from rollwave.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "open_store"]


def _redacted(url: str) -> str:
    """The URL without its password, fit for an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


def open_store(url_or_path: str, base_dir: Path) -> Store:
    """Open the state store named by ``url_or_path``; a relative path is relative to ``base_dir``.

    Raises :class:`StoreError` for a store that cannot be opened or a kind
    that is not supported.
    """
    scheme = urlsplit(url_or_path).scheme.lower() if "://" in url_or_path else ""
    if scheme in {"postgresql", "postgres"}:
        raise StoreError(
            f"PostgreSQL state stores are not supported yet: {_redacted(url_or_path)}",
            hint="set `state` in rollwave.yaml to a SQLite file path, e.g. .rollwave/state.db",
        )
    if scheme:
        raise StoreError(
            f"unsupported state store {_redacted(url_or_path)}: expected a file path",
            hint="set `state` in rollwave.yaml to a SQLite file path, e.g. .rollwave/state.db",
        )
    if not url_or_path.strip():
        raise StoreError(
            "the state store path is empty",
            hint="set `state` in rollwave.yaml to a SQLite file path, e.g. .rollwave/state.db",
        )
    path = Path(url_or_path).expanduser()
    return SQLiteStore(path if path.is_absolute() else base_dir / path)
