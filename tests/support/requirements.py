"""System tools an integration test needs: fail in CI when missing, skip on a laptop."""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["require_binary"]


def require_binary(name: str, package: str) -> str:
    """The path of ``name``; missing, it fails when ROLLWAVE_REQUIRE_ALL is set (CI), else skips."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (Debian package {package}; scripts/setup installs it)"
        if os.environ.get("ROLLWAVE_REQUIRE_ALL"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path
