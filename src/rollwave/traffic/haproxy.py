"""HAProxy as a :class:`~rollwave.engine.ports.TrafficManager`, over its runtime API.

One command per connection, in non-interactive mode: connect (unix socket
or TCP), write ``<command>\\n``, read until HAProxy closes. The commands
(HAProxy 2.x management guide, section 9.3)::

    set server <backend>/<server> state drain     drain: no new sessions
    set server <backend>/<server> state ready     enable
    show servers state <backend>                  admin state, operational state, check state
    show stat <backend> 4 -1                      CSV, servers only: scur, qcur, status, check_status

``show servers state`` (format version 1) gives, per server, by column
name: ``srv_op_state`` (0 stopped, 1 starting, 2 running, 3 stopping),
``srv_admin_state`` (a mask: 0x01 forced maint, 0x02 inherited maint, 0x04
maint from the configuration, 0x08 forced drain, 0x10 inherited drain, 0x20
maint after a resolution failure) and ``srv_check_state`` (a mask: 0x02
configured, 0x04 enabled, 0x08 paused).

Every failure (socket missing, permission denied, connection refused, no
answer, ``No such backend.``, ``No such server.``, any other error text)
becomes one :class:`~rollwave.errors.TrafficError` line naming the server
and the socket, e.g. ``haproxy: no such server api/web-3 (socket
/run/haproxy/admin.sock)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rollwave.engine.ports import Clock, TrafficState
from rollwave.errors import InputError, TrafficError
from rollwave.inventory.model import Target
from rollwave.spec.templates import render

__all__ = ["HAProxyTraffic", "ServerStatus"]

# srv_admin_state bits
_FORCED_MAINT = 0x01
_INHERITED_MAINT = 0x02
_CONFIG_MAINT = 0x04
_FORCED_DRAIN = 0x08
_INHERITED_DRAIN = 0x10
_RESOLUTION_MAINT = 0x20
_MAINT = _FORCED_MAINT | _INHERITED_MAINT | _CONFIG_MAINT | _RESOLUTION_MAINT
_DRAIN = _FORCED_DRAIN | _INHERITED_DRAIN
# srv_op_state values
_OP_STARTING = 1
_OP_RUNNING = 2
# srv_check_state bit: health checks administratively enabled
_CHECK_ENABLED = 0x04

_OP_NAMES = {0: "DOWN", 1: "STARTING", 2: "UP", 3: "STOPPING"}


@dataclass(frozen=True)
class ServerStatus:
    """One server's line of ``show servers state``, reduced to what rollwave reads."""

    admin_state: int
    op_state: int
    check_state: int

    @property
    def traffic_state(self) -> TrafficState:
        if self.admin_state & _MAINT:
            return TrafficState.MAINT
        if self.admin_state & _DRAIN:
            return TrafficState.DRAIN
        return TrafficState.READY

    @property
    def checked(self) -> bool:
        return bool(self.check_state & _CHECK_ENABLED)

    @property
    def up(self) -> bool:
        """HAProxy sends it traffic: running, or starting (slowstart, throttled)."""
        return self.op_state in (_OP_RUNNING, _OP_STARTING)


