"""The SSH driver's remote steps as argv, their output parsers and the prune arithmetic."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollwave.drivers import commands as c

ROOT = "/srv/app"

STEPS: list[tuple[str, Callable[[], list[str]], list[str]]] = [
    (
        "prepare",
        lambda: c.prepare(ROOT),
        ["mkdir", "-p", "--", "/srv/app/releases", "/srv/app/.artifacts"],
    ),
    (
        "sha256",
        lambda: c.sha256("/srv/app/.artifacts/app-2.0.tar.gz"),
        [
            "sh",
            "-c",
            'if [ -e "$1" ]; then sha256sum -- "$1"; fi',
            "sh",
            "/srv/app/.artifacts/app-2.0.tar.gz",
        ],
    ),
    (
        "unpack",
        lambda: c.unpack(ROOT, "2.0", "app-2.0.tar.gz", "ab12"),
        [
            "sh",
            "-c",
            "trap 'rm -rf -- \"$2\"' EXIT; "
            'mkdir -- "$2" && tar -xzf "$1" -C "$2" && { mv -T -- "$2" "$3" || [ -d "$3" ]; }',
            "sh",
            "/srv/app/.artifacts/app-2.0.tar.gz",
            "/srv/app/releases/.tmp-2.0-ab12",
            "/srv/app/releases/2.0",
        ],
    ),
    (
        "switch",
        lambda: c.switch_current(ROOT, "2.0", "ab12"),
        [
            "sh",
            "-c",
            'rm -f -- "$3".tmp-* && ln -sfn -- "$1" "$2" && mv -T -- "$2" "$3"',
            "sh",
            "releases/2.0",
            "/srv/app/current.tmp-ab12",
            "/srv/app/current",
        ],
    ),
    (
        "read-current",
        lambda: c.read_current(ROOT),
        [
            "sh",
            "-c",
            'if [ -L "$1" ]; then readlink -- "$1"; '
            'elif [ -e "$1" ]; then echo "$1 is not a symlink" >&2; exit 2; else echo; fi',
            "sh",
            "/srv/app/current",
        ],
    ),
    (
        "read-previous",
        lambda: c.read_previous(ROOT),
        [
            "sh",
            "-c",
            'p=; if [ -f "$1" ]; then p=$(head -n 1 -- "$1"); fi; printf "%s\\n" "$p"',
            "sh",
            "/srv/app/previous",
        ],
    ),
    (
        "list-releases",
        lambda: c.list_releases(ROOT),
        [
            "sh",
            "-c",
            'if [ -d "$1" ]; then '
            'find "$1" -mindepth 1 -maxdepth 1 -type d ! -name ".*" -printf "%T@ %f\\n"; fi',
            "sh",
            "/srv/app/releases",
        ],
    ),
    ("has-release", lambda: c.has_release(ROOT, "2.0"), ["test", "-d", "/srv/app/releases/2.0"]),
    (
        "touch",
        lambda: c.touch_release(ROOT, "2.0", 1700000000.25),
        ["touch", "-c", "-d", "@1700000000.250000", "--", "/srv/app/releases/2.0"],
    ),
    (
        "prune",
        lambda: c.prune(ROOT, ["1.0", "1.1"], "ab12"),
        [
            "sh",
            "-c",
            'cd -- "$1" || exit; s=$2; shift 2; rm -rf -- .tmp-* .trash-*; '
            'for v; do mv -T -- "$v" ".trash-$v-$s" && rm -rf -- ".trash-$v-$s" || exit; done',
            "sh",
            "/srv/app/releases",
            "ab12",
            "1.0",
            "1.1",
        ],
    ),
    (
        "write-previous",
        lambda: c.write_previous(ROOT, "1.0", "ab12"),
        [
            "sh",
            "-c",
            'printf "%s\\n" "$1" > "$2" && mv -f -- "$2" "$3"',
            "sh",
            "1.0",
            "/srv/app/previous.tmp-ab12",
            "/srv/app/previous",
        ],
    ),
    (
        "write-previous-none",
        lambda: c.write_previous(ROOT, None, "ab12"),
        [
            "sh",
            "-c",
            'printf "%s\\n" "$1" > "$2" && mv -f -- "$2" "$3"',
            "sh",
            "",
            "/srv/app/previous.tmp-ab12",
            "/srv/app/previous",
        ],
    ),
    (
        "remove-current",
        lambda: c.remove_current(ROOT),
        ["rm", "-f", "--", "/srv/app/current", "/srv/app/previous"],
    ),
    (
        "check-root",
        lambda: c.check_root(ROOT),
        [
            "sh",
            "-c",
            'd=$1; while [ ! -e "$d" ]; do d=$(dirname -- "$d"); done; '
            '[ -d "$d" ] && [ -w "$d" ] && [ -x "$d" ] || '
            '{ echo "$d is not a writable directory" >&2; exit 1; }',
            "sh",
            "/srv/app",
        ],
    ),
    (
        "find-command",
        lambda: c.find_command("systemctl"),
        [
            "sh",
            "-c",
            'command -v "$1" >/dev/null || { echo "$1 not found" >&2; exit 127; }',
            "sh",
            "systemctl",
        ],
    ),
    (
        "in-current",
        lambda: c.in_current(ROOT, ["./manage.py", "migrate", "a b;c"]),
        [
            "sh",
            "-c",
            'cd -- "$1" 2>/dev/null || cd; shift; exec "$@"',
            "sh",
            "/srv/app/current",
            "./manage.py",
            "migrate",
            "a b;c",
        ],
    ),
    (
        "with-env",
        lambda: c.with_env(["app", "--check"], {"MODE": "x y", "N": "1"}),
        ["env", "--", "MODE=x y", "N=1", "app", "--check"],
    ),
    ("with-no-env", lambda: c.with_env(["app"], {}), ["app"]),
    (
        "with-timeout",
        lambda: c.with_timeout(["sleep", "9"], 2.5),
        ["timeout", "-k", "5", "2.5", "sleep", "9"],
    ),
]


def test_observe_is_three_steps() -> None:
    """Observing a target reads current, previous and the releases in one chained command."""
    assert c.observe(ROOT) == [c.read_current(ROOT), c.read_previous(ROOT), c.list_releases(ROOT)]


STATES = [
    ("empty", "\n\n", c.RemoteState(None, None, [])),
    (
        "deployed",
        "releases/2.0\n1.0\n1700000100.0 1.0\n1700000200.0 2.0\n",
        c.RemoteState("2.0", "1.0", ["1.0", "2.0"]),
    ),
    ("first-deploy", "releases/1.0\n\n1700000100.0 1.0\n", c.RemoteState("1.0", None, ["1.0"])),
]


@pytest.mark.parametrize(
    ("output", "expected"), [s[1:] for s in STATES], ids=[s[0] for s in STATES]
)
def test_parse_state(output: str, expected: c.RemoteState) -> None:
    """The observe output gives current (the link's last component), previous and the releases."""
    assert c.parse_state(output) == expected


def test_parse_state_truncated() -> None:
    """Output missing its fixed lines is an error, not an empty target."""
    with pytest.raises(ValueError, match="state output"):
        c.parse_state("releases/2.0")


@pytest.mark.parametrize(("build", "expected"), [s[1:] for s in STEPS], ids=[s[0] for s in STEPS])
def test_step_argv(build: Callable[[], list[str]], expected: list[str]) -> None:
    """Each remote step is exactly this argv: a constant script, the variable parts as arguments."""
    assert build() == expected


def test_paths() -> None:
    """Release, artifact and upload paths sit under the root, which is normalized."""
    assert c.release_dir("/srv/app/", "2.0") == "/srv/app/releases/2.0"
    assert c.artifact_path("/srv//app", "app-2.0.tar.gz") == "/srv/app/.artifacts/app-2.0.tar.gz"
    assert (
        c.upload_path("/srv/app", "app-2.0.tar.gz", "ab12")
        == "/srv/app/.artifacts/.app-2.0.tar.gz.tmp-ab12"
    )
    assert c.release_dir("apps/web", "1") == "apps/web/releases/1"


BAD_VERSIONS = [
    ("semicolon", "1.0;rm -rf /"),
    ("subshell", "$(reboot)"),
    ("backtick", "`id`"),
    ("space", "1 0"),
    ("slash", "1/0"),
    ("dotdot", ".."),
    ("leading-dot", ".hidden"),
    ("leading-dash", "-rf"),
    ("newline", "1.0\n"),
    ("quote", "1'0"),
    ("glob", "1.*"),
    ("empty", ""),
]


@pytest.mark.parametrize("version", [v for _, v in BAD_VERSIONS], ids=[i for i, _ in BAD_VERSIONS])
def test_bad_version_rejected(version: str) -> None:
    """A version with shell metacharacters or path syntax is rejected by every builder that takes one."""
    with pytest.raises(ValueError, match="version"):
        c.check_version(version)
    builders: list[Callable[[], Any]] = [
        lambda: c.release_dir(ROOT, version),
        lambda: c.unpack(ROOT, version, "app.tar.gz", "ab12"),
        lambda: c.switch_current(ROOT, version, "ab12"),
        lambda: c.touch_release(ROOT, version, 0.0),
        lambda: c.prune(ROOT, ["1.0", version], "ab12"),
        lambda: c.has_release(ROOT, version),
    ]
    if version:  # an empty previous version means "none"
        builders.append(lambda: c.write_previous(ROOT, version, "ab12"))
    for build in builders:
        with pytest.raises(ValueError, match="version"):
            build()


BAD_PATHS = [
    ("semicolon", "/srv/app;touch /tmp/x"),
    ("space", "/srv/my app"),
    ("dollar", "/srv/$HOME"),
    ("tilde", "~/app"),
    ("quote", "/srv/a'pp"),
    ("newline", "/srv/app\n"),
    ("dotdot", "/srv/../etc"),
    ("leading-dash", "-rf"),
    ("empty", ""),
]


@pytest.mark.parametrize("path", [p for _, p in BAD_PATHS], ids=[i for i, _ in BAD_PATHS])
def test_bad_path_rejected(path: str) -> None:
    """A root with shell metacharacters, ``~``, ``..`` or a leading ``-`` is rejected."""
    with pytest.raises(ValueError, match="path"):
        c.check_path(path)
    with pytest.raises(ValueError, match="path"):
        c.prepare(path)
    with pytest.raises(ValueError, match="path"):
        c.switch_current(path, "1.0", "ab12")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: c.artifact_path(ROOT, "app;id.tar.gz"), "artifact name"),
        (lambda: c.unpack(ROOT, "1.0", "../x.tar.gz", "ab12"), "artifact name"),
        (lambda: c.switch_current(ROOT, "1.0", "x;y"), "suffix"),
        (lambda: c.with_env(["app"], {"A B": "1"}), "environment variable"),
        (lambda: c.in_current(ROOT, []), "program"),
        (lambda: c.prune_victims(["a"], 0, set()), "keep"),
        (lambda: c.with_timeout(["a"], 0), "timeout"),
    ],
    ids=[
        "artifact-name",
        "artifact-traversal",
        "suffix",
        "env-name",
        "empty-argv",
        "keep-0",
        "timeout-0",
    ],
)
def test_other_bad_input(call: Callable[[], Any], match: str) -> None:
    """Artifact names, temporary suffixes, env names and empty commands are checked too."""
    with pytest.raises(ValueError, match=match):
        call()


