"""Argv builders for every remote step of the SSH driver, and parsers of their output. Pure.

A step is one argv: a list of strings. A step that needs more than one
program is a *constant* POSIX ``sh -c`` script whose variable parts are its
positional parameters, never text spliced into the script::

    switch_current("/srv/app", "2.0", "1f2e3d4c") ==
    ["sh", "-c", 'rm -f -- "$3".tmp-* && ln -sfn -- "$1" "$2" && mv -T -- "$2" "$3"',
     "sh", "releases/2.0", "/srv/app/current.tmp-1f2e3d4c", "/srv/app/current"]

The transport renders an argv to the remote command line with
``shlex.join`` and nothing else, so an argument can never become shell
syntax on the host. Versions, artifact names, suffixes and paths are
checked on the way in anyway (ValueError), because they also become file
names on the host:

- a version or artifact name matches ``^[A-Za-z0-9][A-Za-z0-9._+-]*$``;
- a path (the service root) uses only ``A-Z a-z 0-9 _ @ % + = : , . / -``
  (the characters ``shlex.quote`` leaves alone), does not start with ``-``
  and has no ``..`` component.

The layout on a host mirrors the local driver's::

    root/
      .artifacts/<artifact>   uploaded once per host, verified by sha256
      releases/<version>/     one unpacked artifact per version
      current -> releases/<version>
      previous                the version ``current`` pointed to before the last switch
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "RemoteState",
    "artifact_path",
    "check_env_name",
    "check_path",
    "check_root",
    "check_version",
    "find_command",
    "has_release",
    "in_current",
    "list_releases",
    "observe",
    "parse_releases",
    "parse_sha256",
    "parse_state",
    "prepare",
    "prune",
    "prune_victims",
    "read_current",
    "read_previous",
    "release_dir",
    "remove_current",
    "sha256",
    "switch_current",
    "touch_release",
    "unpack",
    "upload_path",
    "with_env",
    "with_timeout",
    "write_previous",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_PATH = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_SUFFIX = re.compile(r"[a-z0-9]{1,32}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


# ------------------------------------------------------------------ checks


def check_version(version: str) -> str:
    """``version`` itself, or ValueError when it cannot name a release directory."""
    if not _NAME.fullmatch(version):  # fullmatch: match() would let a trailing newline in
        raise ValueError(
            f"version {version!r} may hold only letters, digits and . _ + - "
            "(and must start with a letter or digit)"
        )
    return version


def _check_name(kind: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{kind} {name!r} may hold only letters, digits and . _ + - "
            "(and must start with a letter or digit)"
        )
    return name


def check_path(path: str) -> str:
    """``path`` normalized (no trailing or doubled ``/``), or ValueError when it is unsafe."""
    if not _PATH.fullmatch(path):
        raise ValueError(
            f"path {path!r} may hold only letters, digits and _ @ % + = : , . / - "
            "(no spaces, quotes or other shell characters)"
        )
    if path.startswith("-"):
        raise ValueError(f"path {path!r} must not start with '-'")
    if ".." in path.split("/"):
        raise ValueError(f"path {path!r} must not contain a '..' component")
    return posixpath.normpath(path)


def check_env_name(name: str) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise ValueError(f"environment variable name {name!r} is not a valid name")
    return name


def _check_suffix(suffix: str) -> str:
    if not _SUFFIX.fullmatch(suffix):
        raise ValueError(f"temporary suffix {suffix!r} must be 1-32 lower-case letters or digits")
    return suffix


# ------------------------------------------------------------------- paths


def release_dir(root: str, version: str) -> str:
    """``root/releases/<version>``."""
    return f"{check_path(root)}/releases/{check_version(version)}"


def artifact_path(root: str, name: str) -> str:
    """Where the artifact ``name`` is kept on the host: ``root/.artifacts/<name>``."""
    return f"{check_path(root)}/.artifacts/{_check_name('artifact name', name)}"


def upload_path(root: str, name: str, suffix: str) -> str:
    """The temporary name an upload is written to before it is renamed into place."""
    return f"{check_path(root)}/.artifacts/.{_check_name('artifact name', name)}.tmp-{_check_suffix(suffix)}"


# ---------------------------------------------------------------- observe


def read_current(root: str) -> list[str]:
    """Print one line: where ``current`` points, or nothing; exit 2 when it is not a symlink."""
    script = (
        'if [ -L "$1" ]; then readlink -- "$1"; '
        'elif [ -e "$1" ]; then echo "$1 is not a symlink" >&2; exit 2; else echo; fi'
    )
    return ["sh", "-c", script, "sh", f"{check_path(root)}/current"]


def read_previous(root: str) -> list[str]:
    """Print one line: the first line of ``previous``, or nothing when it is absent."""
    script = 'p=; if [ -f "$1" ]; then p=$(head -n 1 -- "$1"); fi; printf "%s\\n" "$p"'
    return ["sh", "-c", script, "sh", f"{check_path(root)}/previous"]


def observe(root: str) -> list[list[str]]:
    """The steps that print a target's state, in one round trip; :func:`parse_state` reads it."""
    return [read_current(root), read_previous(root), list_releases(root)]


