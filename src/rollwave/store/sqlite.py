"""The embedded state store: one SQLite file in WAL mode.

Every method is one short transaction. Writes begin with ``BEGIN
IMMEDIATE``, so concurrent processes on the same file serialize on SQLite's
write lock (waiting up to :data:`BUSY_TIMEOUT` seconds) instead of failing
half-way; reads see one consistent snapshot.

Locks are leases with a fencing token. ``acquire_lock`` takes the
environment's row when it is free or expired and increments its token; the
token never decreases, not even across ``release_lock``. Every write made
under a lease (``create_deployment``, ``set_state``, ``append``) checks, in
its own transaction, that the stored token is still the lease's: a run whose
lease was taken over by a newer run gets :class:`FencedError`, while a lease
that merely expired and was not taken over still writes.

The schema is versioned with ``PRAGMA user_version`` and migrated forward on
open from the numbered files in ``migrations/`` (``0001_initial.sql``, ...),
each in its own transaction. No ``sqlite3`` exception leaves this module:
each becomes a :class:`StoreError` naming the database file.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

from rollwave.engine.ports import (
    Command,
    Deployment,
    DeploymentState,
    JournalEntry,
    Lease,
    ManualFreeze,
)
from rollwave.errors import FencedError, LockedError, NotFoundError, StoreError

__all__ = ["BUSY_TIMEOUT", "SQLiteStore"]

BUSY_TIMEOUT = 10.0
"""Seconds a statement waits for another process's write lock before failing."""

_SQLITE_HEADER = b"SQLite format 3\x00"

JOURNAL_PHASES = frozenset({"begin", "end", "fail", "info"})

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_UNFINISHED = tuple(state.value for state in DeploymentState if not state.finished)


@dataclass(frozen=True)
class _Migration:
    version: int
    name: str
    sql: str


def _migrations() -> list[_Migration]:
    """The shipped migrations in order; their numbers must run 1, 2, 3, ... without gaps."""
    found: list[_Migration] = []
    for entry in (resources.files("rollwave.store") / "migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(_Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        names = ", ".join(m.name for m in found)
        raise RuntimeError(f"rollwave.store migrations are not numbered 1..n: {names}")
    return found


def _statements(script: str) -> Iterator[str]:
    """Split a SQL script into complete statements (trigger bodies stay whole).

    ``executescript`` would commit the open transaction first, so migrations
    run statement by statement inside one transaction instead.
    """
    statement = ""
    for piece in script.split(";"):
        statement += piece + ";"
        if sqlite3.complete_statement(statement):
            yield statement.strip()
            statement = ""


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True)


class _CorruptRowError(Exception):
    """A stored value this code cannot read; :meth:`SQLiteStore._transaction` names the file."""


