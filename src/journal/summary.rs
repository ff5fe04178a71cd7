//! Listings for people (`GET /writes`, the status page): the same rows as
//! [`Journal::list`](super::Journal::list) with the body left in the file, so listing ten
//! thousand writes never loads ten thousand result bodies into memory.

use super::{COLUMNS, Journal, JournalError, Row, State, row_of};

impl Journal {
    /// Rows, newest first, optionally in one state; `body` is empty in every row.
    pub async fn list_without_bodies(
        &self,
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<Row>, JournalError> {
        let columns = COLUMNS.replace(" body,", " '' AS body,");
        self.with(move |c| {
            let filter = state
                .map(|s| format!(" WHERE state = '{}'", s.as_str()))
                .unwrap_or_default();
            let sql =
                format!("SELECT {columns} FROM writes{filter} ORDER BY id DESC LIMIT {limit}");
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map([], row_of)?;
            rows.collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NewWrite, now};
    use super::*;

    #[tokio::test]
    async fn bodies_stay_in_the_file() {
        let path = std::env::temp_dir().join(format!("rs-summary-{}.sqlite", uuid::Uuid::new_v4()));
        let j = Journal::open(&path).expect("open");
        let id = j
            .insert(NewWrite {
                request_id: "r".into(),
                received_at: now(),
                credential: "fp".into(),
                operation: "create".into(),
                path: "/p".into(),
                body: "{\"Notes\": \"long\"}".into(),
                build: Some("b1".into()),
                ..NewWrite::default()
            })
            .await
            .expect("insert");
        let rows = j
            .list_without_bodies(Some(State::Pending), 10)
            .await
            .expect("list");
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].id, rows[0].body.as_str()), (id, ""));
        assert_eq!(rows[0].build.as_deref(), Some("b1"));
        assert!(
            j.get(id)
                .await
                .expect("get")
                .is_some_and(|r| !r.body.is_empty())
        );
    }
}
