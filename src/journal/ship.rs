//! What fleet mode adds to the journal: each row of a write also recorded in the fleet's ledger
//! carries its `write_key`, and `shipped_at` says the ledger has the row's final state. The
//! local journal stays the first record of every write (it is on this pod's disk before the
//! write leaves, whether or not PostgreSQL answers); the shipper (`crate::fleet::shipper`)
//! copies settled rows to the ledger — keyed by this journal's identity and the row id, so a
//! row is shipped once however often it is sent — and marks them shipped. Rows without a key
//! (fleet mode off, refusals) are never shipped.

use rusqlite::{OptionalExtension, params};

use super::{COLUMNS, Journal, JournalError, NewWrite, Pending, Row, insert_row, now, row_of};
use crate::journal::State;

impl Journal {
    /// This journal file's identity in the ledger (made once, kept in the file), and the index
    /// that keeps finding unshipped rows cheap however many rows are shipped.
    pub async fn identity(&self) -> Result<String, JournalError> {
        let fresh = uuid::Uuid::new_v4().to_string();
        self.with(move |c| {
            c.execute_batch(
                "CREATE INDEX IF NOT EXISTS writes_unshipped ON writes (id)
                 WHERE write_key IS NOT NULL AND shipped_at IS NULL",
            )?;
            c.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('journal_id', ?1)",
                params![fresh],
            )?;
            c.query_row("SELECT value FROM meta WHERE key = 'journal_id'", [], |r| {
                r.get(0)
            })
        })
        .await
    }

    /// [`Journal::begin_all`] for writes the fleet's ledger also records: each row carries its
    /// write key, so the shipper can send it to the ledger once it is settled.
    pub async fn begin_all_keyed(
        &self,
        ws: Vec<(NewWrite, String)>,
    ) -> Result<Vec<Pending>, JournalError> {
        let ids = self
            .with_mut(move |c| {
                let tx = c.transaction()?;
                let mut ids = Vec::with_capacity(ws.len());
                for (w, key) in &ws {
                    let id = insert_row(&tx, w, State::Pending)?;
                    tx.execute(
                        "UPDATE writes SET write_key = ?2 WHERE id = ?1",
                        params![id, key],
                    )?;
                    ids.push(id);
                }
                tx.commit()?;
                Ok(ids)
            })
            .await?;
        Ok(ids
            .into_iter()
            .map(|id| Pending {
                journal: self.clone(),
                id,
                open: true,
            })
            .collect())
    }

    /// Removes rows begun for writes that will not be sent after all (the ledger found them
    /// already recorded: a client's retry), so neither the journal nor the shipper counts
    /// them twice.
    pub async fn forget(&self, pendings: Vec<Pending>) -> Result<(), JournalError> {
        let ids: Vec<i64> = pendings
            .into_iter()
            .map(|mut p| {
                p.open = false;
                p.id
            })
            .collect();
        self.with_mut(move |c| {
            let tx = c.transaction()?;
            for id in &ids {
                tx.execute(
                    "DELETE FROM writes WHERE id = ?1 AND state = 'pending'",
                    params![id],
                )?;
            }
            tx.commit()
        })
        .await
    }

    /// Settled rows with a write key that the ledger does not have yet, oldest first.
    pub async fn unshipped(&self, limit: usize) -> Result<Vec<(Row, String)>, JournalError> {
        self.with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS}, write_key FROM writes
                 WHERE write_key IS NOT NULL AND shipped_at IS NULL
                   AND state IN ('confirmed', 'rejected', 'unconfirmed')
                 ORDER BY id LIMIT ?1"
            ))?;
            let rows = stmt.query_map(params![limit as i64], |r| {
                Ok((row_of(r)?, r.get::<_, String>(22)?))
            })?;
            rows.collect()
        })
        .await
    }

    /// Marks rows shipped, unless their state changed since they were read (a replay settled
    /// an unconfirmed row meanwhile): those are shipped again with the new state.
    pub async fn mark_shipped(&self, rows: Vec<(i64, State)>) -> Result<usize, JournalError> {
        self.with_mut(move |c| {
            let tx = c.transaction()?;
            let stamp = now();
            let mut n = 0;
            for (id, state) in &rows {
                n += tx.execute(
                    "UPDATE writes SET shipped_at = ?3 WHERE id = ?1 AND state = ?2",
                    params![id, state.as_str(), stamp],
                )?;
            }
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    /// Rows not yet shipped (for `/readyz` and the tests).
    pub async fn unshipped_count(&self) -> Result<i64, JournalError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM writes WHERE write_key IS NOT NULL AND shipped_at IS NULL",
                [],
                |r| r.get(0),
            )
            .optional()
            .map(Option::unwrap_or_default)
        })
        .await
    }
}
