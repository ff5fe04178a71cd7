//! What the journal tells the people watching it: counts per build (newest build first), one
//! build's writes, the recent writes, and recent confirmation latencies. Read-only queries
//! that never load a write's body or its writer's digest (they are neither shown nor needed),
//! plus [`Journal::mark_adopted`], the one flag the summaries need that the settle path does not
//! carry. The summary command and the admin listener (status page, `/builds`) build on these.

use rusqlite::params;
use serde::Serialize;

use super::{Journal, JournalError, State};

/// One build's rows, counted by state.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct BuildCounts {
    /// `None` for writes that carried no build (refused for it, or journaled before one was known).
    pub build: Option<String>,
    /// Every journaled write of the build, whatever its state.
    pub total: i64,
    pub confirmed: i64,
    /// Refused by the sidecar (never forwarded).
    pub refused: i64,
    /// Refused by Rally for good.
    pub rejected: i64,
    pub unconfirmed: i64,
    pub pending: i64,
    /// Confirmed writes whose answer was lost and that were found again, not written twice.
    pub adopted: i64,
    /// The newest row's id: orders builds newest first.
    pub newest_id: i64,
    pub first_received: Option<String>,
    pub last_updated: Option<String>,
}

impl BuildCounts {
    /// Counts one more write (when the rows are at hand anyway).
    pub fn count(&mut self, w: &WriteView) {
        self.add(w.state, 1);
        self.adopted += i64::from(w.adopted);
        self.newest_id = self.newest_id.max(w.id);
        if self.first_received.is_none() || Some(&w.received_at) < self.first_received.as_ref() {
            self.first_received = Some(w.received_at.clone());
        }
        if Some(&w.updated_at) > self.last_updated.as_ref() {
            self.last_updated = Some(w.updated_at.clone());
        }
    }

    fn add(&mut self, state: State, n: i64) {
        self.total += n;
        match state {
            State::Confirmed => self.confirmed += n,
            State::Refused => self.refused += n,
            State::Rejected => self.rejected += n,
            State::Unconfirmed => self.unconfirmed += n,
            State::Pending => self.pending += n,
        }
    }
}

/// A write as people read it: no body, no writer digest.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WriteView {
    pub id: i64,
    pub received_at: String,
    pub updated_at: String,
    pub operation: String,
    pub state: State,
    pub attempts: i64,
    /// Why it is not confirmed: the sidecar's refusal, Rally's error, or what stopped the check.
    pub last_error: Option<String>,
    pub object_id: Option<i64>,
    /// The test case's ObjectID and, once resolved, its FormattedID (`TC4`).
    pub test_case: Option<String>,
    pub formatted_id: Option<String>,
    pub build: Option<String>,
    pub verdict: Option<String>,
    pub rally_user_name: Option<String>,
    pub filled: Option<String>,
    pub decision: Option<String>,
    pub latency_ms: Option<f64>,
    pub adopted: bool,
}

impl WriteView {
    /// The name people use for the test case: its FormattedID, else its ObjectID.
    pub fn test_case_label(&self) -> String {
        self.formatted_id
            .clone()
            .or_else(|| self.test_case.clone())
            .unwrap_or_else(|| "(unknown test case)".into())
    }
}

const VIEW_COLUMNS: &str = "id, received_at, updated_at, operation, state, attempts, last_error, object_id, \
    test_case, formatted_id, build, verdict, rally_user_name, filled, decision, latency_ms, adopted";

fn view_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<WriteView> {
    let state: String = r.get(4)?;
    Ok(WriteView {
        id: r.get(0)?,
        received_at: r.get(1)?,
        updated_at: r.get(2)?,
        operation: r.get(3)?,
        state: State::parse(&state).unwrap_or(State::Unconfirmed),
        attempts: r.get(5)?,
        last_error: r.get(6)?,
        object_id: r.get(7)?,
        test_case: r.get(8)?,
        formatted_id: r.get(9)?,
        build: r.get(10)?,
        verdict: r.get(11)?,
        rally_user_name: r.get(12)?,
        filled: r.get(13)?,
        decision: r.get(14)?,
        latency_ms: r.get(15)?,
        adopted: r.get::<_, i64>(16)? != 0,
    })
}

