"""The SQLite state store against real database files: records, locks, fencing, migrations."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from rollwave.engine.ports import DeploymentState, Lease, Store
from rollwave.errors import FencedError, LockedError, NotFoundError, StoreError
from rollwave.store import SQLiteStore, open_store

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
TTL = 30.0
MIGRATIONS = resources.files("rollwave.store") / "migrations"
LATEST = len([m for m in MIGRATIONS.iterdir() if m.name.endswith(".sql")])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture
def store(db: Path) -> Any:
    with SQLiteStore(db) as opened:
        yield opened


@pytest.fixture
def lease(store: SQLiteStore) -> Lease:
    return store.acquire_lock("prod", "ana@deploy-1", 4242, TTL, T0)


def raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None)


def user_version(db: Path) -> int:
    with raw(db) as conn:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


# ------------------------------------------------------------------------ opening


def test_new_store_is_created_with_its_directory_at_the_latest_schema_in_wal_mode(db: Path) -> None:
    """Opening a missing file creates its parent directory and the latest schema, in WAL mode."""
    SQLiteStore(db).close()
    assert db.is_file()
    assert user_version(db) == LATEST >= 2
    with raw(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_store_satisfies_the_store_protocol(db: Path) -> None:
    """SQLiteStore provides every method of the Store Protocol."""
    store: Store = SQLiteStore(db)
    missing = [name for name in dir(Store) if not name.startswith("_") and not hasattr(store, name)]
    store.close()
    assert missing == []


def test_data_survives_closing_and_reopening(db: Path) -> None:
    """What one store instance wrote, a new instance on the same file reads."""
    with SQLiteStore(db) as first:
        lease = first.acquire_lock("prod", "ana@deploy-1", 1, TTL, T0)
        deployment = first.create_deployment(lease, "ana", "sha256:1", {"services": []}, T0)
        first.append(lease, deployment.id, "drain", "begin", T0, service="api", target="api-1")
    with SQLiteStore(db) as second:
        assert second.get_deployment(deployment.id) == deployment
        assert [e.kind for e in second.journal(deployment.id)] == ["drain"]
        assert second.lock_info("prod") == lease


def test_database_with_only_the_first_migration_is_migrated_and_keeps_its_data(db: Path) -> None:
    """A version-1 database opens, is migrated to the latest version, and keeps its rows."""
    db.parent.mkdir()
    with raw(db) as conn:
        conn.executescript((MIGRATIONS / "0001_initial.sql").read_text("utf-8"))
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO deployments (environment, state, reason, who, created_at, updated_at,"
            " spec_digest, plan) VALUES ('prod', 'succeeded', 'Completed', 'ana', ?, ?, 'd1',"
            ' \'{"services": ["api"]}\')',
            (T0, T0 + 60),
        )
        conn.execute(
            "INSERT INTO journal (deployment_id, token, at, kind, phase, service, target, data)"
            " VALUES (1, 7, ?, 'deploy', 'end', 'api', 'api-1', '{\"version\": \"2.4.1\"}')",
            (T0 + 5,),
        )
        conn.execute(
            "INSERT INTO locks VALUES ('prod', 'ana@deploy-1', 99, 7, ?, 0)",
            (T0,),
        )
    conn.close()
    assert user_version(db) == 1

    with SQLiteStore(db) as store:
        assert user_version(db) == LATEST
        old = store.get_deployment(1)
        assert (old.environment, old.state, old.reason, old.message) == (
            "prod",
            DeploymentState.SUCCEEDED,
            "Completed",
            "",
        )
        assert old.plan == {"services": ["api"]}
        [entry] = store.journal(1)
        assert (entry.token, entry.kind, entry.target, entry.data) == (
            7,
            "deploy",
            "api-1",
            {"version": "2.4.1"},
        )
        # The tables of later migrations work, and the lock's token counter carried over.
        assert store.add_event(1, "annotation", {"text": "migrated"}, T0 + 100) == 1
        assert store.post_command(1, "approve", {}, "bob", T0 + 100).id == 1
        assert store.acquire_lock("prod", "bob@deploy-2", 5, TTL, T0 + 100).token == 8


def test_database_from_a_newer_rollwave_is_refused(db: Path) -> None:
    """A schema version newer than the shipped migrations raises StoreError naming the file."""
    SQLiteStore(db).close()
    with raw(db) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.close()
    with pytest.raises(StoreError, match=f"state store {db} has schema version {LATEST + 1}"):
        SQLiteStore(db)


def test_path_under_a_regular_file_raises_store_error_naming_the_path(tmp_path: Path) -> None:
    """A store whose parent is a regular file cannot be created: a one-line StoreError names it."""
    (tmp_path / "plain").write_text("not a directory\n")
    path = tmp_path / "plain" / "state.db"
    with pytest.raises(StoreError) as caught:
        SQLiteStore(path)
    assert (
        str(caught.value)
        == f"cannot open state store {path}: {tmp_path / 'plain'} is not a directory"
    )
    assert caught.value.hint


def test_path_deeper_under_a_regular_file_raises_store_error_naming_the_path(
    tmp_path: Path,
) -> None:
    """A store whose ancestor is a regular file raises StoreError with the path and the reason."""
    (tmp_path / "plain").write_text("not a directory\n")
    path = tmp_path / "plain" / "sub" / "state.db"
    with pytest.raises(StoreError) as caught:
        SQLiteStore(path)
    assert str(caught.value) == f"cannot open state store {path}: not a directory"


def test_directory_as_database_raises_store_error(tmp_path: Path) -> None:
    """A path that is a directory raises StoreError naming it, not an sqlite3 error."""
    with pytest.raises(StoreError, match=f"^cannot open state store {tmp_path}: ") as caught:
        SQLiteStore(tmp_path)
    assert isinstance(caught.value.__cause__, sqlite3.Error)


@pytest.mark.parametrize(
    "content", [b"x", b"environment: production\n" * 300], ids=["tiny", "yaml"]
)
def test_file_that_is_not_a_database_is_refused_and_left_alone(
    tmp_path: Path, content: bytes
) -> None:
    """A non-empty non-SQLite file raises StoreError and is not overwritten."""
    path = tmp_path / "rollwave.yaml"
    path.write_bytes(content)
    with pytest.raises(
        StoreError, match=f"^cannot open state store {path}: file is not a database$"
    ):
        SQLiteStore(path)
    assert path.read_bytes() == content


def test_closed_store_raises_store_error(db: Path) -> None:
    """Using a closed store raises StoreError naming the file."""
    store = SQLiteStore(db)
    store.close()
    with pytest.raises(StoreError, match=f"state store {db} is closed"):
        store.lock_info("prod")


# ------------------------------------------------------------------------- locks


def test_acquired_lease_is_stored_as_returned(store: SQLiteStore) -> None:
    """acquire_lock returns the first token, and lock_info reads the same lease back."""
    lease = store.acquire_lock("prod", "ana@deploy-1", 4242, TTL, T0)
    assert lease == Lease("prod", "ana@deploy-1", 4242, 1, T0, T0 + TTL)
    assert store.lock_info("prod") == lease
    assert store.lock_info("staging") is None


def test_second_acquire_while_held_raises_locked_naming_the_holder(
    store: SQLiteStore, lease: Lease
) -> None:
    """A held, unexpired lease makes another acquire raise LockedError naming holder, pid and time."""
    with pytest.raises(LockedError) as caught:
        store.acquire_lock("prod", "bob@deploy-2", 7, TTL, T0 + TTL - 1)
    assert (
        str(caught.value)
        == "environment prod is locked by ana@deploy-1 (pid 4242) since 2023-11-14T22:13:20Z"
    )
    assert caught.value.hint is not None
    assert "2023-11-14T22:13:50Z" in caught.value.hint  # when the lease expires
    assert store.lock_info("prod") == lease


def test_locks_of_different_environments_are_independent(store: SQLiteStore, lease: Lease) -> None:
    """Holding one environment's lock does not lock another environment."""
    other = store.acquire_lock("staging", "bob@deploy-2", 7, TTL, T0)
    assert other.token == 1
    assert store.lock_info("prod") == lease


