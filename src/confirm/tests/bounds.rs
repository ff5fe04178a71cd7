//! The state machine's bounds: a hung upstream, the deciding read by ObjectID, Rally's
//! ambiguous Unit Of Work text, shutdown.

use std::time::Duration;

use super::*;

/// An upstream that never answers: each call hangs (as a submit can for
/// `upstream.response_timeout`).
struct Silent;

#[async_trait::async_trait]
impl Upstream for Silent {
    async fn submit(&self) -> (Answer, Option<RawAnswer>) {
        std::future::pending().await
    }
    async fn read(&self, _: i64, _: bool) -> ReadBack {
        std::future::pending().await
    }
    async fn find(&self, _: &str) -> Result<Vec<i64>, String> {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_missing_result_is_declared_missing_only_by_a_read_by_object_id() {
    // Acknowledged, never readable: every read but the last may be coalesced; the one that
    // decides is the last, made by ObjectID.
    let s = Script::default();
    s.answers
        .lock()
        .expect("lock")
        .extend([Answer::Accepted { object_id: 9 }]);
    let mut p = policy();
    p.max_attempts = 0;
    let fate = confirm(
        &s,
        Kind::Update,
        false,
        &expected(),
        &p,
        || 0.5,
        std::future::pending(),
    )
    .await;
    assert!(matches!(fate, Fate::Unconfirmed { .. }), "{fate:?}");
    let flags = s.last_flags.lock().expect("lock").clone();
    assert!(flags.len() > 2, "polled through the window: {flags:?}");
    assert_eq!(
        flags.last(),
        Some(&true),
        "the deciding read is by ObjectID: {flags:?}"
    );
    assert!(flags[..flags.len() - 1].iter().all(|l| !l), "{flags:?}");
}

#[tokio::test(start_paused = true)]
async fn unit_of_work_is_retried_unless_the_date_cannot_be_right() {
    let uow = || Answer::Retry {
        cause: "Could not update: Could not write changes in Unit Of Work".into(),
        retry_after: None,
    };
    let s = Script::default();
    s.answers
        .lock()
        .expect("lock")
        .extend([uow(), Answer::Accepted { object_id: 5 }]);
    s.store.lock().expect("lock").push((5, 0, "b1".into()));
    assert!(
        matches!(
            run(&s, Kind::Create).await,
            Fate::Confirmed { attempts: 2, .. }
        ),
        "a well-formed Date: a conflict in other words, retried"
    );
    let s = Script::default();
    s.answers.lock().expect("lock").extend([uow(), uow()]);
    let mut bad = expected();
    bad.date = Some("yesterday at noon".into());
    let fate = confirm(
        &s,
        Kind::Create,
        false,
        &bad,
        &policy(),
        || 0.5,
        std::future::pending(),
    )
    .await;
    assert!(
        matches!(&fate, Fate::Rejected { attempts: 1, cause, .. } if cause.contains("not an ISO 8601 date")),
        "{fate:?}"
    );
    assert!(
        Expected {
            date: Some("2026-01-01".into()),
            ..expected()
        }
        .date_is_wellformed()
    );
    assert!(
        Expected {
            date: Some("2026-01-01T10:00:00".into()),
            ..expected()
        }
        .date_is_wellformed()
    );
}

#[tokio::test(start_paused = true)]
async fn the_timeout_bounds_a_submit_that_never_returns() {
    let mut p = policy();
    p.timeout = Duration::from_secs(7);
    let started = tokio::time::Instant::now();
    let fate = confirm(
        &Silent,
        Kind::Create,
        false,
        &expected(),
        &p,
        || 0.5,
        std::future::pending(),
    )
    .await;
    match fate {
        Fate::Unconfirmed {
            attempts, cause, ..
        } => {
            assert_eq!(attempts, 1, "the first submit was under way");
            assert!(cause.contains("confirm.timeout (7s) reached"), "{cause}");
        }
        other => panic!("expected unconfirmed, got {other:?}"),
    }
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(7),
        "answered exactly at the bound"
    );
}

#[tokio::test(start_paused = true)]
async fn an_update_that_reads_back_different_is_unconfirmed() {
    let s = Script::default();
    s.answers
        .lock()
        .expect("l")
        .push_back(Answer::Accepted { object_id: 5 });
    s.store.lock().expect("l").push((5, 0, "other".into()));
    let fate = run(&s, Kind::Update).await;
    match fate {
        Fate::Unconfirmed {
            cause, object_id, ..
        } => {
            assert!(cause.contains("Build is \"other\""), "{cause}");
            assert_eq!(object_id, Some(5));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_answers_held_writes_at_once() {
    let s = Script::default();
    for _ in 0..5 {
        s.answers.lock().expect("l").push_back(Answer::Retry {
            cause: "Concurrency conflict".into(),
            retry_after: Some(Duration::from_secs(5)),
        });
    }
    let give_up = tokio::time::sleep(Duration::from_secs(1));
    let fate = confirm(
        &s,
        Kind::Create,
        false,
        &expected(),
        &policy(),
        || 0.5,
        give_up,
    )
    .await;
    match fate {
        Fate::Unconfirmed { cause, .. } => assert!(cause.contains("shutting down"), "{cause}"),
        other => panic!("{other:?}"),
    }
}

/// Found by the SIGTERM run: writes still reading back at the deadline were cut off unanswered.
/// The give-up now ends every phase, keeping the acknowledged ObjectID.
#[tokio::test(start_paused = true)]
async fn shutdown_ends_a_read_back_in_progress() {
    let s = Script::default();
    s.answers
        .lock()
        .expect("l")
        .push_back(Answer::Accepted { object_id: 7 });
    s.store.lock().expect("l").push((7, 0, "b1".into()));
    *s.lag_until.lock().expect("l") = Some(tokio::time::Instant::now() + Duration::from_secs(60));
    let fate = confirm(
        &s,
        Kind::Create,
        false,
        &expected(),
        &policy(),
        || 0.5,
        tokio::time::sleep(Duration::from_secs(2)),
    )
    .await;
    match fate {
        Fate::Unconfirmed {
            cause,
            object_id,
            attempts,
        } => {
            assert!(cause.contains("shutting down"), "{cause}");
            assert_eq!((object_id, attempts), (Some(7), 1));
        }
        other => panic!("{other:?}"),
    }
}