/// Groups `(build, state, count, adopted, newest id, first received, last updated)` rows into
/// one [`BuildCounts`] per build, newest build first.
fn group(rows: Vec<GroupRow>) -> Vec<BuildCounts> {
    let mut out: Vec<BuildCounts> = Vec::new();
    for (build, state, n, adopted, newest, first, last) in rows {
        let Some(state) = State::parse(&state) else {
            continue;
        };
        let i = match out.iter().position(|b| b.build == build) {
            Some(i) => i,
            None => {
                out.push(BuildCounts {
                    build: build.clone(),
                    ..BuildCounts::default()
                });
                out.len() - 1
            }
        };
        let b = &mut out[i];
        b.add(state, n);
        b.adopted += adopted;
        b.newest_id = b.newest_id.max(newest);
        if b.first_received.is_none() || first < b.first_received {
            b.first_received = first;
        }
        if last > b.last_updated {
            b.last_updated = last;
        }
    }
    out.sort_by_key(|b| std::cmp::Reverse(b.newest_id));
    out
}

type GroupRow = (
    Option<String>,
    String,
    i64,
    i64,
    i64,
    Option<String>,
    Option<String>,
);

const GROUPED: &str = "SELECT build, state, COUNT(*), SUM(adopted), MAX(id), MIN(received_at), MAX(updated_at) \
    FROM writes";

fn group_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GroupRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

