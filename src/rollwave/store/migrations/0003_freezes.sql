-- rollwave state store, schema version 3: manual freezes (`rollwave freeze on|off`),
-- one row per change, newest wins, so who froze and thawed an environment is kept.

CREATE TABLE freezes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    environment TEXT    NOT NULL,
    frozen      INTEGER NOT NULL,   -- 1 on, 0 off
    reason      TEXT    NOT NULL,
    who         TEXT    NOT NULL,
    at          REAL    NOT NULL
);

CREATE INDEX freezes_by_environment ON freezes (environment, id);
