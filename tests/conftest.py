"""Shared fixtures: processes started by tests (ended by PID), and required system tools."""

from __future__ import annotations

pytest_plugins = ["support.processes", "support.requirements", "support.netns"]
