//! The journal against a simple model, across a crash and a migration.

use super::*;

fn temp() -> PathBuf {
    std::env::temp_dir().join(format!("rs-journal-{}.sqlite", uuid::Uuid::new_v4()))
}

fn write(n: usize) -> NewWrite {
    NewWrite {
        request_id: format!("r{n}"),
        received_at: now(),
        credential: "fp".into(),
        operation: "create".into(),
        path: "/slm/webservice/v2.0/testcaseresult/create".into(),
        body: "{}".into(),
        ..NewWrite::default()
    }
}

/// The journal against a simple model: a map from id to state, following the invariants.
#[tokio::test]
async fn behaves_like_its_model_across_a_crash() {
    let path = temp();
    let (j, recovered) = Journal::own(&path).await.expect("open");
    assert_eq!(recovered, 0);
    let mut model = std::collections::BTreeMap::new();
    for n in 0..20 {
        let id = j.insert(write(n)).await.expect("insert");
        model.insert(id, State::Pending);
    }
    let ids: Vec<i64> = model.keys().copied().collect();
    for (i, id) in ids.iter().enumerate() {
        let to = match i % 4 {
            0 => Some(State::Confirmed),
            1 => Some(State::Rejected),
            2 => Some(State::Unconfirmed),
            _ => None, // still pending at the "crash"
        };
        if let Some(s) = to {
            j.settle(*id, s, 1, None, Some(*id * 10), Some(1.0))
                .await
                .expect("settle");
            model.insert(*id, s);
        }
    }
    // A settled row never goes back: confirming a rejected row changes nothing.
    j.settle(ids[1], State::Confirmed, 1, None, None, None)
        .await
        .expect("settle");
    // While the owner lives, inspecting changes nothing and recovery does not run.
    let inspector = Journal::open(&path).expect("inspect");
    assert!(matches!(
        inspector.recover_unowned().await.expect("recover"),
        Recovery::Owned(_)
    ));
    assert_eq!(
        inspector
            .list(Some(State::Pending), vec![], 100)
            .await
            .expect("list")
            .len(),
        5,
        "the owner's pending rows are untouched"
    );
    j.release().await.expect("release");
    drop(j);
    let j = Journal::open(&path).expect("reopen");
    assert_eq!(
        j.recover_unowned().await.expect("recover"),
        Recovery::Recovered(5),
        "pending rows found once no sidecar owns the journal"
    );
    for (id, s) in model.iter_mut() {
        if *s == State::Pending {
            *s = State::Unconfirmed;
        }
        assert_eq!(j.state_of(*id).await.expect("state"), Some(*s), "row {id}");
    }
    assert_eq!(j.backlog().await.expect("backlog"), 10);
    let un = j
        .list(Some(State::Unconfirmed), vec![], 100)
        .await
        .expect("list");
    assert!(un.iter().all(|r| r.state == State::Unconfirmed));
    assert!(un.iter().any(|r| {
        r.last_error
            .as_deref()
            .is_some_and(|e| e.contains("stopped before"))
    }));
    // An unconfirmed row may become confirmed (replay).
    j.settle(un[0].id, State::Confirmed, 1, None, Some(1), None)
        .await
        .expect("settle");
    assert_eq!(
        j.state_of(un[0].id).await.expect("state"),
        Some(State::Confirmed)
    );
    // Pruning keeps the newest confirmed row and every other state.
    let pruned = j
        .prune(std::time::Duration::from_secs(3600), 1)
        .await
        .expect("prune");
    assert_eq!(pruned, 5, "6 confirmed, keep 1");
    assert_eq!(j.backlog().await.expect("backlog"), 9);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn a_v1_file_is_migrated_and_the_file_is_private() {
    let path = temp();
    {
        let c = Connection::open(&path).expect("v1");
        c.execute_batch(
            "CREATE TABLE writes (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL,
             received_at TEXT NOT NULL, updated_at TEXT NOT NULL, credential TEXT NOT NULL,
             operation TEXT NOT NULL, target TEXT, path TEXT NOT NULL, body TEXT NOT NULL,
             state TEXT NOT NULL CHECK (state IN ('pending', 'confirmed', 'rejected', 'unconfirmed')),
             attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, object_id INTEGER, test_case TEXT,
             build TEXT, verdict TEXT, filled TEXT, decision TEXT, latency_ms REAL);
             INSERT INTO writes (request_id, received_at, updated_at, credential, operation, path, body, state, build)
             VALUES ('r', 't', 't', 'fp', 'create', '/p', '{}', 'unconfirmed', 'old');",
        )
        .expect("v1 rows");
    }
    let j = Journal::open(&path).expect("migrated");
    let rows = j.list(None, vec![], 10).await.expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].build.as_deref(), Some("old"));
    assert_eq!(rows[0].rally_user, None);
    let id = j
        .record_refusal(write(1), "archived".into())
        .await
        .expect("refused rows fit the new schema");
    assert_eq!(j.state_of(id).await.expect("state"), Some(State::Refused));
    let secret = j.writer_secret();
    drop(j);
    assert_eq!(
        Journal::open(&path).expect("again").writer_secret(),
        secret,
        "the writer secret is kept with the file"
    );
    let fresh = temp();
    let _ = Journal::open(&fresh).expect("new file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&fresh)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the journal is private to its owner");
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&fresh);
}

#[tokio::test]
async fn a_batchs_rows_are_all_or_nothing() {
    let j = Journal::open(&temp()).expect("open");
    let ok = j
        .begin_all(vec![write(1), write(2)])
        .await
        .expect("two rows");
    assert_eq!(ok.len(), 2);
    drop(ok);
    // A failure on the second row (a trigger stands in for a full disk) fails them all.
    j.with(|c| c.execute_batch("CREATE TRIGGER no_third BEFORE INSERT ON writes WHEN (SELECT COUNT(*) FROM writes) >= 3 BEGIN SELECT RAISE(ABORT, 'full'); END;"))
        .await
        .expect("trigger");
    assert!(j.begin_all(vec![write(3), write(4)]).await.is_err());
    assert_eq!(
        j.list(None, vec![], 10).await.expect("rows").len(),
        2,
        "the batch that could not be recorded whole left no row"
    );
}
