"""Benchmark an SSH rollout: 20 hosts, max_unavailable 2, rollwave vs a bash+ssh floor.

Run (as root, from the repository root): .venv/bin/python bench/ssh_rollout.py

It builds a 20-host ``SSHFleet`` (tests/support/netns.py: network
namespaces on a private bridge, one sshd, supervisor and demo app per host),
deploys 1.0 everywhere with rollwave (untimed), then times ROUNDS rounds of
three contenders, the order rotated each round to spread noise, every run
to a new version (2.0 .. 10.0, artifacts built up front, so every run
really uploads, unpacks and switches a new release):

- ``rollwave``: ``rollwave apply --yes`` (the whole CLI process, wall time)
  with ``waves: ["100%"]``, ``max_unavailable: 2``, ``bake: 0s``, no traffic
  manager, health ``http://{address}:8080/healthz`` (``successes: 1``,
  ``interval: 100ms``), ``keep`` high enough that nothing is pruned. Its
  window slides: a new target starts as soon as one of the two in flight
  is done.
- ``floor``: a generated bash script doing the same steps in batches of 2
  (both hosts of a batch in parallel, ``&`` + ``wait``, the next batch after
  both are done; a fixed batch idles while its slower host finishes, a
  sliding window does not) over plain ssh/scp with the same key and
  known_hosts: scp the artifact to a temporary name; one ssh that renames it
  into place, verifies its sha256, unpacks it into releases/<v> through a
  temporary directory and ``mv -T``, and switches ``current`` atomically
  (``ln -sfn`` + ``mv -T``); one ssh that runs ``app-ctl restart``; curl on
  /healthz until it answers 200. ssh and scp run with ``-F /dev/null``,
  ``BatchMode=yes``, ``StrictHostKeyChecking=yes``, ``ControlMaster=auto``
  and ``ControlPersist=60``: one connection per host per rollout (opened by
  the host's scp, reused by its two ssh), as rollwave keeps one per host.
  The masters are closed (``ssh -O exit``) after the script's time is taken.
- ``floor-pre``: the same script, but it first opens all 20 master
  connections at once (timed), as rollwave opens its connections for all
  hosts at once while it observes and preflights, before the first target.

After each run every host must serve the new version from ``current``.
It prints each run's wall time, best and median of each, the ratios
rollwave/floor (medians and bests) and whether the goal (rollwave within
1.15x of the floor, medians) is met, then a profile: rollwave's from its
journal (``rollwave show --json``; when the first target starts, per target
each step) and the fixed cost of ``rollwave validate`` and ``rollwave plan``,
and the floors' per-host step times from their own timestamps. Exit 0
whatever the ratio; 1 when something failed. The fleet (processes,
namespaces, bridge, files) is torn down by ``SSHFleet.close`` also on
failure, Ctrl-C or SIGTERM; the floors' ssh masters by ``ssh -O exit``
(then by PID).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.netns import APP_PORT, SSHFleet  # noqa: E402

HOSTS = 20
MAX_UNAVAILABLE = 2
ROUNDS = 3
GOAL = 1.15
RUN_TIMEOUT = 300.0
FIRST = "1.0"
VERSIONS = [f"{n}.0" for n in range(2, 2 + 3 * ROUNDS)]  # one per timed run
NEEDED = {
    "ip": "iproute2",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "scp": "openssh-client",
    "ssh-keygen": "openssh-client",
    "curl": "curl",
    "bash": "bash",
}

FLOOR = r"""#!/usr/bin/env bash
# The floor: the same steps as rollwave's driver, over plain ssh/scp, in batches of 2.
set -euo pipefail
VERSION=$1 ART=$2 SHA=$3 CTL=$4 PRECONNECT=$5
NAME=$(basename "$ART")
SSH_OPTS=(-F /dev/null -i __KEY__ -o IdentitiesOnly=yes -o BatchMode=yes
          -o UserKnownHostsFile=__KNOWN_HOSTS__ -o GlobalKnownHostsFile=/dev/null
          -o StrictHostKeyChecking=yes -o ConnectTimeout=5
          -o ControlMaster=auto -o "ControlPath=$CTL/%h" -o ControlPersist=60)
ADDRS=(__ADDRS__)
ROOTS=(__ROOTS__)