def test_expired_lease_is_taken_over_with_a_bigger_token(store: SQLiteStore, lease: Lease) -> None:
    """Once expires_at is not after now, another holder takes the lock with token + 1."""
    taken = store.acquire_lock("prod", "bob@deploy-2", 7, TTL, lease.expires_at)
    assert taken == Lease(
        "prod", "bob@deploy-2", 7, lease.token + 1, lease.expires_at, lease.expires_at + TTL
    )
    assert store.lock_info("prod") == taken


def test_tokens_increase_across_release(store: SQLiteStore) -> None:
    """Releasing keeps the token counter: each new acquire gets a bigger token."""
    tokens = []
    for round_ in range(4):
        lease = store.acquire_lock("prod", "ana@deploy-1", 1, TTL, T0 + round_)
        tokens.append(lease.token)
        store.release_lock(lease)
        info = store.lock_info("prod")
        assert info is not None
        assert info.token == lease.token
        assert info.expires_at <= T0
    assert tokens == [1, 2, 3, 4]


def test_release_of_a_fenced_lease_leaves_the_new_holder_alone(
    store: SQLiteStore, lease: Lease
) -> None:
    """Releasing an old lease after a takeover does not free the newer holder's lock."""
    newer = store.acquire_lock("prod", "bob@deploy-2", 7, TTL, lease.expires_at + 1)
    store.release_lock(lease)
    assert store.lock_info("prod") == newer
    with pytest.raises(LockedError, match="bob@deploy-2"):
        store.acquire_lock("prod", "carl@deploy-3", 8, TTL, lease.expires_at + 2)


