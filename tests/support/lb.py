"""A fleet of sample-app slots behind a real HAProxy, and a load generator that runs beside the CLI.

:class:`HAProxyFleet` is a :class:`~support.fleet.LocalFleet` whose spec takes
targets out of service through HAProxy's runtime API instead of the
stand-in script: one HAProxy (``option httpchk GET /healthz``) with one
server per slot, named after the target, in a short private directory under
``/tmp`` so that the unix socket path fits in ``sun_path``. The helpers here
read each server's state over that socket on their own, without the code
under test.

:class:`BackgroundLoad` runs a :class:`~rollwave.demo.loadgen.LoadGenerator`
on its own event loop in a thread, so it keeps its rate while the test
thread blocks on the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml

from rollwave.demo.haproxy import HAProxyProcess
from rollwave.demo.loadgen import LoadGenerator, LoadReport
from support.fleet import LocalFleet
from support.processes import Processes, free_port
from support.requirements import require_binary

__all__ = [
    "BACKEND",
    "BackgroundLoad",
    "HAProxyFleet",
    "ServerState",
    "haproxy_fleet",
    "runtime_api",
    "servers_state",
]

BACKEND = "app"

# srv_admin_state bits (HAProxy management guide, "show servers state")
_MAINT = 0x01 | 0x02 | 0x04 | 0x20
_DRAIN = 0x08 | 0x10
_OP_STATES = {0: "DOWN", 1: "STARTING", 2: "UP", 3: "STOPPING"}

T = TypeVar("T")


def runtime_api(sock: Path, command: str, timeout: float = 5.0) -> str:
    """Send one command to HAProxy's runtime API and return its whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(sock))
        conn.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


@dataclass(frozen=True)
class ServerState:
    """One line of ``show servers state``: the admin mask and the operational state."""

    name: str
    admin_state: int
    op_state: int

    @property
    def maint(self) -> bool:
        return bool(self.admin_state & _MAINT)

    @property
    def drain(self) -> bool:
        return bool(self.admin_state & _DRAIN)

    @property
    def up(self) -> bool:
        return self.op_state == 2

    def __str__(self) -> str:
        admin = "MAINT" if self.maint else "DRAIN" if self.drain else "READY"
        return f"{admin}/{_OP_STATES.get(self.op_state, self.op_state)}"


def servers_state(sock: Path, backend: str = BACKEND) -> dict[str, ServerState]:
    """Every server of ``backend``, read with ``show servers state``."""
    answer = runtime_api(sock, f"show servers state {backend}")
    lines = answer.splitlines()
    if len(lines) < 2 or lines[0].strip() != "1" or not lines[1].startswith("#"):
        raise AssertionError(f"unexpected answer to show servers state: {answer!r}")
    header = lines[1].lstrip("#").split()
    states = {}
    for line in lines[2:]:
        if not line.strip() or line.startswith("#"):
            continue
        row = dict(zip(header, line.split(), strict=False))
        if row["be_name"] == backend:
            states[row["srv_name"]] = ServerState(
                row["srv_name"], int(row["srv_admin_state"]), int(row["srv_op_state"])
            )
    return states