def list_releases(root: str) -> list[str]:
    """Print ``<mtime> <name>`` per release directory (nothing when there is no releases/)."""
    script = (
        'if [ -d "$1" ]; then '
        'find "$1" -mindepth 1 -maxdepth 1 -type d ! -name ".*" -printf "%T@ %f\\n"; fi'
    )
    return ["sh", "-c", script, "sh", f"{check_path(root)}/releases"]


def has_release(root: str, version: str) -> list[str]:
    """Exit 0 when ``releases/<version>`` is a directory, else 1."""
    return ["test", "-d", release_dir(root, version)]


def sha256(path: str) -> list[str]:
    """Print ``sha256sum``'s line for ``path``; print nothing when it does not exist."""
    return ["sh", "-c", 'if [ -e "$1" ]; then sha256sum -- "$1"; fi', "sh", check_path(path)]


def check_root(root: str) -> list[str]:
    """Exit 0 when ``root``, or the nearest ancestor that exists, is a writable directory."""
    script = (
        'd=$1; while [ ! -e "$d" ]; do d=$(dirname -- "$d"); done; '
        '[ -d "$d" ] && [ -w "$d" ] && [ -x "$d" ] || '
        '{ echo "$d is not a writable directory" >&2; exit 1; }'
    )
    return ["sh", "-c", script, "sh", check_path(root)]


def find_command(executable: str) -> list[str]:
    """Exit 0 when ``executable`` is found on the remote PATH (or is an executable path)."""
    script = 'command -v "$1" >/dev/null || { echo "$1 not found" >&2; exit 127; }'
    return ["sh", "-c", script, "sh", executable]


# ----------------------------------------------------------------- change


def prepare(root: str) -> list[str]:
    """Create ``root/releases`` and ``root/.artifacts``."""
    root = check_path(root)
    return ["mkdir", "-p", "--", f"{root}/releases", f"{root}/.artifacts"]


def unpack(root: str, version: str, artifact: str, suffix: str) -> list[str]:
    """Unpack the uploaded ``artifact`` into ``releases/.tmp-<version>-<suffix>``, rename it into place.

    A half-unpacked release never exists under its name: the temporary
    directory is removed on any failure, and a release that appeared
    meanwhile (another run unpacked it) counts as success.
    """
    release = release_dir(root, version)
    tmp = f"{check_path(root)}/releases/.tmp-{version}-{_check_suffix(suffix)}"
    script = (
        "trap 'rm -rf -- \"$2\"' EXIT; "
        'mkdir -- "$2" && tar -xzf "$1" -C "$2" && { mv -T -- "$2" "$3" || [ -d "$3" ]; }'
    )
    return ["sh", "-c", script, "sh", artifact_path(root, artifact), tmp, release]


def touch_release(root: str, version: str, at: float) -> list[str]:
    """Set the release's mtime to ``at`` (epoch seconds): prune goes by when it was last deployed."""
    return ["touch", "-c", "-d", f"@{at:.6f}", "--", release_dir(root, version)]


def write_previous(root: str, version: str | None, suffix: str) -> list[str]:
    """Atomically write ``previous`` (an empty line when there was none)."""
    root = check_path(root)
    text = check_version(version) if version else ""
    script = 'printf "%s\\n" "$1" > "$2" && mv -f -- "$2" "$3"'
    return [
        "sh",
        "-c",
        script,
        "sh",
        text,
        f"{root}/previous.tmp-{_check_suffix(suffix)}",
        f"{root}/previous",
    ]


def switch_current(root: str, version: str, suffix: str) -> list[str]:
    """Atomically point ``current`` at ``releases/<version>`` (a new symlink renamed over it)."""
    root = check_path(root)
    script = 'rm -f -- "$3".tmp-* && ln -sfn -- "$1" "$2" && mv -T -- "$2" "$3"'
    return [
        "sh",
        "-c",
        script,
        "sh",
        f"releases/{check_version(version)}",
        f"{root}/current.tmp-{_check_suffix(suffix)}",
        f"{root}/current",
    ]