def test_renew_extends_the_lease(store: SQLiteStore, lease: Lease) -> None:
    """renew_lock moves expires_at to now + ttl and keeps the token."""
    renewed = store.renew_lock(lease, TTL, T0 + 20)
    assert renewed == Lease("prod", "ana@deploy-1", 4242, lease.token, T0, T0 + 20 + TTL)
    assert store.lock_info("prod") == renewed
    with pytest.raises(LockedError):
        store.acquire_lock("prod", "bob@deploy-2", 7, TTL, T0 + 40)


def test_renew_of_a_fenced_lease_raises_fenced(store: SQLiteStore, lease: Lease) -> None:
    """After a takeover, renewing the old lease raises FencedError naming both tokens."""
    store.acquire_lock("prod", "bob@deploy-2", 7, TTL, lease.expires_at + 1)
    with pytest.raises(
        FencedError, match=r"lease token 1 of environment prod is fenced: the lock's token is now 2"
    ):
        store.renew_lock(lease, TTL, lease.expires_at + 2)


# ----------------------------------------------------------------------- fencing


def test_expired_lease_not_taken_over_still_writes(store: SQLiteStore, lease: Lease) -> None:
    """A lease past its expiry still writes while no newer token exists."""
    later = lease.expires_at + 600
    deployment = store.create_deployment(lease, "ana", "d", {}, later)
    store.append(lease, deployment.id, "drain", "begin", later)
    store.set_state(lease, deployment.id, DeploymentState.PAUSED, "Paused", "operator", later)
    assert store.get_deployment(deployment.id).state is DeploymentState.PAUSED