class HAProxyFleet(LocalFleet):
    """``LocalFleet`` behind a real HAProxy, whose spec drains and enables through its socket."""

    def __init__(self, base: Path, size: int, procs: Processes, lb_dir: Path) -> None:
        super().__init__(base, size, procs)
        self.haproxy = HAProxyProcess(
            lb_dir,
            free_port(),
            BACKEND,
            [(name, "127.0.0.1", self.ports[name]) for name in self.names],
            check=True,
        )

    @property
    def socket(self) -> Path:
        return self.haproxy.socket_path

    @property
    def url(self) -> str:
        return self.haproxy.url

    def write_spec(  # type: ignore[override]
        self,
        version: str,
        *,
        drain: str = "2s",
        server: str = "{name}",
        wait_up: str = "10s",
        **options: Any,
    ) -> Path:
        """LocalFleet's spec (health: http, 200ms, 2 successes) with HAProxy as its traffic manager."""
        path = super().write_spec(version, **options)
        spec = yaml.safe_load(path.read_text())
        spec["services"]["app"]["traffic"] = {
            "haproxy": {
                "socket": str(self.socket),
                "backend": BACKEND,
                "server": server,
                "wait_up": wait_up,
            },
            "drain": drain,
        }
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    # ------------------------------------------------------------ HAProxy

    def lb_states(self) -> dict[str, ServerState]:
        return servers_state(self.socket)

    def lb_counters(self) -> dict[str, dict[str, int]]:
        """Traffic and error counters from ``show stat``: the backend's, and each server's.

        ``econ`` (connection errors), ``eresp`` (broken answers), ``wretr`` and
        ``wredis`` (retries, redispatches to another server), ``hrsp_5xx``,
        ``cli_abrt`` (the client gave up), ``srv_abrt``: they tell where a
        failed request failed, and show what HAProxy's retries hid.
        """
        answer = runtime_api(self.socket, f"show stat {BACKEND} 6 -1")  # 2 backend + 4 servers
        rows = list(csv.reader(answer.removeprefix("# ").splitlines()))
        keys = ("stot", "econ", "eresp", "wretr", "wredis", "hrsp_5xx", "cli_abrt", "srv_abrt")
        counters = {}
        for fields in rows[1:]:
            row = dict(zip(rows[0], fields, strict=False))
            if row.get("pxname") == BACKEND:
                counters[row["svname"]] = {key: int(row.get(key) or 0) for key in keys}
        return counters

    def lb_problems(self) -> dict[str, dict[str, int]]:
        """The non-zero error and retry counters, by server (the backend's own row is ``BACKEND``)."""
        return {
            name: nonzero
            for name, row in self.lb_counters().items()
            if (nonzero := {k: v for k, v in row.items() if v and k != "stot"})
        }

    def lb_summary(self) -> dict[str, str]:
        """Each server as ``ADMIN/OPERATIONAL``, e.g. ``READY/UP``, for assertions and messages."""
        return {name: str(state) for name, state in self.lb_states().items()}

    def assert_all_in_service(self) -> None:
        """Every server is READY (neither drained nor in maintenance) and UP in HAProxy."""
        states = self.lb_states()
        assert sorted(states) == sorted(self.names), states
        bad = {n: str(s) for n, s in states.items() if s.drain or s.maint or not s.up}
        assert not bad, f"servers out of service in HAProxy: {bad}"

    def wait_all_up(self, timeout: float = 15) -> None:
        """Wait until HAProxy's own checks have every server UP and READY."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.lb_states()
            if all(s.up and not s.drain and not s.maint for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"servers not all UP after {timeout:g}s: {self.lb_summary()}")
            time.sleep(0.1)


@contextlib.contextmanager
def haproxy_fleet(base: Path, procs: Processes, size: int = 6) -> Iterator[HAProxyFleet]:
    """``size`` sample-app slots under ``base`` behind a running HAProxy, stopped on exit.

    Use ``tmp_path`` as ``base`` so that ``procs`` ends the slots' processes;
    HAProxy is ended by the PID its runner started, and its short directory
    under /tmp is removed, whether or not the test passed. Without haproxy
    the test fails under CI (ROLLWAVE_REQUIRE_ALL) and skips elsewhere.
    """
    require_binary("haproxy", "haproxy")
    lb_dir = Path(tempfile.mkdtemp(prefix="rw-lb-", dir="/tmp"))
    try:
        fleet = HAProxyFleet(base, size, procs, lb_dir)
        fleet.haproxy.start()
        try:
            yield fleet
        finally:
            fleet.haproxy.stop()
    finally:
        shutil.rmtree(lb_dir, ignore_errors=True)


class BackgroundLoad:
    """A LoadGenerator on its own event loop in a daemon thread; ``stop()`` returns its report.

    Use as a context manager so the thread and its loop end even when the test fails.
    """

    def __init__(self, url: str, rate: float, timeout: float = 2.0) -> None:
        self.url = url
        self.rate = rate
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generator: LoadGenerator | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.report: LoadReport | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="loadgen", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the load generator's loop did not start")
        if self._error is not None:
            raise RuntimeError("the load generator did not start") from self._error

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:

            async def begin() -> None:
                self._generator = LoadGenerator(self.url, self.rate, self.timeout)
                self._generator.start()

            try:
                loop.run_until_complete(begin())
            except BaseException as exc:  # reported by start()
                self._error = exc
                return
            finally:
                self._ready.set()
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def mark(self, label: str) -> None:
        """Start a phase, on the generator's own loop."""

        async def mark() -> None:
            assert self._generator is not None
            self._generator.mark(label)

        self._call(mark(), 10)

    def report_since(self, label: str, until: str | None = None) -> LoadReport:
        """A phase's report; once stopped, read straight from the (idle) generator."""
        if self.report is not None:
            assert self._generator is not None
            return self._generator.report_since(label, until)

        async def report() -> LoadReport:
            assert self._generator is not None
            return self._generator.report_since(label, until)

        return self._call(report(), 10)

    def stop(self) -> LoadReport:
        """Stop sending, wait for the requests in flight, end the loop and the thread."""
        if self._thread is None:
            raise RuntimeError("never started")
        try:
            if self.report is None and self._generator is not None:
                self.report = self._call(self._generator.stop(), self.timeout + 30)
        finally:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        assert self.report is not None
        return self.report

    def __enter__(self) -> BackgroundLoad:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.stop()
