"""The local driver: each target is a process slot on this machine.

A target's slot is a directory (its ``root``)::

    root/
      releases/<version>/    one unpacked artifact per version
      current -> releases/<version>
      previous               the version ``current`` pointed to before the last switch
      pid                    {"pid": ..., "start": ..., "version": ..., "argv": [...]}
      log                    the process' stdout and stderr, appended

Every step is idempotent and crash-safe:

- a release is unpacked into ``releases/.tmp-<version>-<random>`` and renamed
  into place, so a half-unpacked release never exists under its name; a
  release is removed by renaming it to ``.trash-...`` first;
- ``current`` is switched by creating ``current.tmp-<random>`` and
  ``os.replace``-ing it over ``current``;
- the process is started detached (its own session, through a tiny launcher
  so it is not a child of rollwave and outlives it), and the PID file records
  its PID *and* its start time from ``/proc/<pid>/stat``: a PID whose start
  time differs is someone else's (a recycled PID) and is never signalled;
- the process' environment carries ``ROLLWAVE_SLOT=<root>``, so a process
  started just before a crash, before its PID was recorded, is still found
  and stopped by the next restart or stop. After any sequence of deploys,
  restarts and crashes a slot runs exactly one process: its ``current``
  release's.

Linux only (``/proc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import shlex
import shutil
import signal
import sys
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rollwave.engine.local_run import run_argv
from rollwave.engine.ports import Clock, CommandResult
from rollwave.errors import DriverError, InputError
from rollwave.inventory.model import Target
from rollwave.spec.templates import placeholders, render, render_argv

__all__ = ["SLOT_ENV", "LocalDriver"]

SLOT_ENV = "ROLLWAVE_SLOT"
"""Environment variable naming the slot (its absolute root) a started process belongs to."""

_LAUNCH_TIMEOUT = 30.0  # seconds the launcher may take to report the started PID
_KILL_WAIT = 5.0  # seconds to wait for SIGKILLed processes to disappear
_POLL = 0.05  # seconds between checks while waiting for a process to exit

# Runs as ``python -I -S -c _LAUNCHER cwd log argv...``: starts argv in its own
# session and exits without waiting, so the service is re-parented away from
# rollwave. It reads the child's start time while the child is still its own
# (even a child that already exited is a zombie until the launcher exits).
_LAUNCHER = r"""
import json, os, subprocess, sys
cwd, log, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
try:
    child = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                             start_new_session=True)
except OSError as exc:
    print(json.dumps({"errno": exc.errno, "error": exc.strerror, "filename": exc.filename}))
    sys.stdout.flush()
    os._exit(1)
with open("/proc/%d/stat" % child.pid) as f:
    start = int(f.read().rpartition(")")[2].split()[19])