one() {  # address root: replace the app on one host
  local addr=$1 root=$2 t0=$EPOCHREALTIME t1 t2 t3
  scp -q "${SSH_OPTS[@]}" "$ART" "root@$addr:$root/.artifacts/.$NAME.tmp"
  t1=$EPOCHREALTIME
  ssh "${SSH_OPTS[@]}" "root@$addr" "set -e; cd $root
    mv -f .artifacts/.$NAME.tmp .artifacts/$NAME
    echo '$SHA  .artifacts/$NAME' | sha256sum --check --quiet --strict -
    tmp=releases/.tmp-$VERSION-\$\$; rm -rf \$tmp; mkdir \$tmp
    tar -xzf .artifacts/$NAME -C \$tmp
    mv -T \$tmp releases/$VERSION
    ln -sfn releases/$VERSION current.tmp && mv -T current.tmp current"
  t2=$EPOCHREALTIME
  ssh "${SSH_OPTS[@]}" "root@$addr" "__APP_CTL__ restart $root"
  t3=$EPOCHREALTIME
  until curl -fs --noproxy '*' -o /dev/null --max-time 2 "http://$addr:__PORT__/healthz"; do
    sleep 0.1
  done
  echo "host $addr $t0 $t1 $t2 $t3 $EPOCHREALTIME"
}

if ((PRECONNECT)); then  # open every host's master connection first, all at once
  t0=$EPOCHREALTIME pids=()
  for addr in "${ADDRS[@]}"; do ssh "${SSH_OPTS[@]}" "root@$addr" true & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid"; done
  echo "connect $t0 $EPOCHREALTIME"
fi

