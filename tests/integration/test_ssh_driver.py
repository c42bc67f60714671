"""The SSH driver against real sshd processes in network namespaces (see support/netns.py)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from rollwave.drivers.ssh import InsecureHostKeyWarning, SSHDriver
from rollwave.engine.clock import SystemClock
from rollwave.errors import DriverError, InputError
from rollwave.inventory.model import Target
from rollwave.spec.model import ServiceSpec, SSHDriverSpec
from support.netns import APP_PORT, Host, SSHFleet

pytestmark = pytest.mark.integration

Fleet = Callable[..., SSHFleet]


def make_driver(fleet: SSHFleet, **options: Any) -> SSHDriver:
    """A driver for ``fleet``'s hosts: its known_hosts, the supervisor's restart and stop."""
    fields: dict[str, Any] = {
        "kind": "ssh",
        "artifact": "dist/app-{version}.tar.gz",
        "root": "{app_root}",
        "restart": fleet.restart_argv(),
        "stop": fleet.stop_argv(),
        "known_hosts": str(fleet.known_hosts),
        "keep": 2,
        "connect_timeout": 5,
        "command_timeout": 60,
    }
    fields.update(options)
    return SSHDriver(
        service="app", spec=SSHDriverSpec(**fields), base_dir=fleet.base, clock=SystemClock()
    )


async def served(host: Host) -> str:
    """What the host's app answers on / right now ('down' when nothing answers)."""
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
            response = await client.get(f"http://{host.address}:{APP_PORT}/")
            return response.text.strip()
    except httpx.HTTPError:
        return "down"


def other_key(tmp_path: Path) -> str:
    """The public line of a fresh ed25519 key that no sshd of the fleet uses."""
    path = tmp_path / "impostor"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    kind, blob = Path(f"{path}.pub").read_text().split()[:2]
    return f"{kind} {blob}"


# ------------------------------------------------------------------- deploys


def test_deploy_prune_and_rollback_on_three_hosts(ssh_fleet: Fleet) -> None:
    """Deploys switch current atomically, restart serves the release, prune keeps current and previous."""
    fleet = ssh_fleet(3)
    for version in ("1.0", "2.0", "3.0", "4.0"):
        fleet.build(version)
    driver = make_driver(fleet, keep=2)
    targets = fleet.targets()

    async def first(host: Host, target: Target) -> None:
        assert await driver.current_version(target) is None
        assert await driver.releases(target) == []
        await driver.check(target, "1.0")
        await driver.deploy(target, "1.0")
        await driver.restart(target)
        assert await served(host) == "1.0"

        await driver.deploy(target, "2.0")
        assert await served(host) == "1.0"  # nothing restarted yet
        await driver.restart(target)
        assert await served(host) == "2.0"
        assert await driver.current_version(target) == "2.0"
        assert (host.app_root / "previous").read_text() == "1.0\n"

        await driver.deploy(target, "3.0")
        assert fleet.releases(host) == ["2.0", "3.0"]  # 1.0 pruned: keep 2

    async def rollback(host: Host, target: Target) -> None:
        await driver.deploy(target, "2.0")
        await driver.restart(target)
        assert await served(host) == "2.0"
        assert fleet.current(host) == "2.0"
        assert (host.app_root / "previous").read_text() == "3.0\n"
        assert await driver.releases(target) == ["3.0", "2.0"]  # least recently deployed first

    async def forward(host: Host, target: Target) -> None:
        await driver.deploy(target, "4.0")
        # 3.0 was deployed before 2.0 (the previous, protected): 3.0 goes
        assert fleet.releases(host) == ["2.0", "4.0"]
        assert fleet.current(host) == "4.0"
        assert (host.app_root / "current").is_symlink()
        assert not [p for p in (host.app_root / "releases").iterdir() if p.name.startswith(".")]

    async def everywhere(step: Callable[[Host, Target], Awaitable[None]]) -> None:
        await asyncio.gather(*(step(h, t) for h, t in zip(fleet.hosts, targets, strict=True)))

    async def scenario() -> None:
        try:
            await everywhere(first)
            # the rollback target is still unpacked: no artifact is needed
            hidden = fleet.base / "dist" / "app-2.0.tar.gz"
            hidden.rename(fleet.base / "hidden")
            try:
                await everywhere(rollback)
            finally:
                (fleet.base / "hidden").rename(hidden)
            await everywhere(forward)
        finally:
            await driver.close()

    asyncio.run(scenario())