print(json.dumps({"pid": child.pid, "start": start}))
sys.stdout.flush()
os._exit(0)
"""

_NOT_IN_ROOT = ("version", "previous_version", "release")


@dataclass(frozen=True)
class _PidRecord:
    pid: int
    start: int


@dataclass(frozen=True)
class _Stat:
    state: str
    pgrp: int
    start: int


class LocalDriver:
    """:class:`~rollwave.engine.ports.Driver` for process slots on this machine.

    ``artifact``, ``root`` and each ``start`` argument are templates over the
    target's context: ``name``, ``address``, ``service``, ``version``,
    ``previous_version`` (may be ``''``), ``release`` (absolute path of
    ``root/releases/<version>``) and every inventory variable of the target.
    ``root`` may not use the last three: it is the same for every version.
    Relative ``artifact`` and ``root`` paths are relative to ``base_dir``.

    The artifact is a ``.tar.gz``/``.tgz`` (any tar ``tarfile`` reads) whose
    members become the release directory's contents as they are (build it with
    ``tar -C build -czf app-1.tar.gz .``), or a directory that is copied. A
    release already unpacked is reused, so rolling back needs no artifact.

    ``keep`` bounds the releases kept per target; the current release and the
    one it replaced (the rollback target) are always kept, so ``keep=1``
    keeps two. ``env`` is added to rollwave's own environment for the started
    process and for :meth:`run`. ``stop_grace`` is how long a process may take
    to exit after SIGTERM before it gets SIGKILL.
    """

    def __init__(
        self,
        *,
        service: str,
        artifact: str,
        root: str,
        start: list[str],
        keep: int,
        base_dir: Path,
        env: Mapping[str, str] | None = None,
        stop_grace: float = 10.0,
        clock: Clock,
    ) -> None:
        if not start:
            raise InputError(f"service {service}: driver.start must name a command")
        if keep < 1:
            raise InputError(f"service {service}: driver.keep must be at least 1, not {keep}")
        if stop_grace < 0:
            raise InputError(f"service {service}: driver.stop_grace must not be negative")
        bad = [p for p in placeholders(root) if p in _NOT_IN_ROOT]
        if bad:
            raise InputError(
                f"service {service}: driver.root {root!r} may not use {{{bad[0]}}}: "
                "the root is the same for every version"
            )
        self.service = service
        self.artifact = artifact
        self.root = root
        self.start = list(start)
        self.keep = keep
        self.base_dir = Path(base_dir).absolute()
        self.env = dict(env or {})
        self.stop_grace = stop_grace
        self.clock = clock
        self._locks: dict[Path, asyncio.Lock] = {}

    # ---------------------------------------------------------------- observe

    async def current_version(self, target: Target) -> str | None:
        """The version ``root/current`` points to, or None when there is none."""
        return self._current(target, self._root(target))

    async def releases(self, target: Target) -> list[str]:
        """The unpacked versions, oldest first (by modification time, then name)."""
        return [name for name, _ in self._release_dirs(target, self._root(target) / "releases")]

    async def check(self, target: Target, version: str) -> None:
        """Preflight: the artifact exists, the root is writable, the start command is found."""
        self._valid_version(target, version)
        root = self._root(target)
        ctx = self._context(target, root, version, self._current(target, root) or "")
        release = root / "releases" / version
        if not release.is_dir():
            shown, path = self._artifact(target, ctx)
            if not path.exists():
                raise DriverError(target.name, f"artifact {shown} not found")
            if path.is_file() and not await asyncio.to_thread(tarfile.is_tarfile, path):
                raise DriverError(
                    target.name, f"artifact {shown} is neither a directory nor a tar archive"
                )
        existing = root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise DriverError(target.name, f"root {root} cannot be written ({existing})")
        self._check_start(target, ctx, release)

    def _check_start(self, target: Target, ctx: Mapping[str, Any], release: Path) -> None:
        exe = self._render_argv(target, self.start, ctx)[0]
        if "/" not in exe:
            if shutil.which(exe, path=self._env().get("PATH", os.defpath)) is None:
                raise DriverError(target.name, f"start executable {exe} not found on PATH")
            return
        path = Path(os.path.normpath(release / exe))  # an absolute exe stays itself
        if path.is_relative_to(release) and not release.is_dir():
            return  # inside a release not unpacked yet
        if not os.access(path, os.X_OK) or path.is_dir():
            raise DriverError(target.name, f"start executable {exe} not found")

    # ------------------------------------------------------------------ change

    async def deploy(self, target: Target, version: str) -> None:
        """Unpack ``version`` (unless present), point ``current`` at it, prune old releases."""
        self._valid_version(target, version)
        root = self._root(target)
        async with self._lock(root):
            current = self._current(target, root)
            previous = current if current != version else self._previous(target, root)
            release = root / "releases" / version
            try:
                if not release.is_dir():
                    ctx = self._context(target, root, version, previous or "")
                    shown, artifact = self._artifact(target, ctx)
                    if not artifact.exists():
                        raise DriverError(target.name, f"artifact {shown} not found")
                    await asyncio.to_thread(self._unpack, target, shown, artifact, release)
                now = self.clock.now()
                os.utime(release, (now, now))  # prune goes by when a release was last deployed
                if current != version:
                    _write_atomic(root / "previous", f"{current or ''}\n")
                    _switch_current(root, version)
                protect = {version} | ({previous} if previous else set())
                await asyncio.to_thread(self._prune, target, root / "releases", protect)
            except OSError as exc:
                raise DriverError(target.name, f"cannot deploy {version} in {root}: {exc}") from exc

    async def restart(self, target: Target) -> None:
        """Stop the slot's process (if any) and start the ``current`` release's."""
        root = self._root(target)
        async with self._lock(root):
            await self._stop_processes(target, root)
            (root / "pid").unlink(missing_ok=True)
            await self._start(target, root)

    async def stop(self, target: Target) -> None:
        """Stop the slot's process and remove ``current``: the rollback of a first deploy."""
        root = self._root(target)
        async with self._lock(root):
            await self._stop_processes(target, root)
            for name in ("pid", "current", "previous"):
                (root / name).unlink(missing_ok=True)

    async def run(
        self,
        target: Target,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``argv`` (no shell) in the current release directory, or ``base_dir``.

        The environment is rollwave's, plus the driver's ``env``, plus ``env``.
        See :func:`run_argv` for exit codes of missing commands and timeouts.
        """
        root = self._root(target)
        current = self._current(target, root)
        cwd = root / "releases" / current if current else self.base_dir
        if not cwd.is_dir():
            cwd = self.base_dir
        try:
            return await run_argv(
                argv, timeout=timeout, clock=self.clock, env={**self._env(), **(env or {})}, cwd=cwd
            )
        except OSError as exc:
            raise DriverError(target.name, f"cannot run {shlex.join(argv)}: {exc}") from exc

    async def close(self) -> None:
        """Nothing to release: started processes are meant to outlive rollwave."""

    # ------------------------------------------------------------- processes

    async def _start(self, target: Target, root: Path) -> None:
        version = self._current(target, root)
        if version is None:
            raise DriverError(target.name, f"nothing to start: {root}/current does not exist")
        release = root / "releases" / version
        if not release.is_dir():
            raise DriverError(target.name, f"current release {version} is missing from {root}")
        ctx = self._context(target, root, version, self._previous(target, root) or "")
        argv = self._render_argv(target, self.start, ctx)
        env = {**self._env(), SLOT_ENV: str(root)}
        stamp = datetime.fromtimestamp(self.clock.now(), UTC).isoformat(timespec="seconds")
        try:
            with (root / "log").open("a", encoding="utf-8") as log:
                log.write(f"--- rollwave {stamp}: start {version}: {shlex.join(argv)}\n")
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                "-c",
                _LAUNCHER,
                str(release),
                str(root / "log"),
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            raise DriverError(target.name, f"cannot start {argv[0]}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), _LAUNCH_TIMEOUT)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise DriverError(target.name, f"starting {argv[0]} did not finish") from exc
        try:
            report = json.loads(out.decode("utf-8", "replace").strip() or "{}")
        except ValueError:
            report = {}
        if "pid" not in report:
            raise DriverError(target.name, _start_failure(argv[0], release, report, err))
        record = {"pid": report["pid"], "start": report["start"], "version": version, "argv": argv}
        _write_atomic(root / "pid", json.dumps(record) + "\n")

    async def _stop_processes(self, target: Target, root: Path) -> None:
        """SIGTERM every process of the slot, wait ``stop_grace``, SIGKILL what is left."""
        victims: dict[int, int] = {}
        leader = _read_pid(root / "pid")
        if leader is not None and _running(leader.pid, leader.start):
            victims[leader.pid] = leader.start
        else:
            leader = None
        victims.update(await asyncio.to_thread(_slot_processes, str(root)))
        if not victims:
            return
        _signal_all(victims, leader, signal.SIGTERM)
        left = await self._wait_gone(victims, self.stop_grace)
        if not left:
            return
        _signal_all(left, leader, signal.SIGKILL)
        left = await self._wait_gone(left, _KILL_WAIT)
        if left:
            pids = ", ".join(str(p) for p in sorted(left))
            raise DriverError(target.name, f"process {pids} did not exit after SIGKILL")

    async def _wait_gone(self, procs: Mapping[int, int], timeout: float) -> dict[int, int]:
        deadline = self.clock.now() + timeout
        while True:
            left = {pid: start for pid, start in procs.items() if _running(pid, start)}
            if not left or self.clock.now() >= deadline:
                return left
            await self.clock.sleep(_POLL)

    # ------------------------------------------------------------------ files

    def _unpack(self, target: Target, shown: str, artifact: Path, release: Path) -> None:
        release.parent.mkdir(parents=True, exist_ok=True)
        tmp = release.parent / f".tmp-{release.name}-{secrets.token_hex(4)}"
        try:
            if artifact.is_dir():
                shutil.copytree(artifact, tmp, symlinks=True)
            else:
                tmp.mkdir()
                with tarfile.open(artifact, "r:*") as tar:
                    tar.extractall(tmp, filter="data")
            try:
                os.rename(tmp, release)
            except OSError:
                if not release.is_dir():  # else someone else unpacked it meanwhile
                    raise
        except (OSError, tarfile.TarError) as exc:
            raise DriverError(target.name, f"cannot unpack artifact {shown}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _prune(self, target: Target, releases: Path, protect: set[str]) -> None:
        for entry in releases.iterdir():
            if entry.name.startswith((".tmp-", ".trash-")):  # left by a crash
                shutil.rmtree(entry, ignore_errors=True)
        present = self._release_dirs(target, releases)
        excess = len(present) - self.keep
        for name, _ in present:
            if excess <= 0:
                break
            if name in protect:
                continue
            trash = releases / f".trash-{name}-{secrets.token_hex(4)}"
            os.rename(releases / name, trash)
            shutil.rmtree(trash, ignore_errors=True)
            excess -= 1

    def _release_dirs(self, target: Target, releases: Path) -> list[tuple[str, float]]:
        try:
            entries = [
                (e.name, e.stat().st_mtime)
                for e in releases.iterdir()
                if not e.name.startswith(".") and e.is_dir()
            ]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise DriverError(target.name, f"cannot list {releases}: {exc}") from exc
        return sorted(entries, key=lambda e: (e[1], e[0]))

    def _current(self, target: Target, root: Path) -> str | None:
        try:
            dest = os.readlink(root / "current")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DriverError(target.name, f"{root}/current is not a symlink: {exc}") from exc
        return Path(dest).name or None

    def _previous(self, target: Target, root: Path) -> str | None:
        try:
            return (root / "previous").read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DriverError(target.name, f"cannot read {root}/previous: {exc}") from exc

    # ---------------------------------------------------------------- context

    def _base_context(self, target: Target) -> dict[str, Any]:
        return {
            **target.vars,
            "name": target.name,
            "address": target.address,
            "service": self.service,
        }

    def _context(self, target: Target, root: Path, version: str, previous: str) -> dict[str, Any]:
        return {
            **self._base_context(target),
            "version": version,
            "previous_version": previous,
            "release": str(root / "releases" / version),
        }

    def _root(self, target: Target) -> Path:
        try:
            rendered = render(self.root, self._base_context(target))
        except KeyError as exc:
            raise DriverError(
                target.name, f"driver.root {self.root!r} uses unknown placeholder {{{exc.args[0]}}}"
            ) from exc
        return Path(os.path.normpath(self.base_dir / rendered))

    def _artifact(self, target: Target, ctx: Mapping[str, Any]) -> tuple[str, Path]:
        try:
            shown = render(self.artifact, ctx)
        except KeyError as exc:
            raise DriverError(
                target.name,
                f"driver.artifact {self.artifact!r} uses unknown placeholder {{{exc.args[0]}}}",
            ) from exc
        return shown, self.base_dir / shown

    def _render_argv(
        self, target: Target, argv: Sequence[str], ctx: Mapping[str, Any]
    ) -> list[str]:
        try:
            return render_argv(tuple(argv), ctx)
        except KeyError as exc:
            raise DriverError(
                target.name, f"driver.start uses unknown placeholder {{{exc.args[0]}}}"
            ) from exc

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def _lock(self, root: Path) -> asyncio.Lock:
        return self._locks.setdefault(root, asyncio.Lock())

    @staticmethod
    def _valid_version(target: Target, version: str) -> None:
        if (
            not version
            or version.startswith(".")
            or any(c in version for c in "/\\\0")
            or version != version.strip()
        ):
            raise DriverError(target.name, f"version {version!r} cannot name a release directory")


# ------------------------------------------------------------------- commands


def _stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            data = f.read()
    except OSError:
        return None
    fields = data.rpartition(")")[2].split()
    try:
        return _Stat(state=fields[0], pgrp=int(fields[2]), start=int(fields[19]))
    except (IndexError, ValueError):
        return None


def _running(pid: int, start: int) -> bool:
    """True when ``pid`` is alive and is the process that started at ``start`` (clock ticks)."""
    stat = _stat(pid)
    if stat is None or stat.start != start:
        return False
    if stat.state in ("Z", "X"):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap it, should it be our own child
        return False
    return True


def _read_pid(path: Path) -> _PidRecord | None:
    """The PID file's record, or None when absent or unreadable (then nothing is signalled)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return _PidRecord(pid=int(data["pid"]), start=int(data["start"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _slot_processes(root: str) -> dict[int, int]:
    """Every live process whose environment says it belongs to the slot at ``root``."""
    marker = f"\0{SLOT_ENV}={root}\0".encode()
    found: dict[int, int] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = b"\0" + f.read()
        except OSError:
            continue
        if marker in environ:
            stat = _stat(int(entry.name))
            if stat is not None and stat.state not in ("Z", "X"):
                found[int(entry.name)] = stat.start
    return found


def _signal_all(procs: Mapping[int, int], leader: _PidRecord | None, sig: signal.Signals) -> None:
    """Send ``sig`` to each process still being the one we recorded (and to the leader's group)."""
    for pid, start in procs.items():
        _signal_verified(pid, start, sig)
    if leader is not None and _running(leader.pid, leader.start):
        stat = _stat(leader.pid)
        if stat is not None and stat.pgrp == leader.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(leader.pid, sig)


def _signal_verified(pid: int, start: int, sig: signal.Signals) -> None:
    """Signal ``pid`` only if it still is the process that started at ``start``.

    A pidfd pins the process: checked after opening it, the start time
    proves the descriptor is ours, and the signal cannot reach a successor.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd support: check, then signal (a tiny race remains)
        if _running(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        return
    try:
        if _running(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                signal.pidfd_send_signal(fd, sig)
    finally:
        os.close(fd)


def _start_failure(exe: str, release: Path, report: Mapping[str, Any], err: bytes) -> str:
    code = report.get("errno")
    filename = report.get("filename")
    if code == errno.ENOENT and filename != str(release):
        return f"start executable {exe} not found"
    if code == errno.EACCES:
        return f"start executable {exe} is not executable"
    if code is not None:
        return f"cannot start {exe}: {report.get('error') or os.strerror(int(code))}"
    detail = err.decode("utf-8", "replace").strip().splitlines()
    return f"cannot start {exe}: launcher failed" + (f": {detail[-1]}" if detail else "")


# -------------------------------------------------------------------- files


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _switch_current(root: Path, version: str) -> None:
    for stale in root.glob("current.tmp-*"):  # left by a crash
        stale.unlink(missing_ok=True)
    tmp = root / f"current.tmp-{secrets.token_hex(4)}"
    os.symlink(f"releases/{version}", tmp)
    try:
        os.replace(tmp, root / "current")
    finally:
        tmp.unlink(missing_ok=True)
