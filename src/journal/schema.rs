//! The journal's schema and its migrations, versioned with SQLite's `user_version`.
//!
//! - v1 (the first release): `writes` only.
//! - v2: `writes` gains the writer's Rally user (`rally_user`, `rally_user_name`), the test
//!   case's `formatted_id`, the state `refused` (a write the sidecar refused and never
//!   forwarded), `write_key` and `shipped_at` (fleet mode ships local rows once); `meta` holds
//!   the secret writer digests are keyed with (created once, kept with the file, so a digest
//!   means the same credential in every process that opens it); `owner` holds the lease of
//!   the sidecar that owns the journal.
//!
//! A v1 file is migrated in one transaction (SQLite cannot change a CHECK constraint in place,
//! so `writes` is rebuilt and its rows copied); a file newer than this code is refused.

use rusqlite::{Connection, OptionalExtension, params};

/// The version this code writes.
pub const VERSION: i64 = 2;

const WRITES_V2: &str = "
CREATE TABLE writes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id      TEXT NOT NULL,
    received_at     TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    credential      TEXT NOT NULL,
    rally_user      TEXT,
    rally_user_name TEXT,
    operation       TEXT NOT NULL,
    target          TEXT,
    path            TEXT NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'confirmed', 'rejected', 'unconfirmed', 'refused')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    object_id       INTEGER,
    test_case       TEXT,
    formatted_id    TEXT,
    build           TEXT,
    verdict         TEXT,
    filled          TEXT,
    decision        TEXT,
    latency_ms      REAL,
    write_key       TEXT,
    shipped_at      TEXT
);
CREATE INDEX writes_by_state ON writes (state, received_at);
CREATE INDEX writes_by_build ON writes (build, id);
";

const SUPPORT_V2: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS owner (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    instance     TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    host         TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);
";

/// v1 columns copied into v2.
const V1_COLUMNS: &str = "id, request_id, received_at, updated_at, credential, operation, target, path, \
    body, state, attempts, last_error, object_id, test_case, build, verdict, filled, decision, latency_ms";

/// Brings the file to [`VERSION`]; returns the version it found.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<i64> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > VERSION {
        return Err(rusqlite::Error::ToSqlConversionFailure(format!(
            "the journal's schema is version {found}, newer than this rally-sidecar understands ({VERSION}); use a newer release"
        ).into()));
    }
    if found == VERSION {
        return Ok(found);
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let has_writes: bool = tx
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'writes'",
            [],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if has_writes {
        tx.execute_batch(
            "ALTER TABLE writes RENAME TO writes_v1; DROP INDEX IF EXISTS writes_by_state;",
        )?;
        tx.execute_batch(WRITES_V2)?;
        tx.execute(
            &format!("INSERT INTO writes ({V1_COLUMNS}) SELECT {V1_COLUMNS} FROM writes_v1"),
            [],
        )?;
        tx.execute_batch("DROP TABLE writes_v1;")?;
    } else {
        tx.execute_batch(WRITES_V2)?;
    }
    tx.execute_batch(SUPPORT_V2)?;
    tx.execute_batch(&format!("PRAGMA user_version = {VERSION}"))?;
    tx.commit()?;
    Ok(found)
}

/// The secret writer digests are keyed with: made once per journal file, kept in it.
pub fn writer_secret(conn: &Connection) -> rusqlite::Result<[u8; 32]> {
    let existing: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'writer_secret'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let hex_value = match existing {
        Some(v) => v,
        None => {
            let mut fresh = [0u8; 32];
            rand::fill(&mut fresh);
            let v = hex::encode(fresh);
            // Another process may have made one meanwhile: the first one wins.
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('writer_secret', ?1)",
                params![v],
            )?;
            conn.query_row(
                "SELECT value FROM meta WHERE key = 'writer_secret'",
                [],
                |r| r.get(0),
            )?
        }
    };
    let mut key = [0u8; 32];
    match hex::decode(&hex_value) {
        Ok(bytes) if bytes.len() == 32 => key.copy_from_slice(&bytes),
        _ => {
            return Err(rusqlite::Error::ToSqlConversionFailure(
                "the journal's writer secret is damaged".into(),
            ));
        }
    }
    Ok(key)
}
