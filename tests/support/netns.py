"""A fleet of SSH hosts built from Linux network namespaces, and the ``ssh_fleet`` fixture.

``ssh_fleet(size)`` builds, for one test:

- a bridge ``rwbr<id>`` in the root namespace at ``10.231.<k>.1/24``, where
  ``k`` is the first third octet no interface or route of this machine uses
  yet (chosen under a machine-wide lock, so concurrent test runs do not
  collide);
- per host ``i`` (0-based) a namespace ``rwtest-<pid>-<id>-<i>`` with a veth
  pair (``rw<id>h<i>`` on the bridge, ``eth0`` inside) at ``10.231.<k>.(10+i)``;
- per host its own ``sshd -D -e`` (own config, host key, PID file and log;
  root may log in with the test's client key only) and a tiny supervisor
  that runs the demo app from ``<app_root>/current`` on port 8080 of the
  host's address, restarting it on request or when it exits;
- a client key, a ``known_hosts`` naming every host's key, and a per-host
  ``app_root`` (hosts share this machine's file system, so each host gets
  its own root under the fleet directory, passed as the inventory var
  ``app_root``);
- optionally HAProxy in the root namespace, on a loopback frontend port, in
  front of every host's app.

The driver's ``restart`` argv is ``[<fleet>/bin/app-ctl, restart,
"{app_root}"]``: it asks the supervisor to restart the app and returns only
after the new process answers ``/healthz`` (exit 1 if it never does);
``stop`` is ``[<fleet>/bin/app-ctl, stop, "{app_root}"]``.

Teardown, also after a failure half-way through set-up: HAProxy and every
process inside each namespace (sshd, its sessions, supervisor, app), by
PID, then the namespaces (their veth ends go with them), the bridge, and
the fleet directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollwave.demo.artifacts import build_artifact
from rollwave.demo.haproxy import HAProxyProcess
from rollwave.inventory.model import Target
from support.processes import alive, free_port, proc_start
from support.requirements import require_binary

__all__ = ["APP_PORT", "Host", "SSHFleet", "ssh_fleet"]

APP_PORT = 8080
SUBNET_PREFIX = "10.231"
_LOCK_NAME = "\0rollwave-test-fleet-subnet"  # abstract unix socket: no file

SUPERVISOR = r'''
"""supervisor.py ROOT HOST PORT: run ROOT/current/app.py; restart it when asked or when it exits."""
import os, signal, subprocess, sys, time, urllib.request

root, host, port = sys.argv[1], sys.argv[2], sys.argv[3]
child = None
wanted = False
last_start = 0.0


def read(name):
    try:
        with open(os.path.join(root, name)) as f:
            return f.read().strip()
    except OSError:
        return None


def answer(name, text):
    path = os.path.join(root, name)
    with open(path + ".tmp", "w") as f:
        f.write(text + "\n")
    os.replace(path + ".tmp", path)


def start():
    global last_start
    last_start = time.monotonic()
    release = os.path.realpath(os.path.join(root, "current"))
    app = os.path.join(release, "app.py")
    if not os.path.isfile(app):
        return None
    log = open(os.path.join(root, "app.log"), "ab")
    try:
        return subprocess.Popen([sys.executable, app, "--host", host, "--port", port],
                                cwd=release, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    finally:
        log.close()


def stop():
    global child
    if child is not None and child.poll() is None:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    child = None


def serves(deadline):
    url = "http://%s:%s/healthz" % (host, port)
    while time.monotonic() < deadline:
        if child is None or child.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def bye(*_):
    stop()
    sys.exit(0)


signal.signal(signal.SIGTERM, bye)
seen_restart, seen_stop = read("restart-requested"), read("stop-requested")
while True:
    token = read("restart-requested")
    if token and token != seen_restart:
        seen_restart = token
        stop()
        child = start()
        wanted = True
        answer("restart-done", token + (" ok" if serves(time.monotonic() + 20) else " failed"))
    token = read("stop-requested")
    if token and token != seen_stop:
        seen_stop = token
        wanted = False
        stop()
        answer("stop-done", token + " ok")
    if wanted and (child is None or child.poll() is not None) and time.monotonic() - last_start > 1:
        child = start()
    time.sleep(0.05)
'''

APP_CTL = r"""#!/bin/sh
# app-ctl restart|stop ROOT: ask the host's supervisor, wait (30 s at most) for its answer.
set -eu
action=$1
root=$2
case $action in
  restart) request=restart-requested; done_file=restart-done ;;
  stop) request=stop-requested; done_file=stop-done ;;
  *) echo "usage: app-ctl restart|stop ROOT" >&2; exit 2 ;;
