"""Release artifacts of the demo application: ``app-<version>.tar.gz``.

Each archive holds, at its root, ``app.py`` (the demo app), ``VERSION`` and,
when a misbehaviour is asked for, ``BEHAVIOUR`` (JSON, see the app's
docstring). Archives are deterministic: the same version and behaviour give
the same bytes (fixed order, mtimes, owners and modes; no gzip timestamp).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["BEHAVIOURS", "VERSION_PATTERN", "app_source", "build_artifact"]

VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

# The misbehaviours the app understands, and the type of each value.
BEHAVIOURS: Mapping[str, type] = {
    "fail_health": bool,
    "exit_at_start": bool,
    "error_rate": float,
    "latency_ms": float,
}

# 2024-01-01T00:00:00Z: a fixed, plausible mtime (0 makes some tools warn).
_MTIME = 1_704_067_200


def app_source() -> bytes:
    """The demo app's source, as shipped in the package."""
    return resources.files("rollwave.demo").joinpath("app/app.py").read_bytes()


def _check_behaviour(behaviour: Mapping[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for key, value in behaviour.items():
        kind = BEHAVIOURS.get(key)
        if kind is None:
            known = ", ".join(sorted(BEHAVIOURS))
            raise ValueError(f"unknown behaviour {key!r} (known: {known})")
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"behaviour {key} must be true or false, not {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"behaviour {key} must be a number, not {value!r}")
        elif key == "error_rate" and not 0 <= value <= 1:
            raise ValueError(f"behaviour error_rate must be between 0 and 1, not {value!r}")
        elif value < 0:
            raise ValueError(f"behaviour {key} must not be negative, not {value!r}")
        checked[key] = value
    return checked


def build_artifact(dest_dir: Path, version: str, behaviour: dict[str, Any] | None = None) -> Path:
    """Write ``dest_dir/app-<version>.tar.gz`` and return its path.

    ``version`` must match ``^[A-Za-z0-9][A-Za-z0-9._+-]*$`` and
    ``behaviour`` may only hold the keys of :data:`BEHAVIOURS`; otherwise
    ValueError. An existing archive of that name is replaced atomically.
    """
    if not VERSION_PATTERN.fullmatch(version):  # match() would let a trailing newline in
        raise ValueError(
            f"invalid version {version!r}: use letters, digits and . _ + - "
            "(starting with a letter or digit)"
        )
    members: list[tuple[str, bytes, int]] = [
        ("app.py", app_source(), 0o755),
        ("VERSION", f"{version}\n".encode(), 0o644),
    ]
    if behaviour:
        text = json.dumps(_check_behaviour(behaviour), sort_keys=True) + "\n"
        members.append(("BEHAVIOUR", text.encode(), 0o644))

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = _MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    compressed = gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0)

    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f"app-{version}.tar.gz"
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(compressed)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path