class HAProxyTraffic:
    """Drain and enable targets as servers of an HAProxy backend.

    ``backend`` and ``server`` are templates (``"{name}"``, ``"{service}"``,
    any inventory variable) rendered with ``context_for(target)``. Exactly
    one of ``socket`` (a unix socket path) or ``address`` (``host:port`` of
    a TCP ``stats socket``) names the runtime API, which must be at
    ``level admin``.

    ``drain_timeout`` (the spec's ``traffic.drain``) is only kept for
    callers: :meth:`wait_drained` waits for the ``timeout`` it is given.
    ``wait_up`` (the spec's ``traffic.haproxy.wait_up``) bounds how long :meth:`enable` waits for a checked server
    to be UP; ``command_timeout`` bounds one runtime API exchange.
    """

    def __init__(
        self,
        *,
        socket: str | None = None,
        address: str | None = None,
        backend: str,
        server: str,
        drain_timeout: float,
        clock: Clock,
        context_for: Callable[[Target], Mapping[str, Any]],
        wait_up: float = 30.0,
        poll_interval: float = 0.1,
        command_timeout: float = 5.0,
    ) -> None:
        if (socket is None) == (address is None):
            raise InputError("traffic.haproxy: give exactly one of socket or address")
        self._host = ""
        self._port = 0
        if address is not None:
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise InputError(
                    f"traffic.haproxy.address: {address!r} is not host:port (e.g. 127.0.0.1:9999)"
                )
            self._host, self._port = host.strip("[]"), int(port)
            self._where = f"address {address}"
        else:
            self._where = f"socket {socket}"
        for name, value in (
            ("drain_timeout", drain_timeout),
            ("wait_up", wait_up),
            ("poll_interval", poll_interval),
            ("command_timeout", command_timeout),
        ):
            if value < 0 or (value == 0 and name in {"poll_interval", "command_timeout"}):
                raise InputError(f"traffic.haproxy: {name} must be positive, not {value!r}")
        self.socket = socket
        self.address = address
        self.backend = backend
        self.server = server
        self.drain_timeout = drain_timeout
        self.wait_up = wait_up
        self.poll_interval = poll_interval
        self.command_timeout = command_timeout
        self._clock = clock
        self._context_for = context_for

    # ------------------------------------------------------------------ protocol

    async def check(self, target: Target) -> None:
        """The backend and the server exist (and the runtime API answers)."""
        await self._status(target)

    async def drain(self, target: Target) -> None:
        """``set server B/S state drain``: no new sessions, checks go on."""
        await self._set_state(target, "drain")

    async def wait_drained(self, target: Target, timeout: float) -> None:
        """Poll the server's current and queued sessions until none is left or ``timeout`` passed."""
        deadline = self._clock.now() + timeout
        while True:
            row = await self._stat(target)
            if _int(row.get("scur")) + _int(row.get("qcur")) == 0:
                return
            if self._clock.now() >= deadline:
                return
            await self._clock.sleep(self.poll_interval)

    async def enable(self, target: Target) -> None:
        """``set server B/S state ready``; with health checks, wait until HAProxy has it UP.

        Only a checked server can be DOWN while ready; one without checks is
        sent traffic as soon as it is ready. Note that HAProxy marks a server
        leaving MAINT as UP at once (its next failed check brings it down),
        whereas a server leaving DRAIN keeps the status its checks gave it
        while drained.
        """
        await self._set_state(target, "ready")
        deadline = self._clock.now() + self.wait_up
        while True:
            status = await self._status(target)
            if not status.checked or status.up:
                return
            if self._clock.now() >= deadline:
                break
            await self._clock.sleep(self.poll_interval)
        backend, server = self._names(target)
        last = ""
        with contextlib.suppress(TrafficError):
            row = await self._stat(target)
            status_text = (row.get("check_status") or "").removeprefix("* ")  # "* ": check running
            check = " ".join(filter(None, (status_text, row.get("check_code"))))
            last = f", last check {check}" if check else ""
        raise TrafficError(
            target.name,
            f"haproxy: server {backend}/{server} not UP {self.wait_up:g}s after enable "
            f"({_OP_NAMES.get(status.op_state, status.op_state)}{last}; {self._where})",
        )

    async def state(self, target: Target) -> TrafficState:
        """The administrative state: MAINT, DRAIN or READY (READY even while checks fail)."""
        return (await self._status(target)).traffic_state

    async def close(self) -> None:
        """Nothing to close: every command has its own connection."""

    # ------------------------------------------------------------------ commands

    def _names(self, target: Target) -> tuple[str, str]:
        context = self._context_for(target)
        try:
            return render(self.backend, context), render(self.server, context)
        except KeyError as exc:
            raise TrafficError(
                target.name,
                f"haproxy: unknown placeholder {{{exc.args[0]}}} in backend {self.backend!r} "
                f"or server {self.server!r}",
            ) from None

    async def _set_state(self, target: Target, state: str) -> None:
        backend, server = self._names(target)
        answer = await self._run(target, f"set server {backend}/{server} state {state}")
        if answer.strip():
            raise self._error(target, backend, server, answer)

    async def _status(self, target: Target) -> ServerStatus:
        backend, server = self._names(target)
        answer = await self._run(target, f"show servers state {backend}")
        lines = answer.splitlines()
        if len(lines) < 2 or lines[0].strip() != "1" or not lines[1].startswith("#"):
            raise self._error(target, backend, server, answer)
        header = lines[1].lstrip("#").split()
        for line in lines[2:]:
            fields = line.split()
            if not fields or line.startswith("#"):
                continue
            row = dict(zip(header, fields, strict=False))
            if row.get("be_name") == backend and row.get("srv_name") == server:
                try:
                    return ServerStatus(
                        admin_state=int(row["srv_admin_state"]),
                        op_state=int(row["srv_op_state"]),
                        check_state=int(row["srv_check_state"]),
                    )
                except (KeyError, ValueError) as exc:
                    raise self._error(target, backend, server, f"unreadable state: {line}") from exc
        raise self._error(target, backend, server, "No such server.")

    async def _stat(self, target: Target) -> dict[str, str]:
        backend, server = self._names(target)
        answer = await self._run(target, f"show stat {backend} 4 -1")
        if not answer.startswith("# pxname"):
            raise self._error(target, backend, server, answer)
        rows = csv.reader(answer[2:].splitlines())
        header = next(rows)
        for fields in rows:
            row = dict(zip(header, fields, strict=False))
            if row.get("pxname") == backend and row.get("svname") == server:
                return row
        raise self._error(target, backend, server, "No such server.")

    def _error(self, target: Target, backend: str, server: str, answer: str) -> TrafficError:
        """The one-line TrafficError for an error text HAProxy answered."""
        text = next((line.strip() for line in answer.splitlines() if line.strip()), "")
        lowered = text.lower()
        if lowered.startswith(("no such backend", "can't find backend", "no such proxy")):
            fact = f"no such backend {backend}"
        elif lowered.startswith("no such server"):
            fact = f"no such server {backend}/{server}"
        elif lowered.startswith("permission denied"):
            fact = (
                f"permission denied on server {backend}/{server}: the runtime API needs level admin"
            )
        else:
            fact = f"server {backend}/{server}: {text or 'empty answer'}"
        return TrafficError(target.name, f"haproxy: {fact} ({self._where})")

    async def _run(self, target: Target, command: str) -> str:
        """Send one command on a fresh connection and return HAProxy's whole answer."""
        try:
            async with asyncio.timeout(self.command_timeout):
                if self.socket is not None:
                    reader, writer = await asyncio.open_unix_connection(self.socket)
                else:
                    reader, writer = await asyncio.open_connection(self._host, self._port)
                try:
                    writer.write(command.encode("utf-8") + b"\n")
                    await writer.drain()
                    data = await reader.read()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError as exc:
            raise TrafficError(
                target.name,
                f"haproxy: no answer to '{command}' within {self.command_timeout:g}s "
                f"({self._where})",
            ) from exc
        except FileNotFoundError as exc:
            raise TrafficError(
                target.name, f"haproxy: runtime API socket not found ({self._where})"
            ) from exc
        except PermissionError as exc:
            raise TrafficError(
                target.name, f"haproxy: permission denied on the runtime API ({self._where})"
            ) from exc
        except ConnectionRefusedError as exc:
            raise TrafficError(
                target.name, f"haproxy: connection refused, is haproxy running? ({self._where})"
            ) from exc
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise TrafficError(target.name, f"haproxy: {reason} ({self._where})") from exc
        return data.decode("utf-8", errors="replace")


def _int(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0