def test_redeploy_of_present_artifact_skips_upload(ssh_fleet: Fleet) -> None:
    """An artifact already on the host with the same sha256 is not uploaded again."""
    fleet = ssh_fleet(1)
    fleet.build("1.0")
    fleet.build("2.0")
    host, target = fleet.hosts[0], fleet.targets()[0]
    driver = make_driver(fleet, keep=1)
    artifact = host.app_root / ".artifacts" / "app-1.0.tar.gz"

    async def scenario() -> None:
        try:
            await driver.deploy(target, "1.0")
            before = artifact.stat()
            await driver.deploy(target, "2.0")
            await driver.deploy(target, "2.0")  # idempotent: nothing changes
            assert fleet.current(host) == "2.0"
            shutil.rmtree(host.app_root / "releases" / "1.0")
            await driver.deploy(target, "1.0")  # unpacked again from the kept artifact
            after = artifact.stat()
            assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
            assert fleet.current(host) == "1.0"
        finally:
            await driver.close()

    asyncio.run(scenario())


def test_stop_runs_stop_command_and_removes_current(ssh_fleet: Fleet) -> None:
    """Stop runs the spec's stop argv (the app goes down) and removes current and previous."""
    fleet = ssh_fleet(1)
    fleet.build("1.0")
    host, target = fleet.hosts[0], fleet.targets()[0]
    driver = make_driver(fleet)

    async def scenario() -> None:
        try:
            await driver.deploy(target, "1.0")
            await driver.restart(target)
            assert await served(host) == "1.0"
            await driver.stop(target)
            assert await served(host) == "down"
            assert await driver.current_version(target) is None
            assert not (host.app_root / "previous").exists()
            assert await driver.releases(target) == ["1.0"]
            with pytest.raises(DriverError, match="nothing to restart"):
                await driver.restart(target)
        finally:
            await driver.close()

    asyncio.run(scenario())


def test_run_results_timeouts_and_failing_restart(ssh_fleet: Fleet) -> None:
    """run returns exit codes and output as results, 124 on timeout; a failing restart is a DriverError."""
    fleet = ssh_fleet(1)
    fleet.build("1.0")
    host, target = fleet.hosts[0], fleet.targets()[0]
    driver = make_driver(fleet, restart=["sh", "-c", "echo cannot restart >&2; exit 3"])

    async def scenario() -> None:
        try:
            result = await driver.run(
                target, ["sh", "-c", "echo out; echo err >&2; exit 7"], timeout=10
            )
            assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n")
            result = await driver.run(target, ["printf", "%s", "a b;$(c)"], timeout=10)
            assert result.stdout == "a b;$(c)"  # arguments stay arguments
            result = await driver.run(
                target, ["sh", "-c", 'printf %s "$MODE"'], timeout=10, env={"MODE": "x y"}
            )
            assert result.stdout == "x y"
            result = await driver.run(target, ["no-such-command-rw"], timeout=10)
            assert result.exit_code == 127
            started = time.monotonic()
            result = await driver.run(target, ["sleep", "30"], timeout=1)
            assert result.exit_code == 124
            assert "sleep: timed out after 1s" in result.stderr
            assert time.monotonic() - started < 10
            await driver.deploy(target, "1.0")
            result = await driver.run(target, ["cat", "VERSION"], timeout=10)
            assert result.stdout == "1.0\n"  # commands run in the current release
            with pytest.raises(DriverError, match=r"restart command .* \(exit 3\): cannot restart"):
                await driver.restart(target)
        finally:
            await driver.close()

    asyncio.run(scenario())
    leftovers = subprocess.run(
        ["ip", "netns", "pids", host.namespace], capture_output=True, text=True, check=True
    ).stdout.split()
    running = []
    for pid in leftovers:
        with contextlib.suppress(OSError):  # gone meanwhile
            running.append(Path(f"/proc/{pid}/cmdline").read_bytes())
    assert not [c for c in running if c.startswith(b"sleep\0")], "timed-out command still runs"


# --------------------------------------------------------------- host keys


def test_changed_host_key_refuses_that_host_before_anything_changes(
    ssh_fleet: Fleet, tmp_path: Path
) -> None:
    """A host whose key differs from known_hosts is refused with a one-line error; the others deploy."""
    fleet = ssh_fleet(3)
    fleet.build("1.0")
    bad = fleet.hosts[1]
    fleet.write_known_hosts({bad.name: other_key(tmp_path)})
    driver = make_driver(fleet)
    targets = fleet.targets()

    async def scenario() -> list[BaseException | None]:
        try:
            return await asyncio.gather(
                *(driver.deploy(t, "1.0") for t in targets), return_exceptions=True
            )
        finally:
            await driver.close()

    outcomes = asyncio.run(scenario())
    assert outcomes[0] is None
    assert outcomes[2] is None
    error = outcomes[1]
    assert isinstance(error, DriverError)
    assert str(error) == (
        f"host-1: host key for {bad.address} is not trusted (known_hosts: {fleet.known_hosts})"
    )
    assert error.hint is not None
    assert list(bad.app_root.iterdir()) == []  # nothing was created on the refused host
    assert fleet.logins(bad) == 0
    assert [fleet.current(h) for h in fleet.hosts] == ["1.0", None, "1.0"]