def _loads(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _CorruptRowError(f"invalid JSON {text[:80]!r}: {exc}") from exc
    if not isinstance(value, dict):
        raise _CorruptRowError(f"expected a JSON object, found {text[:80]!r}")
    return value


def _lease(row: sqlite3.Row) -> Lease:
    return Lease(
        environment=row["environment"],
        holder=row["holder"],
        pid=row["pid"],
        token=row["token"],
        acquired_at=row["acquired_at"],
        expires_at=row["expires_at"],
    )


def _deployment(row: sqlite3.Row) -> Deployment:
    try:
        state = DeploymentState(row["state"])
    except ValueError as exc:
        raise _CorruptRowError(
            f"deployment {row['id']} has an unknown state {row['state']!r}"
        ) from exc
    return Deployment(
        id=row["id"],
        environment=row["environment"],
        state=state,
        reason=row["reason"],
        message=row["message"],
        who=row["who"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        spec_digest=row["spec_digest"],
        plan=_loads(row["plan"]),
    )


def _journal_entry(row: sqlite3.Row) -> JournalEntry:
    return JournalEntry(
        seq=row["seq"],
        deployment_id=row["deployment_id"],
        token=row["token"],
        at=row["at"],
        kind=row["kind"],
        phase=row["phase"],
        service=row["service"],
        target=row["target"],
        data=_loads(row["data"]),
    )


def _command(row: sqlite3.Row) -> Command:
    return Command(
        id=row["id"],
        deployment_id=row["deployment_id"],
        kind=row["kind"],
        args=_loads(row["args"]),
        who=row["who"],
        at=row["at"],
    )


def _open_failure(path: Path, exc: BaseException) -> StoreError:
    if isinstance(exc, FileExistsError):
        reason = f"{exc.filename} is not a directory"
    elif isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror.lower()
    else:
        reason = str(exc)
    return StoreError(
        f"cannot open state store {path}: {reason}",
        hint="check the `state` setting in rollwave.yaml and the permissions of its directory",
    )


class SQLiteStore:
    """The :class:`rollwave.engine.ports.Store` on one SQLite file.

    Opening creates the parent directory and the database when missing, and
    migrates an older schema forward. One instance may be shared by threads
    (calls are serialized); each process opens its own.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._mutex = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _open_failure(self.path, exc) from exc
        self._refuse_foreign_file()
        try:
            self._conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT,
                isolation_level=None,  # autocommit: transactions are begun explicitly
                check_same_thread=False,  # guarded by self._mutex instead
            )
        except sqlite3.Error as exc:
            raise _open_failure(self.path, exc) from exc
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            self._enter_wal_mode()
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.Error as exc:
            self._conn.close()
            raise _open_failure(self.path, exc) from exc
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._mutex:
            self._conn.close()

    # ------------------------------------------------------------------ plumbing

    def _refuse_foreign_file(self) -> None:
        """StoreError for a non-empty file that is not SQLite: SQLite would overwrite a tiny one."""
        try:
            with self.path.open("rb") as file:
                header = file.read(len(_SQLITE_HEADER))
        except (FileNotFoundError, IsADirectoryError):
            return  # created below; a directory fails there with SQLite's own words
        except OSError as exc:
            raise _open_failure(self.path, exc) from exc
        if header and header != _SQLITE_HEADER:
            raise _open_failure(self.path, ValueError("file is not a database"))

    def _enter_wal_mode(self) -> None:
        """Switch the file to WAL mode, retrying while another process holds a lock.

        Changing the journal mode answers SQLITE_BUSY at once, without the
        busy handler, when another connection (say, a process opening the
        same new file) holds a lock; so it is retried here for up to
        :data:`BUSY_TIMEOUT`.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def _migrate(self) -> None:
        """Apply every migration newer than the file's ``user_version``, one transaction each."""
        migrations = _migrations()
        latest = len(migrations)
        while True:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                # Read under the write lock: another process may have migrated meanwhile.
                version: int = self._conn.execute("PRAGMA user_version").fetchone()[0]
                if version > latest:
                    raise StoreError(
                        f"state store {self.path} has schema version {version}, newer than"
                        f" the {latest} this rollwave knows",
                        hint="upgrade rollwave",
                    )
                if version == latest:
                    self._conn.execute("COMMIT")
                    return
                migration = migrations[version]
                for statement in _statements(migration.sql):
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {migration.version:d}")
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction: ``BEGIN IMMEDIATE`` for writes, a snapshot for reads.

        Commits when the block ends, rolls back when it raises, and turns any
        ``sqlite3`` error into a :class:`StoreError` naming the file.
        """
        with self._mutex:
            try:
                self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as exc:
                raise self._failure(exc) from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    with suppress(sqlite3.Error):  # report the first error, not this one
                        self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._failure(exc) from exc
                if isinstance(exc, _CorruptRowError):
                    raise StoreError(
                        f"state store {self.path}: {exc}",
                        hint="was it written by a newer rollwave?",
                    ) from exc
                raise

    def _failure(self, exc: sqlite3.Error) -> StoreError:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return StoreError(
                f"state store {self.path} is busy: still locked by another process"
                f" after {BUSY_TIMEOUT:g}s",
                hint="another rollwave process is writing to it; try again",
            )
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
            return StoreError(f"state store {self.path} is closed")
        return StoreError(f"state store {self.path}: {exc}")

    @staticmethod
    def _environment_of(conn: sqlite3.Connection, deployment_id: int) -> str:
        row = conn.execute(
            "SELECT environment FROM deployments WHERE id = ?", (deployment_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(
                f"deployment {deployment_id} not found",
                hint="`rollwave history` lists the deployments",
            )
        environment: str = row["environment"]
        return environment

    @staticmethod
    def _check_fence(conn: sqlite3.Connection, lease: Lease) -> None:
        """FencedError unless the stored token of the lease's environment is still its own."""
        row = conn.execute(
            "SELECT holder, pid, token FROM locks WHERE environment = ?", (lease.environment,)
        ).fetchone()
        if row is not None and row["token"] == lease.token:
            return
        if row is None:
            fact = "the environment has no lock"
        else:
            fact = f"the lock's token is now {row['token']} ({row['holder']}, pid {row['pid']})"
        raise FencedError(
            f"lease token {lease.token} of environment {lease.environment} is fenced: {fact}",
            hint="another run took this environment over; see `rollwave status`",
        )

    def _check_lease_for(self, conn: sqlite3.Connection, lease: Lease, deployment_id: int) -> None:
        environment = self._environment_of(conn, deployment_id)
        if environment != lease.environment:
            raise StoreError(
                f"deployment {deployment_id} belongs to environment {environment},"
                f" not to the leased environment {lease.environment}"
            )
        self._check_fence(conn, lease)

    # --------------------------------------------------------------------- locks

    def acquire_lock(
        self, environment: str, holder: str, pid: int, ttl: float, now: float
    ) -> Lease:
        with self._transaction(write=True) as conn:
            row = conn.execute(
                "SELECT * FROM locks WHERE environment = ?", (environment,)
            ).fetchone()
            if row is not None and row["expires_at"] > now:
                raise LockedError(
                    f"environment {environment} is locked by {row['holder']}"
                    f" (pid {row['pid']}) since {_iso(row['acquired_at'])}",
                    hint="wait for that run to finish (`rollwave status`); if it died,"
                    f" its lease expires at {_iso(row['expires_at'])}",
                )
            token = (row["token"] if row is not None else 0) + 1
            lease = Lease(environment, holder, pid, token, acquired_at=now, expires_at=now + ttl)
            conn.execute(
                "INSERT INTO locks (environment, holder, pid, token, acquired_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (environment) DO UPDATE SET holder = excluded.holder,"
                " pid = excluded.pid, token = excluded.token,"
                " acquired_at = excluded.acquired_at, expires_at = excluded.expires_at",
                (environment, holder, pid, token, lease.acquired_at, lease.expires_at),
            )
            return lease

    def renew_lock(self, lease: Lease, ttl: float, now: float) -> Lease:
        with self._transaction(write=True) as conn:
            self._check_fence(conn, lease)
            expires_at = now + ttl
            conn.execute(
                "UPDATE locks SET expires_at = ? WHERE environment = ?",
                (expires_at, lease.environment),
            )
            return Lease(
                lease.environment,
                lease.holder,
                lease.pid,
                lease.token,
                acquired_at=lease.acquired_at,
                expires_at=expires_at,
            )

    def release_lock(self, lease: Lease) -> None:
        """Free the lease, keeping its token; a no-op when a newer token holds the lock."""
        with self._transaction(write=True) as conn:
            conn.execute(
                "UPDATE locks SET expires_at = 0 WHERE environment = ? AND token = ?",
                (lease.environment, lease.token),
            )

    def lock_info(self, environment: str) -> Lease | None:
        with self._transaction(write=False) as conn:
            row = conn.execute(
                "SELECT * FROM locks WHERE environment = ?", (environment,)
            ).fetchone()
            return None if row is None else _lease(row)

    # --------------------------------------------------------------- deployments

    def create_deployment(
        self, lease: Lease, who: str, spec_digest: str, plan: Mapping[str, Any], now: float
    ) -> Deployment:
        plan_json = _dumps(plan)
        with self._transaction(write=True) as conn:
            self._check_fence(conn, lease)
            cursor = conn.execute(
                "INSERT INTO deployments (environment, state, reason, message, who,"
                " created_at, updated_at, spec_digest, plan)"
                " VALUES (?, ?, '', '', ?, ?, ?, ?, ?)",
                (
                    lease.environment,
                    DeploymentState.RUNNING.value,
                    who,
                    now,
                    now,
                    spec_digest,
                    plan_json,
                ),
            )
            assert cursor.lastrowid is not None
            return Deployment(
                id=cursor.lastrowid,
                environment=lease.environment,
                state=DeploymentState.RUNNING,
                reason="",
                message="",
                who=who,
                created_at=now,
                updated_at=now,
                spec_digest=spec_digest,
                plan=_loads(plan_json),
            )

    def get_deployment(self, deployment_id: int) -> Deployment:
        with self._transaction(write=False) as conn:
            row = conn.execute(
                "SELECT * FROM deployments WHERE id = ?", (deployment_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(
                    f"deployment {deployment_id} not found",
                    hint="`rollwave history` lists the deployments",
                )
            return _deployment(row)

    def latest_deployment(self, environment: str) -> Deployment | None:
        with self._transaction(write=False) as conn:
            row = conn.execute(
                "SELECT * FROM deployments WHERE environment = ? ORDER BY id DESC LIMIT 1",
                (environment,),
            ).fetchone()
            return None if row is None else _deployment(row)

    def unfinished_deployment(self, environment: str) -> Deployment | None:
        marks = ", ".join("?" for _ in _UNFINISHED)
        with self._transaction(write=False) as conn:
            row = conn.execute(
                f"SELECT * FROM deployments WHERE environment = ? AND state IN ({marks})"  # noqa: S608
                " ORDER BY id DESC LIMIT 1",
                (environment, *_UNFINISHED),
            ).fetchone()
            return None if row is None else _deployment(row)

    def list_deployments(self, environment: str, limit: int = 50) -> list[Deployment]:
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT * FROM deployments WHERE environment = ? ORDER BY id DESC LIMIT ?",
                (environment, limit),
            ).fetchall()
            return [_deployment(row) for row in rows]

    def set_state(
        self,
        lease: Lease,
        deployment_id: int,
        state: DeploymentState,
        reason: str,
        message: str,
        now: float,
    ) -> None:
        with self._transaction(write=True) as conn:
            self._check_lease_for(conn, lease, deployment_id)
            conn.execute(
                "UPDATE deployments SET state = ?, reason = ?, message = ?, updated_at = ?"
                " WHERE id = ?",
                (DeploymentState(state).value, reason, message, now, deployment_id),
            )

    # ------------------------------------------------------------------- journal

    def append(
        self,
        lease: Lease,
        deployment_id: int,
        kind: str,
        phase: str,
        now: float,
        *,
        service: str = "",
        target: str = "",
        data: Mapping[str, Any] | None = None,
    ) -> JournalEntry:
        if phase not in JOURNAL_PHASES:
            raise ValueError(
                f"journal phase must be one of {sorted(JOURNAL_PHASES)}, not {phase!r}"
            )
        data_json = _dumps(data or {})
        with self._transaction(write=True) as conn:
            self._check_lease_for(conn, lease, deployment_id)
            cursor = conn.execute(
                "INSERT INTO journal (deployment_id, token, at, kind, phase, service, target, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (deployment_id, lease.token, now, kind, phase, service, target, data_json),
            )
            assert cursor.lastrowid is not None
            return JournalEntry(
                seq=cursor.lastrowid,
                deployment_id=deployment_id,
                token=lease.token,
                at=now,
                kind=kind,
                phase=phase,
                service=service,
                target=target,
                data=_loads(data_json),
            )

    def journal(self, deployment_id: int, after_seq: int = 0) -> list[JournalEntry]:
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT * FROM journal WHERE deployment_id = ? AND seq > ? ORDER BY seq",
                (deployment_id, after_seq),
            ).fetchall()
            return [_journal_entry(row) for row in rows]

    # -------------------------------------------------------------------- events

    def add_event(self, deployment_id: int, kind: str, data: Mapping[str, Any], now: float) -> int:
        data_json = _dumps(data)
        with self._transaction(write=True) as conn:
            self._environment_of(conn, deployment_id)
            cursor = conn.execute(
                "INSERT INTO events (deployment_id, at, kind, data) VALUES (?, ?, ?, ?)",
                (deployment_id, now, kind, data_json),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def events(self, deployment_id: int) -> list[tuple[int, float, str, Mapping[str, Any]]]:
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT id, at, kind, data FROM events WHERE deployment_id = ? ORDER BY id",
                (deployment_id,),
            ).fetchall()
            return [(row["id"], row["at"], row["kind"], _loads(row["data"])) for row in rows]

    # ------------------------------------------------------------------ freezes

    def set_freeze(self, environment: str, frozen: bool, reason: str, who: str, now: float) -> None:
        with self._transaction(write=True) as conn:
            conn.execute(
                "INSERT INTO freezes (environment, frozen, reason, who, at) VALUES (?, ?, ?, ?, ?)",
                (environment, int(frozen), reason, who, now),
            )

    def manual_freeze(self, environment: str) -> ManualFreeze | None:
        with self._transaction(write=False) as conn:
            row = conn.execute(
                "SELECT frozen, reason, who, at FROM freezes WHERE environment = ?"
                " ORDER BY id DESC LIMIT 1",
                (environment,),
            ).fetchone()
            if row is None or not row["frozen"]:
                return None
            return ManualFreeze(environment, row["reason"], row["who"], row["at"])

    # ---------------------------------------------------------- operator commands

    def post_command(
        self, deployment_id: int, kind: str, args: Mapping[str, Any], who: str, now: float
    ) -> Command:
        args_json = _dumps(args)
        with self._transaction(write=True) as conn:
            self._environment_of(conn, deployment_id)
            cursor = conn.execute(
                "INSERT INTO commands (deployment_id, kind, args, who, at) VALUES (?, ?, ?, ?, ?)",
                (deployment_id, kind, args_json, who, now),
            )
            assert cursor.lastrowid is not None
            return Command(cursor.lastrowid, deployment_id, kind, _loads(args_json), who, now)

    def commands(self, deployment_id: int, after_id: int = 0) -> list[Command]:
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT * FROM commands WHERE deployment_id = ? AND id > ? ORDER BY id",
                (deployment_id, after_id),
            ).fetchall()
            return [_command(row) for row in rows]