impl Journal {
    /// Counts for the `limit` builds written to most recently, newest first (writes without a
    /// build form one group with `build: None`).
    pub async fn builds(&self, limit: usize) -> Result<Vec<BuildCounts>, JournalError> {
        let rows = self
            .with(|c| {
                let mut stmt = c.prepare(&format!("{GROUPED} GROUP BY build, state"))?;
                let rows = stmt.query_map([], group_row)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        let mut builds = group(rows);
        builds.truncate(limit);
        Ok(builds)
    }

    /// One build's writes, oldest first, at most `limit`.
    pub async fn build_writes(
        &self,
        build: &str,
        limit: usize,
    ) -> Result<Vec<WriteView>, JournalError> {
        let b = build.to_string();
        self.with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {VIEW_COLUMNS} FROM writes WHERE build = ?1 ORDER BY id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![b, limit as i64], view_of)?;
            rows.collect()
        })
        .await
    }

    /// The newest writes, newest first, without bodies.
    pub async fn recent(&self, limit: usize) -> Result<Vec<WriteView>, JournalError> {
        self.with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {VIEW_COLUMNS} FROM writes ORDER BY id DESC LIMIT ?1"
            ))?;
            let rows = stmt.query_map(params![limit as i64], view_of)?;
            rows.collect()
        })
        .await
    }

    /// The newest writes that are not confirmed (refused, rejected, unconfirmed, pending),
    /// newest first: what an operator must look at, however far back it is.
    pub async fn attention(&self, limit: usize) -> Result<Vec<WriteView>, JournalError> {
        self.with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {VIEW_COLUMNS} FROM writes WHERE state <> 'confirmed' ORDER BY id DESC LIMIT ?1"
            ))?;
            let rows = stmt.query_map(params![limit as i64], view_of)?;
            rows.collect()
        })
        .await
    }

    /// The newest settled writes that measured a confirmation latency, oldest first (ready to
    /// draw left to right).
    pub async fn latencies(&self, limit: usize) -> Result<Vec<WriteView>, JournalError> {
        let mut rows = self
            .with(move |c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT {VIEW_COLUMNS} FROM writes WHERE latency_ms IS NOT NULL
                     AND state IN ('confirmed', 'rejected', 'unconfirmed') ORDER BY id DESC LIMIT ?1"
                ))?;
                let rows = stmt.query_map(params![limit as i64], view_of)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.reverse();
        Ok(rows)
    }

    /// Records that a write's result was adopted (found by its fingerprint after its answer was
    /// lost) rather than written again.
    pub async fn mark_adopted(&self, id: i64) -> Result<(), JournalError> {
        self.with(move |c| {
            c.execute("UPDATE writes SET adopted = 1 WHERE id = ?1", params![id])
                .map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NewWrite, now};
    use super::*;

    fn write(build: Option<&str>, tc: &str) -> NewWrite {
        NewWrite {
            request_id: format!("r-{tc}"),
            received_at: now(),
            credential: "fp".into(),
            operation: "create".into(),
            path: "/slm/webservice/v2.0/testcaseresult/create".into(),
            body: "{\"secret\": \"not shown\"}".into(),
            test_case: Some(tc.into()),
            build: build.map(str::to_string),
            verdict: Some("Pass".into()),
            ..NewWrite::default()
        }
    }

    #[tokio::test]
    async fn counts_per_build_newest_first_and_views_without_bodies() {
        let path = std::env::temp_dir().join(format!("rs-report-{}.sqlite", uuid::Uuid::new_v4()));
        let j = Journal::open(&path).expect("open");
        let a1 = j.insert(write(Some("A"), "1")).await.expect("a1");
        let a2 = j.insert(write(Some("A"), "2")).await.expect("a2");
        j.record_refusal(write(Some("A"), "3"), "archived".into())
            .await
            .expect("refused");
        let b1 = j.insert(write(Some("B"), "4")).await.expect("b1");
        j.record_refusal(write(None, "5"), "no build".into())
            .await
            .expect("no build");
        j.settle(a1, State::Confirmed, 1, None, Some(11), Some(20.0))
            .await
            .expect("settle");
        j.mark_adopted(a1).await.expect("adopted");
        j.settle(
            a2,
            State::Unconfirmed,
            3,
            Some("lag".into()),
            None,
            Some(900.0),
        )
        .await
        .expect("settle");

        let builds = j.builds(10).await.expect("builds");
        let names: Vec<_> = builds.iter().map(|b| b.build.as_deref()).collect();
        assert_eq!(names, vec![None, Some("B"), Some("A")], "newest first");
        let a = &builds[2];
        assert_eq!(
            (
                a.total,
                a.confirmed,
                a.unconfirmed,
                a.refused,
                a.pending,
                a.adopted
            ),
            (3, 1, 1, 1, 0, 1)
        );
        assert_eq!(builds[1].pending, 1);
        assert_eq!(j.builds(1).await.expect("one").len(), 1, "limited");

        let rows = j.build_writes("A", 10).await.expect("rows");
        let mut counted = BuildCounts {
            build: Some("A".into()),
            ..BuildCounts::default()
        };
        rows.iter().for_each(|r| counted.count(r));
        assert_eq!(&counted, a, "counting rows agrees with counting in SQL");
        assert!(j.build_writes("nope", 10).await.expect("none").is_empty());
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>()[..2], [a1, a2]);
        assert_eq!(rows[2].state, State::Refused);
        assert_eq!(rows[2].last_error.as_deref(), Some("archived"));
        assert!(rows[0].adopted && !rows[1].adopted);

        let recent = j.recent(2).await.expect("recent");
        assert_eq!(recent.len(), 2);
        assert!(recent[0].id > recent[1].id, "newest first");
        assert!(recent[1].id == b1);

        let attention = j.attention(10).await.expect("attention");
        assert_eq!(
            attention.iter().map(|r| r.state).collect::<Vec<_>>(),
            [
                State::Refused,
                State::Pending,
                State::Refused,
                State::Unconfirmed
            ],
            "everything not confirmed, newest first"
        );

        let lat = j.latencies(10).await.expect("latencies");
        assert_eq!(
            lat.iter().map(|r| r.latency_ms).collect::<Vec<_>>(),
            vec![Some(20.0), Some(900.0)],
            "settled rows with a latency, oldest first"
        );
        let _ = std::fs::remove_file(&path);
    }
}