def test_append_with_an_old_token_after_takeover_raises_fenced(
    store: SQLiteStore, lease: Lease
) -> None:
    """After another run takes the lock over, every write under the old lease raises FencedError."""
    deployment = store.create_deployment(lease, "ana", "d", {}, T0)
    store.append(lease, deployment.id, "drain", "begin", T0 + 1)
    newer = store.acquire_lock("prod", "bob@deploy-2", 7, TTL, lease.expires_at + 1)

    message = r"^lease token 1 of environment prod is fenced: the lock's token is now 2 \(bob@deploy-2, pid 7\)$"
    with pytest.raises(FencedError, match=message):
        store.append(lease, deployment.id, "drain", "end", T0 + 40)
    with pytest.raises(FencedError, match=message):
        store.set_state(lease, deployment.id, DeploymentState.FAILED, "Crashed", "", T0 + 40)
    with pytest.raises(FencedError, match=message):
        store.create_deployment(lease, "ana", "d", {}, T0 + 40)

    assert [(e.phase, e.token) for e in store.journal(deployment.id)] == [("begin", 1)]
    assert store.get_deployment(deployment.id).state is DeploymentState.RUNNING
    assert store.list_deployments("prod") == [deployment]
    assert store.append(newer, deployment.id, "drain", "end", T0 + 41).token == 2


def test_lease_of_an_unlocked_environment_is_fenced(store: SQLiteStore) -> None:
    """A lease for an environment that has no lock row cannot write."""
    forged = Lease("prod", "ana@deploy-1", 1, 1, T0, T0 + TTL)
    with pytest.raises(FencedError, match="the environment has no lock"):
        store.create_deployment(forged, "ana", "d", {}, T0)


def test_lease_of_another_environment_cannot_write_a_deployment(
    store: SQLiteStore, lease: Lease
) -> None:
    """A lease only writes the deployments of its own environment."""
    deployment = store.create_deployment(lease, "ana", "d", {}, T0)
    staging = store.acquire_lock("staging", "bob@deploy-2", 7, TTL, T0)
    with pytest.raises(StoreError, match=f"deployment {deployment.id} belongs to environment prod"):
        store.append(staging, deployment.id, "drain", "begin", T0)
    with pytest.raises(StoreError, match=f"deployment {deployment.id} belongs to environment prod"):
        store.set_state(staging, deployment.id, DeploymentState.ABORTED, "", "", T0)


# ------------------------------------------------------------------- deployments


def test_deployment_round_trip(store: SQLiteStore, lease: Lease) -> None:
    """create_deployment stores a running deployment that get_deployment reads back whole."""
    plan = {
        "environment": "prod",
        "services": [{"name": "api", "waves": [["api-1"], ["api-2", "api-3"]]}],
    }
    created = store.create_deployment(lease, "ana", "sha256:abc", plan, T0)
    assert (created.environment, created.state, created.reason, created.message) == (
        "prod",
        DeploymentState.RUNNING,
        "",
        "",
    )
    assert (created.who, created.spec_digest, created.created_at, created.updated_at) == (
        "ana",
        "sha256:abc",
        T0,
        T0,
    )
    assert created.plan == plan
    read = store.get_deployment(created.id)
    assert read == created
    assert read.plan == plan


def test_plan_is_stored_as_json_with_sorted_keys(
    store: SQLiteStore, lease: Lease, db: Path
) -> None:
    """The plan column holds JSON text with sorted keys, and tuples come back as lists."""
    created = store.create_deployment(lease, "ana", "d", {"b": (1, 2), "a": {"z": 1, "y": 2}}, T0)
    assert created.plan == {"a": {"y": 2, "z": 1}, "b": [1, 2]}
    with raw(db) as conn:
        text = conn.execute("SELECT plan FROM deployments WHERE id = ?", (created.id,)).fetchone()[
            0
        ]
    conn.close()
    assert text == '{"a": {"y": 2, "z": 1}, "b": [1, 2]}'


def test_missing_deployment_raises_not_found(store: SQLiteStore) -> None:
    """get_deployment of an unknown id raises NotFoundError naming the id."""
    with pytest.raises(NotFoundError, match=r"^deployment 99 not found$"):
        store.get_deployment(99)


