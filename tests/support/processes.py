"""Processes started by tests: find them, record them, and end exactly those, by PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollwave.drivers.local import SLOT_ENV

__all__ = ["Processes", "alive", "free_port", "proc_start", "procs", "slot_pids"]


def proc_start(pid: int) -> tuple[str, int] | None:
    """(state, start time) of ``pid`` from /proc, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[19])


def alive(pid: int, start: int | None = None) -> bool:
    """``pid`` runs (not a zombie) and, if given, started at ``start``."""
    info = proc_start(pid)
    return info is not None and info[0] not in "ZX" and (start is None or info[1] == start)


def slot_pids(prefix: str, exact: bool = True) -> dict[int, int]:
    """Live processes whose ROLLWAVE_SLOT is ``prefix`` (or starts with it), with start times."""
    found: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(f"{SLOT_ENV}=".encode()):
                value = item.split(b"=", 1)[1].decode()
                if value == prefix or (not exact and value.startswith(prefix)):
                    info = proc_start(int(entry.name))
                    if info is not None and info[0] not in "ZX":
                        found[int(entry.name)] = info[1]
    return found


class Processes:
    """Every process a test starts, directly or through the driver, killed in teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.recorded: dict[int, int] = {}
        self.children: list[subprocess.Popen[bytes]] = []

    def popen(self, argv: list[str]) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.children.append(child)
        return child

    def record_slot(self, root: Path) -> int:
        """Record the PID the driver wrote for ``root``, and return it."""
        record = json.loads((root / "pid").read_text())
        self.recorded[record["pid"]] = record["start"]
        return int(record["pid"])

    def cleanup(self) -> None:
        # anything started into a slot under this test's tmp_path, recorded or not
        victims = {**self.recorded, **slot_pids(str(self.tmp_path), exact=False)}
        for pid, start in victims.items():
            if alive(pid, start):
                os.kill(pid, signal.SIGKILL)
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.communicate()  # reaps it and closes its pipes
        deadline = time.monotonic() + 10
        while any(alive(p, s) for p, s in victims.items()) and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