def test_unknown_host_is_refused_and_insecure_mode_warns(ssh_fleet: Fleet) -> None:
    """A host missing from known_hosts (or with no file at all) is refused; skipping the check warns."""
    fleet = ssh_fleet(1)
    host, target = fleet.hosts[0], fleet.targets()[0]
    fleet.known_hosts.write_text("")
    empty = make_driver(fleet)
    fleet.known_hosts.write_text(f"{host.address} {fleet.public_host_key(host)}\n")
    gone = make_driver(fleet)  # built while the file exists, which then disappears
    fleet.known_hosts.unlink()
    expected = (
        f"host-0: host key for {host.address} is not trusted (known_hosts: {fleet.known_hosts})"
    )

    async def refused(driver: SSHDriver) -> None:
        try:
            with pytest.raises(DriverError) as caught:
                await driver.current_version(target)
            assert str(caught.value) == expected
        finally:
            await driver.close()

    asyncio.run(refused(gone))
    fleet.known_hosts.write_text("")
    asyncio.run(refused(empty))
    assert fleet.logins(host) == 0

    with pytest.warns(InsecureHostKeyWarning, match="NOT verified"):
        insecure = make_driver(fleet, insecure_skip_host_key_check=True)

    async def accepted() -> None:
        try:
            assert await insecure.current_version(target) is None
        finally:
            await insecure.close()

    asyncio.run(accepted())
    assert fleet.logins(host) == 1


# ---------------------------------------------------------------- checksum


def test_artifact_corrupted_after_upload_never_becomes_current(ssh_fleet: Fleet) -> None:
    """An upload whose remote sha256 differs from the local one fails and is never switched to.

    The corruption is real but staged: the driver's ``after_upload`` hook
    overwrites the uploaded file on the host (the fleet shares this
    machine's file system) between the SFTP upload and the remote sha256sum.
    """
    fleet = ssh_fleet(1)
    fleet.build("1.0")
    fleet.build("2.0")
    host, target = fleet.hosts[0], fleet.targets()[0]
    corrupted: list[str] = []

    async def corrupt(_: Target, remote: str) -> None:
        path = Path(remote)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        corrupted.append(remote)

    good = make_driver(fleet)
    bad = make_driver(fleet)
    bad.after_upload = corrupt

    async def scenario() -> None:
        try:
            await good.deploy(target, "1.0")
            await good.restart(target)
            with pytest.raises(
                DriverError, match=r"app-2\.0\.tar\.gz on .* has sha256 [0-9a-f]{64}"
            ):
                await bad.deploy(target, "2.0")
            assert corrupted == [str(host.app_root / ".artifacts" / "app-2.0.tar.gz")]
            assert await good.current_version(target) == "1.0"
            assert await good.releases(target) == ["1.0"]
            assert not (host.app_root / ".artifacts" / "app-2.0.tar.gz").exists()
            assert await served(host) == "1.0"
            await good.deploy(target, "2.0")  # a clean upload works
            assert fleet.current(host) == "2.0"
        finally:
            await good.close()
            await bad.close()

    asyncio.run(scenario())


# ------------------------------------------------------------- connections


def test_one_connection_per_host_across_steps(ssh_fleet: Fleet) -> None:
    """Every step on a host reuses one SSH connection until close; then a new one is opened."""
    fleet = ssh_fleet(2)
    fleet.build("1.0")
    driver = make_driver(fleet)
    targets = fleet.targets()

    async def steps(target: Target) -> None:
        await driver.check(target, "1.0")
        await driver.deploy(target, "1.0")
        await driver.restart(target)
        assert await driver.current_version(target) == "1.0"
        assert await driver.releases(target) == ["1.0"]
        for _ in range(3):
            assert (await driver.run(target, ["true"], timeout=10)).ok

    async def scenario() -> None:
        try:
            await asyncio.gather(*(steps(t) for t in targets))
            await asyncio.gather(*(steps(t) for t in targets))
            assert driver.connections_opened == 2
        finally:
            await driver.close()
        assert [fleet.logins(h) for h in fleet.hosts] == [1, 1]
        try:
            assert await driver.current_version(targets[0]) == "1.0"
        finally:
            await driver.close()
        assert [fleet.logins(h) for h in fleet.hosts] == [2, 1]

    asyncio.run(scenario())


