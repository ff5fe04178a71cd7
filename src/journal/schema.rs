//! The journal's schema and its migrations, versioned with SQLite's `user_version`.
//!
//! - v1 (the first release): `writes` only.
//! - v2: `writes` gains the writer's Rally user (`rally_user`, `rally_user_name`), the test
//!   case's `formatted_id`, the state `refused` (a write the sidecar refused and never
//!   forwarded), `write_key` and `shipped_at` (fleet mode ships local rows once); `meta` holds
//!   the secret writer digests are keyed with (created once, kept with the file, so a digest
//!   means the same credential in every process that opens it); `owner` holds the lease of
//!   the sidecar that owns the journal.
//! - v3: `writes` gains `adopted` (1 when a write's answer was lost and the stored result was
//!   found by its fingerprint instead of being written again), so a build's summary can say
//!   how many duplicates the sidecar avoided. Added with `ALTER TABLE`: old rows read 0.
//!
//! A v1 file is migrated in one transaction (SQLite cannot change a CHECK constraint in place,
//! so `writes` is rebuilt and its rows copied); a file newer than this code is refused.

use rusqlite::{Connection, OptionalExtension, params};

/// The version this code writes.
pub(super) const VERSION: i64 = 3;

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

/// v2 → v3: additive, so an `ALTER TABLE` (no rebuild).
const V3: &str = "ALTER TABLE writes ADD COLUMN adopted INTEGER NOT NULL DEFAULT 0;";

/// v1 columns copied into v2.
const V1_COLUMNS: &str = "id, request_id, received_at, updated_at, credential, operation, target, path, \
    body, state, attempts, last_error, object_id, test_case, build, verdict, filled, decision, latency_ms";

/// Brings the file to [`VERSION`]; returns the version it found.
pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<i64> {
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
    if found < 2 {
        to_v2(&tx)?;
    }
    tx.execute_batch(V3)?;
    tx.execute_batch(&format!("PRAGMA user_version = {VERSION}"))?;
    tx.commit()?;
    Ok(found)
}

/// v1 (or nothing) → v2: a v1 `writes` is rebuilt (its CHECK constraint changes) and its rows
/// copied; the support tables are created.
fn to_v2(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
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
    tx.execute_batch(SUPPORT_V2)
}

/// The secret writer digests are keyed with: made once per journal file, kept in it.
pub(super) fn writer_secret(conn: &Connection) -> rusqlite::Result<[u8; 32]> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn version(c: &Connection) -> i64 {
        c.query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version")
    }

    #[test]
    fn a_v2_file_gains_adopted_and_keeps_its_rows() {
        let mut c = Connection::open_in_memory().expect("memory");
        c.execute_batch(WRITES_V2).expect("v2 writes");
        c.execute_batch(SUPPORT_V2).expect("v2 support");
        c.execute_batch(
            "PRAGMA user_version = 2;
             INSERT INTO writes (request_id, received_at, updated_at, credential, operation, path, body, state, build)
             VALUES ('r', 't', 't', 'fp', 'create', '/p', '{}', 'confirmed', 'b7');",
        )
        .expect("a v2 row");
        assert_eq!(migrate(&mut c).expect("migrate"), 2, "found v2");
        assert_eq!(version(&c), VERSION);
        let (build, adopted): (String, i64) = c
            .query_row("SELECT build, adopted FROM writes", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("row");
        assert_eq!(
            (build.as_str(), adopted),
            ("b7", 0),
            "old rows read not adopted"
        );
        assert_eq!(
            migrate(&mut c).expect("again"),
            VERSION,
            "a second run is a no-op"
        );
    }

    #[test]
    fn a_new_file_is_created_at_the_current_version_and_a_newer_one_is_refused() {
        let mut c = Connection::open_in_memory().expect("memory");
        assert_eq!(migrate(&mut c).expect("create"), 0);
        assert_eq!(version(&c), VERSION);
        c.execute_batch(
            "INSERT INTO writes (request_id, received_at, updated_at, credential, operation, path, body, state, adopted)
             VALUES ('r', 't', 't', 'fp', 'create', '/p', '{}', 'confirmed', 1);",
        )
        .expect("the v3 column exists");
        c.execute_batch(&format!("PRAGMA user_version = {}", VERSION + 1))
            .expect("bump");
        let err = migrate(&mut c).expect_err("newer refused");
        assert!(
            err.to_string().contains("newer than this rally-sidecar"),
            "{err}"
        );
    }
}
