"""The SSH driver: each target is a host reached over SSH; releases are Capistrano-style.

A target's ``root`` on its host holds what the local driver's slot holds
(see :mod:`rollwave.drivers.commands` for the layout and the argv of every
step)::

    root/.artifacts/<artifact>   uploaded once per host, verified by sha256
    root/releases/<version>/     unpacked through releases/.tmp-... and a rename
    root/current -> releases/<version>   switched atomically (symlink + mv -T)
    root/previous                the version current pointed to before

Connections: one SSH connection per host (address, port, user, key), opened
on first use and reused by every later step until :meth:`SSHDriver.close`;
opening one is tried 3 times with exponential backoff (0.5 s, then 1 s),
a command never is. A refused host key, a refused login or a bad key file
is not retried. At most ``concurrency`` hosts are worked on at once.

Host keys are checked against ``known_hosts`` (the spec's file, relative to
the spec's directory, else ``~/.ssh/known_hosts``): an unknown or changed
key refuses the host before any command runs. With
``insecure_skip_host_key_check: true`` nothing is checked, and building the
driver warns (:class:`InsecureHostKeyWarning`).

Login options come from the inventory first (``ansible_user``,
``ansible_port``, ``ansible_host`` as the target's user, port and address;
``ansible_ssh_private_key_file`` from its vars), then the spec (``user``,
``port``, ``key``); without a key, the SSH agent and the default keys in
``~/.ssh`` are tried. ``jump_host`` (``[user@]host[:port]``) is reached
first with the same options and tunnels every connection. The user's
``~/.ssh/config`` supplies defaults for what neither gives, as it does for
``ssh``.

Every remote command is an argv rendered with ``shlex.join`` only here, at
the transport. No asyncssh exception (nor an ``OSError``) leaves this
module: each becomes a :class:`~rollwave.errors.DriverError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import hashlib
import os
import secrets
import shlex
import tarfile
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import asyncssh

from rollwave.drivers import commands
from rollwave.engine.ports import Clock, CommandResult
from rollwave.errors import DriverError, InputError
from rollwave.inventory.model import Target
from rollwave.spec.model import SSHDriverSpec
from rollwave.spec.templates import placeholders, render, render_argv

__all__ = ["CONNECT_TRIES", "InsecureHostKeyWarning", "SSHDriver", "UploadHook"]

CONNECT_TRIES = 3  # connection set-up only; a command is never retried
_BACKOFF = 0.5  # seconds before the second try; doubled before each next one
_KEY_VAR = "ansible_ssh_private_key_file"
_DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
_NOT_IN_ROOT = ("version", "previous_version", "release")
_TAIL = 300  # characters of a failed command's stderr kept in an error message
_ANSWER_GRACE = 10.0  # seconds past a command's own timeout(1) before the host counts as silent

UploadHook = Callable[[Target, str], Awaitable[None]]
"""Called after an artifact was uploaded to ``(target, remote path)`` and before it is verified."""


class InsecureHostKeyWarning(UserWarning):
    """Host keys are not verified: anyone on the path can impersonate the hosts."""


@dataclass(frozen=True)
class _Endpoint:
    """Where one SSH connection goes; targets sharing an endpoint share the connection."""

    host: str
    port: int
    user: str
    key: str | None

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


class _Retry(Exception):
    """Internal: a connection attempt failed in a way another attempt may fix."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class SSHDriver:
    """:class:`~rollwave.engine.ports.Driver` for hosts reached over SSH.

    ``spec.artifact`` (a ``.tar.gz`` on this machine, relative to
    ``base_dir``), ``spec.root``, ``spec.restart`` and ``spec.stop`` are
    templates over ``name``, ``address``, ``service``, ``version``,
    ``previous_version``, ``release`` (``root/releases/<version>`` on the
    host) and every inventory variable of the target; ``root`` may not use
    the version fields. ``restart`` and ``stop`` run in ``root/current``.

    ``after_upload`` is an observation point: it is awaited after an upload
    and before the uploaded file's checksum is verified (tests use it to
    corrupt the file in between).
    """

    def __init__(
        self,
        *,
        service: str,
        spec: SSHDriverSpec,
        base_dir: Path,
        clock: Clock,
        after_upload: UploadHook | None = None,
    ) -> None:
        self.service = service
        self.spec = spec
        self.base_dir = Path(base_dir).absolute()
        self.clock = clock
        self.after_upload = after_upload
        where = f"services.{service}.driver"
        bad = [p for p in placeholders(spec.root) if p in _NOT_IN_ROOT]
        if bad:
            raise InputError(
                f"{where}.root {spec.root!r} may not use {{{bad[0]}}}: "
                "the root is the same for every version"
            )
        self._key = self._spec_file(where, "key", spec.key)
        if spec.insecure_skip_host_key_check:
            self._known_hosts: str | None = None
            self._known_hosts_shown = "not checked"
            warnings.warn(
                InsecureHostKeyWarning(
                    f"{where}.insecure_skip_host_key_check is true: host keys are NOT "
                    "verified, anyone between rollwave and the hosts can impersonate them"
                ),
                stacklevel=2,
            )
        else:
            path = self._spec_file(where, "known_hosts", spec.known_hosts)
            self._known_hosts = path or os.path.expanduser(_DEFAULT_KNOWN_HOSTS)
            self._known_hosts_shown = path or _DEFAULT_KNOWN_HOSTS
        self._jump = (
            dataclasses.replace(_parse_jump(where, spec.jump_host), key=self._key)
            if spec.jump_host
            else None
        )
        self._gate = asyncio.Semaphore(spec.concurrency)
        self._connections: dict[_Endpoint, asyncssh.SSHClientConnection] = {}
        self._connect_locks: dict[_Endpoint, asyncio.Lock] = {}
        self._host_locks: dict[tuple[_Endpoint, str], asyncio.Lock] = {}
        self._jump_connection: asyncssh.SSHClientConnection | None = None
        self._jump_lock = asyncio.Lock()
        self._digests: dict[tuple[str, int, int], str] = {}
        self.connections_opened = 0
        """How many SSH connections (jump host excluded) this driver has opened."""

    # ---------------------------------------------------------------- observe

    async def current_version(self, target: Target) -> str | None:
        """The version ``root/current`` points to on the host, or None."""
        root = self._root(target)
        async with self._gate:
            conn = await self._connect(target)
            return (await self._state(target, conn, root)).current

    async def releases(self, target: Target) -> list[str]:
        """The unpacked releases on the host, least recently deployed first."""
        root = self._root(target)
        async with self._gate:
            conn = await self._connect(target)
            return (await self._state(target, conn, root)).releases

    async def check(self, target: Target, version: str) -> None:
        """Preflight: host key trusted, login works, root writable, artifact and restart found."""
        self._version(target, version)
        root = self._root(target)
        async with self._gate:
            conn = await self._connect(target)
            state = await self._state(target, conn, root)
            if version not in state.releases:
                _, local = self._artifact(target, root, version, state.current)
                try:
                    is_tar = await asyncio.to_thread(tarfile.is_tarfile, local)
                except OSError as exc:
                    raise DriverError(target.name, f"cannot read artifact {local}: {exc}") from exc
                if not is_tar:
                    raise DriverError(target.name, f"artifact {local} is not a tar archive")
            ctx = self._context(target, root, version, state.current)
            steps = [commands.check_root(root)]
            exe = self._argv(target, "restart", self.spec.restart, ctx)[0]
            if "/" not in exe or exe.startswith("/"):  # else relative to a release
                steps.append(commands.find_command(exe))
            await self._step(target, conn, steps, "preflight")

    # ------------------------------------------------------------------ change

    async def deploy(self, target: Target, version: str) -> None:
        """Upload and unpack ``version`` (unless present), switch ``current`` to it, prune."""
        self._version(target, version)
        root = self._root(target)
        async with self._gate:
            conn = await self._connect(target)
            async with self._host_lock(target, root):
                state = await self._state(target, conn, root)
                current = state.current
                previous = current if current != version else state.previous
                if version not in state.releases:
                    shown, local = self._artifact(target, root, version, previous)
                    name = await self._upload(target, conn, root, shown, local)
                    unpack = commands.unpack(root, version, name, _suffix())
                    await self._step(target, conn, [unpack], f"unpack {shown}")
                # the release just deployed becomes the most recent one
                order = [r for r in state.releases if r != version] + [version]
                protect = {version} | ({previous} if previous else set())
                victims = commands.prune_victims(order, self.spec.keep, protect)
                steps = [commands.touch_release(root, version, self.clock.now())]
                if current != version:
                    steps.append(commands.write_previous(root, current, _suffix()))
                    steps.append(commands.switch_current(root, version, _suffix()))
                steps.append(commands.prune(root, victims, _suffix()))
                await self._step(target, conn, steps, f"switch current to {version}")

    async def restart(self, target: Target) -> None:
        """Run the spec's ``restart`` command for the current release; non-zero exit fails."""
        root = self._root(target)
        async with self._gate:
            conn = await self._connect(target)
            async with self._host_lock(target, root):
                state = await self._state(target, conn, root)
                if state.current is None:
                    raise DriverError(
                        target.name, f"nothing to restart: {root}/current does not exist"
                    )
                ctx = self._context(target, root, state.current, state.previous)
                argv = self._argv(target, "restart", self.spec.restart, ctx)
                await self._command(target, conn, root, argv, "restart")

    async def stop(self, target: Target) -> None:
        """Run the spec's ``stop`` command (if any), then remove ``current`` and ``previous``."""
        root = self._root(target)
        async with self._gate:
            conn = await self._connect(target)
            async with self._host_lock(target, root):
                if self.spec.stop is not None:
                    state = await self._state(target, conn, root)
                    ctx = self._context(target, root, state.current, state.previous)
                    argv = self._argv(target, "stop", self.spec.stop, ctx)
                    await self._command(target, conn, root, argv, "stop")
                await self._step(target, conn, [commands.remove_current(root)], "remove current")

    async def run(
        self,
        target: Target,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``argv`` on the host in ``root/current`` (else the login directory).

        A non-zero exit is a result. The command runs under ``timeout(1)``:
        when ``timeout`` passes it is killed and the result is exit code 124
        with ``timed out after <t>s`` in stderr. Only a failing transport
        (no answer at all ``_ANSWER_GRACE`` seconds later) raises DriverError.
        """
        root = self._root(target)
        if not argv:
            raise DriverError(target.name, "cannot run an empty command")
        try:
            line = commands.in_current(
                root, commands.with_timeout(commands.with_env(argv, env or {}), timeout)
            )
        except ValueError as exc:
            raise DriverError(target.name, f"cannot run {shlex.join(argv)}: {exc}") from exc
        async with self._gate:
            conn = await self._connect(target)
            result = await self._exec(
                target, conn, [line], timeout=timeout + _ANSWER_GRACE, shown=argv[0]
            )
        if result.exit_code == 124 and result.duration >= timeout:
            stderr = result.stderr
            if stderr and not stderr.endswith("\n"):
                stderr += "\n"
            stderr += f"{argv[0]}: timed out after {timeout:g}s"
            return CommandResult(124, result.stdout, stderr, result.duration)
        return result

    async def close(self) -> None:
        """Close every connection this driver opened (the jump host's last)."""
        connections = list(self._connections.values())
        self._connections.clear()
        if self._jump_connection is not None:
            connections.append(self._jump_connection)
            self._jump_connection = None
        for conn in connections:
            conn.close()
        for conn in connections:
            try:
                await conn.wait_closed()
            except (asyncssh.Error, OSError):  # already gone: nothing left to close
                continue

    # ------------------------------------------------------------ remote state

    async def _state(
        self, target: Target, conn: asyncssh.SSHClientConnection, root: str
    ) -> commands.RemoteState:
        result = await self._step(target, conn, commands.observe(root), f"read {root}")
        try:
            return commands.parse_state(result.stdout)
        except ValueError as exc:
            raise DriverError(target.name, f"read {root}: {exc}") from exc

    async def _upload(
        self,
        target: Target,
        conn: asyncssh.SSHClientConnection,
        root: str,
        shown: str,
        local: Path,
    ) -> str:
        """Put the artifact at ``root/.artifacts/<name>`` unless it is there already; verify it."""
        name = PurePosixPath(shown).name
        host = self._endpoint(target).host
        try:
            remote = commands.artifact_path(root, name)
            partial = commands.upload_path(root, name, _suffix())
        except ValueError as exc:
            raise DriverError(target.name, f"artifact {shown}: {exc}") from exc
        expected = await self._sha256_local(target, local)
        found = await self._sha256_remote(target, conn, remote, [commands.prepare(root)])
        if found == expected:
            return name
        try:
            async with asyncio.timeout(self.spec.command_timeout):
                async with conn.start_sftp_client() as sftp:
                    try:
                        await sftp.put(str(local), partial)
                        await sftp.posix_rename(partial, remote)
                    except BaseException:
                        with contextlib.suppress(DriverError):
                            await self._exec(target, conn, [["rm", "-f", "--", partial]])
                        raise
        except TimeoutError as exc:
            raise DriverError(
                target.name,
                f"uploading {shown} to {host} took longer than "
                f"{self.spec.command_timeout:g}s (driver.command_timeout)",
            ) from exc
        except (asyncssh.Error, OSError) as exc:
            self._forget(conn)
            raise DriverError(target.name, f"cannot upload {shown} to {host}: {exc}") from exc
        if self.after_upload is not None:
            await self.after_upload(target, remote)
        found = await self._sha256_remote(target, conn, remote)
        if found != expected:
            await self._exec(target, conn, [["rm", "-f", "--", remote]])
            raise DriverError(
                target.name,
                f"artifact {shown} on {host} has sha256 {found or 'nothing'} after upload, "
                f"expected {expected}: the upload was removed and nothing was switched",
            )
        return name

    async def _sha256_remote(
        self,
        target: Target,
        conn: asyncssh.SSHClientConnection,
        path: str,
        before: Sequence[list[str]] = (),
    ) -> str | None:
        steps = [*before, commands.sha256(path)]
        result = await self._step(target, conn, steps, f"sha256sum {path}")
        try:
            return commands.parse_sha256(result.stdout)
        except ValueError as exc:
            raise DriverError(target.name, f"sha256sum {path}: {exc}") from exc

    async def _sha256_local(self, target: Target, path: Path) -> str:
        try:
            stat = path.stat()
        except OSError as exc:
            raise DriverError(target.name, f"cannot read artifact {path}: {exc}") from exc
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._digests:
            try:
                self._digests[key] = await asyncio.to_thread(_file_sha256, path)
            except OSError as exc:
                raise DriverError(target.name, f"cannot read artifact {path}: {exc}") from exc
        return self._digests[key]

    # -------------------------------------------------------------- transport

    async def _command(
        self,
        target: Target,
        conn: asyncssh.SSHClientConnection,
        root: str,
        argv: list[str],
        what: str,
    ) -> None:
        """Run a user's command (restart, stop) in ``root/current``; non-zero exit fails."""
        timeout = self.spec.command_timeout
        line = commands.in_current(root, commands.with_timeout(argv, timeout))
        result = await self._exec(
            target, conn, [line], timeout=timeout + _ANSWER_GRACE, shown=argv[0]
        )
        if not result.ok:
            late = " (timed out: driver.command_timeout)" if result.exit_code == 124 else ""
            raise DriverError(
                target.name,
                f"{what} command {shlex.join(argv)} failed on {self._endpoint(target).host} "
                f"(exit {result.exit_code}){late}{_detail(result.stderr)}",
            )

    async def _step(
        self,
        target: Target,
        conn: asyncssh.SSHClientConnection,
        steps: Sequence[Sequence[str]],
        what: str,
    ) -> CommandResult:
        """Run some of the driver's own steps (``&&``-chained); a non-zero exit is a DriverError."""
        result = await self._exec(target, conn, steps)
        if not result.ok:
            raise DriverError(
                target.name,
                f"{what} failed on {self._endpoint(target).host} "
                f"(exit {result.exit_code}){_detail(result.stderr)}",
            )
        return result

    async def _exec(
        self,
        target: Target,
        conn: asyncssh.SSHClientConnection,
        steps: Sequence[Sequence[str]],
        *,
        timeout: float | None = None,
        shown: str | None = None,
    ) -> CommandResult:
        """Run argvs on the host, ``&&``-chained: the one place an argv becomes a command line.

        No answer within ``timeout`` (default ``command_timeout``) is a
        transport failure: DriverError, and the connection is dropped.
        """
        timeout = self.spec.command_timeout if timeout is None else timeout
        line = " && ".join(shlex.join(argv) for argv in steps)
        shown = shown or steps[0][0]
        host = self._endpoint(target).host
        started = self.clock.now()
        process: asyncssh.SSHClientProcess[str] | None = None
        try:
            async with asyncio.timeout(timeout):
                process = await conn.create_process(
                    line, stdin=asyncssh.DEVNULL, encoding="utf-8", errors="replace"
                )
                done = await process.wait()
        except TimeoutError as exc:
            self._close(process)
            self._forget(conn)
            raise DriverError(
                target.name, f"{host} did not answer within {timeout:g}s while running {shown}"
            ) from exc
        except (asyncssh.Error, OSError) as exc:
            self._close(process)
            self._forget(conn)
            raise DriverError(target.name, f"running {shown} on {host} failed: {exc}") from exc
        except BaseException:  # cancelled: close the channel
            self._close(process)
            raise
        if done.exit_status is None and done.exit_signal is None:
            self._forget(conn)
            raise DriverError(target.name, f"connection to {host} was lost while running {shown}")
        code = done.exit_status if done.exit_status is not None else _signal_code(done.returncode)
        return CommandResult(
            code, _text(done.stdout), _text(done.stderr), self.clock.now() - started
        )

    async def _connect(self, target: Target) -> asyncssh.SSHClientConnection:
        """The host's connection: the open one, or a new one (3 tries, backoff)."""
        endpoint = self._endpoint(target)
        async with self._connect_locks.setdefault(endpoint, asyncio.Lock()):
            conn = self._connections.get(endpoint)
            if conn is not None and not conn.is_closed():
                return conn
            delay = _BACKOFF
            for attempt in range(1, CONNECT_TRIES + 1):
                try:
                    conn = await self._dial(target, endpoint)
                except _Retry as retry:
                    if attempt == CONNECT_TRIES:
                        raise DriverError(
                            target.name,
                            f"cannot connect to {endpoint} after {CONNECT_TRIES} tries: "
                            f"{_reason(retry.cause)}",
                        ) from retry.cause
                    await self.clock.sleep(delay)
                    delay *= 2
                    continue
                self._connections[endpoint] = conn
                self.connections_opened += 1
                return conn
        raise AssertionError("unreachable")  # pragma: no cover

    async def _dial(self, target: Target, endpoint: _Endpoint) -> asyncssh.SSHClientConnection:
        tunnel = await self._tunnel(target) if self._jump is not None else ()
        return await self._open(target, endpoint, tunnel, "")

    async def _tunnel(self, target: Target) -> asyncssh.SSHClientConnection:
        assert self._jump is not None
        async with self._jump_lock:
            conn = self._jump_connection
            if conn is None or conn.is_closed():
                conn = await self._open(target, self._jump, (), "jump host ")
                self._jump_connection = conn
            return conn

    async def _open(
        self,
        target: Target,
        endpoint: _Endpoint,
        tunnel: asyncssh.SSHClientConnection | tuple[()],
        role: str,
    ) -> asyncssh.SSHClientConnection:
        """One connection attempt; fatal problems are DriverError, the rest _Retry."""
        known_hosts: str | asyncssh.SSHKnownHosts | None = self._known_hosts
        if self._known_hosts is not None and not os.path.isfile(self._known_hosts):
            known_hosts = asyncssh.import_known_hosts("")  # no file: no host is trusted
        options: dict[str, Any] = {
            "username": endpoint.user,
            "known_hosts": known_hosts,
            "connect_timeout": self.spec.connect_timeout,
            "keepalive_interval": max(1.0, self.spec.connect_timeout),
            "keepalive_count_max": 3,
        }
        if endpoint.key is not None:
            if not os.path.isfile(endpoint.key):
                raise DriverError(target.name, f"{role}key file {endpoint.key} not found")
            options["client_keys"] = [endpoint.key]
        try:
            return await asyncssh.connect(endpoint.host, endpoint.port, tunnel=tunnel, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise DriverError(
                target.name,
                f"host key for {role}{endpoint.host} is not trusted "
                f"(known_hosts: {self._known_hosts_shown})",
                hint="check the host's key, then add it to known_hosts (ssh-keyscan)",
            ) from exc
        except asyncssh.PermissionDenied as exc:
            raise DriverError(
                target.name,
                f"{role}{endpoint} refused the login"
                + (f" with key {endpoint.key}" if endpoint.key else " (agent and default keys)"),
            ) from exc
        except (asyncssh.ConnectionLost, OSError) as exc:
            raise _Retry(exc) from exc
        except (asyncssh.Error, ValueError) as exc:  # key exchange, bad key file
            raise DriverError(target.name, f"cannot connect to {role}{endpoint}: {exc}") from exc

    @staticmethod
    def _close(process: asyncssh.SSHClientProcess[str] | None) -> None:
        if process is not None:
            process.close()

    def _forget(self, conn: asyncssh.SSHClientConnection) -> None:
        """Drop a connection that failed, so that the next step opens a new one."""
        for endpoint, known in list(self._connections.items()):
            if known is conn:
                del self._connections[endpoint]
                conn.close()

    # ---------------------------------------------------------------- context

    def _endpoint(self, target: Target) -> _Endpoint:
        key = target.vars.get(_KEY_VAR)
        return _Endpoint(
            host=target.address,
            port=target.port or self.spec.port or 22,
            user=target.user or self.spec.user or _local_user(),
            key=self._local_path(str(key)) if key else self._key,
        )

    def _host_lock(self, target: Target, root: str) -> asyncio.Lock:
        return self._host_locks.setdefault((self._endpoint(target), root), asyncio.Lock())

    def _base_context(self, target: Target) -> dict[str, Any]:
        return {
            **target.vars,
            "name": target.name,
            "address": target.address,
            "service": self.service,
        }

    def _context(
        self, target: Target, root: str, version: str | None, previous: str | None
    ) -> dict[str, Any]:
        return {
            **self._base_context(target),
            "version": version or "",
            "previous_version": previous or "",
            "release": f"{root}/releases/{version}" if version else "",
        }

    def _root(self, target: Target) -> str:
        try:
            rendered = render(self.spec.root, self._base_context(target))
        except KeyError as exc:
            raise DriverError(
                target.name,
                f"driver.root {self.spec.root!r} uses unknown placeholder {{{exc.args[0]}}}",
            ) from exc
        try:
            return commands.check_path(rendered)
        except ValueError as exc:
            raise DriverError(target.name, f"driver.root: {exc}") from exc

    def _artifact(
        self, target: Target, root: str, version: str, previous: str | None
    ) -> tuple[str, Path]:
        ctx = self._context(target, root, version, previous)
        try:
            shown = render(self.spec.artifact, ctx)
        except KeyError as exc:
            raise DriverError(
                target.name,
                f"driver.artifact {self.spec.artifact!r} uses unknown placeholder "
                f"{{{exc.args[0]}}}",
            ) from exc
        local = Path(self._local_path(shown))
        if not local.is_file():
            raise DriverError(target.name, f"artifact {shown} not found (looked for {local})")
        return shown, local

    def _argv(
        self, target: Target, field: str, argv: Sequence[str], ctx: Mapping[str, Any]
    ) -> list[str]:
        try:
            return render_argv(tuple(argv), ctx)
        except KeyError as exc:
            raise DriverError(
                target.name, f"driver.{field} uses unknown placeholder {{{exc.args[0]}}}"
            ) from exc

    def _local_path(self, value: str) -> str:
        return str(self.base_dir / os.path.expanduser(value))

    def _spec_file(self, where: str, field: str, value: str | None) -> str | None:
        if value is None:
            return None
        path = self._local_path(value)
        if not os.path.isfile(path):
            raise InputError(f"{where}.{field}: file {path} not found")
        return path

    @staticmethod
    def _version(target: Target, version: str) -> None:
        try:
            commands.check_version(version)
        except ValueError as exc:
            raise DriverError(target.name, str(exc)) from exc


# ----------------------------------------------------------------- helpers


def _parse_jump(where: str, value: str) -> _Endpoint:
    """``[user@]host[:port]`` (an IPv6 address in brackets) as an endpoint."""
    user, _, rest = value.rpartition("@")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail.removeprefix(":") if tail.startswith(":") else ""
        if tail and not tail.startswith(":"):
            raise InputError(f"{where}.jump_host {value!r}: expected [user@]host[:port]")
    else:
        host, _, port_text = rest.partition(":")
    if not host:
        raise InputError(f"{where}.jump_host {value!r}: expected [user@]host[:port]")
    try:
        port = int(port_text) if port_text else 22
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise InputError(f"{where}.jump_host {value!r}: bad port {port_text!r}")
    return _Endpoint(host=host, port=port, user=user or _local_user(), key=None)


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _suffix() -> str:
    return secrets.token_hex(4)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _text(data: object) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return str(data)


def _detail(stderr: str) -> str:
    text = stderr.strip()
    if not text:
        return ""
    return ": " + (text if len(text) <= _TAIL else "..." + text[-_TAIL:])


def _signal_code(returncode: int | None) -> int:
    """A command killed by signal n exits 128 + n, as a shell reports it."""
    if returncode is None:
        return 255
    return 128 - returncode if returncode < 0 else returncode


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError) and not str(exc):
        text = "timed out"
    return text