def test_jump_host_tunnels_the_connection(ssh_fleet: Fleet) -> None:
    """With jump_host the target's sshd sees the login come from the jump host, not from rollwave."""
    fleet = ssh_fleet(2)
    jump, host = fleet.hosts
    driver = make_driver(fleet, jump_host=f"root@{jump.address}:22", key=str(fleet.client_key))
    target = Target(host.name, host.address, user="root", vars={"app_root": str(host.app_root)})

    async def scenario() -> None:
        try:
            assert (await driver.run(target, ["true"], timeout=10)).ok
        finally:
            await driver.close()

    asyncio.run(scenario())
    assert fleet.logins(jump) == 1
    assert f"Accepted publickey for root from {jump.address} " in host.sshd_log.read_text()


class RecordingClock(SystemClock):
    """The system clock, remembering every sleep the driver asks for."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().sleep(seconds)


def test_unreachable_host_fails_after_three_connection_tries(ssh_fleet: Fleet) -> None:
    """A host whose link is down fails with a DriverError after 3 connection tries with backoff."""
    fleet = ssh_fleet(1)
    host, target = fleet.hosts[0], fleet.targets()[0]
    fleet.set_link(host, up=False)
    driver = make_driver(fleet, connect_timeout=1)
    clock = RecordingClock()
    driver.clock = clock

    async def scenario() -> None:
        try:
            with pytest.raises(DriverError, match=r"cannot connect to root@.* after 3 tries"):
                await driver.current_version(target)
        finally:
            await driver.close()

    started = time.monotonic()
    asyncio.run(scenario())
    assert clock.sleeps == [0.5, 1.0]  # backoff before the 2nd and the 3rd try, none after
    # each try ends after its 1 s timeout, or sooner once the kernel gave up on the address
    assert time.monotonic() - started < 15
    assert fleet.logins(host) == 0


# --------------------------------------------------------------- validation


def test_shell_metacharacters_are_rejected_before_connecting(ssh_fleet: Fleet) -> None:
    """A version or root with shell metacharacters is rejected at validation; nothing reaches a host."""
    fleet = ssh_fleet(1)
    host, target = fleet.hosts[0], fleet.targets()[0]
    canary = fleet.base / "pwned"
    driver = make_driver(fleet)
    evil_root = Target(
        host.name,
        host.address,
        user="root",
        vars={**target.vars, "app_root": f"{host.app_root};touch {canary}"},
    )

    with pytest.raises(ValidationError, match="version"):
        ServiceSpec.model_validate(
            {
                "hosts": "app",
                "version": f"1.0;touch {canary}",
                "driver": {"kind": "ssh", "artifact": "a", "root": "/srv", "restart": ["true"]},
            }
        )

    async def scenario() -> None:
        try:
            for version in (f"1.0;touch {canary}", "$(touch /tmp/x)", "../../etc", "1.0\n"):
                with pytest.raises(DriverError, match="version"):
                    await driver.deploy(target, version)
                with pytest.raises(DriverError, match="version"):
                    await driver.check(target, version)
            with pytest.raises(DriverError, match=r"driver\.root"):
                await driver.deploy(evil_root, "1.0")
            with pytest.raises(DriverError, match=r"driver\.root"):
                await driver.run(evil_root, ["true"], timeout=5)
        finally:
            await driver.close()

    asyncio.run(scenario())
    assert fleet.logins(host) == 0
    assert not canary.exists()


def test_bad_options_are_input_errors(tmp_path: Path) -> None:
    """A missing known_hosts or key file, a root using {version} or a bad jump host is invalid input."""
    base: dict[str, Any] = {
        "kind": "ssh",
        "artifact": "a.tar.gz",
        "root": "/srv/app",
        "restart": ["true"],
    }
    cases: list[tuple[dict[str, Any], str]] = [
        ({"known_hosts": "nope"}, r"driver\.known_hosts: file .*nope not found"),
        ({"key": "nokey"}, r"driver\.key: file .*nokey not found"),
        ({"root": "/srv/{version}"}, r"may not use \{version\}"),
        ({"jump_host": "root@bastion:http"}, "bad port"),
        ({"jump_host": "root@"}, "expected"),
    ]
    for options, message in cases:
        with pytest.raises(InputError, match=message):
            SSHDriver(
                service="app",
                spec=SSHDriverSpec(**{**base, **options}),
                base_dir=tmp_path,
                clock=SystemClock(),
            )