def test_set_state_round_trip(store: SQLiteStore, lease: Lease) -> None:
    """set_state stores state, reason, message and updated_at, and keeps created_at."""
    deployment = store.create_deployment(lease, "ana", "d", {}, T0)
    store.set_state(
        lease,
        deployment.id,
        DeploymentState.ROLLED_BACK,
        "HealthDeadlineExceeded",
        "api-3: 503",
        T0 + 90,
    )
    read = store.get_deployment(deployment.id)
    assert (read.state, read.reason, read.message, read.created_at, read.updated_at) == (
        DeploymentState.ROLLED_BACK,
        "HealthDeadlineExceeded",
        "api-3: 503",
        T0,
        T0 + 90,
    )


def test_set_state_of_a_missing_deployment_raises_not_found(
    store: SQLiteStore, lease: Lease
) -> None:
    """set_state of an unknown id raises NotFoundError."""
    with pytest.raises(NotFoundError):
        store.set_state(lease, 99, DeploymentState.FAILED, "", "", T0)


@pytest.mark.parametrize("state", list(DeploymentState), ids=str)
def test_every_state_round_trips(store: SQLiteStore, lease: Lease, state: DeploymentState) -> None:
    """Each DeploymentState is stored and read back as itself."""
    deployment = store.create_deployment(lease, "ana", "d", {}, T0)
    store.set_state(lease, deployment.id, state, state.name, "", T0 + 1)
    assert store.get_deployment(deployment.id).state is state


def test_latest_and_list_are_per_environment_newest_first(store: SQLiteStore, lease: Lease) -> None:
    """list_deployments is newest first with a limit; latest_deployment is its head."""
    ids = [store.create_deployment(lease, "ana", f"d{i}", {}, T0 + i).id for i in range(5)]
    staging = store.acquire_lock("staging", "bob@deploy-2", 7, TTL, T0)
    store.create_deployment(staging, "bob", "s", {}, T0)
    assert [d.id for d in store.list_deployments("prod")] == ids[::-1]
    assert [d.id for d in store.list_deployments("prod", limit=2)] == ids[:2:-1]
    latest = store.latest_deployment("prod")
    assert latest is not None
    assert latest.id == ids[-1]
    assert store.latest_deployment("dev") is None
    assert store.list_deployments("dev") == []


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([], None),
        ([DeploymentState.SUCCEEDED], None),
        ([DeploymentState.RUNNING], 0),
        ([DeploymentState.PAUSED, DeploymentState.SUCCEEDED], 0),
        ([DeploymentState.ROLLING_BACK, DeploymentState.RUNNING, DeploymentState.FAILED], 1),
        ([DeploymentState.RUNNING, DeploymentState.ROLLED_BACK, DeploymentState.ABORTED], 0),
    ],
    ids=[
        "none",
        "all-finished",
        "running",
        "paused-then-done",
        "newest-unfinished",
        "older-unfinished",
    ],
)
def test_unfinished_deployment_is_the_newest_not_finished(
    store: SQLiteStore, lease: Lease, states: list[DeploymentState], expected: int | None
) -> None:
    """unfinished_deployment returns the newest deployment whose state is not finished."""
    ids = []
    for i, state in enumerate(states):
        deployment = store.create_deployment(lease, "ana", f"d{i}", {}, T0 + i)
        store.set_state(lease, deployment.id, state, "", "", T0 + i)
        ids.append(deployment.id)
    unfinished = store.unfinished_deployment("prod")
    assert (None if unfinished is None else unfinished.id) == (
        None if expected is None else ids[expected]
    )


# ----------------------------------------------------------------------- journal