def prune(root: str, versions: Sequence[str], suffix: str) -> list[str]:
    """Remove the releases ``versions`` (each renamed to ``.trash-...`` first) and crash leftovers."""
    script = (
        'cd -- "$1" || exit; s=$2; shift 2; rm -rf -- .tmp-* .trash-*; '
        'for v; do mv -T -- "$v" ".trash-$v-$s" && rm -rf -- ".trash-$v-$s" || exit; done'
    )
    return [
        "sh",
        "-c",
        script,
        "sh",
        f"{check_path(root)}/releases",
        _check_suffix(suffix),
        *(check_version(v) for v in versions),
    ]


def remove_current(root: str) -> list[str]:
    """Remove ``current`` and ``previous``: the target is empty again (releases stay)."""
    root = check_path(root)
    return ["rm", "-f", "--", f"{root}/current", f"{root}/previous"]


# --------------------------------------------------------------- commands


def with_env(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """``argv`` run with ``env`` added to its environment (through ``env``, no shell)."""
    if not env:
        return list(argv)
    return ["env", "--", *(f"{check_env_name(k)}={v}" for k, v in env.items()), *argv]


def with_timeout(argv: Sequence[str], seconds: float, kill_after: float = 5.0) -> list[str]:
    """``argv`` under ``timeout(1)``: TERM to its process group after ``seconds``, then KILL.

    It exits 124 when the time ran out, as the local driver's commands do.
    """
    if not seconds > 0:
        raise ValueError(f"timeout must be positive, not {seconds!r}")
    return ["timeout", "-k", f"{kill_after:g}", f"{seconds:g}", *argv]


def in_current(root: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run in ``root/current`` when it exists, else in the login directory."""
    if not argv:
        raise ValueError("a command needs at least a program")
    script = 'cd -- "$1" 2>/dev/null || cd; shift; exec "$@"'
    return ["sh", "-c", script, "sh", f"{check_path(root)}/current", *argv]


# ---------------------------------------------------------------- parsers


def parse_sha256(output: str) -> str | None:
    """The digest from ``sha256sum``'s output, or None when it printed none."""
    first = output.split(maxsplit=1)
    if not first:
        return None
    digest = first[0].lstrip("\\").lower()  # sha256sum escapes lines of odd file names with '\'
    if not _SHA256.fullmatch(digest):
        raise ValueError(f"not a sha256sum line: {output.strip()[:100]!r}")
    return digest


@dataclass(frozen=True)
class RemoteState:
    """What :func:`observe` found: ``current``, ``previous`` and the releases, oldest first."""

    current: str | None
    previous: str | None
    releases: list[str]


def parse_state(output: str) -> RemoteState:
    """Parse the output of the :func:`observe` steps: two lines, then one per release."""
    lines = output.split("\n")
    if len(lines) < 3:
        raise ValueError(f"unexpected state output: {output[:100]!r}")
    current = posixpath.basename(lines[0].strip().rstrip("/")) or None
    previous = lines[1].strip() or None
    return RemoteState(current, previous, parse_releases("\n".join(lines[2:])))


def parse_releases(output: str) -> list[str]:
    """Release names from :func:`list_releases`' output, least recently deployed first.

    Names that cannot be versions (someone else's directories) are left out.
    """
    found: list[tuple[float, str]] = []
    for line in output.splitlines():
        stamp, _, name = line.partition(" ")
        if not _NAME.fullmatch(name):
            continue
        try:
            found.append((float(stamp), name))
        except ValueError:
            continue
    return [name for _, name in sorted(found)]


def prune_victims(present: Sequence[str], keep: int, protect: Collection[str]) -> list[str]:
    """The releases to remove so that at most ``keep`` remain, never one in ``protect``.

    ``present`` is ordered least recently deployed first; the oldest go
    first. Protected releases count toward ``keep`` but are never removed,
    so ``keep=1`` with a current and a previous release keeps both:

        present [a, b, c, d], keep 2, protect {d, a}  ->  [b, c]   (a and d stay)
        present [a, b, c],    keep 5, protect {c}     ->  []
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    excess = len(present) - keep
    victims: list[str] = []
    for name in present:
        if excess <= 0:
            break
        if name in protect:
            continue
        victims.append(name)
        excess -= 1
    return victims