@given(st.text(min_size=1, max_size=20))
def test_accepted_paths_need_no_quoting(path: str) -> None:
    """Any path that passes the check is rendered by shlex.join without quotes: it is plain text."""
    try:
        checked = c.check_path(path)
    except ValueError:
        return
    assert shlex.quote(checked) == checked


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("", None),
        (
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  /srv/a\n",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        (
            "\\E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855  /srv/a\\nb\n",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
    ],
    ids=["absent", "plain", "escaped-name"],
)
def test_parse_sha256(output: str, expected: str | None) -> None:
    """sha256sum's line gives its digest; no output means the file is absent."""
    assert c.parse_sha256(output) == expected


def test_parse_sha256_garbage() -> None:
    """Output that is not a sha256sum line is an error, not a digest."""
    with pytest.raises(ValueError, match="sha256sum"):
        c.parse_sha256("sha256sum: command not found\n")


def test_parse_releases() -> None:
    """Releases come back least recently deployed first (ties by name); stray names are dropped."""
    output = "1700000300.5 2.0\n1700000100.0 1.0\n1700000100.0 0.9\nbad line\n1700000200 we ird\n"
    assert c.parse_releases(output) == ["0.9", "1.0", "2.0"]


PRUNES = [
    ("under-keep", ["a", "b"], 3, {"b"}, []),
    ("oldest-first", ["a", "b", "c", "d"], 2, {"d"}, ["a", "b"]),
    ("previous-protected", ["a", "b", "c", "d"], 2, {"d", "a"}, ["b", "c"]),
    ("keep-1-keeps-current-and-previous", ["a", "b", "c"], 1, {"c", "b"}, ["a"]),
    ("all-protected", ["a", "b"], 1, {"a", "b"}, []),
]


@pytest.mark.parametrize(
    ("present", "keep", "protect", "expected"),
    [p[1:] for p in PRUNES],
    ids=[p[0] for p in PRUNES],
)
def test_prune_victims(
    present: list[str], keep: int, protect: set[str], expected: list[str]
) -> None:
    """Prune removes the oldest releases beyond ``keep``, never the current or previous one."""
    assert c.prune_victims(present, keep, protect) == expected


@given(
    st.lists(st.sampled_from("abcdefgh"), unique=True),
    st.integers(min_value=1, max_value=10),
    st.sets(st.sampled_from("abcdefgh")),
)
def test_prune_victims_properties(present: list[str], keep: int, protect: set[str]) -> None:
    """Victims are never protected, and what remains is at most keep unless protection forbids it."""
    victims = c.prune_victims(present, keep, protect)
    assert not set(victims) & protect
    remaining = [p for p in present if p not in victims]
    assert len(remaining) <= max(keep, len(set(present) & protect))