def test_journal_round_trip_in_order(store: SQLiteStore, lease: Lease) -> None:
    """append returns what journal reads back, in append order, with after_seq paging."""
    deployment = store.create_deployment(lease, "ana", "d", {}, T0)
    other = store.create_deployment(lease, "ana", "d", {}, T0)
    steps = [
        ("drain", "begin"),
        ("drain", "end"),
        ("deploy", "begin"),
        ("deploy", "fail"),
        ("note", "info"),
    ]
    appended = []
    for i, (kind, phase) in enumerate(steps):
        appended.append(
            store.append(
                lease,
                deployment.id,
                kind,
                phase,
                T0 + i,
                service="api",
                target="api-1",
                data={"step": i, "argv": ["tar", "xzf"]},
            )
        )
        store.append(lease, other.id, kind, phase, T0 + i)
    journal = store.journal(deployment.id)
    assert journal == appended
    assert [(e.kind, e.phase) for e in journal] == steps
    assert [e.data for e in journal] == [{"argv": ["tar", "xzf"], "step": i} for i in range(5)]
    assert all((e.service, e.target, e.token) == ("api", "api-1", lease.token) for e in journal)
    assert [e.seq for e in journal] == sorted(e.seq for e in journal)
    assert store.journal(deployment.id, after_seq=journal[2].seq) == journal[3:]
    assert store.journal(deployment.id, after_seq=journal[-1].seq) == []
    assert len(store.journal(other.id)) == 5


def test_append_without_data_stores_an_empty_mapping(store: SQLiteStore, lease: Lease) -> None:
    """An entry appended without data, service or target reads back with empty ones."""
    deployment = store.create_deployment(lease, "ana", "d", {}, T0)
    entry = store.append(lease, deployment.id, "started", "info", T0)
    assert (entry.service, entry.target, entry.data) == ("", "", {})
    assert store.journal(deployment.id) == [entry]


def test_append_rejects_an_unknown_phase(store: SQLiteStore, lease: Lease) -> None:
    """A phase other than begin, end, fail or info is a programming error."""
    deployment = store.create_deployment(lease, "ana", "d", {}, T0)
    with pytest.raises(ValueError, match="journal phase"):
        store.append(lease, deployment.id, "drain", "started", T0)


def test_append_to_a_missing_deployment_raises_not_found(store: SQLiteStore, lease: Lease) -> None:
    """Appending to an unknown deployment raises NotFoundError."""
    with pytest.raises(NotFoundError, match="deployment 99 not found"):
        store.append(lease, 99, "drain", "begin", T0)


@pytest.mark.parametrize(
    "statement",
    ["UPDATE journal SET phase = 'end'", "DELETE FROM journal"],
    ids=["update", "delete"],
)
def test_journal_rows_cannot_be_changed(
    store: SQLiteStore, lease: Lease, db: Path, statement: str
) -> None:
    """The database itself refuses to update or delete journal rows."""
    deployment = store.create_deployment(lease, "ana", "d", {}, T0)
    entry = store.append(lease, deployment.id, "drain", "begin", T0)
    conn = raw(db)
    with pytest.raises(sqlite3.IntegrityError, match="the journal is append-only"):
        conn.execute(statement)
    conn.close()
    assert store.journal(deployment.id) == [entry]


# ------------------------------------------------------------ events and commands


def test_events_round_trip_in_order(store: SQLiteStore, lease: Lease) -> None:
    """add_event returns increasing ids, and events reads them back in that order."""
    deployment = store.create_deployment(lease, "ana", "d", {}, T0)
    first = store.add_event(deployment.id, "notified", {"sink": "webhook", "status": 200}, T0 + 1)
    second = store.add_event(deployment.id, "annotation", {"text": "traffic spike"}, T0 + 2)
    assert first < second
    assert store.events(deployment.id) == [
        (first, T0 + 1, "notified", {"sink": "webhook", "status": 200}),
        (second, T0 + 2, "annotation", {"text": "traffic spike"}),
    ]
    assert store.events(deployment.id + 1) == []


def test_commands_need_no_lease_and_round_trip_in_order(
    store: SQLiteStore, lease: Lease, db: Path
) -> None:
    """Another process posts commands while the lock is held, and commands pages them by id."""
    deployment = store.create_deployment(lease, "ana", "d", {}, T0)
    with SQLiteStore(db) as operator:
        pause = operator.post_command(deployment.id, "pause", {}, "bob", T0 + 1)
        approve = operator.post_command(deployment.id, "approve", {"wave": 3}, "bob", T0 + 2)
    assert (approve.deployment_id, approve.kind, approve.args, approve.who, approve.at) == (
        deployment.id,
        "approve",
        {"wave": 3},
        "bob",
        T0 + 2,
    )
    assert store.commands(deployment.id) == [pause, approve]
    assert store.commands(deployment.id, after_id=pause.id) == [approve]
    assert store.commands(deployment.id, after_id=approve.id) == []


