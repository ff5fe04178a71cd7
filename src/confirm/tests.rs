//! The confirmation state machine on paused tokio time against a scripted upstream: every
//! outcome, in milliseconds of real time.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::*;

fn policy() -> Policy {
    Policy {
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(5),
        max_attempts: 3,
        timeout: Duration::from_secs(60),
        readback_window: Duration::from_secs(10),
    }
}

fn expected() -> Expected {
    Expected {
        test_case: Some("1001".into()),
        build: Some("b1".into()),
        date: Some("2026-01-01T10:00:00.000Z".into()),
        verdict: Some("Pass".into()),
        tester: Some("400".into()),
    }
}

fn stored(build: &str) -> Map<String, Value> {
    json!({"TestCase": {"_ref": "https://x/slm/webservice/v2.0/testcase/1001"}, "Build": build,
           "Date": "2026-01-01T10:00:00Z", "Verdict": "Pass", "Tester": {"_ref": "/user/400"}})
    .as_object()
    .cloned()
    .unwrap_or_default()
}

/// A scripted Rally: answers to submits in order, a store of readable results.
#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Answer>>,
    /// object id → (readable after this many reads, build stored)
    store: Mutex<Vec<(i64, u32, String)>>,
    reads: Mutex<u32>,
    /// Whether each read was marked the last of its window.
    last_flags: Mutex<Vec<bool>>,
    submits: Mutex<u32>,
    finds: Mutex<Vec<String>>,
    /// What `find` returns.
    found: Mutex<Vec<i64>>,
    /// Before this instant nothing is readable or found (read lag).
    lag_until: Mutex<Option<tokio::time::Instant>>,
}

impl Script {
    fn lagging(&self) -> bool {
        self.lag_until
            .lock()
            .expect("lock")
            .is_some_and(|t| tokio::time::Instant::now() < t)
    }
}

#[async_trait::async_trait]
impl Upstream for Script {
    async fn submit(&self) -> (Answer, Option<RawAnswer>) {
        *self.submits.lock().expect("lock") += 1;
        let a = self
            .answers
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or(Answer::Ambiguous {
                cause: "script ran out".into(),
                retry_after: None,
            });
        (
            a,
            Some(RawAnswer {
                status: 200,
                headers: http::HeaderMap::new(),
                body: bytes::Bytes::from_static(b"{}"),
            }),
        )
    }
    async fn read(&self, object_id: i64, last: bool) -> ReadBack {
        self.last_flags.lock().expect("lock").push(last);
        let mut reads = self.reads.lock().expect("lock");
        *reads += 1;
        if self.lagging() {
            return ReadBack::NotFound;
        }
        let store = self.store.lock().expect("lock");
        match store.iter().find(|(o, _, _)| *o == object_id) {
            Some((_, after, build)) if *reads > *after => ReadBack::Found(stored(build)),
            _ => ReadBack::NotFound,
        }
    }
    async fn find(&self, query: &str) -> Result<Vec<i64>, String> {
        self.finds.lock().expect("lock").push(query.to_string());
        if self.lagging() {
            return Ok(vec![]);
        }
        Ok(self.found.lock().expect("lock").clone())
    }
}

