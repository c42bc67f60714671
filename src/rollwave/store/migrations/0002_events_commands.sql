-- rollwave state store, schema version 2: a human message beside each
-- deployment's machine reason, events (notifications, deliveries,
-- annotations) and operator commands posted from another terminal.

ALTER TABLE deployments ADD COLUMN message TEXT NOT NULL DEFAULT '';

CREATE TABLE events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id INTEGER NOT NULL REFERENCES deployments (id),
    at            REAL    NOT NULL,
    kind          TEXT    NOT NULL,
    data          TEXT    NOT NULL DEFAULT '{}'  -- JSON
);

CREATE INDEX events_by_deployment ON events (deployment_id, id);

CREATE TABLE commands (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id INTEGER NOT NULL REFERENCES deployments (id),
    kind          TEXT    NOT NULL,
    args          TEXT    NOT NULL DEFAULT '{}', -- JSON
    who           TEXT    NOT NULL,
    at            REAL    NOT NULL
);

CREATE INDEX commands_by_deployment ON commands (deployment_id, id);