def test_events_and_commands_for_a_missing_deployment_raise_not_found(store: SQLiteStore) -> None:
    """Posting a command or an event to an unknown deployment raises NotFoundError."""
    with pytest.raises(NotFoundError):
        store.post_command(99, "abort", {}, "bob", T0)
    with pytest.raises(NotFoundError):
        store.add_event(99, "annotation", {}, T0)


# ------------------------------------------------------------------- concurrency

ROUNDS = 60


def _race_for_the_lock(path: str, name: str, barrier: Any, results: Any) -> None:
    """One contender: open the fresh store with the others, then race acquire_lock each round."""
    barrier.wait(timeout=60)
    store = SQLiteStore(Path(path))  # every contender opens and migrates the new file at once
    tokens = []
    for _ in range(ROUNDS):
        barrier.wait(timeout=60)
        try:
            lease: Lease | None = store.acquire_lock(
                "prod", f"{name}@host", os.getpid(), 3600.0, T0
            )
        except LockedError:
            lease = None
        tokens.append(0 if lease is None else lease.token)
        barrier.wait(timeout=60)  # every contender has tried before the winner lets go
        if lease is not None:
            store.release_lock(lease)
    store.close()
    results.put((name, tokens))


def test_processes_racing_for_the_lock_have_exactly_one_winner_each_round(db: Path) -> None:
    """Real processes racing acquire_lock on one file: one winner per round, tokens 1, 2, 3, ..."""
    context = multiprocessing.get_context("spawn")
    contenders = 3
    barrier = context.Barrier(contenders)
    results = context.Queue()
    processes = [
        context.Process(target=_race_for_the_lock, args=(str(db), f"p{i}", barrier, results))
        for i in range(contenders)
    ]
    for process in processes:
        process.start()
    try:
        outcome = dict(results.get(timeout=120) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()
    assert [p.exitcode for p in processes] == [0] * contenders
    for round_ in range(ROUNDS):
        won = [tokens[round_] for tokens in outcome.values() if tokens[round_]]
        assert won == [round_ + 1], f"round {round_}: {outcome}"
    assert user_version(db) == LATEST


# -------------------------------------------------------------------- open_store


def test_open_store_resolves_a_relative_path_against_the_base_dir(tmp_path: Path) -> None:
    """A relative state path is relative to base_dir, not to the working directory."""
    store = open_store(".rollwave/state.db", tmp_path)
    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / ".rollwave" / "state.db"
    store.close()
    assert (tmp_path / ".rollwave" / "state.db").is_file()


def test_open_store_keeps_an_absolute_path(tmp_path: Path) -> None:
    """An absolute state path is used as is."""
    store = open_store(str(tmp_path / "abs.db"), tmp_path / "elsewhere")
    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / "abs.db"
    store.close()


def test_open_store_refuses_postgresql_without_showing_the_password(tmp_path: Path) -> None:
    """A postgresql:// URL raises StoreError saying it is not supported yet, password redacted."""
    with pytest.raises(StoreError) as caught:
        open_store("postgresql://rollwave:s3cret@db.internal:5432/rollwave", tmp_path)
    assert str(caught.value) == (
        "PostgreSQL state stores are not supported yet: postgresql://rollwave:***@db.internal:5432/rollwave"
    )
    assert list(tmp_path.iterdir()) == []


def test_open_store_refuses_other_urls(tmp_path: Path) -> None:
    """A URL of another scheme raises StoreError instead of becoming a strange file name."""
    with pytest.raises(StoreError, match="unsupported state store mysql://db/rollwave"):
        open_store("mysql://db/rollwave", tmp_path)