for ((i = 0; i < ${#ADDRS[@]}; i += 2)); do
  pids=()
  for j in $i $((i + 1)); do
    if ((j < ${#ADDRS[@]})); then
      one "${ADDRS[j]}" "${ROOTS[j]}" &
      pids+=($!)
    fi
  done
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  if ((failed)); then echo "floor: a host of batch $((i / 2 + 1)) failed" >&2; exit 1; fi
done
"""


class BenchError(Exception):
    """Something the benchmark needs failed: exit 1 with this message."""


# --------------------------------------------------------------- processes


def run_group(
    argv: list[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[int, str, str, float, float]:
    """Run ``argv`` in its own session; (code, stdout, stderr, started epoch, wall seconds).

    On timeout (or Ctrl-C) its whole process group, which this function
    created, is killed by its id.
    """
    started_epoch = time.time()
    started = time.perf_counter()
    child = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = child.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise
    return child.returncode, out, err, started_epoch, time.perf_counter() - started


# ---------------------------------------------------------------- rollwave


class Rollwave:
    """The rollwave CLI on a spec in the fleet's directory."""

    def __init__(self, fleet: SSHFleet) -> None:
        self.fleet = fleet
        self.spec_path = fleet.base / "rollwave.yaml"
        fleet.write_inventory(fleet.base / "inventory.yaml")
        exe = Path(sys.executable).parent / "rollwave"
        self.exe = [str(exe)] if exe.exists() else [sys.executable, "-m", "rollwave.cli"]
        self.env = {**os.environ, "ROLLWAVE_DEBUG_DIR": str(fleet.base)}

    def write_spec(self, version: str, max_unavailable: int | str) -> None:
        spec = {
            "environment": "bench",
            "inventory": "inventory.yaml",
            "services": {
                "app": {
                    "hosts": "app",
                    "version": version,
                    "driver": {
                        "kind": "ssh",
                        "user": "root",
                        "key": str(self.fleet.client_key),
                        "known_hosts": str(self.fleet.known_hosts),
                        "artifact": "dist/app-{version}.tar.gz",
                        "root": "{app_root}",
                        "restart": self.fleet.restart_argv(),
                        "keep": 1 + len(VERSIONS),  # nothing is pruned: the floor prunes nothing
                        "connect_timeout": "5s",
                        "command_timeout": "30s",
                    },
                    "health": {
                        "http": f"http://{{address}}:{APP_PORT}/healthz",
                        "interval": "100ms",
                        "successes": 1,
                        "deadline": "30s",
                    },
                }
            },
            "strategy": {
                "waves": ["100%"],
                "max_unavailable": max_unavailable,
                "bake": "0s",
                "failure": {"tolerate": 0, "action": "rollback"},
            },
        }
        self.spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))

    def apply(self, version: str, max_unavailable: int | str) -> tuple[float, float]:
        """Run ``rollwave apply --yes``; (started epoch, wall seconds). Failure: BenchError."""
        self.write_spec(version, max_unavailable)
        code, out, err, epoch, wall = run_group(
            [*self.exe, "apply", "--yes", "-f", str(self.spec_path)], RUN_TIMEOUT, self.env
        )
        if code != 0:
            raise BenchError(f"rollwave apply of {version} exited {code}:\n{out}{err}")
        return epoch, wall

    def show(self) -> dict[str, Any]:
        code, out, err, _, _ = run_group(
            [*self.exe, "show", "--json", "-f", str(self.spec_path)], 60, self.env
        )
        if code != 0:
            raise BenchError(f"rollwave show exited {code}:\n{out}{err}")
        return dict(json.loads(out))


# ------------------------------------------------------------------- floor


class Floor:
    """The generated bash+ssh script, and the ssh master connections it leaves."""

    def __init__(self, fleet: SSHFleet, work: Path) -> None:
        self.fleet = fleet
        self.work = work
        self.script = work / "floor.sh"
        text = FLOOR
        for key, value in {
            "__KEY__": shlex.quote(str(fleet.client_key)),
            "__KNOWN_HOSTS__": shlex.quote(str(fleet.known_hosts)),
            "__ADDRS__": " ".join(h.address for h in fleet.hosts),
            "__ROOTS__": " ".join(shlex.quote(str(h.app_root)) for h in fleet.hosts),
            "__APP_CTL__": shlex.quote(str(fleet.app_ctl)),
            "__PORT__": str(APP_PORT),
        }.items():
            text = text.replace(key, value)
        self.script.write_text(text)
        self.control_dirs: list[Path] = []

    def run(
        self, version: str, artifact: Path, *, preconnect: bool
    ) -> tuple[float, dict[str, Any]]:
        """Run the script for ``version``; (wall seconds, its timestamps). Failure: BenchError.

        The timestamps: ``hosts``, per host in inventory order ``[start, scp done,
        switched, restarted, healthy]``; ``connect``, ``[start, end]`` of opening the
        connections up front (``preconnect`` only).
        """
        sha = _sha256(artifact)
        control = Path(tempfile.mkdtemp(prefix="ctl-", dir=self.work))
        self.control_dirs.append(control)
        argv = ["bash", str(self.script), version, str(artifact), sha, str(control)]
        try:
            code, out, err, _, wall = run_group([*argv, str(int(preconnect))], RUN_TIMEOUT)
        finally:
            self.close_masters(control)
        if code != 0:
            raise BenchError(f"the floor script for {version} exited {code}:\n{out}{err}")
        stamps: dict[str, Any] = {"hosts": {}, "connect": None}
        for line in out.splitlines():
            words = line.split()
            if words and words[0] == "host":
                stamps["hosts"][words[1]] = [float(x) for x in words[2:]]
            elif words and words[0] == "connect":
                stamps["connect"] = [float(x) for x in words[1:]]
        stamps["hosts"] = [
            stamps["hosts"][h.address] for h in self.fleet.hosts if h.address in stamps["hosts"]
        ]
        return wall, stamps

    def close_masters(self, control: Path) -> None:
        """Close every ssh master under ``control``: ``ssh -O exit``, then its PID if it lingers."""
        for sock in sorted(control.iterdir()) if control.is_dir() else []:
            base = ["ssh", "-F", "/dev/null", "-o", f"ControlPath={sock}"]
            check = subprocess.run(
                [*base, "-O", "check", "x"], capture_output=True, text=True, check=False, timeout=10
            )
            found = re.search(r"pid=(\d+)", check.stderr + check.stdout)
            subprocess.run([*base, "-O", "exit", "x"], capture_output=True, check=False, timeout=10)
            if found:
                pid = int(found.group(1))
                deadline = time.monotonic() + 5
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        for control in self.control_dirs:
            with contextlib.suppress(Exception):
                self.close_masters(control)


# ----------------------------------------------------------------- helpers


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in "ZX"


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def served(address: str) -> str:
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{address}:{APP_PORT}/", timeout=2) as r:
            return str(r.read().decode().strip())
    except OSError as exc:
        return f"down ({exc})"


def verify(fleet: SSHFleet, version: str, who: str) -> None:
    """Every host's ``current`` is ``version`` and its app serves ``version``."""
    wrong = {
        h.name: (fleet.current(h), served(h.address))
        for h in fleet.hosts
        if fleet.current(h) != version or served(h.address) != version
    }
    if wrong:
        raise BenchError(f"after {who} of {version}, hosts not on it (current, served): {wrong}")


def preconditions() -> None:
    if os.geteuid() != 0:
        raise BenchError("network namespaces need root: run this benchmark as root")
    missing = [f"{b} (Debian package {p})" for b, p in NEEDED.items() if shutil.which(b) is None]
    if missing:
        raise BenchError(
            "missing programs: " + ", ".join(missing) + "; scripts/setup installs some"
        )


# ----------------------------------------------------------------- profile


def profile(show: dict[str, Any], started_epoch: float, wall: float) -> dict[str, Any]:
    """Where one rollwave run spent its time, from its journal (epoch seconds, SystemClock)."""
    journal = show["journal"]
    begins: dict[tuple[str, str], float] = {}
    steps: dict[str, list[float]] = defaultdict(list)
    per_target: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for e in journal:
        if not e["target"]:
            continue
        per_target[e["target"]].append((e["phase"], e["at"]))
        key = (e["kind"], e["target"])
        if e["phase"] == "begin":
            begins[key] = e["at"]
        elif e["phase"] == "end" and key in begins:
            steps[e["kind"]].append(e["at"] - begins.pop(key))
    gaps = [  # from one step's end to the next step's begin, per target
        at_b - at_a
        for entries in per_target.values()
        for (phase_a, at_a), (phase_b, at_b) in itertools.pairwise(entries)
        if phase_a == "end" and phase_b == "begin"
    ]
    return {
        "first_target_start": min(v[0][1] for v in per_target.values()) - started_epoch,
        "last_target_end": max(v[-1][1] for v in per_target.values()) - started_epoch,
        "wall": wall,
        "steps": {k: statistics.mean(v) for k, v in steps.items()},
        "target_span": statistics.mean(v[-1][1] - v[0][1] for v in per_target.values()),
        "gap_between_steps": statistics.mean(gaps) if gaps else 0.0,
        "entries": len(journal),
    }


def floor_profile(stamps: dict[str, Any]) -> dict[str, float]:
    """Mean seconds per host of each of the floor's steps, and what the fixed batches cost."""
    hosts = stamps["hosts"]
    names = ("scp", "verify+unpack+switch", "restart", "health")
    result = {
        name: statistics.mean(row[i + 1] - row[i] for row in hosts) for i, name in enumerate(names)
    }
    result["host"] = statistics.mean(row[4] - row[0] for row in hosts)
    # a batch lasts as long as its slower host: the faster one's slot idles meanwhile
    idle = 0.0
    for i in range(0, len(hosts), MAX_UNAVAILABLE):
        batch = hosts[i : i + MAX_UNAVAILABLE]
        end = max(row[4] for row in batch)
        idle += sum(end - row[4] for row in batch) / MAX_UNAVAILABLE
    result["batch idle (sum)"] = idle
    if stamps["connect"]:
        result["connect all (once)"] = stamps["connect"][1] - stamps["connect"][0]
    return result


def timed(argv: list[str], env: dict[str, str], runs: int = 3) -> float:
    """Median wall seconds of ``argv`` (which must succeed) over ``runs`` runs."""
    walls = []
    for _ in range(runs):
        code, out, err, _, wall = run_group(argv, 60, env)
        if code != 0:
            raise BenchError(f"{shlex.join(argv)} exited {code}:\n{out}{err}")
        walls.append(wall)
    return statistics.median(walls)


CONTENDERS = ("rollwave", "floor", "floor-pre")
SHOWN = {
    "rollwave": "rollwave apply",
    "floor": "floor (bash+ssh, batches of 2)",
    "floor-pre": "floor, connections opened up front",
}


def bench(fleet: SSHFleet, work: Path) -> None:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} cores, load average {load}; building {HOSTS} hosts ...", flush=True)
    t = time.perf_counter()
    fleet.start()
    print(f"  up in {time.perf_counter() - t:.1f}s (bridge {fleet.bridge}, {fleet.subnet}.0/24)")
    artifacts = {v: fleet.build(v) for v in [FIRST, *VERSIONS]}
    rollwave = Rollwave(fleet)
    floor = Floor(fleet, work)
    times: dict[str, list[float]] = {who: [] for who in CONTENDERS}
    profiles: list[dict[str, Any]] = []
    floor_steps: dict[str, list[dict[str, float]]] = {"floor": [], "floor-pre": []}
    try:
        t = time.perf_counter()
        rollwave.apply(FIRST, "100%")
        verify(fleet, FIRST, "rollwave (untimed)")
        print(f"  {FIRST} deployed everywhere (untimed, {time.perf_counter() - t:.1f}s)\n")

        versions = iter(VERSIONS)
        print(f"{'run':>3}  {'version':>7}  {'who':<36}  {'wall (s)':>8}")
        run = 0
        for round_ in range(ROUNDS):
            shift = round_ % len(CONTENDERS)
            for who in CONTENDERS[shift:] + CONTENDERS[:shift]:
                run += 1
                version = next(versions)
                if who == "rollwave":
                    epoch, wall = rollwave.apply(version, MAX_UNAVAILABLE)
                    verify(fleet, version, who)
                    profiles.append(profile(rollwave.show(), epoch, wall))
                else:
                    pre = who == "floor-pre"
                    wall, stamps = floor.run(version, artifacts[version], preconnect=pre)
                    verify(fleet, version, who)
                    if len(stamps["hosts"]) != HOSTS:
                        raise BenchError(
                            f"{who} reported {len(stamps['hosts'])} hosts, not {HOSTS}"
                        )
                    floor_steps[who].append(floor_profile(stamps))
                times[who].append(wall)
                print(f"{run:>3}  {version:>7}  {SHOWN[who]:<36}  {wall:>8.2f}", flush=True)

        # rollwave's fixed costs, the fleet left as it is: nothing to deploy
        spec = ["-f", str(rollwave.spec_path)]
        validate = timed([*rollwave.exe, "validate", *spec], rollwave.env)
        plan = timed([*rollwave.exe, "plan", "--json", *spec], rollwave.env)
    finally:
        floor.close()

    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    print()
    print(f"{'':<36}{'best (s)':>9}{'median (s)':>12}")
    for who in CONTENDERS:
        print(f"{SHOWN[who]:<36}{best[who]:>9.2f}{median[who]:>12.2f}")
    for who in ("floor", "floor-pre"):
        print(
            f"ratio rollwave / {SHOWN[who]}: {median['rollwave'] / median[who]:.2f}x (medians), "
            f"{best['rollwave'] / best[who]:.2f}x (bests)"
        )
    met = median["rollwave"] / median["floor"] <= GOAL
    print(f"goal: rollwave within {GOAL}x of the floor (medians): {'MET' if met else 'MISSED'}")
    tight = median["rollwave"] / median["floor-pre"] <= GOAL
    print(f"      and of the floor with connections up front: {'MET' if tight else 'MISSED'}")

    print(f"\nrollwave, from its journal (mean of its {len(profiles)} runs; seconds after start):")
    for key, text in (
        ("first_target_start", "first target starts"),
        ("last_target_end", "last target done"),
        ("wall", "process exits"),
    ):
        print(f"  {text:<34}{statistics.mean(p[key] for p in profiles):>7.3f}")
    print(f"  `rollwave validate` (start, load spec)  {validate:>7.3f}  (median of 3)")
    print(f"  `rollwave plan` (+ connect, observe)    {plan:>7.3f}  (median of 3)")
    print("  per target, per step (begin -> end; mean seconds):")
    for step in profiles[0]["steps"]:
        print(f"    {step:<32}{statistics.mean(p['steps'].get(step, 0.0) for p in profiles):>7.3f}")
    for key, text in (
        ("target_span", "one target, first to last entry"),
        ("gap_between_steps", "between one step and the next"),
    ):
        print(f"    {text:<32}{statistics.mean(p[key] for p in profiles):>7.3f}")
    print(f"  journal entries per run: {profiles[0]['entries']}")
    for who in ("floor", "floor-pre"):
        print(f"{SHOWN[who]}, per host (mean of its runs; seconds):")
        for step in floor_steps[who][0]:
            print(f"    {step:<32}{statistics.mean(s[step] for s in floor_steps[who]):>7.3f}")


def main() -> int:
    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    try:
        preconditions()
    except BenchError as exc:
        print(f"ssh_rollout: {exc}", file=sys.stderr)
        return 1
    base = Path(tempfile.mkdtemp(prefix="rwbench-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="rwbench-floor-", dir="/tmp"))
    fleet = SSHFleet(HOSTS, base)
    try:
        bench(fleet, work)
    except BenchError as exc:
        print(f"ssh_rollout: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ssh_rollout: interrupted", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        fleet.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
