//! Read-backs served together. Every held write reads its result back at least once, and
//! under read lag several times; one GET per read would spend one of the user's 12 slots each
//! time. Instead, read-backs waiting for the same Rally user in the same workspace go out as
//! one query for many ObjectIDs — `((ObjectID = a) OR (ObjectID = b)) OR ...`, Rally's
//! pairwise nesting, asking only for the fields that are compared — issued when the user's
//! slot frees (one round in flight per user and workspace, so everything that arrived while a
//! round was out goes in the next). A write whose result is not visible yet waits for its next
//! poll without holding a slot.
//!
//! A query sees less than a read by ObjectID can (project scope, closed projects), so "not in
//! the answer" only ever means "not visible yet": the last read of a read-back window is made
//! by ObjectID (see `confirm`), never from a coalesced round.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::Rally;
use super::credential::Credential;
use super::governor::Priority;
use super::lookups::{ReadBack, first_error};

/// At most this many ObjectIDs in one query (its URL stays a few KB long).
const MAX_IDS: usize = 60;

/// The fields a read-back compares (and the ObjectID that says which result is which).
const FETCH: &str = "ObjectID,TestCase,Build,Date,Verdict,Tester";

struct Waiter {
    object_id: i64,
    cred: Credential,
    tx: oneshot::Sender<ReadBack>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    /// A round is out (or about to be): new waiters go in the next one.
    running: bool,
}

/// Read-backs coalesced per (Rally user, workspace).
pub(crate) struct Coalescer {
    rally: Arc<Rally>,
    queues: Mutex<HashMap<(Arc<str>, String), Queue>>,
}

impl Coalescer {
    pub(crate) fn new(rally: Arc<Rally>) -> Arc<Coalescer> {
        Arc::new(Coalescer {
            rally,
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// Reads `object_id` back with the next round for this credential's user in `workspace`.
    pub(crate) async fn read(
        self: &Arc<Self>,
        cred: &Credential,
        workspace: &str,
        object_id: i64,
    ) -> ReadBack {
        let key = (self.rally.lane_key(cred), workspace.to_string());
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            let q = queues.entry(key.clone()).or_default();
            q.waiting.push(Waiter {
                object_id,
                cred: cred.clone(),
                tx,
            });
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.rounds(key).await });
        }
        rx.await
            .unwrap_or_else(|_| ReadBack::Failed("the read-back round was dropped".into()))
    }

    /// Runs rounds for one key until nobody waits.
    async fn rounds(self: Arc<Self>, key: (Arc<str>, String)) {
        loop {
            let batch: Vec<Waiter> = {
                let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                let Some(q) = queues.get_mut(&key) else {
                    return;
                };
                if q.waiting.is_empty() {
                    queues.remove(&key);
                    return;
                }
                let n = q.waiting.len().min(MAX_IDS);
                q.waiting.drain(..n).collect()
            };
            self.round(&key.1, batch).await;
        }
    }

    async fn round(&self, workspace: &str, batch: Vec<Waiter>) {
        let mut ids: Vec<i64> = batch.iter().map(|w| w.object_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let query = or_query(&ids);
        let q = percent_encoding::utf8_percent_encode(&query, percent_encoding::NON_ALPHANUMERIC);
        let path = format!(
            "testcaseresult?query={q}&fetch={FETCH}&pagesize={}&workspace=/workspace/{workspace}&project=null",
            ids.len().max(1)
        );
        let cred = batch[0].cred.clone();
        let answer = self.rally.get_json(&cred, &path, Priority::FollowUp).await;
        let found: Result<HashMap<i64, Map<String, Value>>, String> = match answer {
            Err(e) => Err(e.to_string()),
            Ok((status, json)) => match json.get("QueryResult") {
                None => Err(format!("Rally answered {status} without a QueryResult")),
                Some(r) => match first_error(&json) {
                    Some(e) => Err(e),
                    None => Ok(r
                        .get("Results")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|o| {
                            let m = o.as_object()?;
                            let id = m.get("ObjectID").and_then(|v| {
                                v.as_i64()
                                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                            })?;
                            Some((id, m.clone()))
                        })
                        .collect()),
                },
            },
        };
        for w in batch {
            let r = match &found {
                Ok(m) => match m.get(&w.object_id) {
                    Some(o) => ReadBack::Found(o.clone()),
                    None => ReadBack::NotFound,
                },
                Err(e) => ReadBack::Failed(e.clone()),
            };
            let _ = w.tx.send(r);
        }
    }
}

/// `(ObjectID = a)`, `((ObjectID = a) OR (ObjectID = b))`, ... nested pairwise.
pub(crate) fn or_query(ids: &[i64]) -> String {
    let mut terms = ids.iter().map(|id| format!("(ObjectID = {id})"));
    let Some(first) = terms.next() else {
        return "(ObjectID = 0)".into();
    };
    terms.fold(first, |acc, t| format!("({acc} OR {t})"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn or_queries_nest_pairwise() {
        assert_eq!(super::or_query(&[7]), "(ObjectID = 7)");
        assert_eq!(
            super::or_query(&[1, 2, 3]),
            "(((ObjectID = 1) OR (ObjectID = 2)) OR (ObjectID = 3))"
        );
    }
}
