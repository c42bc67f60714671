"""Run a real HAProxy in front of demo servers, for ``rollwave demo`` and the tests.

``HAProxyProcess`` writes a configuration into its work directory, starts
``haproxy -f <cfg> -db`` (foreground, one process this object tracks by
PID), waits until the runtime API socket answers, and stops that PID only.
The configuration is tuned for a rolling deployment on one machine: fast
HTTP health checks on ``/healthz``, and retries with redispatch so that a
connection refused by a server that is stopping is sent to another one.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["HAProxyNotInstalledError", "HAProxyProcess", "haproxy_binary"]

# sun_path is 108 bytes on Linux, the terminating NUL included.
_MAX_SOCKET_PATH = 107


class HAProxyNotInstalledError(RuntimeError):
    """The ``haproxy`` binary is not on PATH."""


def haproxy_binary() -> str:
    """The path of ``haproxy``, or HAProxyNotInstalledError naming the package to install."""
    found = shutil.which("haproxy")
    if found is None:
        raise HAProxyNotInstalledError(
            "haproxy not found on PATH: install the 'haproxy' package "
            "(apt-get install haproxy, dnf install haproxy, brew install haproxy)"
        )
    return found


class HAProxyProcess:
    """One HAProxy process with one HTTP frontend and one backend of ``servers``.

    ``servers`` are ``(name, host, port)``. The runtime API listens on
    ``<workdir>/admin.sock`` (mode 600, level admin); the log of the process
    (its stdout and stderr) goes to ``<workdir>/haproxy.log``.
    """

    def __init__(
        self,
        workdir: Path,
        frontend_port: int,
        backend: str,
        servers: Sequence[tuple[str, str, int]],
        check: bool = True,
        *,
        frontend_host: str = "127.0.0.1",
    ) -> None:
        self.workdir = Path(workdir)
        self.frontend_host = frontend_host
        self.frontend_port = frontend_port
        self.backend = backend
        self.servers = list(servers)
        self.check = check
        self.socket_path = self.workdir / "admin.sock"
        self.config_path = self.workdir / "haproxy.cfg"
        self.pidfile = self.workdir / "haproxy.pid"
        self.log_path = self.workdir / "haproxy.log"
        self._process: subprocess.Popen[bytes] | None = None
        if len(str(self.socket_path)) > _MAX_SOCKET_PATH:
            raise ValueError(
                f"{self.socket_path} is too long for a unix socket "
                f"({len(str(self.socket_path))} > {_MAX_SOCKET_PATH} bytes): use a shorter workdir"
            )
        if not self.servers:
            raise ValueError("HAProxyProcess needs at least one server")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def url(self) -> str:
        return f"http://{self.frontend_host}:{self.frontend_port}/"

    def config(self) -> str:
        """The configuration text this process runs with."""
        check = " check" if self.check else ""
        servers = "\n".join(
            f"    server {name} {host}:{port}{check}" for name, host, port in self.servers
        )
        return f"""\
global
    stats socket {self.socket_path} mode 600 level admin
    stats timeout 10s
    pidfile {self.pidfile}
    maxconn 4096

defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    timeout check 1s
    # A connection refused (or closed before any response) by a server
    # that is stopping is retried on another server.
    option redispatch 1
    retries 3
    retry-on conn-failure empty-response

frontend fe
    bind {self.frontend_host}:{self.frontend_port}
    default_backend {self.backend}

backend {self.backend}
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 200ms fastinter 100ms downinter 200ms fall 2 rise 1
{servers}
"""

    def start(self, timeout: float = 10.0) -> None:
        """Write the configuration, start HAProxy and wait until its runtime API answers."""
        if self._process is not None:
            raise RuntimeError(f"haproxy already started (pid {self._process.pid})")
        binary = haproxy_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config(), encoding="utf-8")
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [binary, "-f", str(self.config_path), "-db"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise RuntimeError(f"haproxy exited with code {code} at start:\n{self.log_tail()}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"haproxy's runtime API {self.socket_path} did not answer within {timeout:g}s"
                    f":\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket_path))
                sock.sendall(b"show info\n")
                return sock.recv(64).startswith(b"Name:")
        except OSError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process this object started (SIGTERM, then SIGKILL), by its PID only."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for path in (self.socket_path, self.pidfile):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> HAProxyProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