async fn run(s: &Script, kind: Kind) -> Fate {
    confirm(
        s,
        kind,
        false,
        &expected(),
        &policy(),
        || 0.5,
        std::future::pending(),
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn accepted_and_readable_is_confirmed_in_one_attempt() {
    let s = Script::default();
    s.answers
        .lock()
        .expect("l")
        .push_back(Answer::Accepted { object_id: 7 });
    s.store.lock().expect("l").push((7, 0, "b1".into()));
    let fate = run(&s, Kind::Create).await;
    assert!(
        matches!(
            fate,
            Fate::Confirmed {
                object_id: 7,
                attempts: 1,
                adopted: false,
                ..
            }
        ),
        "{fate:?}"
    );
    assert!(
        s.finds.lock().expect("l").is_empty(),
        "no fingerprint query when all went well"
    );
}

#[tokio::test(start_paused = true)]
async fn read_lag_is_polled_through() {
    let s = Script::default();
    s.answers
        .lock()
        .expect("l")
        .push_back(Answer::Accepted { object_id: 7 });
    s.store.lock().expect("l").push((7, 3, "b1".into()));
    let fate = run(&s, Kind::Create).await;
    assert!(
        matches!(fate, Fate::Confirmed { attempts: 1, .. }),
        "{fate:?}"
    );
    assert_eq!(*s.reads.lock().expect("l"), 4);
}

/// Found by the 10,000-write soak: the last read and the last search used to come one backoff
/// step before the window's end, so a result that became visible in that last step was written
/// again. Now the window is used to its end.
#[tokio::test(start_paused = true)]
async fn a_result_visible_just_before_the_window_ends_is_not_written_again() {
    let lag = policy().readback_window - Duration::from_millis(50);
    // Accepted, then readable only after `lag`.
    let s = Script::default();
    s.answers
        .lock()
        .expect("l")
        .push_back(Answer::Accepted { object_id: 7 });
    s.store.lock().expect("l").push((7, 0, "b1".into()));
    *s.lag_until.lock().expect("l") = Some(tokio::time::Instant::now() + lag);
    let fate = run(&s, Kind::Create).await;
    assert!(
        matches!(
            fate,
            Fate::Confirmed {
                object_id: 7,
                attempts: 1,
                ..
            }
        ),
        "{fate:?}"
    );
    assert_eq!(*s.submits.lock().expect("l"), 1, "written once");
    // A gateway timeout after storing, found by fingerprint only after `lag`.
    let s = Script::default();
    s.answers.lock().expect("l").push_back(Answer::Ambiguous {
        cause: "502".into(),
        retry_after: None,
    });
    s.store.lock().expect("l").push((9, 0, "b1".into()));
    *s.found.lock().expect("l") = vec![9];
    *s.lag_until.lock().expect("l") = Some(tokio::time::Instant::now() + lag);
    let fate = run(&s, Kind::Create).await;
    assert!(
        matches!(
            fate,
            Fate::Confirmed {
                object_id: 9,
                adopted: true,
                ..
            }
        ),
        "{fate:?}"
    );
    assert_eq!(*s.submits.lock().expect("l"), 1, "not written again");
}

#[tokio::test(start_paused = true)]
async fn dropped_write_is_looked_for_then_written_again_once() {
    let s = Script::default();
    // Acknowledged as 7 but never stored; the second attempt lands as 8.
    s.answers.lock().expect("l").extend([
        Answer::Accepted { object_id: 7 },
        Answer::Accepted { object_id: 8 },
    ]);
    s.store.lock().expect("l").push((8, 0, "b1".into()));
    let t = tokio::time::Instant::now();
    let fate = run(&s, Kind::Create).await;
    assert!(
        matches!(
            fate,
            Fate::Confirmed {
                object_id: 8,
                attempts: 2,
                adopted: false,
                ..
            }
        ),
        "{fate:?}"
    );
    assert_eq!(
        s.finds.lock().expect("l").len(),
        1,
        "looked before writing again"
    );
    assert!(
        t.elapsed() >= policy().readback_window - Duration::from_secs(2),
        "waited for the read-back window"
    );
}

#[tokio::test(start_paused = true)]
async fn gateway_timeout_after_persisting_is_adopted_not_duplicated() {
    let s = Script::default();
    s.answers.lock().expect("l").push_back(Answer::Ambiguous {
        cause: "Rally answered HTTP 502".into(),
        retry_after: None,
    });
    s.store.lock().expect("l").push((42, 0, "b1".into()));
    *s.found.lock().expect("l") = vec![42];
    let fate = run(&s, Kind::Create).await;
    assert!(
        matches!(
            fate,
            Fate::Confirmed {
                object_id: 42,
                attempts: 1,
                adopted: true,
                ..
            }
        ),
        "{fate:?}"
    );
    assert_eq!(*s.submits.lock().expect("l"), 1, "no re-create");
    let q = s.finds.lock().expect("l")[0].clone();
    assert_eq!(
        q,
        "((((TestCase = \"/testcase/1001\") AND (Build = \"b1\")) AND (Date = \"2026-01-01T10:00:00.000Z\")) AND (Verdict = \"Pass\"))"
    );
}

#[tokio::test(start_paused = true)]
async fn conflict_is_retried_without_looking() {
    let s = Script::default();
    s.answers.lock().expect("l").extend([
        Answer::Retry {
            cause: "Concurrency conflict: ...".into(),
            retry_after: None,
        },
        Answer::Accepted { object_id: 9 },
    ]);
    s.store.lock().expect("l").push((9, 0, "b1".into()));
    let fate = run(&s, Kind::Create).await;
    assert!(
        matches!(
            fate,
            Fate::Confirmed {
                object_id: 9,
                attempts: 2,
                ..
            }
        ),
        "{fate:?}"
    );
    assert!(s.finds.lock().expect("l").is_empty());
}

#[tokio::test(start_paused = true)]
async fn reset_before_persisting_is_written_again_after_looking() {
    let s = Script::default();
    s.answers.lock().expect("l").extend([
        Answer::Ambiguous {
            cause: "connection reset".into(),
            retry_after: None,
        },
        Answer::Accepted { object_id: 10 },
    ]);
    s.store.lock().expect("l").push((10, 0, "b1".into()));
    let fate = run(&s, Kind::Create).await;
    assert!(
        matches!(
            fate,
            Fate::Confirmed {
                object_id: 10,
                attempts: 2,
                adopted: false,
                ..
            }
        ),
        "{fate:?}"
    );
    let finds = s.finds.lock().expect("l").len();
    assert!(
        finds > 1,
        "searched across the read-back window before writing again: {finds}"
    );
}

#[tokio::test(start_paused = true)]
async fn validation_errors_are_final() {
    let s = Script::default();
    s.answers.lock().expect("l").push_back(Answer::Final {
        cause: "Validation error: TestCaseResult.Verdict ...".into(),
    });
    let fate = run(&s, Kind::Create).await;
    assert!(
        matches!(fate, Fate::Rejected { attempts: 1, .. }),
        "{fate:?}"
    );
    assert_eq!(*s.submits.lock().expect("l"), 1);
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_with_the_last_cause() {
    let s = Script::default();
    for _ in 0..10 {
        s.answers.lock().expect("l").push_back(Answer::Retry {
            cause: "Could not write changes in Unit Of Work".into(),
            retry_after: None,
        });
    }
    let fate = run(&s, Kind::Create).await;
    match fate {
        Fate::Unconfirmed {
            attempts, cause, ..
        } => {
            assert_eq!(attempts, 4, "the first attempt and 3 re-submits");
            assert!(cause.contains("Unit Of Work"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_the_timeout_bounds_everything() {
    let s = Script::default();
    s.answers.lock().expect("l").extend([
        Answer::Ambiguous {
            cause: "Rally answered HTTP 503".into(),
            retry_after: Some(Duration::from_secs(30)),
        },
        Answer::Ambiguous {
            cause: "Rally answered HTTP 503".into(),
            retry_after: Some(Duration::from_secs(30)),
        },
        Answer::Ambiguous {
            cause: "Rally answered HTTP 503".into(),
            retry_after: Some(Duration::from_secs(30)),
        },
    ]);
    let t = tokio::time::Instant::now();
    let fate = run(&s, Kind::Create).await;
    assert!(matches!(fate, Fate::Unconfirmed { .. }), "{fate:?}");
    assert!(
        t.elapsed() >= Duration::from_secs(30),
        "waited as Rally asked"
    );
    assert!(t.elapsed() <= policy().timeout, "within confirm.timeout");
}

mod bounds;
