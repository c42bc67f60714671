-- rollwave state store, schema version 1: deployments, their journal, and
-- one lock (a lease with a fencing token) per environment.
-- Times are seconds since the epoch (REAL); JSON columns hold TEXT written
-- with sorted keys.

CREATE TABLE deployments (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    environment TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    reason      TEXT    NOT NULL DEFAULT '',
    who         TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    updated_at  REAL    NOT NULL,
    spec_digest TEXT    NOT NULL,
    plan        TEXT    NOT NULL DEFAULT '{}'   -- JSON
);

CREATE INDEX deployments_by_environment ON deployments (environment, id);

-- Append-only: every step of every target, written before the side effect it
-- announces and again after it. ``token`` is the fencing token of the lease
-- that wrote the row.
CREATE TABLE journal (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id INTEGER NOT NULL REFERENCES deployments (id),
    token         INTEGER NOT NULL,
    at            REAL    NOT NULL,
    kind          TEXT    NOT NULL,
    phase         TEXT    NOT NULL,
    service       TEXT    NOT NULL DEFAULT '',
    target        TEXT    NOT NULL DEFAULT '',
    data          TEXT    NOT NULL DEFAULT '{}'  -- JSON
);

CREATE INDEX journal_by_deployment ON journal (deployment_id, seq);

CREATE TRIGGER journal_no_update BEFORE UPDATE ON journal
BEGIN
    SELECT RAISE(ABORT, 'the journal is append-only: rows cannot be updated');
END;

CREATE TRIGGER journal_no_delete BEFORE DELETE ON journal
BEGIN
    SELECT RAISE(ABORT, 'the journal is append-only: rows cannot be deleted');
END;

-- One row per environment that was ever locked. A free lease keeps its row
-- (expires_at = 0) so that the token never decreases.
CREATE TABLE locks (
    environment TEXT    PRIMARY KEY,
    holder      TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    token       INTEGER NOT NULL,
    acquired_at REAL    NOT NULL,
    expires_at  REAL    NOT NULL
);