esac
token="$$-$(date +%s%N)"
printf '%s\n' "$token" > "$root/$request.tmp"
mv -f "$root/$request.tmp" "$root/$request"
i=0
while [ "$i" -lt 600 ]; do
  if [ -f "$root/$done_file" ]; then
    case $(cat "$root/$done_file") in
      "$token ok") exit 0 ;;
      "$token failed") echo "app-ctl: the app did not answer /healthz after $action" >&2; exit 1 ;;
    esac
  fi
  sleep 0.05
  i=$((i + 1))
done
echo "app-ctl: the supervisor did not answer within 30s" >&2
exit 1
"""


@dataclass
class Host:
    """One namespace host: its address, sshd, supervisor and app root."""

    name: str
    index: int
    namespace: str
    address: str
    veth: str  # the root-namespace end, on the bridge
    home: Path  # sshd config, keys, logs
    app_root: Path
    host_key: Path
    sshd: subprocess.Popen[bytes] | None = None
    supervisor: subprocess.Popen[bytes] | None = None

    @property
    def sshd_log(self) -> Path:
        return self.home / "sshd.log"


@dataclass
class SSHFleet:
    """Hosts in network namespaces on a private bridge, each with its own sshd."""

    size: int
    base: Path
    id: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: list[Host] = field(default_factory=list)
    subnet: str = ""
    bridge: str = ""
    haproxy: HAProxyProcess | None = None
    namespaces: list[str] = field(default_factory=list)

    # ------------------------------------------------------------- paths

    @property
    def client_key(self) -> Path:
        return self.base / "client" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.base / "client" / "known_hosts"

    @property
    def app_ctl(self) -> Path:
        return self.base / "bin" / "app-ctl"

    def restart_argv(self) -> list[str]:
        return [str(self.app_ctl), "restart", "{app_root}"]

    def stop_argv(self) -> list[str]:
        return [str(self.app_ctl), "stop", "{app_root}"]

    # ------------------------------------------------------------ set-up

    def start(self, *, haproxy: bool = False) -> None:
        """Build everything; on any failure the caller's teardown (``close``) removes what exists."""
        for sub in ("client", "bin", "hosts", "dist"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        _run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "rollwave-test",
                "-f",
                str(self.client_key),
            ]
        )
        (self.base / "client" / "authorized_keys").write_text(
            Path(f"{self.client_key}.pub").read_text()
        )
        (self.base / "bin" / "supervisor.py").write_text(SUPERVISOR)
        self.app_ctl.write_text(APP_CTL)
        self.app_ctl.chmod(0o755)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir

        self._make_bridge()
        for i in range(self.size):
            self._make_host(i)
        self.write_known_hosts()
        for host in self.hosts:
            self._start_sshd(host)
            self._start_supervisor(host)
        for host in self.hosts:
            _wait_tcp(host.address, 22, host.sshd, lambda h=host: h.sshd_log.read_text())
        if haproxy:
            self.haproxy = HAProxyProcess(
                self.base / "haproxy",
                free_port(),
                "app",
                [(h.name, h.address, APP_PORT) for h in self.hosts],
            )
            self.haproxy.start()

    def _make_bridge(self) -> None:
        self.bridge = f"rwbr{self.id}"
        with _subnet_lock():
            used = _used_third_octets()
            free = next((k for k in range(256) if k not in used), None)
            if free is None:
                raise RuntimeError(f"no free {SUBNET_PREFIX}.<k>.0/24 subnet on this machine")
            self.subnet = f"{SUBNET_PREFIX}.{free}"
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])

    def _make_host(self, i: int) -> None:
        name = f"host-{i}"
        namespace = f"rwtest-{os.getpid()}-{self.id}-{i}"
        home = self.base / "hosts" / name
        host = Host(
            name=name,
            index=i,
            namespace=namespace,
            address=f"{self.subnet}.{10 + i}",
            veth=f"rw{self.id}h{i}",
            home=home,
            app_root=home / "srv" / "app",
            host_key=home / "ssh_host_ed25519_key",
        )
        home.mkdir(parents=True)
        host.app_root.mkdir(parents=True)
        _run(["ip", "netns", "add", namespace])
        self.namespaces.append(namespace)
        self.hosts.append(host)
        _run(
            [
                "ip",
                "link",
                "add",
                host.veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                namespace,
            ]
        )
        _run(["ip", "link", "set", host.veth, "master", self.bridge, "up"])
        _run(["ip", "-n", namespace, "addr", "add", f"{host.address}/24", "dev", "eth0"])
        _run(["ip", "-n", namespace, "link", "set", "eth0", "up"])
        _run(["ip", "-n", namespace, "link", "set", "lo", "up"])
        self.new_host_key(host)

    def new_host_key(self, host: Host) -> str:
        """Give ``host`` a fresh host key file (sshd reads it per connection); return its public line."""
        for path in (host.host_key, Path(f"{host.host_key}.pub")):
            path.unlink(missing_ok=True)
        _run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                host.name,
                "-f",
                str(host.host_key),
            ]
        )
        return self.public_host_key(host)

    def public_host_key(self, host: Host) -> str:
        kind, blob = Path(f"{host.host_key}.pub").read_text().split()[:2]
        return f"{kind} {blob}"

    def write_known_hosts(self, overrides: dict[str, str] | None = None) -> None:
        """known_hosts with each host's real key, or the key line given for it in ``overrides``."""
        overrides = overrides or {}
        lines = [
            f"{h.address} {overrides.get(h.name) or self.public_host_key(h)}\n" for h in self.hosts
        ]
        self.known_hosts.write_text("".join(lines))

    def _start_sshd(self, host: Host) -> None:
        config = host.home / "sshd_config"
        config.write_text(
            f"""\
ListenAddress {host.address}:22
HostKey {host.host_key}
PidFile {host.home / "sshd.pid"}
AuthorizedKeysFile {self.base / "client" / "authorized_keys"}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
UseDNS no
AllowTcpForwarding yes
MaxStartups 100:30:200
Subsystem sftp internal-sftp
LogLevel INFO
# bash skips ~/.bashrc when SHLVL says it is nested: this machine's root .bashrc (a
# developer's pyenv set-up) is not part of a host, and costs ~0.1 s per command.
SetEnv SHLVL=1
"""
        )
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        with host.sshd_log.open("ab") as log:
            host.sshd = subprocess.Popen(
                ["ip", "netns", "exec", host.namespace, sshd, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def _start_supervisor(self, host: Host) -> None:
        with (host.home / "supervisor.log").open("ab") as log:
            host.supervisor = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    host.namespace,
                    sys.executable,
                    str(self.base / "bin" / "supervisor.py"),
                    str(host.app_root),
                    host.address,
                    str(APP_PORT),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    # ------------------------------------------------------------ helpers

    def build(self, version: str, behaviour: dict[str, Any] | None = None) -> Path:
        return build_artifact(self.base / "dist", version, behaviour)

    def target(self, host: Host, **extra: Any) -> Target:
        return Target(
            host.name,
            host.address,
            user="root",
            vars={
                "app_root": str(host.app_root),
                "ansible_ssh_private_key_file": str(self.client_key),
                **extra,
            },
        )

    def targets(self) -> list[Target]:
        return [self.target(h) for h in self.hosts]

    def write_inventory(self, path: Path) -> None:
        """An Ansible-style rollwave YAML inventory of every host, in group ``app``."""
        inventory = {
            "targets": [
                {
                    "name": h.name,
                    "address": h.address,
                    "groups": ["app"],
                    "vars": {
                        "ansible_user": "root",
                        "ansible_ssh_private_key_file": str(self.client_key),
                        "app_root": str(h.app_root),
                    },
                }
                for h in self.hosts
            ]
        }
        path.write_text(yaml.safe_dump(inventory, sort_keys=False))

    def current(self, host: Host) -> str | None:
        link = host.app_root / "current"
        return Path(os.readlink(link)).name if link.is_symlink() else None

    def releases(self, host: Host) -> list[str]:
        releases = host.app_root / "releases"
        if not releases.is_dir():
            return []
        return sorted(p.name for p in releases.iterdir() if not p.name.startswith("."))

    def logins(self, host: Host) -> int:
        """How many SSH logins the host's sshd has accepted so far (from its log)."""
        try:
            return host.sshd_log.read_text(errors="replace").count("Accepted publickey for root")
        except FileNotFoundError:
            return 0

    def set_link(self, host: Host, up: bool) -> None:
        """Cut (or restore) the host's network: its ``eth0`` inside the namespace goes down."""
        _run(["ip", "-n", host.namespace, "link", "set", "eth0", "up" if up else "down"])

    # ----------------------------------------------------------- teardown

    def close(self) -> None:
        """Remove everything this fleet created, by PID and by name; tolerate half-built state."""
        if self.haproxy is not None:
            with contextlib.suppress(Exception):
                self.haproxy.stop()
        victims: dict[int, int] = {}
        for host in self.hosts:
            for proc in (host.supervisor, host.sshd):
                if proc is not None and proc.poll() is None:
                    info = proc_start(proc.pid)
                    if info is not None:
                        victims[proc.pid] = info[1]
        for namespace in self.namespaces:
            victims.update(_namespace_pids(namespace))
        for pid, start in victims.items():
            if alive(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for host in self.hosts:
            for proc in (host.supervisor, host.sshd):
                if proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(10)
        deadline = time.monotonic() + 10
        while any(alive(p, s) for p, s in victims.items()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for namespace in self.namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
        for host in self.hosts:  # normally gone with its namespace's end
            subprocess.run(["ip", "link", "del", host.veth], capture_output=True, check=False)
        if self.bridge:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        shutil.rmtree(self.base, ignore_errors=True)


# -------------------------------------------------------------------- helpers


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout


@contextlib.contextmanager
def _subnet_lock(timeout: float = 60.0) -> Iterator[None]:
    """A machine-wide mutex for choosing a subnet: a bound abstract unix socket.

    The kernel releases it when the socket closes or its process dies, and
    it leaves no file behind.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                sock.bind(_LOCK_NAME)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield
    finally:
        sock.close()


def _used_third_octets() -> set[int]:
    """Third octets of 10.231.<k>.x already on an interface or in a route of this machine."""
    text = _run(["ip", "-4", "-o", "addr", "show"]) + _run(
        ["ip", "-4", "route", "show", "table", "all"]
    )
    pattern = re.compile(rf"\b{re.escape(SUBNET_PREFIX)}\.(\d+)\.\d+")
    return {int(k) for k in pattern.findall(text)}


def _namespace_pids(namespace: str) -> dict[int, int]:
    """Every live process inside ``namespace`` (all started by this fleet), with start times."""
    result = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False
    )
    found: dict[int, int] = {}
    for word in result.stdout.split():
        info = proc_start(int(word)) if word.isdigit() else None
        if info is not None and info[0] not in "ZX":
            found[int(word)] = info[1]
    return found


def _wait_tcp(
    address: str,
    port: int,
    proc: subprocess.Popen[bytes] | None,
    log: Callable[[], str],
    timeout: float = 15.0,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"sshd on {address} exited with {proc.returncode}:\n{log()}")
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {address}:{port}: {exc}\n{log()}") from exc
        time.sleep(0.05)


def _require_root() -> None:
    if os.geteuid() != 0:
        reason = "network namespaces need root"
        if os.environ.get("ROLLWAVE_REQUIRE_ALL"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def ssh_fleet() -> Iterator[Callable[..., SSHFleet]]:
    """A factory: ``ssh_fleet(size, haproxy=False)`` builds a fleet, torn down after the test."""
    fleets: list[SSHFleet] = []

    def make(size: int = 3, *, haproxy: bool = False) -> SSHFleet:
        _require_root()
        require_binary("ip", "iproute2")
        require_binary("sshd", "openssh-server")
        require_binary("ssh-keygen", "openssh-client")
        if haproxy:
            require_binary("haproxy", "haproxy")
        fleet = SSHFleet(size, Path(tempfile.mkdtemp(prefix="rwfleet-", dir="/tmp")))
        fleets.append(fleet)
        fleet.start(haproxy=haproxy)
        return fleet

    try:
        yield make
    finally:
        for fleet in fleets:
            fleet.close()
